//! The container image (Dockerfile), built by `scripts/image` with podman from the release
//! binary and a Debian base made by debootstrap, run the way the backend runs it as a sidecar:
//! no network of its own, the gRPC Unix socket on a shared volume. From the host: `ctl health`
//! through the socket; podman's own health check (`ctl health` inside); a room joined and
//! recorded at its 440 Hz; LiveKit's library loaded from the image (a join reaches the
//! library's signalling, which finds no server); the process runs as the unprivileged user;
//! `podman stop` drains and exits 0 in well under the grace period.

use std::os::unix::fs::chown;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

use common::process::{self, ok, scratch, wait_for};

const IMAGE: &str = "localhost/livekit-bridge:test";
/// The user the Dockerfile runs the bridge as.
const UID: u32 = 10001;

/// podman with the flags scripts/image explains (runc, ulimits within this host's).
fn podman(args: &[&str]) -> Output {
    let nofile = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .expect("ulimit -Hn");
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]);
    if args.first() == Some(&"run") {
        c.arg("run")
            .args(["--ulimit", &format!("nofile={nofile}:{nofile}")])
            .args(["--ulimit", "nproc=4096:4096"])
            .args(&args[1..]);
    } else {
        c.args(args);
    }
    c.output().expect("run podman (scripts/setup installs it)")
}

fn ctl(socket: &Path, args: &[&str]) -> Output {
    process::ctl(socket, None, args)
}

/// Removes the container however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.0]);
    }
}

#[test]
#[ignore = "needs root, podman and debootstrap (scripts/setup); scripts/test runs it"]
fn the_image_runs_as_a_sidecar_on_a_shared_socket() {
    let built = Command::new("scripts/image")
        .arg(IMAGE)
        .output()
        .expect("run scripts/image");
    assert!(
        built.status.success(),
        "scripts/image failed:\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let config = ok(&podman(&[
        "image",
        "inspect",
        IMAGE,
        "--format",
        "{{.Config.User}} {{.Config.Healthcheck.Test}}",
    ]));
    assert!(
        config.starts_with("10001:10001 ") && config.contains("ctl health"),
        "{config}"
    );

    let dir = scratch("image");
    chown(&dir, Some(UID), Some(UID)).expect("chown the shared directory");
    let socket = dir.join("bridge.sock");
    let name = format!("livekit-bridge-test-{}", std::process::id());
    let volume = format!("{}:/run/livekit-bridge", dir.display());
    let started = podman(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--network",
        "none",
        "--volume",
        &volume,
        "--env",
        "LIVEKIT_GRPC_SOCKET=/run/livekit-bridge/bridge.sock",
        "--env",
        "BRIDGE_CTL_ADDR=unix:/run/livekit-bridge/bridge.sock",
        IMAGE,
    ]);
    let container = Container(name);
    ok(&started);
    wait_for("the socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });

    assert!(ok(&ctl(&socket, &["health"])).starts_with("SERVING"));
    let checked = podman(&["healthcheck", "run", &container.0]);
    assert!(
        checked.status.success(),
        "podman's health check: {}",
        String::from_utf8_lossy(&checked.stdout)
    );
    let uid = ok(&podman(&["exec", &container.0, "id", "-u"]));
    assert_eq!(uid.trim(), UID.to_string());

    ok(&ctl(&socket, &["join", "u", "sim://tone?hz=440", "x"]));
    let wav = dir.join("u.wav");
    let recorded = ok(&ctl(
        &socket,
        &[
            "record",
            "u",
            "--seconds",
            "1",
            "--out",
            wav.to_str().expect("path"),
        ],
    ));
    assert!(recorded.contains("recorded 1.00 s of u"), "{recorded}");
    let pcm: Vec<u8> = hound::WavReader::open(&wav)
        .expect("a valid WAV")
        .samples::<i16>()
        .flat_map(|s| s.expect("sample").to_le_bytes())
        .collect();
    assert_eq!(pcm.len(), 32_000, "1 s at 16 kHz");
    let hz = common::zero_crossing_hz(&pcm);
    assert!((hz - 440.0).abs() < 5.0, "recorded {hz:.1} Hz");

    // A LiveKit URL goes to the image's copy of the library, which tries to signal.
    let join = ctl(&socket, &["join", "v", "ws://127.0.0.1:9", "token"]);
    assert_eq!(join.status.code(), Some(1));
    let said = String::from_utf8_lossy(&join.stderr);
    assert!(said.contains("signal failure"), "{said}");

    let stopping = Instant::now();
    ok(&podman(&["stop", "--time", "10", &container.0]));
    let took = stopping.elapsed();
    let code = ok(&podman(&[
        "inspect",
        &container.0,
        "--format",
        "{{.State.ExitCode}}",
    ]));
    assert_eq!(code.trim(), "0", "the bridge's exit status");
    assert!(took < Duration::from_secs(8), "stop took {took:?}");
    let logs = podman(&["logs", &container.0]);
    let logs = String::from_utf8_lossy(&logs.stderr);
    assert!(logs.contains("shutting down: draining sessions"), "{logs}");
    assert!(!socket.exists(), "the socket is removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}

/// deploy/kubernetes/ against Kubernetes' schema (strict) and against the bridge itself:
/// settings it knows and accepts, probes on its HTTP port, the image's user, a grace period
/// that covers preStop and the drain, a socket on a volume the backend shares
/// (tests/deploy/check.py says what each check is).
#[test]
#[ignore = "needs the end-to-end tests' Python environment (scripts/setup); scripts/test runs it"]
fn the_kubernetes_manifests_are_valid_and_consistent_with_the_bridge() {
    let manifests: Vec<_> = std::fs::read_dir("deploy/kubernetes")
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert_eq!(manifests.len(), 2, "{manifests:?}");
    let out = Command::new("vendor/e2e-venv/bin/python")
        .arg("tests/deploy/check.py")
        .arg(process::BIN)
        .args(&manifests)
        .output()
        .expect("run tests/deploy/check.py (scripts/setup makes the venv)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said.matches("checked ").count(), 2, "{said}");
}

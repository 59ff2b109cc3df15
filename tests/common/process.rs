//! Driving the release binary as a process: starting it on a Unix socket, waiting for it,
//! signalling it, timing its exit, and running `ctl` against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_livekit-bridge");

/// Polls `cond` every 10 ms for up to 10 s.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill -TERM");
}

/// Waits for the process to exit; its status and how long it took. Kills it and fails the
/// test after `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> (ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (status, start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the bridge did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The release bridge on `dir/bridge.sock` with only `env` set (and `RUST_LOG=warn`), its
/// stderr inherited; returns once the socket accepts.
pub fn start_on_socket(dir: &Path, env: &[(&str, &str)]) -> (KillOnDrop, PathBuf) {
    let socket = dir.join("bridge.sock");
    let child = Command::new(BIN)
        .env_clear()
        .env("LIVEKIT_GRPC_SOCKET", &socket)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the bridge");
    let child = KillOnDrop(child);
    wait_for("the socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    (child, socket)
}

/// `livekit-bridge ctl` against the bridge on `socket`, with the token if given.
pub fn ctl(socket: &Path, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.env_clear()
        .arg("ctl")
        .arg("--addr")
        .arg(format!("unix:{}", socket.display()));
    if let Some(t) = token {
        c.args(["--token", t]);
    }
    c.args(args).output().expect("run ctl")
}

/// The standard output of a `ctl` run that must have succeeded.
pub fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("livekit-bridge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// Kills the child when dropped, so a failing test leaves no bridge behind (one holding the
/// test's stderr would keep `cargo test`'s output open).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

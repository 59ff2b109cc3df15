//! The release binary as operators and the backend meet it: configuration errors, `--help`, a
//! Unix socket served to the backend's own gRPC stack (Node `@grpc/grpc-js`) and to stock Python
//! `grpcio`, and SIGTERM.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;

use common::process::{BIN, Launch, scratch, wait_for};
use common::{files, unix};

#[test]
fn bad_configuration_exits_64_naming_the_setting() {
    for (key, value) in [
        ("PORT", "http"),
        ("BRIDGE_OVERFLOW", "sometimes"),
        ("BRIDGE_AUDIO_SOURCE", "microphone"),
        ("LOG_FORMAT", "xml"),
        ("PLAYBACK_CA_FILE", "/nonexistent/ca.pem"),
        ("PLAYBACK_CA_FILE", "Cargo.toml"),
        ("PLAYBACK_MAX_BYTES", "0"),
        ("BRIDGE_HTTP_ADDR", "localhost"),
        ("BRIDGE_MAX_SESSIONS", "many"),
        ("BRIDGE_MAX_CPU", "1.5"),
        ("BRIDGE_MAX_CPU", "80%"),
        ("BRIDGE_IDLE_S", "-1"),
        ("BRIDGE_AUTH_TOKEN", "has space"),
        ("LIVEKIT_GRPC_SOCKET_MODE", "0999"),
        ("PLAYBACK_ALLOW_NETS", "10.0.0.0/33"),
        ("PLAYBACK_ALLOW_HOSTS", "http://audio.internal/"),
    ] {
        let out = Command::new(BIN)
            .env_clear()
            .env(key, value)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(64), "{key}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
    let out = Command::new(BIN).arg("--bogus").output().expect("run");
    assert_eq!(out.status.code(), Some(64));
    // Every bad value at once, each named: an operator fixes them in one round.
    let bad = [
        ("PORT", "http"),
        ("BRIDGE_RING_MS", "0"),
        ("LOG_FORMAT", "xml"),
    ];
    let out = Command::new(BIN)
        .env_clear()
        .envs(bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (key, _) in bad {
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
}

#[test]
fn help_documents_every_setting() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for s in livekit_bridge::config::settings() {
        assert!(
            text.contains(&s.flag) && text.contains(&s.env),
            "{} missing",
            s.env
        );
    }
}

#[test]
fn the_backends_own_grpc_client_drives_the_bridge_over_a_unix_socket() {
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        node_dir.join("node_modules/@grpc/grpc-js").exists(),
        "the Node gRPC client is not installed: run scripts/setup (npm ci in tests/node)"
    );
    let dir = scratch("node");
    // A stale socket where the socket goes, as a crashed predecessor would leave: bound, then
    // closed without being removed, so nobody answers on it.
    std::fs::create_dir_all(&dir).expect("mkdir");
    let socket = dir.join("run/bridge.sock");
    std::fs::create_dir_all(socket.parent().expect("parent")).expect("mkdir");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    assert!(socket.exists());
    // Another test's thread may be spawning a process right now: until it execs, its child
    // holds a copy of the listener and the stale socket still answers. Wait until it is
    // refused, so that the only socket that can answer below is the bridge's.
    wait_for("the stale socket to be refused", || {
        std::os::unix::net::UnixStream::connect(&socket).is_err()
    });
    // The stale socket is a socket too: `start` waits for one that answers.
    let bridge = Launch::on_socket(&socket).start();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666);

    let out = Command::new("node")
        .arg(node_dir.join("stock_client.mjs"))
        .arg(format!("unix://{}", socket.display()))
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stock client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"ok\":true"), "{stdout}");

    bridge.stop();
    assert!(!socket.exists(), "the socket file is removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Python grpcio (1.57 and later) sends the socket path as `:authority`, which h2 alone
/// refuses; the bridge serves it without any channel option (src/authority.rs).
#[test]
fn stock_python_grpcio_drives_the_bridge_over_a_unix_socket() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("vendor/e2e-venv/bin/python");
    assert!(
        python.exists(),
        "the Python gRPC client is not installed: run scripts/setup"
    );
    let dir = scratch("python");
    let socket = dir.join("bridge.sock");
    let bridge = Launch::on_socket(&socket).start();
    let out = Command::new(python)
        .arg(root.join("tests/python/stock_client.py"))
        .arg(&socket)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpcio client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"ok\": true"), "{stdout}");
    bridge.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_ends_open_streams_and_exits_within_the_deadline() {
    use livekit_bridge::proto::live_kit_bridge_client::LiveKitBridgeClient;
    use livekit_bridge::proto::{AudioChunk, JoinRoomRequest};

    let dir = scratch("term");
    let socket = dir.join("bridge.sock");
    let mut bridge = Launch::on_socket(&socket)
        .env("BRIDGE_SHUTDOWN_TIMEOUT_MS", "2000")
        .start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (code, reason) = rt.block_on(async {
        let channel = unix::unix_channel(&socket).await;
        let mut client = LiveKitBridgeClient::new(channel);
        let join = JoinRoomRequest {
            user_id: "u".into(),
            livekit_url: "sim://tone".into(),
            target_identity: "u".into(),
            ..Default::default()
        };
        assert!(
            client
                .join_room(join)
                .await
                .expect("join")
                .into_inner()
                .success
        );
        let first = AudioChunk {
            user_id: "u".into(),
            ..Default::default()
        };
        // The client keeps its request stream open, as the backend does.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(first).await.expect("send");
        let mut stream = client
            .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        assert!(stream.message().await.expect("frame").is_some());
        bridge.sigterm();
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => {
                    let trailers = stream.trailers().await.ok().flatten();
                    let reason = trailers.and_then(|t| {
                        t.get("x-bridge-end-reason")
                            .and_then(|v| v.to_str().ok().map(String::from))
                    });
                    drop(tx);
                    return (tonic::Code::Ok, reason);
                }
                Err(s) => {
                    let reason = s.metadata().get("x-bridge-end-reason");
                    return (
                        s.code(),
                        reason.and_then(|v| v.to_str().ok().map(String::from)),
                    );
                }
            }
        }
    });
    assert_eq!(
        (code, reason.as_deref()),
        (tonic::Code::Unavailable, Some("shutdown")),
        "a drained stream ends with an error status, so the backend rejoins elsewhere"
    );
    let (status, took) = bridge.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(3),
        "exited within the 2 s deadline (took {took:?})"
    );
    assert!(!socket.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// With BRIDGE_AUTH_TOKEN, every RPC (health and reflection included) needs the token: the
/// backend's Node client and stock Python grpcio carrying it pass every check, and are refused
/// UNAUTHENTICATED without it or with a wrong one. The socket's mode follows its setting.
#[test]
fn with_a_token_every_rpc_needs_it_and_the_stock_clients_carrying_it_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = scratch("token");
    let socket = dir.join("bridge.sock");
    let token = "s3cret-t0ken";
    let bridge = Launch::on_socket(&socket)
        .env("BRIDGE_AUTH_TOKEN", token)
        .env("LIVEKIT_GRPC_SOCKET_MODE", "0660")
        .start();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    for (program, script, target) in [
        (
            "node".to_string(),
            root.join("tests/node/stock_client.mjs"),
            format!("unix://{}", socket.display()),
        ),
        (
            root.join("vendor/e2e-venv/bin/python")
                .display()
                .to_string(),
            root.join("tests/python/stock_client.py"),
            socket.display().to_string(),
        ),
    ] {
        let out = Command::new(&program)
            .arg(script)
            .arg(target)
            .env("BRIDGE_AUTH_TOKEN", token)
            .output()
            .expect("run the client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{program}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("UNAUTHENTICATED without the token"),
            "{stdout}"
        );
    }
    bridge.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// With BRIDGE_TLS_CERT and BRIDGE_TLS_KEY, the TCP listener speaks TLS: the backend's Node
/// client trusting the CA (and carrying the token) passes every check; a plaintext client
/// cannot talk to it. Half a pair, or a file that is not PEM, exits 64 naming the setting.
#[test]
fn tls_on_tcp_serves_the_backends_client_and_refuses_plaintext() {
    let (ca, cert, key) = files::test_pki();
    let bridge = Launch::on_tcp()
        .env("BRIDGE_TLS_CERT", &cert)
        .env("BRIDGE_TLS_KEY", &key)
        .env("BRIDGE_AUTH_TOKEN", "tls-and-token")
        .start();
    let addr = bridge.tcp();
    let node = |ca: Option<&Path>| {
        let mut c = Command::new("node");
        c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/stock_client.mjs"))
            .arg(&addr)
            .env("BRIDGE_AUTH_TOKEN", "tls-and-token");
        if let Some(ca) = ca {
            c.env("BRIDGE_CA_FILE", ca);
        }
        c.output().expect("node")
    };
    let tls = node(Some(&ca));
    assert!(
        tls.status.success(),
        "{}{}",
        String::from_utf8_lossy(&tls.stdout),
        String::from_utf8_lossy(&tls.stderr)
    );
    assert!(
        !node(None).status.success(),
        "a plaintext client was served"
    );
    bridge.stop();

    let toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    for (env, key) in [
        (vec![("BRIDGE_TLS_CERT", cert.as_path())], "BRIDGE_TLS_KEY"),
        (
            vec![
                ("BRIDGE_TLS_CERT", toml.as_path()),
                ("BRIDGE_TLS_KEY", key.as_path()),
            ],
            "BRIDGE_TLS_CERT",
        ),
        (
            vec![
                ("BRIDGE_TLS_CERT", cert.as_path()),
                ("BRIDGE_TLS_KEY", toml.as_path()),
            ],
            "BRIDGE_TLS_KEY",
        ),
    ] {
        let out = Command::new(BIN)
            .env_clear()
            .envs(env)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(64));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
}

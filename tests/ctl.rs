//! `livekit-bridge ctl`, the operator's client, against the release binary on a Unix socket
//! with a token: every subcommand, the WAV `record` writes (heard back at the room's 440 Hz,
//! as long as asked), `play` with its progress, and the exit statuses (0 done, 1 the bridge
//! said no, 2 unreachable).

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::process::{BridgeProcess, Launch, ctl, ok, scratch};

const TOKEN: &str = "ctl-token";

fn start(dir: &Path) -> (BridgeProcess, PathBuf) {
    let socket = dir.join("bridge.sock");
    let bridge = Launch::on_socket(&socket)
        .env("BRIDGE_AUTH_TOKEN", TOKEN)
        .env("PLAYBACK_ALLOW_NETS", "127.0.0.0/8")
        .start();
    (bridge, socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_against_a_running_bridge() {
    let dir = scratch("ctl");
    let (mut bridge, socket) = start(&dir);
    let t = Some(TOKEN);

    assert!(ok(&ctl(&socket, t, &["health"])).starts_with("SERVING"));
    let denied = ctl(&socket, None, &["health"]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Unauthenticated"));

    let joined = ok(&ctl(&socket, t, &["join", "op", "sim://tone?hz=440", "x"]));
    assert!(joined.contains("op joined"), "{joined}");
    let status = ok(&ctl(&socket, t, &["status", "op"]));
    assert!(status.contains("op: connected (connected)"), "{status}");

    let http = common::http::HttpServer::start().await;
    let tone = common::files::sine("ctl.wav", 16_000, 1, 0.5, &["-b", "16"]);
    http.route(
        "/tone.wav",
        common::http::Route::File {
            body: tone,
            content_type: "audio/wav".into(),
        },
    );
    let played = ok(&ctl(&socket, t, &["play", "op", &http.url("/tone.wav")]));
    assert!(
        played.contains("started") && played.contains("completed: 500 ms"),
        "{played}"
    );
    let failed = ctl(&socket, t, &["play", "op", &http.url("/missing.wav")]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("404"));
    ok(&ctl(&socket, t, &["stop", "op"]));

    let wav = dir.join("op.wav");
    let wav_arg = wav.to_str().expect("path");
    let recorded = ok(&ctl(
        &socket,
        t,
        &["record", "op", "--seconds", "1.5", "--out", wav_arg],
    ));
    assert!(recorded.contains("recorded 1.50 s of op"), "{recorded}");
    let mut reader = hound::WavReader::open(&wav).expect("a valid WAV");
    let spec = reader.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (16_000, 1, 16)
    );
    let samples: Vec<i16> = reader
        .samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect();
    assert_eq!(samples.len(), 24_000, "1.5 s at 16 kHz");
    let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let hz = common::zero_crossing_hz(&pcm);
    assert!((hz - 440.0).abs() < 5.0, "recorded {hz:.1} Hz");

    // Recording takes the session's stream over, and its end closes the session (the
    // contract: a stream's client going away closes its session).
    let after = ctl(&socket, t, &["status", "op"]);
    assert_eq!(after.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&after.stdout).contains("op: not connected"));
    ok(&ctl(&socket, t, &["join", "op", "sim://tone?hz=440", "x"]));
    assert!(ok(&ctl(&socket, t, &["leave", "op"])).contains("op left"));
    let gone = ctl(&socket, t, &["status", "op"]);
    assert_eq!(
        gone.status.code(),
        Some(1),
        "a session that left is not connected"
    );

    let (status, _) = bridge.stop_within(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let unreachable = ctl(&socket, t, &["health"]);
    assert_eq!(unreachable.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

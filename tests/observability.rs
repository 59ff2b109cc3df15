//! What operators run a fleet with, against the release binary: Prometheus metrics checked by
//! `promtool` and scraped by a real Prometheus server (Debian's `prometheus`), the probes,
//! admission control (refusals seen by the backend's own Node client) and idle reaping.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::process::{BridgeProcess, Launch, free_port};
use common::{Client, join, join_ok, open, status};
use livekit_bridge::proto;
use livekit_bridge::proto::live_kit_bridge_client::LiveKitBridgeClient;

/// The release binary on TCP, with its HTTP listener.
struct Proc {
    bridge: BridgeProcess,
    grpc: String,
    http: String,
}

impl Proc {
    fn start(env: &[(&str, &str)]) -> Self {
        let bridge = Launch::on_tcp().with_http().envs(env).start();
        let http = format!("http://{}", bridge.http.expect("an HTTP listener"));
        Self {
            grpc: format!("http://{}", bridge.tcp()),
            http,
            bridge,
        }
    }

    async fn client(&self) -> Client {
        LiveKitBridgeClient::connect(self.grpc.clone())
            .await
            .expect("connect")
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("{}{path}", self.http))
            .await
            .expect("HTTP GET");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    fn stop(self) {
        self.bridge.stop();
    }
}

/// The value of one exposition line (`name{labels} value`).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not in the exposition"))
        .trim()
        .parse()
        .expect("a number")
}

fn promtool_check(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/setup installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus server scraping `target` every second.
struct Prometheus {
    child: Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("bridge-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
                 - job_name: bridge\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus package; scripts/setup installs it)");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// The instant vector `query` returns, as (labels, value) pairs, once it is not empty.
    async fn query(&self, query: &str) -> Vec<(String, f64)> {
        let start = Instant::now();
        loop {
            let r = reqwest::Client::new()
                .get(format!("{}/api/v1/query", self.url))
                .query(&[("query", query)])
                .send()
                .await;
            if let Ok(r) = r
                && let Ok(text) = r.text().await
                && let Some(found) = parse_vector(&text)
                && !found.is_empty()
            {
                return found;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "Prometheus never returned {query}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The (metric labels, value) pairs of a query API answer (an instant vector).
fn parse_vector(text: &str) -> Option<Vec<(String, f64)>> {
    let answer: serde_json::Value = serde_json::from_str(text).ok()?;
    if answer["status"] != "success" {
        return None;
    }
    answer["data"]["result"]
        .as_array()?
        .iter()
        .map(|r| {
            let value = r["value"][1].as_str()?.parse().ok()?;
            Some((r["metric"].to_string(), value))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Prometheus and promtool (scripts/setup); scripts/test runs it"]
async fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them_after_traffic() {
    let bridge = Proc::start(&[("PLAYBACK_ALLOW_NETS", "127.0.0.0/8")]);
    let mut client = bridge.client().await;
    let http = common::http::HttpServer::start().await;
    let wav = common::files::sine("metrics.wav", 16_000, 1, 0.3, &["-b", "16"]);
    let wav_len = wav.len();
    http.route(
        "/a.wav",
        common::http::Route::File {
            body: wav,
            content_type: "audio/wav".into(),
        },
    );
    join_ok(&mut client, "m0", "sim://silent").await;
    let played = common::play::outcome(&mut client, "m0", "p1", &http.url("/a.wav")).await;
    assert_eq!(played, None, "the playback completes");
    let missing = common::play::outcome(&mut client, "m0", "p2", &http.url("/none.wav")).await;
    assert!(missing.is_some_and(|e| e.contains("404")));
    join_ok(&mut client, "m1", "sim://tone?hz=440").await;
    join_ok(&mut client, "m2", "sim://echo").await;
    let mut tone = open(&mut client, "m1").await;
    for _ in 0..50 {
        tone.frame().await;
    }
    let echo = open(&mut client, "m2").await;
    for _ in 0..5 {
        echo.send(proto::AudioChunk {
            user_id: "m2".into(),
            pcm_data: vec![0; 320],
            sample_rate: 16000,
            channels: 1,
            ..Default::default()
        })
        .await;
    }
    // Publishing runs on the stream's own task: wait until the five chunks are in the room
    // before leaving, or the leave can close the session with some still on their way.
    let start = Instant::now();
    while value(
        &bridge.get("/metrics").await.1,
        "livekit_bridge_client_chunks_published_total",
    ) < 5.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "chunks never published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    common::leave(&mut client, "m2").await;
    let refused = join(&mut client, "bad", "ws://127.0.0.1:1").await;
    assert!(!refused.success);

    let (code, text) = bridge.get("/metrics").await;
    assert_eq!(code, 200);
    promtool_check(&text);
    assert_eq!(
        value(&text, "livekit_bridge_joins_total{result=\"ok\"}"),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "livekit_bridge_playbacks_total{outcome=\"completed\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "livekit_bridge_playback_failures_total{kind=\"http_status\"}"
        ),
        1.0
    );
    assert!(value(&text, "livekit_bridge_playback_fetched_bytes_total") >= wav_len as f64);
    assert!(value(&text, "livekit_bridge_decode_cpu_seconds_total") >= 0.0);
    assert_eq!(
        value(
            &text,
            "livekit_bridge_sessions_ended_total{reason=\"left\"}"
        ),
        1.0
    );
    assert!(value(&text, "livekit_bridge_frames_total{outcome=\"delivered\"}") >= 50.0);
    assert!(value(&text, "livekit_bridge_frames_total{outcome=\"received\"}") >= 50.0);
    assert!(value(&text, "livekit_bridge_frame_delivery_delay_seconds_count") >= 50.0);
    assert_eq!(
        value(&text, "livekit_bridge_client_chunks_published_total"),
        5.0
    );
    assert_eq!(
        value(&text, "livekit_bridge_sessions{state=\"connected\"}"),
        2.0
    );
    assert!(value(&text, "process_resident_memory_bytes") > 1e6);
    assert!(value(&text, "process_open_fds") > 0.0);
    assert!(
        !text.contains("\"m0\"") && !text.contains("\"m1\"") && !text.contains("user_id"),
        "no user ids in labels"
    );

    let prometheus = Prometheus::start(bridge.http.trim_start_matches("http://"));
    let up = prometheus.query("up{job=\"bridge\"} == 1").await;
    assert_eq!(up.len(), 1, "{up:?}");
    let delivered = prometheus
        .query("livekit_bridge_frames_total{outcome=\"delivered\"}")
        .await;
    assert!(delivered[0].1 >= 50.0, "{delivered:?}");
    let joins = prometheus.query("sum(livekit_bridge_joins_total)").await;
    assert!(joins[0].1 >= 3.0, "{joins:?}");
    let failed = prometheus
        .query("livekit_bridge_joins_total{result=\"connect_failed\"}")
        .await;
    assert_eq!(failed[0].1, 1.0, "{failed:?}");
    drop(tone);
    drop(echo);
    bridge.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_admission_follow_capacity_and_the_library() {
    let bridge = Proc::start(&[("BRIDGE_MAX_SESSIONS", "2")]);
    assert_eq!(bridge.get("/livez").await.0, 200);
    let (code, body) = bridge.get("/readyz").await;
    assert_eq!(
        (code, body.as_str()),
        (200, "ready\n"),
        "the library is in vendor/"
    );
    let (code, body) = bridge.get("/availability").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("2 left"), "{body}");

    let mut client = bridge.client().await;
    join_ok(&mut client, "a1", "sim://silent").await;
    join_ok(&mut client, "a2", "sim://silent").await;
    let (code, body) = bridge.get("/availability").await;
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("BRIDGE_MAX_SESSIONS"), "{body}");
    // The backend's own client sees the refusal as the contract's answer.
    let node = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/capacity_client.mjs"))
        .arg(bridge.grpc.trim_start_matches("http://"))
        .output()
        .expect("node");
    assert!(
        node.status.success(),
        "{}{}",
        String::from_utf8_lossy(&node.stdout),
        String::from_utf8_lossy(&node.stderr)
    );
    // A JoinRoom replacing a live session is not one more: admitted.
    join_ok(&mut client, "a1", "sim://silent").await;
    let health = client
        .health_check(proto::HealthCheckRequest::default())
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.metadata["capacity_sessions_left"], "0");
    let (_, text) = bridge.get("/metrics").await;
    assert_eq!(
        value(
            &text,
            "livekit_bridge_joins_total{result=\"refused_capacity\"}"
        ),
        1.0
    );
    assert_eq!(value(&text, "livekit_bridge_capacity_sessions_left"), 0.0);
    common::leave(&mut client, "a2").await;
    assert_eq!(bridge.get("/availability").await.0, 200);
    bridge.stop();

    let missing = Proc::start(&[("LIVEKIT_FFI_LIB", "/nonexistent/liblivekit_ffi.so")]);
    let (code, body) = missing.get("/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("LIVEKIT_FFI_LIB"), "{body}");
    missing.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_a_stream_is_reaped_as_idle_and_one_with_a_stream_is_not() {
    let bridge = Proc::start(&[("BRIDGE_IDLE_S", "1")]);
    let mut client = bridge.client().await;
    join_ok(&mut client, "forgotten", "sim://silent").await;
    join_ok(&mut client, "listening", "sim://tone").await;
    let mut stream = open(&mut client, "listening").await;
    let start = Instant::now();
    while status(&mut client, "forgotten").await.connected {
        assert!(start.elapsed() < Duration::from_secs(5), "never reaped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reaped = status(&mut client, "forgotten").await;
    assert!(
        reaped
            .last_disconnect_reason
            .contains("no StreamAudio for 1 s"),
        "{}",
        reaped.last_disconnect_reason
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stream.frame().await;
    assert!(
        status(&mut client, "listening").await.connected,
        "a session with a stream attached was reaped"
    );
    // A bad chunk ends the stream and keeps the session: now it is idle, and reaped.
    stream
        .send(proto::AudioChunk {
            user_id: "listening".into(),
            pcm_data: vec![0; 3],
            sample_rate: 8000,
            ..Default::default()
        })
        .await;
    let (code, _, _) = stream.end().await;
    assert_eq!(code, tonic::Code::InvalidArgument);
    let start = Instant::now();
    while status(&mut client, "listening").await.connected {
        assert!(start.elapsed() < Duration::from_secs(5), "never reaped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, text) = bridge.get("/metrics").await;
    assert_eq!(
        value(
            &text,
            "livekit_bridge_sessions_ended_total{reason=\"idle\"}"
        ),
        2.0
    );
    bridge.stop();
}

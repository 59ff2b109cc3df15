//! The whole path, from a room callback to the bytes a gRPC client reads, over a Unix socket:
//! a simulated room at full speed (`sim://tone?pace=max`) pushes 10 ms frames from its own
//! thread; the bridge's ring, writer task, tonic and HTTP/2 carry them to a tonic client.
//!
//! - criterion `pipeline/frames`: time per frame delivered to the client (throughput);
//! - printed after it: frames per second, per CPU-second of the whole process (bridge, room
//!   threads and client together), and round-trip latency percentiles through an echo room
//!   (client → StreamAudio → room track → room callback → ring → client).
//!
//! Run: `cargo bench --bench pipeline`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client::{Client, Stream};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use livekit_bridge::proto::AudioChunk;
use livekit_bridge::proto::live_kit_bridge_client::LiveKitBridgeClient;
use livekit_bridge::server;
use livekit_bridge::service::{BridgeState, ServiceSettings};
use tokio::runtime::Runtime;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::Streaming;

#[path = "../tests/common/mod.rs"]
mod common;

use common::{client, procfs, unix};

struct Bridge {
    socket: PathBuf,
    _state: Arc<BridgeState>,
}

async fn start(socket: PathBuf) -> Bridge {
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    let state = BridgeState::new(ServiceSettings::default()).expect("default settings");
    tokio::spawn(server::run(
        state.clone(),
        UnixListenerStream::new(listener),
        std::future::pending(),
        Duration::from_secs(1),
    ));
    Bridge {
        socket,
        _state: state,
    }
}

async fn connect(socket: PathBuf) -> Client {
    LiveKitBridgeClient::new(unix::unix_channel(&socket).await)
}

/// Joins `url` as `user` and opens its stream.
async fn stream(c: &mut Client, user: &str, url: &str) -> Stream {
    client::join_ok(c, user, url).await;
    client::open(c, user).await
}

async fn read_frames(s: &mut Streaming<AudioChunk>, n: u64) {
    for _ in 0..n {
        let f = s.message().await.expect("status").expect("frame");
        assert_eq!(f.pcm_data.len(), 320);
    }
}

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    procfs::usage("self").1
}

fn pipeline(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let socket =
        std::env::temp_dir().join(format!("livekit-bridge-bench-{}.sock", std::process::id()));
    let bridge = rt.block_on(start(socket.clone()));
    let mut client = rt.block_on(connect(bridge.socket.clone()));
    let Stream {
        tx: _tx,
        rx: mut frames,
    } = rt.block_on(stream(&mut client, "bench", "sim://tone?pace=max"));
    rt.block_on(read_frames(&mut frames, 100)); // works before it is timed

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    group.bench_function("frames", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                read_frames(&mut frames, iters).await;
                start.elapsed()
            })
        })
    });
    group.finish();

    // Under `cargo test --benches` this is a smoke run; `cargo bench` passes `--bench`.
    let measuring = std::env::args().any(|a| a == "--bench");
    let (n, echoes) = if measuring {
        (200_000, 2000)
    } else {
        (2_000, 50)
    };
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    rt.block_on(read_frames(&mut frames, n));
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    println!(
        "pipeline: {n} frames in {wall:.2} s = {:.0} frames/s using {:.2} cores = {:.0} frames per CPU-second",
        n as f64 / wall,
        cpu / wall,
        n as f64 / cpu.max(1e-9)
    );

    let latencies = rt.block_on(echo_round_trips(&mut client, echoes));
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "echo round trip over {} chunks: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    let _ = std::fs::remove_file(&socket);
}

/// Sends 10 ms chunks one at a time through an echo room and times each until it comes back.
async fn echo_round_trips(c: &mut Client, n: usize) -> Vec<Duration> {
    let Stream { tx, rx: mut s } = stream(c, "echo", "sim://echo").await;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let pcm: Vec<u8> = (0..320).map(|j| (i + j) as u8).collect();
        let start = Instant::now();
        tx.send(AudioChunk {
            pcm_data: pcm.clone(),
            ..Default::default()
        })
        .await
        .expect("send");
        let back = s.message().await.expect("status").expect("echo");
        assert_eq!(back.pcm_data, pcm);
        out.push(start.elapsed());
    }
    out.sort();
    out
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = pipeline
}
criterion_main!(benches);

//! The whole path, from a room callback to the bytes a gRPC client reads, over a Unix socket:
//! a simulated room at full speed (`sim://tone?pace=max`) pushes 10 ms frames from its own
//! thread; the bridge's ring, writer task, tonic and HTTP/2 carry them to a tonic client. Run
//! twice in one go: with the room in the bridge's process (`in_process`), and in a room worker
//! (`via_worker`, `BRIDGE_SIM_ROOMS=workers`), where the ring is in memory the two processes
//! share and the consumer is woken across the boundary (the worker's doorbell, an eventfd).
//!
//! - criterion `pipeline/<where>`: time per frame delivered to the client (throughput);
//! - printed after each: frames per second, per CPU-second of the whole bridge (its process,
//!   which holds the client too, and its room worker), and round-trip latency percentiles
//!   through an echo room (client → StreamAudio → room track → room callback → ring → client;
//!   via a worker, the audio into the room crosses the control socket);
//! - then 10 and 200 sessions of 10 ms frames paced in real time, as rooms send: CPU per frame
//!   when frames find the writer asleep (woken across the boundary, via a worker), the two
//!   bridges taking three turns each, and the median of each's turns;
//! - last: CPU per frame via the worker against in process, each way measured.
//!
//! Run: `cargo bench --bench pipeline`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client::{Client, Stream};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use livekit_bridge::proto::AudioChunk;
use livekit_bridge::proto::live_kit_bridge_client::LiveKitBridgeClient;
use livekit_bridge::room::SimRooms;
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

async fn start(socket: PathBuf, sim_rooms: SimRooms) -> Bridge {
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    let state = BridgeState::new(ServiceSettings {
        sim_rooms,
        room_workers: 1,
        room_worker_exe: Some(env!("CARGO_BIN_EXE_livekit-bridge").into()),
        ..ServiceSettings::default()
    })
    .expect("settings");
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

/// CPU seconds this process and its room workers have used (user + system).
fn cpu_seconds() -> f64 {
    procfs::usage(&std::process::id().to_string()).1
}

fn pipeline(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    // Under `cargo test --benches` this is a smoke run; `cargo bench` passes `--bench`.
    let measuring = std::env::args().any(|a| a == "--bench");
    let (mut per_frame, mut echo_per_chunk, mut bridges) = (Vec::new(), Vec::new(), Vec::new());
    for (name, sim_rooms) in [
        ("in_process", SimRooms::Front),
        ("via_worker", SimRooms::Workers),
    ] {
        let socket = std::env::temp_dir().join(format!(
            "livekit-bridge-bench-{}-{name}.sock",
            std::process::id()
        ));
        let bridge = rt.block_on(start(socket.clone(), sim_rooms));
        let mut client = rt.block_on(connect(bridge.socket.clone()));
        let Stream {
            tx: _tx,
            rx: mut frames,
        } = rt.block_on(stream(&mut client, "bench", "sim://tone?pace=max"));
        rt.block_on(read_frames(&mut frames, 100)); // works before it is timed

        let mut group = c.benchmark_group("pipeline");
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    read_frames(&mut frames, iters).await;
                    start.elapsed()
                })
            })
        });
        group.finish();

        let (n, echoes) = if measuring {
            (1_000_000, 5000)
        } else {
            (2_000, 50)
        };
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        rt.block_on(read_frames(&mut frames, n));
        let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
        println!(
            "pipeline {name}: {n} frames in {wall:.2} s = {:.0} frames/s using {:.2} cores = {:.0} frames per CPU-second ({:.2} µs of CPU per frame)",
            n as f64 / wall,
            cpu / wall,
            n as f64 / cpu.max(1e-9),
            cpu / n as f64 * 1e6
        );
        per_frame.push(cpu / n as f64);
        // The full-speed room leaves, so it costs nothing while the next one is measured.
        rt.block_on(client::leave(&mut client, "bench"));
        drop(frames);

        let cpu0 = cpu_seconds();
        let latencies = rt.block_on(echo_round_trips(&mut client, echoes));
        let echo_cpu = (cpu_seconds() - cpu0) / echoes as f64;
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        println!(
            "echo round trip {name} over {} chunks: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}; {:.1} µs of CPU per chunk there and back",
            latencies.len(),
            pct(0.50),
            pct(0.90),
            pct(0.99),
            pct(1.0),
            echo_cpu * 1e6
        );
        echo_per_chunk.push(echo_cpu);
        rt.block_on(client::leave(&mut client, "echo"));

        bridges.push((name, bridge, client, socket));
    }
    // Paced rooms cost little per second, so the machine's drift between two measurements
    // shows: the two bridges take turns, and each figure is the median of its turns.
    let (levels, seconds, turns) = if measuring {
        (PACED, 5.0, 3)
    } else {
        ([2, 4], 0.5, 1)
    };
    let mut paced_per_frame = Vec::new();
    for rooms in levels {
        let mut turns_of: Vec<Vec<f64>> = vec![Vec::new(); bridges.len()];
        for _ in 0..turns {
            for ((name, _, client, _), figures) in bridges.iter().zip(&mut turns_of) {
                let cpu = rt.block_on(paced(client, rooms, seconds));
                println!(
                    "paced {name}: {rooms} rooms of 10 ms frames in real time: {:.2} µs of CPU per frame",
                    cpu * 1e6
                );
                figures.push(cpu);
            }
        }
        paced_per_frame.push((rooms, turns_of.into_iter().map(median).collect::<Vec<_>>()));
    }
    let mut ratios = vec![
        ("at full speed".to_string(), per_frame),
        (
            "echoed (into the room and back)".to_string(),
            echo_per_chunk,
        ),
    ];
    for (rooms, medians) in paced_per_frame {
        ratios.push((format!("{rooms} paced rooms, medians"), medians));
    }
    for (what, figures) in ratios {
        if let [in_process, via_worker] = figures[..] {
            println!(
                "CPU per frame via a room worker, {what}: {:.2} against {:.2} µs = {:.2}x in process",
                via_worker * 1e6,
                in_process * 1e6,
                via_worker / in_process.max(1e-12)
            );
        }
    }
    for (_, _, _, socket) in bridges {
        let _ = std::fs::remove_file(&socket);
    }
}

fn median(mut of: Vec<f64>) -> f64 {
    of.sort_by(f64::total_cmp);
    of.get(of.len() / 2).copied().unwrap_or(0.0)
}

/// Sessions of paced rooms measured at once: few (every frame finds the writer asleep, and
/// the doorbell idle) and many (frames of different rooms every few microseconds).
const PACED: [usize; 2] = [10, 200];

/// `rooms` sessions of `sim://tone` (10 ms frames in real time, so the writer sleeps between
/// frames and every frame wakes it), read by the client for `seconds`: CPU seconds per frame.
async fn paced(c: &Client, rooms: usize, seconds: f64) -> f64 {
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut readers = Vec::new();
    for i in 0..rooms {
        let mut c = c.clone();
        let user = format!("paced-{i}");
        let mut s = stream(&mut c, &user, "sim://tone").await;
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(Some(_)) = s.rx.message().await {
                received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu0, n0) = (
        cpu_seconds(),
        received.load(std::sync::atomic::Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let (cpu, n) = (
        cpu_seconds() - cpu0,
        received.load(std::sync::atomic::Ordering::Relaxed) - n0,
    );
    let mut c = c.clone();
    for i in 0..rooms {
        client::leave(&mut c, &format!("paced-{i}")).await;
    }
    for r in readers {
        let _ = r.await;
    }
    cpu / n.max(1) as f64
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

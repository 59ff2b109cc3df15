//! Load generator: many users at once against the release binary, as an operator would size it.
//!
//! Starts `livekit-bridge` on a Unix socket, joins `LOADGEN_USERS` users (default 1000) to
//! simulated rooms playing a real-time tone (100 packets a second each, as a phone does), streams
//! every user's audio for `LOADGEN_SECONDS` (default 10), then leaves them all. It reports frames
//! delivered against frames expected, the delay from a packet's arrival in the bridge to its
//! receipt by the client (ms resolution, from `timestamp_ms`: a figure of n ms means between n-1
//! and n+1), and the bridge process's memory and CPU, read from /proc, before, during and after
//! the load. The simulated rooms run on the bridge's shared pacer threads (`src/room/sim/`), so
//! the CPU and thread figures are the bridge's plus a pacer's work per packet, as with LiveKit's
//! library.
//!
//! Run: `cargo bench --bench loadgen` (or `LOADGEN_USERS=2000 cargo bench --bench loadgen`).
//! Under `cargo test` it is a smoke run with 20 users for 1 s.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use client::{Client, Stream};
use livekit_bridge::proto::live_kit_bridge_client::LiveKitBridgeClient;
use livekit_bridge::session::unix_ms;

#[path = "../tests/common/client.rs"]
mod client;
#[path = "../tests/common/procfs.rs"]
mod procfs;
#[path = "../tests/common/unix.rs"]
mod unix;

use procfs::threads;

fn usage(pid: u32) -> (u64, f64) {
    procfs::usage(&pid.to_string())
}

/// Users per HTTP/2 connection.
const USERS_PER_CONNECTION: usize = 10;

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start_bridge(socket: &Path) -> Child {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(env!("CARGO_BIN_EXE_livekit-bridge"))
        .env("LIVEKIT_GRPC_SOCKET", socket)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the bridge");
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the bridge did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

async fn connect(socket: &Path) -> Client {
    LiveKitBridgeClient::new(unix::unix_channel(socket).await)
}

/// Delays in whole milliseconds, 0..=999 and a bucket for anything longer.
struct Histogram(Vec<AtomicU64>);

impl Histogram {
    fn new() -> Self {
        Self((0..1001).map(|_| AtomicU64::new(0)).collect())
    }
    fn record(&self, ms: i64) {
        let i = ms.clamp(0, 1000) as usize;
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }
    fn percentile(&self, p: f64) -> String {
        let counts: Vec<u64> = self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let target = (total as f64 * p).ceil() as u64;
        let mut seen = 0;
        for (ms, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= target.max(1) {
                return if ms == 1000 {
                    ">=1000 ms".into()
                } else {
                    format!("{ms} ms")
                };
            }
        }
        "n/a".into()
    }
}

async fn user(
    mut client: Client,
    name: String,
    until: Instant,
    frames: Arc<AtomicU64>,
    delays: Arc<Histogram>,
) {
    // Other data (chatter) once a second: the bridge filters it, and a real room sends little.
    client::join_ok(&mut client, &name, "sim://tone?hz=440&chatter_ms=1000").await;
    let Stream { tx, rx: mut stream } = client::open(&mut client, &name).await;
    while Instant::now() < until {
        match tokio::time::timeout_at(until.into(), stream.message()).await {
            Ok(Ok(Some(chunk))) => {
                frames.fetch_add(1, Ordering::Relaxed);
                delays.record(unix_ms() - chunk.timestamp_ms);
            }
            Ok(other) => panic!("{name}: stream ended: {other:?}"),
            Err(_) => break,
        }
    }
    assert!(client::leave(&mut client, &name).await.success);
    drop(tx);
}

/// One round of load against the bridge `pid`; prints its figures.
fn round(
    rt: &tokio::runtime::Runtime,
    socket: &Path,
    pid: u32,
    users: usize,
    seconds: u64,
    round: usize,
) {
    let (rss_idle, _) = usage(pid);
    let threads_idle = threads(&pid.to_string());
    let frames = Arc::new(AtomicU64::new(0));
    let delays = Arc::new(Histogram::new());
    let ramp = Duration::from_secs(2);
    let (loaded, cpu_used, wall) = rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..users.div_ceil(USERS_PER_CONNECTION) {
            clients.push(connect(socket).await);
        }
        let until = Instant::now() + ramp + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..users)
            .map(|u| {
                let client = clients[u / USERS_PER_CONNECTION].clone();
                let name = format!("load-{round}-{u}");
                tokio::spawn(user(client, name, until, frames.clone(), delays.clone()))
            })
            .collect();
        tokio::time::sleep(ramp).await;
        let (rss, cpu0) = usage(pid);
        let (_, own0) = procfs::usage("self");
        let (f0, t0) = (frames.load(Ordering::Relaxed), Instant::now());
        let threads_loaded = threads(&pid.to_string());
        for t in tasks {
            t.await.expect("user task");
        }
        let (_, cpu1) = usage(pid);
        let (_, own1) = procfs::usage("self");
        let wall = t0.elapsed().as_secs_f64();
        let delivered = frames.load(Ordering::Relaxed) - f0;
        (
            (rss, threads_loaded, delivered, own1 - own0),
            cpu1 - cpu0,
            wall,
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let (rss_after, _) = usage(pid);
    let threads_after = threads(&pid.to_string());
    let (rss_loaded, threads_loaded, delivered, client_cpu) = loaded;
    let expected = users as f64 * 100.0 * wall;
    println!(
        "loadgen round {round}: {users} users, 100 frames/s each, {wall:.1} s measured after a {ramp:?} ramp"
    );
    println!(
        "  frames delivered {delivered} of about {expected:.0} sent ({:.1} %)",
        delivered as f64 / expected * 100.0
    );
    println!(
        "  delay from arrival in the bridge to the client: p50 {}, p99 {}, p99.9 {}",
        delays.percentile(0.5),
        delays.percentile(0.99),
        delays.percentile(0.999)
    );
    println!(
        "  bridge CPU: {:.2} cores ({:.2} cores per 1000 users; simulated rooms included)",
        cpu_used / wall,
        cpu_used / wall / users as f64 * 1000.0
    );
    println!(
        "  client CPU: {:.2} cores (this process, on the same cores; bridge and client together {:.2} of {} cores)",
        client_cpu / wall,
        (cpu_used + client_cpu) / wall,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  bridge CPU per frame delivered: {:.2} µs (everything the process did, divided by frames)",
        cpu_used / delivered.max(1) as f64 * 1e6
    );
    println!(
        "  bridge RSS: before {rss_idle} KiB, loaded {rss_loaded} KiB ({:.1} KiB per session), after leave {rss_after} KiB",
        (rss_loaded.saturating_sub(rss_idle)) as f64 / users as f64
    );
    println!(
        "  bridge threads: before {threads_idle}, loaded {threads_loaded}, after leave {threads_after}"
    );
    assert!(delivered > 0, "no audio was delivered");
    // The first room starts the simulated rooms' pacer pool (2 to 4 threads), which stays.
    assert!(
        threads_after <= threads_idle + 4,
        "rooms left threads behind: {threads_idle} before, {threads_after} after leave"
    );
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let (users, seconds, rounds) = if measuring {
        (
            env_or("LOADGEN_USERS", 1000),
            env_or("LOADGEN_SECONDS", 10),
            env_or("LOADGEN_ROUNDS", 2),
        )
    } else {
        (20, 1, 2)
    };
    let socket = std::env::temp_dir().join(format!(
        "livekit-bridge-loadgen-{}.sock",
        std::process::id()
    ));
    let mut bridge = start_bridge(&socket);
    let pid = bridge.id();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for r in 1..=rounds {
        round(&rt, &socket, pid, users, seconds as u64, r);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = bridge.wait();
}

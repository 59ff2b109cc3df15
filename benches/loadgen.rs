//! Load generator: many users at once against the release binary, as an operator would size it.
//!
//! Starts `livekit-bridge` on a Unix socket, joins `LOADGEN_USERS` users (default 1000) to
//! simulated rooms playing a real-time tone (100 packets a second each, as a phone does), streams
//! every user's audio for `LOADGEN_SECONDS` (default 10), then leaves them all. It reports frames
//! delivered against frames expected, the delay from a packet's arrival in the bridge to its
//! receipt by the client (ms resolution, from `timestamp_ms`: a figure of n ms means between n-1
//! and n+1), and the bridge process's memory, threads and CPU (in all and by thread name), read
//! from /proc, before, during and after the load. The simulated rooms run on the bridge's shared
//! pacer threads (`src/room/sim/`), so the CPU and thread figures are the bridge's plus a pacer's
//! work per packet, as with LiveKit's library.
//!
//! With `LOADGEN_LIVEKIT_URL` the rooms are a LiveKit server's instead: user u joins room
//! `density-<u>` with line u of `LOADGEN_TOKENS` and targets `phone-<u>` (the density benchmark,
//! `tests/e2e/density.py`, which runs the server and the phones). `LOADGEN_SPEAK` is what the
//! backend sends into each room (`silent`, `once`, `some`, `always`: see [`Speak`]),
//! `LOADGEN_EXPECT_FPS` the frames a second each room should deliver (100; 0 for silent
//! phones), `LOADGEN_SETTLE_MS` how long after the last stream opened the measurement starts
//! (2 s; 4 s with `once`, whose answer then has ended), and `LOADGEN_WATCH` (`name=pid,...`) other processes whose CPU is reported over the
//! same window. The figures are printed, then repeated as `RESULT key=value` lines.
//!
//! Run: `cargo bench --bench loadgen` (or `LOADGEN_USERS=2000 cargo bench --bench loadgen`).
//! Under `cargo test` it is a smoke run with 20 users for 1 s.

use std::path::Path;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::client::{Client, Stream};
use livekit_bridge::proto::live_kit_bridge_client::LiveKitBridgeClient;
use livekit_bridge::session::unix_ms;

#[path = "../tests/common/mod.rs"]
mod common;

use common::process::Launch;
use common::{client, procfs, unix};

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
    fn clear(&self) {
        for c in &self.0 {
            c.store(0, Ordering::Relaxed);
        }
    }
    /// The delay at percentile `p` in whole ms (1000: a second or more); `None` with no data.
    fn percentile_ms(&self, p: f64) -> Option<u64> {
        let counts: Vec<u64> = self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let target = ((total as f64 * p).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= target {
                return Some(ms as u64);
            }
        }
        None
    }
    fn percentile(&self, p: f64) -> String {
        match self.percentile_ms(p) {
            Some(1000) => ">=1000 ms".into(),
            Some(ms) => format!("{ms} ms"),
            None => "n/a".into(),
        }
    }
}

/// Where each user's room is.
enum Rooms {
    /// A simulated room playing a real-time tone (`sim://tone`), with other data once a second.
    Simulated,
    /// Room `<prefix>-<u>` on a LiveKit server, joined with user u's token, its target
    /// identity `phone-<u>` (the density benchmark's phones, `tests/phones`).
    LiveKit {
        url: String,
        prefix: String,
        tokens: Vec<String>,
    },
}

/// What the backend sends into each room: nothing, a 2 s answer once before the measurement
/// (the published track then idles), a 2 s answer every 10 s, or audio all the time. Sent as
/// PCM on the StreamAudio stream in 100 ms chunks, paced in real time.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Speak {
    Silent,
    Once,
    Some,
    Always,
}

impl Speak {
    fn parse(text: &str) -> Self {
        match text {
            "silent" => Self::Silent,
            "once" => Self::Once,
            "some" => Self::Some,
            "always" => Self::Always,
            other => panic!("LOADGEN_SPEAK must be silent, once, some or always, not {other:?}"),
        }
    }
}

/// One user's session, as the backend holds it.
struct User {
    client: Client,
    name: String,
    join: livekit_bridge::proto::JoinRoomRequest,
    speak: Speak,
}

/// What the users share: their counts, and the signal that ends the run.
struct Shared {
    frames: AtomicU64,
    opened: AtomicU64,
    failed: AtomicU64,
    opened_changed: tokio::sync::Notify,
    delays: Histogram,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// 100 ms of a 440 Hz tone at 16 kHz mono PCM16, at a third of full scale.
fn tone_chunk() -> Vec<u8> {
    (0..1600)
        .flat_map(|n| {
            let phase = 2.0 * std::f64::consts::PI * 440.0 * f64::from(n) / 16_000.0;
            ((phase.sin() * 0.3 * 32767.0) as i16).to_le_bytes()
        })
        .collect()
}

/// Sends 100 ms chunks in real time for `chunks` chunks (`None`: until the run ends).
async fn say(
    tx: &tokio::sync::mpsc::Sender<livekit_bridge::proto::AudioChunk>,
    user: &str,
    chunks: Option<u32>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pcm = tone_chunk();
    let mut sent = 0;
    while chunks.is_none_or(|n| sent < n) {
        tick.tick().await;
        let chunk = livekit_bridge::proto::AudioChunk {
            pcm_data: pcm.clone(),
            sample_rate: 16_000,
            channels: 1,
            user_id: user.to_string(),
            ..Default::default()
        };
        if tx.send(chunk).await.is_err() {
            return;
        }
        sent += 1;
    }
}

async fn speak(
    tx: tokio::sync::mpsc::Sender<livekit_bridge::proto::AudioChunk>,
    user: String,
    speak: Speak,
    offset: Duration,
) {
    match speak {
        Speak::Silent => {}
        Speak::Once => say(&tx, &user, Some(20)).await,
        Speak::Always => say(&tx, &user, None).await,
        Speak::Some => {
            // Spread over the 10 s period, so the rooms do not all speak at once.
            tokio::time::sleep(offset).await;
            loop {
                let next = Instant::now() + Duration::from_secs(10);
                say(&tx, &user, Some(20)).await;
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep_until(next.into()).await;
            }
        }
    }
}

async fn user(mut u: User, shared: Arc<Shared>, offset: Duration) {
    let name = u.name.clone();
    let r = u
        .client
        .join_room(u.join.clone())
        .await
        .expect("JoinRoom status")
        .into_inner();
    if !r.success {
        // Where the machine is saturated, joins time out: counted, and the run goes on with
        // the users who got in.
        eprintln!("loadgen: JoinRoom({name}) failed: {}", r.error);
        shared.failed.fetch_add(1, Ordering::Relaxed);
        shared.opened_changed.notify_one();
        return;
    }
    let Stream { tx, rx: mut stream } = client::open(&mut u.client, &name).await;
    shared.opened.fetch_add(1, Ordering::Relaxed);
    shared.opened_changed.notify_one();
    let speaker = tokio::spawn(speak(tx.clone(), name.clone(), u.speak, offset));
    let mut stop = shared.stop.clone();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            message = stream.message() => match message {
                Ok(Some(chunk)) => {
                    shared.frames.fetch_add(1, Ordering::Relaxed);
                    shared.delays.record(unix_ms() - chunk.timestamp_ms);
                }
                other => panic!("{name}: stream ended: {other:?}"),
            },
        }
    }
    speaker.abort();
    assert!(client::leave(&mut u.client, &name).await.success);
    drop(tx);
}

/// CPU ticks of each of `pid`'s threads, by thread id, with the thread's name.
fn thread_ticks(pid: u32) -> std::collections::HashMap<String, (String, f64)> {
    procfs::thread_cpu(&pid.to_string())
        .into_iter()
        .map(|(tid, name, cpu)| (tid, (name, cpu)))
        .collect()
}

/// The CPU each thread name used between two snapshots: (name, threads, seconds), busiest
/// first.
fn thread_profile(
    before: &std::collections::HashMap<String, (String, f64)>,
    after: &std::collections::HashMap<String, (String, f64)>,
) -> Vec<(String, usize, f64)> {
    let mut by_name: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
    for (tid, (name, cpu)) in after {
        let start = before.get(tid).map_or(0.0, |(_, c)| *c);
        let e = by_name.entry(name.clone()).or_default();
        e.0 += 1;
        e.1 += cpu - start;
    }
    let mut rows: Vec<_> = by_name.into_iter().map(|(n, (t, c))| (n, t, c)).collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    rows
}

/// Other processes whose CPU is reported over the same window (`LOADGEN_WATCH`,
/// `name=pid,...`): the LiveKit server and the phones, so it is clear which filled the cores.
fn watched() -> Vec<(String, String)> {
    std::env::var("LOADGEN_WATCH")
        .unwrap_or_default()
        .split(',')
        .filter_map(|w| w.split_once('='))
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .collect()
}

/// What each round does: where the rooms are, what the backend sends into them, the frames a
/// second each should deliver, how many users, and for how long it is measured.
struct Load {
    rooms: Rooms,
    speak: Speak,
    expect_fps: f64,
    users: usize,
    seconds: u64,
}

/// One round of load against the bridge `pid`; prints its figures.
fn round(rt: &tokio::runtime::Runtime, socket: &Path, pid: u32, load: &Load, round: usize) {
    let Load {
        ref rooms,
        speak,
        expect_fps,
        users,
        seconds,
    } = *load;
    let (rss_idle, _) = usage(pid);
    let threads_idle = threads(&pid.to_string());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        frames: AtomicU64::new(0),
        opened: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        opened_changed: tokio::sync::Notify::new(),
        delays: Histogram::new(),
        stop,
    });
    // Measured once every stream is open and whatever a join or a first answer started has
    // settled.
    let settle = match std::env::var("LOADGEN_SETTLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(ms) => Duration::from_millis(ms),
        None if speak == Speak::Once => Duration::from_secs(4),
        None => Duration::from_secs(2),
    };
    let watch = watched();
    let (loaded, cpu_used, wall, profile, others, join_s) = rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..users.div_ceil(USERS_PER_CONNECTION) {
            clients.push(connect(socket).await);
        }
        let joining = Instant::now();
        let tasks: Vec<_> = (0..users)
            .map(|u| {
                let client = clients[u / USERS_PER_CONNECTION].clone();
                let (name, join) = match rooms {
                    Rooms::Simulated => {
                        let name = format!("load-{round}-{u}");
                        let url = "sim://tone?hz=440&chatter_ms=1000";
                        (name.clone(), client::join_request(&name, url))
                    }
                    Rooms::LiveKit {
                        url,
                        prefix,
                        tokens,
                    } => {
                        let name = format!("user-{u}");
                        let join = livekit_bridge::proto::JoinRoomRequest {
                            user_id: name.clone(),
                            room_name: format!("{prefix}-{u}"),
                            token: tokens[u].clone(),
                            livekit_url: url.clone(),
                            target_identity: format!("phone-{u}"),
                        };
                        (name, join)
                    }
                };
                let offset = Duration::from_millis((u as u64 * 1009) % 10_000);
                let user = User {
                    client,
                    name,
                    join,
                    speak,
                };
                tokio::spawn(self::user(user, shared.clone(), offset))
            })
            .collect();
        let settled =
            || shared.opened.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        let opened = async {
            while settled() < users as u64 {
                shared.opened_changed.notified().await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(300), opened)
            .await
            .is_err()
        {
            panic!("only {} of {users} joins answered within 300 s", settled());
        }
        let join_s = joining.elapsed().as_secs_f64();
        tokio::time::sleep(settle).await;
        let (rss, cpu0) = usage(pid);
        let ticks0 = thread_ticks(pid);
        let others0: Vec<f64> = watch.iter().map(|(_, p)| procfs::usage(p).1).collect();
        let (_, own0) = procfs::usage("self");
        let (f0, t0) = (shared.frames.load(Ordering::Relaxed), Instant::now());
        shared.delays.clear();
        let threads_loaded = threads(&pid.to_string());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (_, cpu1) = usage(pid);
        let ticks1 = thread_ticks(pid);
        let others1: Vec<f64> = watch.iter().map(|(_, p)| procfs::usage(p).1).collect();
        let (_, own1) = procfs::usage("self");
        let wall = t0.elapsed().as_secs_f64();
        let delivered = shared.frames.load(Ordering::Relaxed) - f0;
        let _ = stop_tx.send(true);
        for t in tasks {
            t.await.expect("user task");
        }
        let others: Vec<f64> = others0.iter().zip(&others1).map(|(a, b)| b - a).collect();
        (
            (rss, threads_loaded, delivered, own1 - own0),
            cpu1 - cpu0,
            wall,
            thread_profile(&ticks0, &ticks1),
            others,
            join_s,
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let (rss_after, _) = usage(pid);
    let threads_after = threads(&pid.to_string());
    let (rss_loaded, threads_loaded, delivered, client_cpu) = loaded;
    let joined = shared.opened.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let expected = joined as f64 * expect_fps * wall;
    let delays = &shared.delays;
    println!(
        "loadgen round {round}: {users} users, speaking {speak:?}, {wall:.1} s measured, {join_s:.1} s to join and open every stream, then {settle:?} to settle"
    );
    if failed > 0 {
        println!("  {failed} of {users} joins failed (the bridge's log says why)");
    }
    if expected > 0.0 {
        println!(
            "  frames delivered {delivered} of about {expected:.0} sent ({:.1} %)",
            delivered as f64 / expected * 100.0
        );
    } else {
        println!("  frames delivered {delivered} (the rooms send none)");
    }
    println!(
        "  delay from arrival in the bridge to the client: p50 {}, p99 {}, p99.9 {}",
        delays.percentile(0.5),
        delays.percentile(0.99),
        delays.percentile(0.999)
    );
    println!(
        "  bridge CPU: {:.3} cores ({:.2} ms of CPU per room per second{})",
        cpu_used / wall,
        cpu_used / wall / joined.max(1) as f64 * 1000.0,
        if matches!(rooms, Rooms::Simulated) {
            "; simulated rooms included"
        } else {
            ""
        }
    );
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut total = cpu_used + client_cpu;
    println!(
        "  client CPU: {:.3} cores (this process, on the same cores)",
        client_cpu / wall
    );
    for ((name, _), cpu) in watch.iter().zip(&others) {
        println!("  {name} CPU: {:.3} cores", cpu / wall);
        total += cpu;
    }
    println!(
        "  all measured processes: {:.2} of {cores} cores",
        total / wall
    );
    if delivered > 0 {
        println!(
            "  bridge CPU per frame delivered: {:.2} µs (everything the process did, divided by frames)",
            cpu_used / delivered as f64 * 1e6
        );
    }
    println!(
        "  bridge RSS: before {rss_idle} KiB, loaded {rss_loaded} KiB ({:.1} KiB per session), after leave {rss_after} KiB",
        (rss_loaded.saturating_sub(rss_idle)) as f64 / joined.max(1) as f64
    );
    println!(
        "  bridge threads: before {threads_idle}, loaded {threads_loaded}, after leave {threads_after}"
    );
    println!("  bridge CPU by thread name (threads, cores):");
    for (name, count, cpu) in profile.iter().filter(|r| r.2 > 0.0).take(12) {
        println!("    {name:<16} {count:>4} {:.3}", cpu / wall);
    }
    // The same, one per line, for scripts (tests/e2e/density.py).
    let result = |k: &str, v: String| println!("RESULT {k}={v}");
    result("users", users.to_string());
    result("joins_failed", failed.to_string());
    result("wall_s", format!("{wall:.3}"));
    result("join_s", format!("{join_s:.3}"));
    result("frames", delivered.to_string());
    result("frames_expected", format!("{expected:.0}"));
    for (k, p) in [("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999)] {
        result(
            k,
            delays
                .percentile_ms(p)
                .map_or("n/a".into(), |v| v.to_string()),
        );
    }
    result("bridge_cores", format!("{:.4}", cpu_used / wall));
    result("client_cores", format!("{:.4}", client_cpu / wall));
    for ((name, _), cpu) in watch.iter().zip(&others) {
        result(&format!("{name}_cores"), format!("{:.4}", cpu / wall));
    }
    result("rss_idle_kib", rss_idle.to_string());
    result("rss_loaded_kib", rss_loaded.to_string());
    result("rss_after_kib", rss_after.to_string());
    result("threads_idle", threads_idle.to_string());
    result("threads_loaded", threads_loaded.to_string());
    result("threads_after", threads_after.to_string());
    for (name, count, cpu) in &profile {
        result(
            &format!("thread[{}]", name.replace(' ', "_")),
            format!("{count},{:.4}", cpu / wall),
        );
    }
    if expected > 0.0 {
        assert!(delivered > 0, "no audio was delivered");
    }
    if matches!(rooms, Rooms::Simulated) {
        // The first room starts the simulated rooms' pacer pool (2 to 4 threads), which stays.
        assert!(
            threads_after <= threads_idle + 4,
            "rooms left threads behind: {threads_idle} before, {threads_after} after leave"
        );
    }
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let rooms = match std::env::var("LOADGEN_LIVEKIT_URL") {
        Ok(url) if measuring => {
            let path = std::env::var("LOADGEN_TOKENS").expect("LOADGEN_TOKENS: a file of tokens");
            let tokens = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("LOADGEN_TOKENS {path}: {e}"))
                .lines()
                .map(str::to_string)
                .collect();
            Rooms::LiveKit {
                url,
                prefix: std::env::var("LOADGEN_ROOM_PREFIX").unwrap_or_else(|_| "density".into()),
                tokens,
            }
        }
        _ => Rooms::Simulated,
    };
    let speak = Speak::parse(&std::env::var("LOADGEN_SPEAK").unwrap_or_else(|_| "silent".into()));
    let expect_fps = std::env::var("LOADGEN_EXPECT_FPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100.0);
    let (users, seconds, rounds) = if measuring {
        let default_users = match &rooms {
            Rooms::LiveKit { tokens, .. } => tokens.len(),
            Rooms::Simulated => 1000,
        };
        (
            env_or("LOADGEN_USERS", default_users),
            env_or("LOADGEN_SECONDS", 10),
            env_or("LOADGEN_ROUNDS", 2),
        )
    } else {
        (20, 1, 2)
    };
    if let Rooms::LiveKit { tokens, .. } = &rooms {
        assert!(
            users <= tokens.len(),
            "{users} users but {} tokens",
            tokens.len()
        );
    }
    let socket = std::env::temp_dir().join(format!(
        "livekit-bridge-loadgen-{}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&socket);
    // The caller's environment passes through: the density harness sets the bridge's settings.
    let mut bridge = Launch::on_socket(&socket).inherit_env().start();
    let pid = bridge.child.id();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let load = Load {
        rooms,
        speak,
        expect_fps,
        users,
        seconds: seconds as u64,
    };
    for r in 1..=rounds {
        round(&rt, &socket, pid, &load, r);
    }
    // SIGTERM: the bridge drains; a panic above kills it instead (BridgeProcess's drop).
    bridge.stop_within(Duration::from_secs(10));
}

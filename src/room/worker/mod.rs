//! The `worker` backend: real LiveKit rooms (`ws://`, `wss://`) in room worker processes, so
//! that a fault inside LiveKit's library (a segfault, an abort, an FFI panic) ends one
//! worker's sessions, as lost, and no other.
//!
//! ```text
//!   backend ──gRPC──▶ front process: service, sessions, PlayAudio decoding, sim:// rooms
//!                        │  per worker: a Unix socket (control) and one shared memory
//!                        │  region (every session's ring, every published track's ring,
//!                        │  a doorbell each way)
//!                        ▼
//!              room worker 0 … K-1: `livekit-bridge room-worker`, LiveKit's library,
//!                        │          its callback threads pushing into the rings
//!                        ▼
//!                  LiveKit server
//! ```
//!
//! - `region`: the shared memory and its layout; `process`: starting a worker with its
//!   descriptors, and the doorbell's eventfd; `lifeline`: how the front learns at once that a
//!   worker is dying; `wire`: the control channel's framing and
//!   messages (`proto/room_worker.proto`); `link`: the front's side of one worker (requests,
//!   events, slots, its death); `serve`: the worker's side; here: the pool of workers, which
//!   places each session on the least loaded one, replaces a worker that dies, and retires
//!   one that holds a WebRTC runtime LiveKit's library stranded.
//!
//! **Retiring a worker.** LiveKit's library runs one WebRTC runtime (its network, signalling
//! and worker threads) per process while it has rooms, and stops it with the last one; but a
//! room the server ends while one of its tracks is being published can leave that runtime
//! held forever (docs/livekit.md, the pinned library's faults), with its threads and memory,
//! and the next room starts another. The pool counts each worker's runtimes by their network
//! thread ([`RUNTIME_THREAD`]) every [`TEND_EVERY`]: more than one, or one while the worker
//! holds no session, seen twice in a row, is a stranded runtime. That worker takes no new
//! session, a new worker takes its place in the pool, and once its last session has ended
//! the front closes its control socket and it exits (`room_worker_exits_total{kind="retired"}`).
//! At most as many workers drain at once as the pool has places.
//!
//! Audio never crosses the socket. Room audio: the worker's library callback pushes into the
//! session's ring in the shared memory ([`crate::audio::mapped`]), and the front's gRPC writer
//! pops from it, as from an in-process ring. Client audio and PlayAudio's frames: the front
//! writes them into the published track's ring ([`crate::audio::track_ring`], opened by an
//! `OpenTrack` request on the track's first use), and a task in the worker publishes what it
//! reads; a full ring makes the front's writer wait, so the backpressure of the published
//! track's clock reaches the client unchanged (BENCHMARKS.md, "The ring across the process
//! boundary", compares this with a request per chunk).
//!
//! The modules depend one way: `region`, `process` and `wire` on nothing here; `lifeline` on
//! `region` and `process`; `link` on those; `serve` on `region`, `process`, `wire` and
//! `lifeline`; this module on `link` and `serve`.

mod lifeline;
mod link;
mod process;
mod region;
pub mod serve;
pub mod wire;

pub use serve::SUBCOMMAND;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use self::link::{Answer, Link, OpenTrack};
use self::region::{Region, Shape};
use self::serve::WorkerArgs;
use self::wire::proto;
use super::{
    BoxFuture, ConnectRequest, Connected, Room, RoomBackend, RoomError, RoomEvents, SessionRing,
    TrackStats,
};
use crate::audio::{Overflow, RingConfig};
use crate::logging::LogFormat;
use crate::room::ffi::LibraryLogs;

/// How the room workers are run.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Worker processes (`BRIDGE_ROOM_WORKERS`); 0: one per core.
    pub workers: usize,
    /// Where LiveKit's SDK library is.
    pub library: PathBuf,
    /// Joins of real rooms the whole bridge works on at once, whichever workers they go to;
    /// 0: twice the cores.
    pub joins_at_once: usize,
    /// What becomes of the library's own log records (`BRIDGE_LIVEKIT_LOGS`).
    pub library_logs: LibraryLogs,
    /// Every session ring's size and overflow policy.
    pub ring: RingConfig,
    /// Sessions one worker can hold (its region's slots).
    pub slots: u32,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// The binary to run as a worker; `None`: this process's own.
    pub exe: Option<PathBuf>,
}

impl WorkerSettings {
    /// Sessions one worker can hold unless told otherwise: far more than one library instance
    /// carries (BENCHMARKS.md, "The ceiling of one process"); a slot's memory is only
    /// committed once a session has used it.
    pub const SLOTS: u32 = 1024;

    pub fn workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    fn joins(&self) -> usize {
        match self.joins_at_once {
            0 => crate::room::ffi::default_joins_at_once(),
            n => n,
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            workers: 0,
            library: super::DEFAULT_LIVEKIT_LIBRARY.into(),
            joins_at_once: 0,
            library_logs: LibraryLogs::Captured,
            ring: RingConfig::default(),
            slots: Self::SLOTS,
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            exe: None,
        }
    }
}

/// Track rings per slot of a worker's region: the tracks its sessions can publish on at once,
/// on average (any session may use more while others use fewer). A ring's memory is only
/// committed once a track has used it.
const TRACK_RINGS_PER_SLOT: u32 = 2;

/// The name of the network thread of a WebRTC runtime of LiveKit's library (libwebrtc's
/// `network_thread`): one per runtime, and a process runs one runtime at a time unless the
/// library stranded one.
const RUNTIME_THREAD: &str = "network_thread";

/// How often the pool looks for stranded runtimes and lets emptied workers go.
const TEND_EVERY: Duration = Duration::from_secs(2);

/// The room workers' lifetimes, for the metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerCounts {
    pub starts: u64,
    /// Exits by kind: a signal's name, `exit`, `unresponsive`, `protocol` or `retired`.
    pub exits: BTreeMap<&'static str, u64>,
    /// Sessions on each worker running now, by its position in the pool.
    pub sessions: Vec<usize>,
    /// Workers being retired: they take no new session and exit after their last.
    pub draining: usize,
    /// Sessions still on the workers being retired.
    pub draining_sessions: usize,
    /// Worker processes not yet reaped: those being retired and those dying included.
    pub running: usize,
    /// CPU seconds of every worker, those that exited included.
    pub cpu_seconds: f64,
    /// Of which: workers that have exited (and been reaped).
    pub exited_cpu_seconds: f64,
    /// Resident memory of the workers running now.
    pub resident_bytes: u64,
}

#[derive(Default)]
struct Pool {
    /// By position; `None` until that worker is (re)started.
    links: Vec<Option<Arc<Link>>>,
    /// Workers being retired, out of the pool's places.
    draining: Vec<Arc<Link>>,
    /// Workers known to be dying, not yet reaped (their CPU time still counts).
    dying: Vec<Arc<Link>>,
    /// Workers seen holding a stranded runtime at the last look.
    suspects: Vec<u64>,
    /// Whether the task that retires workers runs.
    tending: bool,
    counts: WorkerCounts,
    /// Track counters of workers that have exited.
    retired: TrackStats,
    /// Why the last start failed, for JoinRoom's error and the readiness probe.
    last_failure: Option<String>,
}

/// Real LiveKit rooms in worker processes.
pub struct WorkerBackend {
    settings: WorkerSettings,
    /// The turns to join, one budget for the whole bridge: a burst of joins into one worker
    /// (the sessions of a dead worker rejoining into its replacement) gets every turn, not a
    /// worker's share of them. Joins are CPU-bound; the budget keeps a burst from timing out
    /// every join at once on a full machine (BENCHMARKS.md, "Joins at once").
    joining: Arc<tokio::sync::Semaphore>,
    pool: Mutex<Pool>,
    next_number: AtomicU64,
    this: Weak<WorkerBackend>,
}

impl Pool {
    /// Every worker process not yet reaped: the pool's places, those being retired, those
    /// dying.
    fn all(&self) -> impl Iterator<Item = &Arc<Link>> {
        self.links
            .iter()
            .flatten()
            .chain(&self.draining)
            .chain(&self.dying)
    }
}

impl WorkerBackend {
    pub fn new(settings: WorkerSettings) -> Arc<Self> {
        let k = settings.workers();
        let joining = Arc::new(tokio::sync::Semaphore::new(settings.joins()));
        Arc::new_cyclic(|this| Self {
            joining,
            pool: Mutex::new(Pool {
                links: vec![None; k],
                ..Pool::default()
            }),
            settings,
            next_number: AtomicU64::new(0),
            this: this.clone(),
        })
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn counts(&self) -> WorkerCounts {
        let p = self.pool();
        let mut c = p.counts.clone();
        c.sessions = p
            .links
            .iter()
            .map(|l| l.as_ref().map_or(0, |l| l.load()))
            .collect();
        c.draining = p.draining.len();
        c.draining_sessions = p.draining.iter().map(|l| l.load()).sum();
        c.cpu_seconds = c.exited_cpu_seconds;
        for link in p.all() {
            c.running += 1;
            if let Some((cpu, rss)) = process::usage(link.pid) {
                c.cpu_seconds += cpu;
                c.resident_bytes += rss;
            }
        }
        c
    }

    /// Starts every worker not running, under the pool's lock: a join that comes meanwhile
    /// waits the few milliseconds a start takes (a fork and exec) rather than find no worker.
    /// Needs a tokio runtime (it is called from joins).
    fn ensure_started(&self) {
        let mut p = self.pool();
        if !p.tending {
            p.tending = true;
            tokio::spawn(tend(self.this.clone()));
        }
        for position in 0..p.links.len() {
            if p.links[position].is_some() {
                continue;
            }
            match self.start(position) {
                Ok(link) => {
                    p.links[position] = Some(link);
                    p.counts.starts += 1;
                    p.last_failure = None;
                }
                Err(e) => {
                    let why = format!("cannot start a room worker: {e}");
                    tracing::error!(position, "{why}");
                    p.last_failure = Some(why);
                }
            }
        }
    }

    fn start(&self, position: usize) -> std::io::Result<Arc<Link>> {
        let number = self.next_number.fetch_add(1, Ordering::Relaxed);
        let s = &self.settings;
        let shape = Shape {
            slots: s.slots,
            capacity: s
                .ring
                .capacity_bytes
                .max(crate::audio::ring::FRAME_HEADER + 2),
            tracks: s.slots.saturating_mul(TRACK_RINGS_PER_SLOT),
        };
        let region = Arc::new(Region::create(shape)?);
        lifeline::init(&region)?;
        let kick = process::eventfd()?;
        let track_kick = process::eventfd()?;
        let (front, worker) = std::os::unix::net::UnixStream::pair()?;
        let exe = match &s.exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe()?,
        };
        let args = WorkerArgs {
            number,
            library: s.library.clone(),
            // The front's budget is the bound; the worker's own is the same, for the joins
            // whose callers gave up (their turn is back in the front while the worker still
            // connects them, to leave at once).
            joins_at_once: s.joins(),
            library_logs: s.library_logs,
            log_format: s.log_format,
            log_filter: s.log_filter.clone(),
        };
        let worker_fd = std::os::fd::OwnedFd::from(worker);
        let child = process::spawn(
            &exe,
            &args.to_args(),
            &worker_fd,
            region.fd(),
            &kick,
            &track_kick,
        )?;
        drop(worker_fd);
        front.set_nonblocking(true)?;
        let control = tokio::net::UnixStream::from_std(front)?;
        let hello = proto::Hello {
            version: wire::VERSION,
            slots: shape.slots,
            slot_capacity: shape.capacity as u64,
            drop_oldest: s.ring.overflow == Overflow::DropOldest,
            tracks: shape.tracks,
        };
        let pid = child.id();
        let started = link::start(number, region, kick, track_kick, control, child, hello)?;
        tracing::info!(worker = number, position, ?pid, "room worker started");
        let this = self.this.clone();
        let link = started.link.clone();
        let born = Instant::now();
        tokio::spawn(async move {
            // Its place is given to a new worker as soon as its death is known; it is
            // accounted for once reaped (its teardown can take seconds).
            link.died().await;
            let Some(backend) = this.upgrade() else {
                return;
            };
            {
                let mut p = backend.pool();
                if p.links[position]
                    .as_ref()
                    .is_some_and(|l| Arc::ptr_eq(l, &link))
                {
                    p.links[position] = None;
                }
                p.draining.retain(|l| !Arc::ptr_eq(l, &link));
                p.dying.push(link.clone());
            }
            drop(backend);
            // A worker that dies at once (a missing library, a bad binary) is not restarted
            // in a tight loop.
            if born.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if let Some(backend) = this.upgrade() {
                backend.ensure_started();
            }
            let exit = started.exited.await;
            let Some(backend) = this.upgrade() else {
                return;
            };
            let mut p = backend.pool();
            let (kind, cpu) = exit.map_or(("exit", 0.0), |e| (e.kind, e.cpu_seconds));
            *p.counts.exits.entry(kind).or_default() += 1;
            p.counts.exited_cpu_seconds += cpu;
            let s = link.stats();
            p.retired.routed += s.routed;
            p.retired.unrouted += s.unrouted;
            p.retired.published_underruns += s.published_underruns;
            p.dying.retain(|l| !Arc::ptr_eq(l, &link));
        });
        Ok(started.link)
    }

    fn link(&self, number: u64) -> Option<Arc<Link>> {
        self.pool().all().find(|l| l.number == number).cloned()
    }

    /// One look at every worker: a worker seen holding a stranded runtime twice in a row is
    /// retired (takes no new session, gives its place to a new worker); a retired worker
    /// holding no session is let go.
    fn tend_once(&self) {
        let places: Vec<_> = {
            let p = self.pool();
            p.links
                .iter()
                .enumerate()
                .filter_map(|(i, l)| Some((i, l.clone()?)))
                .collect()
        };
        let mut stranded = Vec::new();
        for (position, link) in places {
            let runtimes = process::thread_names(link.pid)
                .iter()
                .filter(|name| *name == RUNTIME_THREAD)
                .count();
            let sessions = link.load();
            if runtimes > usize::from(sessions > 0) {
                stranded.push((position, link, runtimes, sessions));
            }
        }
        let mut vacated = false;
        {
            let mut p = self.pool();
            let seen = std::mem::take(&mut p.suspects);
            for (position, link, runtimes, sessions) in stranded {
                if !seen.contains(&link.number) {
                    p.suspects.push(link.number);
                    continue;
                }
                let is_here = p.links[position]
                    .as_ref()
                    .is_some_and(|l| Arc::ptr_eq(l, &link));
                if !is_here || p.draining.len() >= p.links.len() {
                    continue;
                }
                link.stop_taking_sessions();
                p.links[position] = None;
                p.draining.push(link.clone());
                vacated = true;
                tracing::warn!(
                    worker = link.number,
                    pid = link.pid,
                    runtimes,
                    sessions,
                    "room worker holds a WebRTC runtime LiveKit's library stranded; it takes no \
                     new session and exits after its last, and a new worker takes its place"
                );
            }
        }
        if vacated {
            self.ensure_started();
        }
        for link in self.pool().draining.clone() {
            link.retire_if_empty();
        }
    }
}

/// Tends the pool every [`TEND_EVERY`] while the backend lives.
async fn tend(backend: Weak<WorkerBackend>) {
    let mut every = tokio::time::interval(TEND_EVERY);
    loop {
        every.tick().await;
        let Some(backend) = backend.upgrade() else {
            return;
        };
        backend.tend_once();
    }
}

impl RoomBackend for WorkerBackend {
    /// Ready when the library's file is there (each worker checks its checksum when it loads
    /// it) and the last attempt to start a worker did not fail.
    fn ready(&self) -> Result<(), String> {
        if !self.settings.library.is_file() {
            return Err(format!(
                "LiveKit's SDK library is missing at {} (LIVEKIT_FFI_LIB)",
                self.settings.library.display()
            ));
        }
        match &self.pool().last_failure {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn track_stats(&self) -> TrackStats {
        let p = self.pool();
        p.all()
            .map(|l| l.stats())
            .fold(p.retired, |a, b| TrackStats {
                routed: a.routed + b.routed,
                unrouted: a.unrouted + b.unrouted,
                streams: a.streams + b.streams,
                published_underruns: a.published_underruns + b.published_underruns,
            })
    }

    /// A slot on the least loaded live worker.
    fn ring(&self, _config: RingConfig) -> Result<SessionRing, RoomError> {
        self.ensure_started();
        let mut links: Vec<_> = self.pool().links.iter().flatten().cloned().collect();
        links.sort_by_key(|l| l.load());
        for link in links {
            if let Some(ring) = link.ring() {
                return Ok(ring);
            }
        }
        Err(RoomError::Unavailable(
            self.pool().last_failure.clone().unwrap_or_else(|| {
                format!(
                    "every room worker is full ({} sessions each; BRIDGE_ROOM_WORKERS adds workers)",
                    self.settings.slots
                )
            }),
        ))
    }

    fn connect(
        &self,
        request: ConnectRequest,
        events: Arc<dyn RoomEvents>,
    ) -> BoxFuture<'static, Result<Connected, RoomError>> {
        let placed = request
            .ring
            .ok_or_else(|| RoomError::Library("a worker room's ring comes from ring()".into()))
            .and_then(|slot| {
                self.link(slot.worker)
                    .map(|link| (link, slot.index))
                    .ok_or_else(|| {
                        RoomError::NotConnected("the room's worker process is gone".into())
                    })
            });
        let (link, slot) = match placed {
            Ok(placed) => placed,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        link.attach(slot, events);
        let joining = self.joining.clone();
        Box::pin(async move {
            let mut guard = JoinGuard {
                link: Some(link.clone()),
                slot,
                sent: false,
            };
            let (_turn, timeout) = super::turn_to_join(&joining, request.timeout).await?;
            let join = proto::Join {
                slot,
                user_id: request.user_id,
                url: request.url,
                token: request.token,
                room_name: request.room_name,
                target_identity: request.target_identity,
                timeout_ms: timeout.as_millis() as u64,
                audio_source: wire::audio_source(request.audio_source).into(),
            };
            // Sent in the same step as the guard learns it, so that a caller who gives up from
            // here on leaves the room the worker may join.
            let joined = link.request(proto::to_worker::Op::Join(join));
            guard.sent = true;
            let joined = joined.await;
            guard.disarm();
            match joined? {
                Answer::Joined(j) => Ok(Connected {
                    room: Box::new(WorkerRoom {
                        link,
                        slot,
                        tracks: Mutex::new(Some(HashMap::new())),
                    }),
                    participant_id: j.participant_id,
                    participant_count: j.participant_count,
                }),
                Answer::Done => Err(RoomError::Library(
                    "the room worker answered a join with Done".into(),
                )),
            }
        })
    }
}

/// A join's hold on its slot until the worker answers, for a caller who goes away first: before
/// the join is sent (while it waits its turn) the worker has not heard of the slot, and the
/// front lets go of the worker's hold on it; after, the room the worker may join is left.
struct JoinGuard {
    link: Option<Arc<Link>>,
    slot: u32,
    sent: bool,
}

impl JoinGuard {
    fn disarm(&mut self) {
        self.link = None;
    }
}

impl Drop for JoinGuard {
    fn drop(&mut self) {
        let Some(link) = self.link.take() else { return };
        if self.sent {
            drop(link.request(proto::to_worker::Op::Leave(proto::Leave {
                slot: self.slot,
            })));
        } else {
            link.never_sent(self.slot);
        }
    }
}

/// A room joined in a worker.
struct WorkerRoom {
    link: Arc<Link>,
    slot: u32,
    /// Each published track's ring, opened on its first use; `None` once the room is left.
    tracks: Mutex<Option<HashMap<String, PublishedTrack>>>,
}

impl WorkerRoom {
    fn tracks(&self) -> std::sync::MutexGuard<'_, Option<HashMap<String, PublishedTrack>>> {
        self.tracks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type PublishedTrack = Arc<tokio::sync::Mutex<Option<OpenTrack>>>;

impl Room for WorkerRoom {
    /// Resolves once the track's ring has taken the audio (it waits while the ring is full). A
    /// publish the worker's room refused shows on the next call, with the room's reason; the
    /// track's ring is then let go, and the call after opens it anew (as the in-process room
    /// publishes a track anew once the server allows it).
    fn publish<'a>(
        &'a self,
        track: &'a str,
        pcm: &'a [u8],
    ) -> BoxFuture<'a, Result<(), RoomError>> {
        Box::pin(async move {
            let left = || RoomError::NotConnected("the room was left".into());
            let published = match self.tracks().as_mut() {
                Some(tracks) => tracks.entry(track.to_string()).or_default().clone(),
                None => return Err(left()),
            };
            let mut published = published.lock().await;
            let open = match published.as_mut() {
                Some(open) => open,
                None => published.insert(self.link.open_track(self.slot, track).await?),
            };
            if open.writer.write(pcm).await.is_ok() {
                return Ok(());
            }
            let why = self.link.track_error(open.ring);
            *published = None;
            Err(why)
        })
    }

    fn disconnect(&self) -> BoxFuture<'_, ()> {
        // The tracks' writers close their rings as they go (one still writing goes when its
        // publish ends); then the room is left.
        drop(self.tracks().take());
        let left = self.link.request(proto::to_worker::Op::Leave(proto::Leave {
            slot: self.slot,
        }));
        Box::pin(async move {
            let _ = left.await;
        })
    }
}

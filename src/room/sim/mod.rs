//! The simulated room, chosen by `sim://` URLs, so that any stock gRPC client can drive the
//! bridge without a LiveKit server.
//!
//! It reproduces how LiveKit's SDKs deliver events: callbacks come from threads that are not the
//! bridge's (a lossy path carrying audio and a reliable one carrying other packets, running at
//! the same time on different threads), keep arriving for `linger_ms` after disconnect was
//! asked for, and the server may close the room by itself (`drop_after_ms`). Clock-driven rooms
//! (a real-time tone, and every room's reliable path) run on a small shared pool of pacer
//! threads ([`pacer`]), as LiveKit's library runs every room from a handful of threads; an
//! `echo` room and a `pace=max` tone, driven by what the bridge publishes or takes rather than
//! by a clock, each keep a thread of their own.
//!
//! The URL ([`spec`]) says what the room does. Identities are kicked as LiveKit kicks them, on
//! one simulated server per bridge (or per `server=` name, shared by every bridge in the
//! process that names it; [`server`]): a join to a room where the bridge's identity is already
//! connected kicks the older participant with `DUPLICATE_IDENTITY`, `kick_delay_ms` after the
//! newer join (with 0, before it completes). The tone is in [`tone`].

mod pacer;
mod server;
mod spec;
mod tone;

pub use spec::{Mode, Pace, SimSpec, Via};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{
    BoxFuture, ConnectRequest, Connected, DataKind, Disconnect, DisconnectCause, Room, RoomBackend,
    RoomError, RoomEvents,
};
use crate::audio::{PushOutcome, format};
use server::{Lifetime, Participant};
use tone::{Tone, ToneJob};

/// The simulated backend. Keeps, per room name, the tracks the bridge published into the
/// latest room of that name (until it disconnects), and counts its rooms' live callback
/// sources (pacer jobs and dedicated threads).
pub struct SimBackend {
    tracks: Arc<Mutex<HashMap<String, Vec<String>>>>,
    live_callbacks: Arc<AtomicUsize>,
    /// The simulated server of this backend's rooms, unless a URL names a shared one.
    server: String,
}

impl Default for SimBackend {
    fn default() -> Self {
        static BACKENDS: AtomicU64 = AtomicU64::new(0);
        let n = BACKENDS.fetch_add(1, Ordering::Relaxed);
        Self {
            tracks: Arc::default(),
            live_callbacks: Arc::default(),
            // Not a name a URL can give: `server=` values are percent-decoded text.
            server: format!("\0bridge-{n}"),
        }
    }
}

impl SimBackend {
    /// Tracks published into the connected room called `room_name`, in order of creation.
    pub fn published_tracks(&self, room_name: &str) -> Vec<String> {
        lock(&self.tracks)
            .get(room_name)
            .cloned()
            .unwrap_or_default()
    }

    /// Callback sources of simulated rooms (pacer jobs, dedicated threads) not finished yet:
    /// once a room's are, it calls back no more.
    pub fn live_callbacks(&self) -> usize {
        // Relaxed: a gauge; a source's end is ordered with whoever waits for it by the wait.
        self.live_callbacks.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RoomBackend for SimBackend {
    fn connect(
        &self,
        request: ConnectRequest,
        events: Arc<dyn RoomEvents>,
    ) -> BoxFuture<'static, Result<Connected, RoomError>> {
        let tracks = self.tracks.clone();
        let live = self.live_callbacks.clone();
        let own_server = self.server.clone();
        Box::pin(async move {
            let spec = SimSpec::parse(&request.url)?;
            let server = spec.server.clone().unwrap_or(own_server);
            tokio::time::sleep(Duration::from_millis(spec.connect_delay_ms)).await;
            if let Some(why) = &spec.fail {
                return Err(RoomError::ConnectFailed(format!("sim: {why}")));
            }
            let kick_delay = Duration::from_millis(spec.kick_delay_ms);
            let (room, older) =
                SimRoom::start(spec.clone(), request, server, events, tracks, live)?;
            if let Some(older) = older {
                older.kick_after(kick_delay);
                // As LiveKit does, the server tells the older participant before it answers
                // the newer one; with no delay asked for, the kick lands before this join ends.
                let deadline = Instant::now() + Duration::from_secs(1);
                while kick_delay.is_zero() && !older.stopping() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Ok(Connected {
                participant_id: room.participant_id.clone(),
                participant_count: spec.participants,
                room: Box::new(room),
            })
        })
    }
}

struct SimRoom {
    participant_id: String,
    room_name: String,
    life: Arc<Lifetime>,
    echo: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    tracks: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// Its entry in the simulated server's participants.
    participant: Participant,
}

static ROOMS: AtomicU64 = AtomicU64::new(0);

impl SimRoom {
    fn start(
        spec: SimSpec,
        request: ConnectRequest,
        server: String,
        events: Arc<dyn RoomEvents>,
        tracks: Arc<Mutex<HashMap<String, Vec<String>>>>,
        live: Arc<AtomicUsize>,
    ) -> Result<(Self, Option<Arc<Lifetime>>), RoomError> {
        let n = ROOMS.fetch_add(1, Ordering::Relaxed);
        let life = Arc::new(Lifetime::new(spec.linger_ms));
        let participant = Participant::joining(server, &request);
        let room_name = participant.room.clone();
        let older = participant.enter(&life);
        let identity = spec.identity.clone().unwrap_or(request.target_identity);
        lock(&tracks).insert(room_name.clone(), Vec::new());
        let ctx = Ctx {
            spec,
            identity,
            events,
            life: life.clone(),
        };
        let (echo_tx, echo_rx) = match ctx.spec.mode {
            Mode::Echo => {
                let (tx, rx) = mpsc::channel(64);
                (Some(tx), Some(rx))
            }
            _ => (None, None),
        };
        // Built first, so that a thread that cannot start drops it, which stops the others.
        let room = SimRoom {
            participant_id: format!("PA_sim{n}"),
            room_name,
            life,
            echo: Mutex::new(echo_tx),
            tracks,
            participant,
        };
        let started = match (ctx.spec.mode, ctx.spec.pace, echo_rx) {
            (Mode::Tone, Pace::Realtime, _) => {
                let tone = ToneJob::new(ctx.clone(), Alive::new(&live));
                pacer::schedule(pacer::lane(n, 0), Box::new(tone)).map_err(RoomError::ConnectFailed)
            }
            (Mode::Tone, Pace::Max, _) => spawn(&live, "sim-lossy", ctx.clone(), Ctx::tone_max),
            (Mode::Echo, _, Some(rx)) => {
                spawn(&live, "sim-lossy", ctx.clone(), move |c| c.echo(rx))
            }
            _ => Ok(()),
        };
        let reliable = |()| {
            let job = ReliableJob::new(ctx, Alive::new(&live));
            pacer::schedule(pacer::lane(n, 1), Box::new(job)).map_err(RoomError::ConnectFailed)
        };
        if let Err(e) = started.and_then(reliable) {
            lock(&room.tracks).remove(&room.room_name);
            return Err(e);
        }
        Ok((room, older))
    }
}

/// One live callback source, counted in [`SimBackend::live_callbacks`] until dropped.
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::Relaxed);
        Self(live.clone())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A dedicated callback thread, for a room not driven by a clock.
fn spawn<F>(live: &Arc<AtomicUsize>, name: &str, ctx: Ctx, body: F) -> Result<(), RoomError>
where
    F: FnOnce(Ctx) + Send + 'static,
{
    let alive = Alive::new(live);
    let spawned = thread::Builder::new().name(name.into()).spawn(move || {
        let _alive = alive;
        body(ctx);
    });
    spawned.map(drop).map_err(|e| {
        RoomError::ConnectFailed(format!("sim: cannot start the room's {name} thread: {e}"))
    })
}

/// What a callback thread of a simulated room works with.
#[derive(Clone)]
struct Ctx {
    spec: SimSpec,
    identity: String,
    events: Arc<dyn RoomEvents>,
    life: Arc<Lifetime>,
}

impl Ctx {
    /// One frame of the target's audio, the way the room delivers it.
    fn deliver(&self, frame: &[u8]) -> Option<PushOutcome> {
        match self.spec.via {
            Via::Data => self
                .events
                .on_data(&self.identity, DataKind::Lossy, "", frame),
            Via::Track => self.events.on_track_audio(frame),
        }
    }

    fn frame_bytes(&self) -> usize {
        format::samples_in_ms(self.spec.frame_ms as usize) * format::BYTES_PER_SAMPLE
    }

    /// Sends one packet; under `pace=max` a packet that finds the ring full is retried.
    fn send(&self, packet: &[u8]) {
        loop {
            let outcome = self.deliver(packet);
            if self.spec.pace == Pace::Realtime
                || outcome != Some(PushOutcome::Full)
                || self.life.over()
            {
                return;
            }
            thread::sleep(Duration::from_micros(200));
        }
    }

    /// `pace=max`: the tone as fast as the bridge takes it, on a thread of its own.
    fn tone_max(self) {
        let mut tone = Tone::new(&self);
        let mut seq = 0u64;
        while !self.life.over() && self.spec.frames.is_none_or(|n| seq < n) {
            self.send(tone.next(seq));
            seq += 1;
        }
        self.idle_until_over();
    }

    fn echo(self, mut rx: mpsc::Receiver<Vec<u8>>) {
        let mut packet = Vec::with_capacity(1 + self.frame_bytes());
        let mut seq = 0u8;
        while let Some(pcm) = rx.blocking_recv() {
            for frame in pcm.chunks(self.frame_bytes()) {
                packet.clear();
                packet.push(seq);
                packet.extend_from_slice(frame);
                self.send(&packet);
                seq = seq.wrapping_add(1);
            }
        }
        self.idle_until_over();
    }

    fn idle_until_over(&self) {
        while !self.life.over() {
            thread::sleep(IDLE_POLL);
        }
    }
}

/// The reliable path: non-audio packets every `chatter_ms`, participant and server-disconnect
/// events when they are due; it runs at least every 20 ms to notice them.
struct ReliableJob {
    ctx: Ctx,
    period: Duration,
    join_at: Option<Instant>,
    drop_at: Option<Instant>,
    next_chatter: Option<Instant>,
    _alive: Alive,
}

impl ReliableJob {
    fn new(ctx: Ctx, alive: Alive) -> Self {
        let at = |ms: Option<u64>| ms.map(|ms| ctx.life.started + Duration::from_millis(ms));
        Self {
            period: Duration::from_millis(ctx.spec.chatter_ms),
            join_at: at(ctx.spec.join_after_ms),
            drop_at: at(ctx.spec.drop_after_ms),
            next_chatter: None,
            ctx,
            _alive: alive,
        }
    }
}

impl pacer::Job for ReliableJob {
    fn step(&mut self, now: Instant) -> Option<Instant> {
        let ctx = &self.ctx;
        if ctx.life.over() {
            return None;
        }
        let not_audio = [0u8, 0x55, 0x55];
        if self.next_chatter.is_none_or(|t| now >= t) {
            self.next_chatter = Some(now + self.period);
            let events = &ctx.events;
            events.on_data(&ctx.identity, DataKind::Reliable, "sim.chatter", &not_audio);
            events.on_data("sim-other", DataKind::Reliable, "", &not_audio);
        }
        if self.join_at.is_some_and(|t| now >= t) {
            self.join_at = None;
            ctx.events.on_participants(ctx.spec.participants + 1);
        }
        if self.drop_at.is_some_and(|t| now >= t) && !ctx.life.stopping() {
            ctx.life.ask_stop();
            let ms = ctx.spec.drop_after_ms.unwrap_or_default();
            ctx.events.on_disconnected(Disconnect {
                cause: ctx.spec.drop_reason,
                reason: format!(
                    "sim: the server closed the room after {ms} ms ({:?})",
                    ctx.spec.drop_reason
                ),
            });
        }
        if ctx.life.kick_due(now) && !ctx.life.stopping() {
            // Told first, stopped after: a newer join waiting for the kick resumes only once
            // the session has heard it.
            ctx.events.on_disconnected(Disconnect {
                cause: DisconnectCause::DuplicateIdentity,
                reason: "sim: another participant joined with the same identity \
                         (DUPLICATE_IDENTITY)"
                    .into(),
            });
            ctx.life.ask_stop();
        }
        let wake = [self.next_chatter, self.join_at, self.drop_at]
            .into_iter()
            .flatten()
            .min();
        let nap = wake.map_or(IDLE_POLL, |t| t.saturating_duration_since(now));
        Some(now + nap.clamp(Duration::from_micros(500), Duration::from_millis(20)))
    }
}

/// How often a finished source checks whether its room's lifetime is over.
const IDLE_POLL: Duration = Duration::from_millis(2);

impl Room for SimRoom {
    fn publish<'a>(
        &'a self,
        track: &'a str,
        pcm: &'a [u8],
    ) -> BoxFuture<'a, Result<(), RoomError>> {
        Box::pin(async move {
            if self.life.stopping() {
                return Err(RoomError::NotConnected("sim: room closed".into()));
            }
            if let Some(tracks) = lock(&self.tracks).get_mut(&self.room_name)
                && !tracks.iter().any(|t| t == track)
            {
                tracks.push(track.to_string());
            }
            let echo = lock(&self.echo).clone();
            if let Some(echo) = echo {
                echo.send(pcm.to_vec())
                    .await
                    .map_err(|_| RoomError::NotConnected("sim: room closed".into()))?;
            }
            Ok(())
        })
    }

    fn disconnect(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.life.ask_stop();
            self.participant.leave(&self.life);
            lock(&self.echo).take();
            lock(&self.tracks).remove(&self.room_name);
        })
    }
}

impl Drop for SimRoom {
    fn drop(&mut self) {
        self.life.ask_stop();
        self.participant.leave(&self.life);
    }
}

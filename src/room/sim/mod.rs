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
//! The URL's grammar, every parameter and its default, is in `docs/backend.md` (the simulated
//! room), written once; [`SimSpec::parse`] implements it and names what is wrong with a URL.
//! Identities are kicked as LiveKit kicks them, on one simulated server per bridge (or per
//! `server=` name, shared by every bridge in the process that names it): a join to a room
//! where the bridge's identity is already connected kicks the older participant with
//! `DUPLICATE_IDENTITY`, `kick_delay_ms` after the newer join (with 0, before it completes).
//! A sim room has no token to read room and identity from: they are the join's `room_name`
//! and token, or the user's own where either is empty (`room_and_identity`).

mod pacer;

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

/// What a simulated room does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Tone,
    Echo,
    Silent,
}

/// How a simulated room delivers the target's audio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Data packets (`RoomEvents::on_data`).
    Data,
    /// Frames of the target's audio track (`RoomEvents::on_track_audio`).
    Track,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    Realtime,
    Max,
}

/// A parsed `sim://` URL (grammar: `docs/backend.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct SimSpec {
    pub mode: Mode,
    pub hz: f64,
    pub level: f64,
    pub frame_ms: u32,
    pub pace: Pace,
    pub frames: Option<u64>,
    pub identity: Option<String>,
    pub via: Via,
    pub chatter_ms: u64,
    pub participants: u32,
    pub join_after_ms: Option<u64>,
    pub linger_ms: u64,
    pub drop_after_ms: Option<u64>,
    pub drop_reason: DisconnectCause,
    pub kick_delay_ms: u64,
    pub server: Option<String>,
    pub fail: Option<String>,
    pub connect_delay_ms: u64,
}

impl SimSpec {
    pub fn parse(url: &str) -> Result<Self, RoomError> {
        let bad = |what: String| RoomError::InvalidUrl(format!("{url:?}: {what}"));
        let rest = url
            .get(..6)
            .filter(|s| s.eq_ignore_ascii_case("sim://"))
            .map(|_| &url[6..])
            .ok_or_else(|| bad("not a sim:// URL".into()))?;
        let (mode, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mode = match mode.trim_end_matches('/') {
            "tone" => Mode::Tone,
            "echo" => Mode::Echo,
            "silent" => Mode::Silent,
            "" => {
                return Err(bad(
                    "no mode: use sim://tone, sim://echo or sim://silent".into()
                ));
            }
            other => return Err(bad(format!("unknown mode {other:?} (tone, echo, silent)"))),
        };
        let mut spec = SimSpec {
            mode,
            hz: 440.0,
            level: 0.5,
            frame_ms: 10,
            pace: Pace::Realtime,
            frames: None,
            identity: None,
            via: Via::Data,
            chatter_ms: 20,
            participants: 2,
            join_after_ms: None,
            linger_ms: 20,
            drop_after_ms: None,
            drop_reason: DisconnectCause::Lost,
            kick_delay_ms: 0,
            server: None,
            fail: None,
            connect_delay_ms: 0,
        };
        let mut seen: Vec<&str> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            // Each parameter once: a repeat is a mistake (which one was meant?), and refusing it
            // also bounds the work a URL can ask for to the few known parameters.
            if seen.contains(&key) {
                return Err(bad(format!("parameter {key:?} is given more than once")));
            }
            seen.push(key);
            let value = percent_decode(raw).ok_or_else(|| bad(format!("bad escape in {key}")))?;
            let num = |lo: u64, hi: u64| {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (lo..=hi).contains(n))
                    .ok_or_else(|| bad(format!("{key} must be an integer in {lo}..={hi}")))
            };
            let unit = || {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|x| (0.0..=1.0).contains(x))
                    .ok_or_else(|| bad(format!("{key} must be a number in 0..=1")))
            };
            const DAY_MS: u64 = 86_400_000;
            match key {
                "hz" => {
                    spec.hz = value
                        .parse::<f64>()
                        .ok()
                        .filter(|x| (1.0..8000.0).contains(x))
                        .ok_or_else(|| bad("hz must be a number in 1..8000".into()))?
                }
                "level" => spec.level = unit()?,
                "frame_ms" => spec.frame_ms = num(1, 100)? as u32,
                "pace" => {
                    spec.pace = match value.as_str() {
                        "realtime" => Pace::Realtime,
                        "max" => Pace::Max,
                        _ => return Err(bad("pace must be realtime or max".into())),
                    }
                }
                "frames" => spec.frames = Some(num(0, u64::MAX)?),
                "identity" => spec.identity = Some(value),
                "via" => {
                    spec.via = match value.as_str() {
                        "data" => Via::Data,
                        "track" => Via::Track,
                        _ => return Err(bad("via must be data or track".into())),
                    }
                }
                "chatter_ms" => spec.chatter_ms = num(1, DAY_MS)?,
                "participants" => spec.participants = num(1, 10_000)? as u32,
                "join_after_ms" => spec.join_after_ms = Some(num(0, DAY_MS)?),
                "linger_ms" => spec.linger_ms = num(0, 60_000)?,
                "drop_after_ms" => spec.drop_after_ms = Some(num(0, DAY_MS)?),
                "drop_reason" => {
                    spec.drop_reason = match value.as_str() {
                        "lost" => DisconnectCause::Lost,
                        "removed" => DisconnectCause::Removed,
                        "deleted" => DisconnectCause::RoomDeleted,
                        "duplicate_identity" => DisconnectCause::DuplicateIdentity,
                        _ => {
                            return Err(bad(
                                "drop_reason must be lost, removed, deleted or duplicate_identity"
                                    .into(),
                            ));
                        }
                    }
                }
                "kick_delay_ms" => spec.kick_delay_ms = num(0, 60_000)?,
                "server" => spec.server = Some(value),
                "fail" => spec.fail = Some(value),
                "connect_delay_ms" => spec.connect_delay_ms = num(0, DAY_MS)?,
                _ => return Err(bad(format!("unknown parameter {key:?}"))),
            }
        }
        Ok(spec)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

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

/// When the room's threads stop: `linger_ms` after disconnect was asked for or the server
/// dropped the room. Its atomic is Relaxed: the threads poll it for its own value, and nothing
/// else is published through it.
struct Lifetime {
    started: Instant,
    /// Milliseconds after `started` when the stop was asked for; `u64::MAX` while running.
    stop_asked_ms: AtomicU64,
    linger_ms: u64,
    /// When the simulated server kicks this participant for a newer one with its identity.
    kick_at: Mutex<Option<Instant>>,
}

impl Lifetime {
    fn ask_stop(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let _ = self.stop_asked_ms.compare_exchange(
            u64::MAX,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The simulated server kicks this participant `after` from now.
    fn kick_after(&self, after: Duration) {
        *lock(&self.kick_at) = Some(Instant::now() + after);
    }

    fn kick_due(&self, now: Instant) -> bool {
        lock(&self.kick_at).is_some_and(|at| now >= at)
    }

    fn stopping(&self) -> bool {
        self.stop_asked_ms.load(Ordering::Relaxed) != u64::MAX
    }

    fn over(&self) -> bool {
        let asked = self.stop_asked_ms.load(Ordering::Relaxed);
        asked != u64::MAX && self.started.elapsed().as_millis() as u64 >= asked + self.linger_ms
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

/// (server, room name, the bridge's identity): one participant of a simulated server.
type Participant = (String, String, String);

/// The simulated server's participants, shared by every bridge in the process: the live room
/// of each (room name, identity).
fn participants() -> &'static Mutex<HashMap<Participant, Arc<Lifetime>>> {
    static PARTICIPANTS: std::sync::OnceLock<Mutex<HashMap<Participant, Arc<Lifetime>>>> =
        std::sync::OnceLock::new();
    PARTICIPANTS.get_or_init(Mutex::default)
}

/// The room a sim join enters and the identity it enters as, where a LiveKit token would name
/// both: the join's `room_name` and token, or the user's own where either is empty.
fn room_and_identity(request: &ConnectRequest) -> (String, String) {
    let room = if request.room_name.is_empty() {
        request.user_id.clone()
    } else {
        request.room_name.clone()
    };
    let identity = if request.token.is_empty() {
        format!("cloud-agent:{}", request.user_id)
    } else {
        request.token.clone()
    };
    (room, identity)
}

impl SimRoom {
    /// Leaves the simulated server, unless a newer participant with its identity took its
    /// place.
    fn leave_server(&self) {
        let mut all = lock(participants());
        if all
            .get(&self.participant)
            .is_some_and(|life| Arc::ptr_eq(life, &self.life))
        {
            all.remove(&self.participant);
        }
    }
}

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
        let life = Arc::new(Lifetime {
            started: Instant::now(),
            stop_asked_ms: AtomicU64::new(u64::MAX),
            linger_ms: spec.linger_ms,
            kick_at: Mutex::new(None),
        });
        let (room_name, bridge_identity) = room_and_identity(&request);
        let participant = (server, room_name.clone(), bridge_identity);
        let older = lock(participants()).insert(participant.clone(), life.clone());
        let older = older.filter(|o| !o.stopping());
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

/// The tone's samples, one packet at a time: a sequence byte, then PCM16 LE.
struct Tone {
    packet: Vec<u8>,
    phase: f64,
    step: f64,
    /// `2 cos(step)`, the recurrence's factor.
    k: f64,
    amplitude: f64,
}

impl Tone {
    fn new(ctx: &Ctx) -> Self {
        Self::with(ctx.spec.hz, ctx.spec.level, ctx.frame_bytes())
    }

    fn with(hz: f64, level: f64, frame_bytes: usize) -> Self {
        let step = std::f64::consts::TAU * hz / f64::from(format::SAMPLE_RATE);
        Self {
            packet: vec![0u8; 1 + frame_bytes],
            phase: 0.0,
            step,
            k: 2.0 * step.cos(),
            amplitude: level * f64::from(i16::MAX),
        }
    }

    /// The next packet. Two sines per packet, then the recurrence
    /// `sin(x + h) = 2 cos(h) sin(x) - sin(x - h)` for its samples: a load test measures the
    /// bridge, not the simulator's sine (a `sin` per sample was a third of its CPU at 1,000
    /// rooms). Restarting from the tracked phase every packet keeps the error at rounding.
    fn next(&mut self, seq: u64) -> &[u8] {
        self.packet[0] = seq as u8;
        let k = self.k;
        let (mut prev, mut cur) = ((self.phase - self.step).sin(), self.phase.sin());
        let mut n = 0usize;
        for s in self.packet[1..].chunks_exact_mut(2) {
            s.copy_from_slice(&((cur * self.amplitude) as i16).to_le_bytes());
            (prev, cur) = (cur, k * cur - prev);
            n += 1;
        }
        self.phase = (self.phase + self.step * n as f64) % std::f64::consts::TAU;
        &self.packet
    }
}

/// A real-time tone on a pacer: one packet every `frame_ms`, on schedule (a late pacer catches
/// up packet by packet, as a real room's jitter buffer would release them), until `frames` are
/// sent; then it idles until the room's lifetime is over.
struct ToneJob {
    ctx: Ctx,
    tone: Tone,
    period: Duration,
    next: Option<Instant>,
    seq: u64,
    _alive: Alive,
}

impl ToneJob {
    fn new(ctx: Ctx, alive: Alive) -> Self {
        Self {
            tone: Tone::new(&ctx),
            period: Duration::from_millis(ctx.spec.frame_ms.into()),
            ctx,
            next: None,
            seq: 0,
            _alive: alive,
        }
    }
}

impl pacer::Job for ToneJob {
    fn step(&mut self, now: Instant) -> Option<Instant> {
        if self.ctx.life.over() {
            return None;
        }
        if self.ctx.spec.frames.is_some_and(|n| self.seq >= n) {
            return Some(now + IDLE_POLL);
        }
        let packet = self.tone.next(self.seq);
        self.ctx.deliver(packet);
        self.seq += 1;
        let next = self.next.unwrap_or(now) + self.period;
        self.next = Some(next);
        Some(next)
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
            self.leave_server();
            lock(&self.echo).take();
            lock(&self.tracks).remove(&self.room_name);
        })
    }
}

impl Drop for SimRoom {
    fn drop(&mut self) {
        self.life.ask_stop();
        self.leave_server();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tone_matches_a_sine_per_sample_to_the_last_bit() {
        for hz in [440.0, 1000.0, 7999.5] {
            let mut tone = Tone::with(hz, 0.5, 320);
            let step = std::f64::consts::TAU * hz / f64::from(format::SAMPLE_RATE);
            let mut worst = 0i32;
            for seq in 0..6000u64 {
                let packet = tone.next(seq).to_vec();
                assert_eq!(packet[0], seq as u8);
                for (i, s) in packet[1..].chunks_exact(2).enumerate() {
                    let n = seq as f64 * 160.0 + i as f64;
                    let want = ((step * n).sin() * 0.5 * f64::from(i16::MAX)) as i32;
                    let got = i32::from(i16::from_le_bytes([s[0], s[1]]));
                    worst = worst.max((got - want).abs());
                }
            }
            assert!(worst <= 1, "{hz} Hz: {worst} LSB off after 60 s");
        }
    }

    #[test]
    fn the_grammar_parses_and_rejects_clearly() {
        let kicked = SimSpec::parse("sim://silent?drop_after_ms=5&drop_reason=removed&server=s1")
            .expect("valid");
        assert_eq!(kicked.drop_reason, DisconnectCause::Removed);
        assert_eq!(kicked.server.as_deref(), Some("s1"));
        assert!(SimSpec::parse("sim://silent?drop_reason=bored").is_err());
        let s = SimSpec::parse("sim://tone?hz=1000&frame_ms=20&pace=max&fail=room%20full")
            .expect("valid");
        assert_eq!(
            (s.mode, s.hz, s.frame_ms, s.pace),
            (Mode::Tone, 1000.0, 20, Pace::Max)
        );
        assert_eq!(s.fail.as_deref(), Some("room full"));
        assert_eq!(SimSpec::parse("sim://echo").map(|s| s.mode), Ok(Mode::Echo));
        for bad in [
            "sim://noise",
            "sim://",
            "sim://?hz=440",
            "sim://tone?hz=440&hz=441",
            "sim://tone?frame_ms=0",
            "sim://tone?hz=abc",
            "sim://tone?colour=red",
            "sim://tone?fail=%zz",
            "ws://tone",
        ] {
            let err = SimSpec::parse(bad).expect_err(bad);
            assert!(matches!(err, RoomError::InvalidUrl(_)), "{bad}: {err}");
        }
    }
}

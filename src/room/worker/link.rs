//! The front's side of one room worker: its requests and their answers, its room events, its
//! slots, its doorbell, and what happens when it dies.
//!
//! A slot is held by two parties: the front (the session's consumer and closer) and the worker
//! (its producer). It is reset and reused only when both have let it go: the front when the
//! session's last ring handle is dropped, the worker when it says `Released` (its producer,
//! closed, is gone with the room's last callback). A dead worker releases nothing: its region
//! goes with it, and its replacement gets a new one.
//!
//! A track ring (audio into the room, one per published track) is held the same way: by the
//! front while its writer lives, by the worker from the `OpenTrack` it answered Done until it
//! says `TrackReleased`; reset and reused when both have let it go.
//!
//! When the worker dies, the front, for every slot in use, abandons the ring (so nothing waits
//! for a claim the dead process held) and closes the session as lost, with a reason naming the
//! exit, and closes every track ring, so a writer waiting for space learns of the death: its stream ends UNAVAILABLE `room_lost`, and the backend rejoins. It learns of the
//! death from the worker's lifeline (`super::lifeline`) as the worker's main thread begins to
//! exit, or else when its control socket ends; it ends a worker that sends nonsense or stops
//! answering for [`HEARTBEAT_LAPSE`] itself. It reaps the process once its teardown is done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::lifeline;
use super::process::{self, KickBell};
use super::region::Region;
use super::wire::{self, WireError, proto};
use crate::audio::mapped::{MappedCloser, MappedConsumer, SlotWaker};
use crate::audio::track_ring::{TrackRingCloser, TrackRingWriter};
use crate::audio::{Closer, Consumer};
use crate::room::{
    Disconnect, DisconnectCause, RingSlot, RoomError, RoomEvents, SessionRing, TrackStats, unix_ms,
};

/// A worker that has sent nothing (not even its counters, every
/// [`STATS_EVERY`](super::serve::STATS_EVERY)) for this long is taken for dead.
pub const HEARTBEAT_LAPSE: Duration = Duration::from_secs(5);

/// A worker whose lifeline said it is exiting and which has not become a zombie after this
/// long is killed (a thread stuck in the kernel); its sessions ended when the lifeline spoke.
const TEARDOWN_LAPSE: Duration = Duration::from_secs(30);

const FRONT: u8 = 0b01;
const WORKER: u8 = 0b10;

/// A worker's answer to one request.
pub(super) enum Answer {
    Joined(proto::Joined),
    Done,
}

struct SlotUse {
    /// Who still holds the slot (`FRONT | WORKER`).
    holders: u8,
    /// The session's callbacks, from the join until the worker releases the slot.
    events: Option<Arc<dyn RoomEvents>>,
}

struct TrackUse {
    /// Who still holds the track ring (`FRONT | WORKER`).
    holders: u8,
    /// Why the worker stopped publishing it, if it said.
    failure: Option<RoomError>,
}

#[derive(Default)]
struct Table {
    pending: HashMap<u64, oneshot::Sender<Result<Answer, RoomError>>>,
    slots: HashMap<u32, SlotUse>,
    free: Vec<u32>,
    tracks: HashMap<u32, TrackUse>,
    free_tracks: Vec<u32>,
    /// The worker takes no new session (it is being retired).
    draining: bool,
}

pub(super) struct Link {
    pub number: u64,
    pub pid: u32,
    region: Arc<Region>,
    wakers: Vec<Arc<SlotWaker>>,
    /// The track rings' writers' wakers, woken by the front's doorbell.
    track_wakers: Vec<Arc<SlotWaker>>,
    /// Rings the worker when a track ring has PCM (its bit is the ring's number).
    track_bell: Arc<KickBell>,
    out: mpsc::UnboundedSender<proto::ToWorker>,
    next_id: AtomicU64,
    table: Mutex<Table>,
    stats: Mutex<TrackStats>,
    /// When (unix ms) the worker last sent anything.
    heard_ms: AtomicI64,
    /// Why the worker died, once it has.
    death: OnceLock<String>,
    dead: CancellationToken,
    /// Cancelled to let the worker go: the front closes its end of the control socket, and
    /// the worker, holding no session, exits.
    retired: CancellationToken,
}

/// Keeps a slot for the front while the session's ring handles live, or a track ring while
/// its writer does: the owner of their memory, whose drop lets go of it.
struct Lease {
    link: Weak<Link>,
    index: u32,
    /// [`Link::let_go`] for a slot, [`Link::let_go_track`] for a track ring.
    let_go: fn(&Link, u32, u8),
    _region: Arc<Region>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(link) = self.link.upgrade() {
            (self.let_go)(&link, self.index, FRONT);
        }
    }
}

/// A track ring opened for a session: its writer, and the ring's number for its errors.
pub(super) struct OpenTrack {
    pub ring: u32,
    pub writer: TrackRingWriter,
}

impl Link {
    pub(super) fn new(
        number: u64,
        pid: u32,
        region: Arc<Region>,
        track_kick: std::os::fd::OwnedFd,
        out: mpsc::UnboundedSender<proto::ToWorker>,
    ) -> Self {
        let shape = region.shape();
        Self {
            number,
            pid,
            wakers: (0..shape.slots)
                .map(|_| Arc::new(SlotWaker::new()))
                .collect(),
            track_wakers: (0..shape.tracks)
                .map(|_| Arc::new(SlotWaker::new()))
                .collect(),
            track_bell: Arc::new(KickBell {
                doorbell: region.track_doorbell(region.clone()),
                kick: track_kick,
            }),
            table: Mutex::new(Table {
                free: (0..shape.slots).rev().collect(),
                free_tracks: (0..shape.tracks).rev().collect(),
                ..Table::default()
            }),
            region,
            out,
            next_id: AtomicU64::new(1),
            stats: Mutex::default(),
            heard_ms: AtomicI64::new(unix_ms()),
            death: OnceLock::new(),
            dead: CancellationToken::new(),
            retired: CancellationToken::new(),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn is_alive(&self) -> bool {
        !self.dead.is_cancelled()
    }

    /// Resolves once the worker is known to be dying (its sessions have ended), which may be
    /// before it is reaped.
    pub(super) fn died(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.dead.clone().cancelled_owned()
    }

    /// Sessions whose room is in this worker now: slots the worker has not let go. A session
    /// that has ended keeps its slot on the front's side until it is forgotten (GetStatus
    /// reports it meanwhile), but its room, and its cost, are gone from the worker.
    pub(super) fn load(&self) -> usize {
        Self::rooms(&self.table())
    }

    fn rooms(t: &Table) -> usize {
        t.slots.values().filter(|u| u.holders & WORKER != 0).count()
    }

    pub(super) fn stats(&self) -> TrackStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes no new session from now on; the sessions it has carry on.
    pub(super) fn stop_taking_sessions(&self) {
        self.table().draining = true;
    }

    /// Lets a worker that takes no new session go once no room is left in it (it has let every
    /// slot go; ended sessions the front still remembers keep only the front's side, in
    /// memory the front owns too); true if it was let go.
    pub(super) fn retire_if_empty(&self) -> bool {
        let t = self.table();
        if !t.draining || Self::rooms(&t) > 0 {
            return false;
        }
        self.retired.cancel();
        true
    }

    /// A free slot's ring, or `None` when the worker is dead, full or takes no new session.
    pub(super) fn ring(self: &Arc<Self>) -> Option<SessionRing> {
        if !self.is_alive() {
            return None;
        }
        let slot = {
            let mut t = self.table();
            if t.draining {
                return None;
            }
            let slot = t.free.pop()?;
            t.slots.insert(
                slot,
                SlotUse {
                    holders: FRONT | WORKER,
                    events: None,
                },
            );
            slot
        };
        let lease: Arc<dyn Send + Sync> = Arc::new(Lease {
            link: Arc::downgrade(self),
            index: slot,
            let_go: Self::let_go,
            _region: self.region.clone(),
        });
        let memory = self.region.slot(slot, lease)?;
        let waker = self.wakers[slot as usize].clone();
        Some(SessionRing {
            producer: None,
            consumer: Consumer::Mapped(MappedConsumer::new(memory.clone(), waker.clone())),
            closer: Closer::Mapped(MappedCloser::new(memory, waker)),
            slot: Some(RingSlot {
                worker: self.number,
                index: slot,
            }),
        })
    }

    /// One holder lets the slot go; the last one makes it free again. The worker letting go
    /// means its producer is gone: the front closes the ring then if its session still holds
    /// it (the producer does not, so that the room's last event, read before, says first why
    /// the room ended; `MappedProducer::closed_by_the_consumer`).
    fn let_go(&self, slot: u32, holder: u8) {
        // The session's callbacks may hold its last reference, and with it the slot's lease,
        // whose drop comes back here: they are dropped after the table's lock.
        let (_events, close) = self.let_go_locked(slot, holder).unzip();
        if close == Some(true)
            && let Some(closer) = self.closer(slot)
        {
            closer.close();
        }
    }

    /// A closer of the ring in `slot`, for the front's own closes (the link keeps the region
    /// mapped while it uses it).
    fn closer(&self, slot: u32) -> Option<MappedCloser> {
        let memory = self.region.slot(slot, Arc::new(()))?;
        Some(MappedCloser::new(
            memory,
            self.wakers[slot as usize].clone(),
        ))
    }

    /// The session's callbacks, if the worker let go, and whether the front still holds the
    /// slot.
    fn let_go_locked(&self, slot: u32, holder: u8) -> Option<(Option<Arc<dyn RoomEvents>>, bool)> {
        let mut t = self.table();
        let u = t.slots.get_mut(&slot)?;
        u.holders &= !holder;
        let front_holds = u.holders & FRONT != 0;
        let events = if holder == WORKER {
            u.events.take()
        } else {
            None
        };
        if u.holders == 0 {
            t.slots.remove(&slot);
            if let Some(memory) = self.region.slot(slot, Arc::new(())) {
                memory.header().reset();
            }
            t.free.push(slot);
        }
        Some((events, holder == WORKER && front_holds))
    }

    /// The join for `slot` was never sent: the worker holds nothing of it.
    pub(super) fn never_sent(&self, slot: u32) {
        self.let_go(slot, WORKER);
    }

    /// Opens a track ring for the session in `slot`, publishing into its room's track called
    /// `track`: the worker makes the track (or says why it cannot) before this returns.
    pub(super) async fn open_track(
        self: &Arc<Self>,
        slot: u32,
        track: &str,
    ) -> Result<OpenTrack, RoomError> {
        let ring = {
            let mut t = self.table();
            let Some(ring) = t.free_tracks.pop() else {
                return Err(RoomError::Unavailable(format!(
                    "the room's worker process has no free track ring (all {} are publishing)",
                    self.track_wakers.len()
                )));
            };
            t.tracks.insert(
                ring,
                TrackUse {
                    holders: FRONT | WORKER,
                    failure: None,
                },
            );
            ring
        };
        // From here the front's hold is the lease's: dropped with the writer, or on failure.
        let lease: Arc<dyn Send + Sync> = Arc::new(Lease {
            link: Arc::downgrade(self),
            index: ring,
            let_go: Self::let_go_track,
            _region: self.region.clone(),
        });
        let opened = self.request(proto::to_worker::Op::OpenTrack(proto::OpenTrack {
            slot,
            track: track.to_string(),
            ring,
        }));
        // A worker that could not open the ring says so with TrackReleased too, whether or not
        // anyone still waits for this answer.
        opened.await?;
        let (Some(memory), Some(waker)) = (
            self.region.track(ring, lease),
            self.track_wakers.get(ring as usize),
        ) else {
            return Err(RoomError::Library(format!(
                "track ring {ring} is out of range"
            )));
        };
        Ok(OpenTrack {
            ring,
            writer: TrackRingWriter::new(memory, ring, waker.clone(), self.track_bell.clone()),
        })
    }

    /// Why a track ring's writer found it closed: what the worker said, its death, or the room
    /// being left.
    pub(super) fn track_error(&self, ring: u32) -> RoomError {
        let failure = self
            .table()
            .tracks
            .get_mut(&ring)
            .and_then(|u| u.failure.clone());
        failure.unwrap_or_else(|| match self.death.get() {
            Some(why) => RoomError::NotConnected(why.clone()),
            None => RoomError::NotConnected("the room was left".into()),
        })
    }

    /// A closer of track ring `ring`, for the front's own closes.
    fn track_closer(&self, ring: u32) -> Option<TrackRingCloser> {
        let memory = self.region.track(ring, Arc::new(()))?;
        let waker = self.track_wakers.get(ring as usize)?.clone();
        Some(TrackRingCloser::new(
            memory,
            ring,
            waker,
            self.track_bell.clone(),
        ))
    }

    /// One holder lets a track ring go; the last one makes it free again.
    fn let_go_track(&self, ring: u32, holder: u8) {
        let mut t = self.table();
        let Some(u) = t.tracks.get_mut(&ring) else {
            return;
        };
        u.holders &= !holder;
        if u.holders == 0 {
            t.tracks.remove(&ring);
            if let Some(memory) = self.region.track(ring, Arc::new(())) {
                memory.header().reset();
            }
            t.free_tracks.push(ring);
        }
    }

    /// The worker could not publish a track ring's audio: its writer learns why, then of the
    /// close.
    fn track_failed(&self, ring: u32, why: RoomError) {
        match self.table().tracks.get_mut(&ring) {
            Some(u) => u.failure = Some(why),
            None => return,
        }
        if let Some(closer) = self.track_closer(ring) {
            closer.close();
        }
    }

    /// Sends a request; its answer, or why there will be none.
    pub(super) fn request(
        &self,
        op: proto::to_worker::Op,
    ) -> impl Future<Output = Result<Answer, RoomError>> + Send + 'static {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let sent = if let Some(why) = self.death.get() {
            Err(why.clone())
        } else {
            self.table().pending.insert(id, tx);
            self.out
                .send(proto::ToWorker { id, op: Some(op) })
                .map_err(|_| "the room's worker process is gone".to_string())
        };
        async move {
            sent.map_err(RoomError::NotConnected)?;
            rx.await.unwrap_or_else(|_| {
                Err(RoomError::NotConnected(
                    "the room's worker process is gone".into(),
                ))
            })
        }
    }

    /// The session in `slot` takes its room's events from now on.
    pub(super) fn attach(&self, slot: u32, events: Arc<dyn RoomEvents>) {
        if let Some(u) = self.table().slots.get_mut(&slot) {
            u.events = Some(events);
        }
    }

    fn events(&self, slot: u32) -> Option<Arc<dyn RoomEvents>> {
        self.table().slots.get(&slot).and_then(|u| u.events.clone())
    }

    fn answer(&self, id: u64, answer: Result<Answer, RoomError>) {
        if let Some(tx) = self.table().pending.remove(&id) {
            let _ = tx.send(answer);
        }
    }

    /// One message from the worker.
    fn take(&self, m: proto::FromWorker) {
        use proto::from_worker::Op;
        self.heard_ms.store(unix_ms(), Ordering::Relaxed);
        match m.op {
            Some(Op::Joined(j)) => self.answer(m.id, Ok(Answer::Joined(j))),
            Some(Op::Done(_)) => self.answer(m.id, Ok(Answer::Done)),
            Some(Op::Failed(f)) => self.answer(m.id, Err(wire::room_error(f))),
            Some(Op::Event(e)) => {
                let Some(events) = self.events(e.slot) else {
                    return;
                };
                match e.event {
                    Some(proto::room_event::Event::Participants(n)) => events.on_participants(n),
                    Some(proto::room_event::Event::Reconnecting(r)) => events.on_reconnecting(r),
                    Some(proto::room_event::Event::Disconnected(d)) => {
                        events.on_disconnected(wire::disconnect(d));
                    }
                    None => {}
                }
            }
            Some(Op::Released(r)) => self.let_go(r.slot, WORKER),
            Some(Op::TrackFailed(f)) => {
                let why = f.failed.map_or_else(
                    || RoomError::Library("the worker failed a track without saying why".into()),
                    wire::room_error,
                );
                self.track_failed(f.ring, why);
            }
            Some(Op::TrackReleased(r)) => self.let_go_track(r.ring, WORKER),
            Some(Op::Stats(s)) => {
                *self.stats.lock().unwrap_or_else(PoisonError::into_inner) = TrackStats {
                    routed: s.routed,
                    unrouted: s.unrouted,
                    streams: s.streams as usize,
                    published_underruns: s.published_underruns,
                };
            }
            Some(Op::Hello(_)) | None => {}
        }
    }

    /// The worker is dead (reaped): abandon and close every ring, end every session as lost,
    /// fail every request waiting.
    /// Once: the first word on a death (the lifeline's, or the reaper's) is what the sessions
    /// are told.
    fn die(&self, why: String, retired: bool) {
        if self.death.set(why.clone()).is_err() {
            return;
        }
        self.dead.cancel();
        let (pending, slots, tracks) = {
            let mut t = self.table();
            (
                std::mem::take(&mut t.pending),
                t.slots
                    .iter_mut()
                    .map(|(slot, u)| (*slot, u.events.take()))
                    .collect::<Vec<_>>(),
                t.tracks.keys().copied().collect::<Vec<_>>(),
            )
        };
        for ring in tracks {
            if let Some(closer) = self.track_closer(ring) {
                closer.close();
            }
        }
        let mut in_flight = 0;
        for (slot, events) in slots {
            if let Some(closer) = self.closer(slot) {
                in_flight += usize::from(closer.abandon());
                if let Some(events) = events {
                    events.on_disconnected(Disconnect {
                        cause: DisconnectCause::Lost,
                        reason: why.clone(),
                    });
                }
                closer.close();
            }
        }
        for (_, tx) in pending {
            let _ = tx.send(Err(RoomError::NotConnected(why.clone())));
        }
        if retired {
            tracing::info!(worker = self.number, pid = self.pid, "room worker retired");
        } else {
            tracing::error!(
                worker = self.number,
                %why,
                pushes_cut_short = in_flight,
                "room worker died; its sessions end as lost"
            );
        }
    }
}

/// Everything one worker process needs from the front, started.
pub(super) struct Started {
    pub link: Arc<Link>,
    /// Resolves once the worker is reaped and its sessions ended.
    pub exited: oneshot::Receiver<Exit>,
}

/// How a worker ended, for the metrics.
pub(super) struct Exit {
    /// A signal's name, `exit`, `unresponsive`, `protocol` or `retired`.
    pub kind: &'static str,
    /// Its CPU seconds, all told.
    pub cpu_seconds: f64,
}

/// Starts the tasks of a spawned worker: the writer, the reader, the doorbell and the
/// supervisor that reaps it. `exited` resolves with why it died, after its sessions ended.
pub(super) fn start(
    number: u64,
    region: Arc<Region>,
    kick: std::os::fd::OwnedFd,
    track_kick: std::os::fd::OwnedFd,
    control: tokio::net::UnixStream,
    child: tokio::process::Child,
    hello: proto::Hello,
) -> std::io::Result<Started> {
    let (rd, mut wr) = control.into_split();
    let (out, mut outgoing) = mpsc::unbounded_channel::<proto::ToWorker>();
    let pid = child.id().unwrap_or(0);
    let link = Arc::new(Link::new(number, pid, region, track_kick, out.clone()));
    let _ = out.send(proto::ToWorker {
        id: 0,
        op: Some(proto::to_worker::Op::Hello(hello)),
    });
    let dead = link.dead.clone();
    let retired = link.retired.clone();
    tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                m = outgoing.recv() => m,
                () = dead.cancelled() => None,
                () = retired.cancelled() => None,
            };
            let Some(m) = m else { break };
            if wr.write_all(&wire::encode(&m)).await.is_err() {
                break;
            }
        }
    });
    let kick = Arc::new(kick);
    {
        let (link, kick) = (link.clone(), kick.clone());
        std::thread::Builder::new()
            .name("worker-doorbell".into())
            .spawn(move || ring_doorbell(&link, &kick))?;
    }
    {
        // The doorbell's thread learns of the death from one last kick.
        let (link, kick) = (link.clone(), kick.clone());
        tokio::spawn(async move {
            link.died().await;
            process::kick(&kick);
        });
    }
    let (exited_tx, exited) = oneshot::channel();
    tokio::spawn(supervise(link.clone(), rd, child, exited_tx));
    Ok(Started { link, exited })
}

/// How long the doorbell is left unkicked while marks keep coming: producers mark without a
/// system call, and the front looks at the marks this often instead of being woken for each
/// frame (BENCHMARKS.md, "The ring across the process boundary"). A frame that comes meanwhile
/// waits at most this long more.
const COALESCE: Duration = Duration::from_micros(200);

/// The doorbell's thread: wakes the sessions whose producers marked the doorbell, and the
/// track writers whose rings the worker made room in, after each kick and then every
/// [`COALESCE`] for as long as marks keep coming. A thread of its own, as the runtime's timers
/// cannot wait less than a millisecond; it ends when the worker dies.
fn ring_doorbell(link: &Link, kick: &std::os::fd::OwnedFd) {
    let doorbell = link.region.doorbell(link.region.clone());
    // A session ring's bit is its slot; a track ring's comes after the slots'.
    let slots = link.wakers.len();
    let wake = |bit: u32| {
        let bit = bit as usize;
        let waker = match bit.checked_sub(slots) {
            None => link.wakers.get(bit),
            Some(ring) => link.track_wakers.get(ring),
        };
        if let Some(w) = waker {
            w.wake();
        }
    };
    while link.is_alive() {
        match process::wait_readable(kick, Duration::from_secs(1))
            .and_then(|_| process::drain(kick))
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(worker = link.number, error = %e, "room worker doorbell failed");
                return;
            }
        }
        doorbell.take_coalescing(wake, || {
            std::thread::sleep(COALESCE);
            link.is_alive()
        });
    }
}

async fn supervise(
    link: Arc<Link>,
    mut rd: OwnedReadHalf,
    mut child: tokio::process::Child,
    exited: oneshot::Sender<Exit>,
) {
    let pid = child.id().unwrap_or(0);
    let mut buf = Vec::new();
    let mut lapse = tokio::time::interval(Duration::from_secs(1));
    let mut lifeline: Option<Lifeline> = None;
    let mut watched = false;
    let ending = loop {
        let dying = async {
            match &mut lifeline {
                Some(rx) => rx.await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = wire::read::<proto::FromWorker>(&mut rd, &mut buf) => match m {
                Ok(Some(m)) => {
                    if !watched && matches!(m.op, Some(proto::from_worker::Op::Hello(_))) {
                        watched = true;
                        lifeline = watch_lifeline(&link, pid);
                    }
                    link.take(m);
                }
                // The socket ending or failing (a peer that dies with bytes unread resets
                // it) is how a death shows when the lifeline could not tell.
                Ok(None) => break Ending::Closed,
                Err(WireError::Io(_)) => break Ending::Closed,
                Err(e) => break Ending::Broke("protocol", format!("it sent {e}")),
            },
            status = dying => match status {
                Some(status) => break Ending::Dying(status),
                None => lifeline = None,
            },
            _ = lapse.tick() => {
                let quiet = unix_ms() - link.heard_ms.load(Ordering::Relaxed);
                if quiet > HEARTBEAT_LAPSE.as_millis() as i64 {
                    break Ending::Broke(
                        "unresponsive",
                        format!("it stopped answering for {} s", quiet / 1000),
                    );
                }
            }
        }
    };
    let ending_at = std::time::Instant::now();
    let dying = matches!(ending, Ending::Dying(_));
    // A worker whose main thread is exiting is told to its sessions at once: the teardown of
    // its memory, after which it can be reaped, can take seconds on a busy machine.
    if let Ending::Dying(status) = ending {
        let (kind, why) = account(&link, pid, None, false, status);
        link.die(why, kind == "retired");
    }
    // A worker whose socket ended is dying too: it gets a second to end by itself, so its own
    // exit is what the sessions are told. One still alive then, one whose lifeline said it is
    // exiting but which is not done after [`TEARDOWN_LAPSE`], and one that broke the protocol
    // or stopped answering, are killed.
    let mut final_cpu = match ending {
        Ending::Broke(..) => None,
        Ending::Closed => process::final_cpu(pid, Duration::from_secs(1)).await,
        Ending::Dying(_) => process::final_cpu(pid, TEARDOWN_LAPSE).await,
    };
    let killed = final_cpu.is_none();
    if killed {
        let _ = child.start_kill();
        final_cpu = process::final_cpu(pid, Duration::from_secs(1)).await;
    }
    let status = match child.wait().await {
        Ok(status) => Some(status),
        Err(e) => {
            tracing::warn!(worker = link.number, pid, error = %e, "cannot reap the room worker: its exit status is unknown");
            None
        }
    };
    let cause = match ending {
        Ending::Broke(kind, cause) => Some((kind, cause)),
        Ending::Closed | Ending::Dying(_) => None,
    };
    let closed = killed && cause.is_none() && !dying;
    let (kind, why) = account(&link, pid, cause, closed, status);
    tracing::info!(
        worker = link.number,
        pid,
        exit = %status.map_or_else(|| "unknown".into(), describe),
        after_ms = ending_at.elapsed().as_millis() as u64,
        "room worker reaped"
    );
    link.die(why, kind == "retired");
    let _ = exited.send(Exit {
        kind,
        cpu_seconds: final_cpu.unwrap_or(0.0),
    });
}

/// How the front learnt that a worker is ending.
enum Ending {
    /// Its lifeline: its main thread is exiting, with this wait status if `/proc` showed it.
    Dying(Option<std::process::ExitStatus>),
    /// Its control socket ended.
    Closed,
    /// It broke the protocol or stopped answering: the front ends it (kind, cause).
    Broke(&'static str, String),
}

/// The lifeline's word: the worker's main thread is exiting, with this wait status.
type Lifeline = oneshot::Receiver<Option<std::process::ExitStatus>>;

fn watch_lifeline(link: &Link, pid: u32) -> Option<Lifeline> {
    match lifeline::watch(link.region.clone(), pid) {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!(worker = link.number, error = %e, "cannot watch the room worker's lifeline; its death shows when its control socket closes");
            None
        }
    }
}

/// The kind of a worker's end (for the metrics) and why its sessions ended (for them): the
/// front's cause if it ended the worker, else how the process ended.
fn account(
    link: &Link,
    pid: u32,
    cause: Option<(&'static str, String)>,
    killed_after_closing: bool,
    status: Option<std::process::ExitStatus>,
) -> (&'static str, String) {
    let kind = status.and_then(signal_name).unwrap_or("exit");
    let exit = status.map_or_else(|| "its exit status is unknown".into(), describe);
    match (cause, killed_after_closing) {
        (Some((kind, cause)), _) => (
            kind,
            format!("the room's worker process (pid {pid}) was ended: {cause}"),
        ),
        (None, true) => (
            "protocol",
            format!(
                "the room's worker process (pid {pid}) was ended: it closed its control socket"
            ),
        ),
        (None, false) if link.retired.is_cancelled() && status.is_some_and(|s| s.success()) => (
            "retired",
            format!("the room's worker process (pid {pid}) was retired"),
        ),
        (None, false) => (
            kind,
            format!("the room's worker process (pid {pid}) died ({exit})"),
        ),
    }
}

fn signal_name(status: std::process::ExitStatus) -> Option<&'static str> {
    use std::os::unix::process::ExitStatusExt;
    Some(match status.signal()? {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    })
}

/// How a process ended, in an operator's words: `signal 11, SIGSEGV` or `exit status 3`.
pub(super) fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        return match signal_name(status) {
            Some("signal") | None => format!("signal {signal}"),
            Some(name) => format!("signal {signal}, {name}"),
        };
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => "unknown exit".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::worker::region::{self, Shape};
    use proto::from_worker::Op;

    #[test]
    fn a_retired_worker_takes_no_session_and_goes_only_once_empty() {
        let shape = Shape {
            slots: 2,
            capacity: 4096,
            tracks: 2,
        };
        let region = Arc::new(Region::create(shape).expect("a region"));
        let (out, _to_worker) = mpsc::unbounded_channel();
        let kick = process::eventfd().expect("an eventfd");
        let link = Arc::new(Link::new(0, 0, region, kick, out));
        let ring = link.ring().expect("a free slot");
        let slot = ring.slot.as_ref().expect("a worker slot").index;
        assert!(!link.retire_if_empty(), "not draining yet");
        link.stop_taking_sessions();
        assert!(link.ring().is_none(), "a draining worker takes no session");
        assert!(!link.retire_if_empty(), "its session carries on");
        assert_eq!(link.load(), 1);
        link.let_go(slot, WORKER);
        assert_eq!(
            link.load(),
            0,
            "an ended session's room is gone from the worker"
        );
        assert!(
            link.retire_if_empty(),
            "the front's memory of the session is not a room"
        );
        assert!(link.retired.is_cancelled());
        drop(ring);
    }

    #[tokio::test]
    async fn a_track_writer_learns_why_its_ring_closed_and_the_ring_is_reused_only_when_free() {
        let shape = Shape {
            slots: 1,
            capacity: 4096,
            tracks: 1,
        };
        let region = Arc::new(Region::create(shape).expect("a region"));
        let (out, mut to_worker) = mpsc::unbounded_channel();
        let kick = process::eventfd().expect("an eventfd");
        let link = Arc::new(Link::new(0, 0, region, kick, out));
        let from_worker = |id, op| proto::FromWorker { id, op: Some(op) };
        let open = |link: &Arc<Link>| {
            let link = link.clone();
            tokio::spawn(async move { link.open_track(0, "speaker").await })
        };
        let opening = open(&link);
        let request = to_worker.recv().await.expect("OpenTrack");
        assert!(matches!(
            request.op,
            Some(proto::to_worker::Op::OpenTrack(proto::OpenTrack {
                ring: 0,
                ..
            }))
        ));
        link.take(from_worker(request.id, Op::Done(proto::Done {})));
        let mut track = opening.await.expect("the task").expect("opened");
        assert!(track.writer.write(&[1; 64]).await.is_ok());
        let busy = open(&link).await.expect("the task");
        assert!(
            matches!(busy, Err(RoomError::Unavailable(_))),
            "one ring, in use"
        );

        // The worker's room refuses the audio: the writer's next write fails, saying why.
        let refused = RoomError::NotConnected("LiveKit revoked the permission to publish".into());
        let failed = proto::TrackFailed {
            ring: 0,
            failed: Some(wire::failed(&refused)),
        };
        link.take(from_worker(0, Op::TrackFailed(failed)));
        assert!(track.writer.write(&[1; 64]).await.is_err());
        assert_eq!(link.track_error(track.ring), refused);
        drop(track);
        let busy = open(&link).await.expect("the task");
        assert!(
            matches!(busy, Err(RoomError::Unavailable(_))),
            "the worker still holds the ring"
        );
        link.take(from_worker(
            0,
            Op::TrackReleased(proto::TrackReleased { ring: 0 }),
        ));
        let opening = open(&link);
        let request = to_worker.recv().await.expect("OpenTrack");
        assert!(matches!(
            request.op,
            Some(proto::to_worker::Op::OpenTrack(proto::OpenTrack {
                ring: 0,
                ..
            }))
        ));
        link.take(from_worker(request.id, Op::Done(proto::Done {})));
        let mut track = opening.await.expect("the task").expect("opened again");
        assert!(track.writer.write(&[1; 64]).await.is_ok(), "a fresh ring");

        // A writer waiting for room in the ring when the worker dies learns of the death.
        let full = region::TRACK_RING_BYTES;
        let waiting = tokio::spawn(async move {
            let written = track.writer.write(&vec![1; 2 * full]).await;
            (written, track.ring)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the ring is full");
        link.die("the room's worker process died (signal 9)".into(), false);
        let (written, ring) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the death")
            .expect("the task");
        assert!(written.is_err());
        assert_eq!(
            link.track_error(ring),
            RoomError::NotConnected("the room's worker process died (signal 9)".into())
        );
    }
}

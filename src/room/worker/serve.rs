//! The room worker's `main`: LiveKit's library in a process of its own, driven over the
//! control socket, pushing each session's audio into its ring in the shared memory.
//!
//! The worker is the in-process [`FfiBackend`] (or, for `sim://` rooms, the [`SimBackend`])
//! with a different [`RoomEvents`]: its sink
//! ([`WorkerSink`]) applies the same [`AudioFilter`] and pushes into the session's mapped ring
//! on the library's callback thread (no allocation, no lock, no call out but the doorbell's
//! kick while the consumer sleeps); the room's other events go to the front as messages.
//! Audio into the room comes the other way, one track ring per published track: a task per
//! track reads it and publishes what it reads (see `play_track`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::lifeline;
use super::process::{self, Inherited, KickBell};
use super::region::{Region, Shape};
use super::wire::{self, proto};
use crate::audio::mapped::{Bell, Doorbell, MappedProducer, SlotWaker};
use crate::audio::track_ring::{TrackRingCloser, TrackRingReader};
use crate::audio::{Overflow, PushOutcome};
use crate::logging::{self, LogFormat};
use crate::room::ffi::{FfiBackend, LibraryLogs};
use crate::room::sim::SimBackend;
use crate::room::{
    AudioFilter, ConnectRequest, DataKind, Disconnect, Room, RoomBackend, RoomError, RoomEvents,
    is_sim,
};

/// The hidden subcommand a worker runs.
pub const SUBCOMMAND: &str = "room-worker";
/// How often the worker sends its counters, which are also its heartbeat.
pub const STATS_EVERY: Duration = Duration::from_millis(500);

/// What a worker is started with, as its command line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerArgs {
    pub number: u64,
    pub library: PathBuf,
    pub joins_at_once: usize,
    pub library_logs: LibraryLogs,
    pub log_format: LogFormat,
    pub log_filter: String,
}

impl WorkerArgs {
    pub fn to_args(&self) -> Vec<String> {
        vec![
            SUBCOMMAND.into(),
            self.number.to_string(),
            self.library.display().to_string(),
            self.joins_at_once.to_string(),
            match self.library_logs {
                LibraryLogs::Captured => "captured".into(),
                LibraryLogs::Off => "off".into(),
            },
            match self.log_format {
                LogFormat::Text => "text".into(),
                LogFormat::Json => "json".into(),
            },
            self.log_filter.clone(),
        ]
    }

    pub fn parse(args: &[String]) -> Option<Self> {
        let [number, library, joins, logs, format, filter] = args else {
            return None;
        };
        Some(Self {
            number: number.parse().ok()?,
            library: library.into(),
            joins_at_once: joins.parse().ok()?,
            library_logs: match logs.as_str() {
                "captured" => LibraryLogs::Captured,
                "off" => LibraryLogs::Off,
                _ => return None,
            },
            log_format: match format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return None,
            },
            log_filter: filter.clone(),
        })
    }
}

/// The worker's `main` (arguments after the subcommand). Returns the exit status.
pub fn serve(args: &[String]) -> u8 {
    let Some(args) = WorkerArgs::parse(args) else {
        eprintln!(
            "usage: livekit-bridge {SUBCOMMAND} <number> <library> <joins at once> <captured|off> <text|json> <log filter>"
        );
        return 64;
    };
    if let Err(e) = logging::init(args.log_format, &args.log_filter) {
        eprintln!("{SUBCOMMAND}: {e}");
        return 64;
    }
    process::default_fault_signals();
    let fds = match Inherited::take() {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("{SUBCOMMAND}: {e}");
            return 64;
        }
    };
    // Two threads: the worker's own work is the control channel and the library's requests;
    // the library's media runs on its own threads, and a machine runs one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("room-worker")
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{SUBCOMMAND}: cannot start the runtime: {e}");
            return 71;
        }
    };
    let number = args.number;
    let code = runtime.block_on(run(fds, args));
    tracing::info!(worker = number, code, "room worker exiting");
    // The library's threads are not waited for: the front is gone or has let this worker go.
    std::process::exit(i32::from(code));
}

async fn run(fds: Inherited, args: WorkerArgs) -> u8 {
    let control = std::os::unix::net::UnixStream::from(fds.control);
    let control = match control
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(control))
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "room worker: cannot use its control socket");
            return 71;
        }
    };
    let (mut rd, mut wr) = control.into_split();
    let mut buf = Vec::new();
    let hello = match wire::read::<proto::ToWorker>(&mut rd, &mut buf).await {
        Ok(Some(proto::ToWorker {
            op: Some(proto::to_worker::Op::Hello(h)),
            ..
        })) => h,
        other => {
            tracing::error!(?other, "room worker: the front did not begin with Hello");
            return 65;
        }
    };
    if hello.version != wire::VERSION {
        tracing::error!(
            front = hello.version,
            worker = wire::VERSION,
            "room worker: protocol version mismatch"
        );
        return 65;
    }
    let shape = Shape {
        slots: hello.slots,
        capacity: hello.slot_capacity as usize,
        tracks: hello.tracks,
    };
    let region = match Region::map(fds.memory, shape) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            tracing::error!(error = %e, "room worker: cannot map the ring memory");
            return 71;
        }
    };
    // Before the HelloAck: the front watches the lifeline once it has that.
    if let Err(e) = lifeline::hold(region.clone()) {
        tracing::error!(error = %e, "room worker: cannot hold its lifeline");
        return 71;
    }
    let (out, mut outgoing) = mpsc::unbounded_channel::<proto::FromWorker>();
    tokio::spawn(async move {
        while let Some(m) = outgoing.recv().await {
            if wr.write_all(&wire::encode(&m)).await.is_err() {
                break;
            }
        }
    });
    let send = |m| {
        let _ = out.send(m);
    };
    send(answer(
        0,
        proto::from_worker::Op::Hello(proto::HelloAck {
            version: wire::VERSION,
            pid: std::process::id(),
        }),
    ));
    let bell = Arc::new(KickBell {
        doorbell: region.doorbell(region.clone()),
        kick: fds.kick,
    });
    let track_wakers: Arc<[Arc<SlotWaker>]> = (0..shape.tracks)
        .map(|_| Arc::new(SlotWaker::new()))
        .collect();
    let track_kick = match process::watch(fds.track_kick) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "room worker: cannot watch its track doorbell");
            return 71;
        }
    };
    tokio::spawn(ring_track_doorbell(
        region.track_doorbell(region.clone()),
        track_kick,
        track_wakers.clone(),
    ));
    let worker = Arc::new(Worker {
        backend: FfiBackend::new(args.library, args.joins_at_once, args.library_logs),
        sim: SimBackend::default(),
        track_bell: Arc::new(TrackBell {
            bell: bell.clone(),
            shape,
        }),
        bell,
        track_wakers,
        region,
        overflow: if hello.drop_oldest {
            Overflow::DropOldest
        } else {
            Overflow::DropNewest
        },
        out: out.clone(),
        slots: Mutex::default(),
    });
    tokio::spawn(send_stats(worker.clone()));
    tracing::info!(
        worker = args.number,
        slots = shape.slots,
        "room worker ready"
    );
    loop {
        match wire::read::<proto::ToWorker>(&mut rd, &mut buf).await {
            Ok(Some(m)) => worker.handle(m),
            Ok(None) => return 0,
            Err(e) => {
                tracing::error!(error = %e, "room worker: the control channel failed");
                return 74;
            }
        }
    }
}

fn answer(id: u64, op: proto::from_worker::Op) -> proto::FromWorker {
    proto::FromWorker { id, op: Some(op) }
}

fn failure(id: u64, e: &RoomError) -> proto::FromWorker {
    answer(id, proto::from_worker::Op::Failed(wire::failed(e)))
}

/// Track ring `ring` is the front's again.
fn released(ring: u32) -> proto::FromWorker {
    answer(
        0,
        proto::from_worker::Op::TrackReleased(proto::TrackReleased { ring }),
    )
}

fn done(id: u64) -> proto::FromWorker {
    answer(id, proto::from_worker::Op::Done(proto::Done {}))
}

async fn send_stats(worker: Arc<Worker>) {
    let mut every = tokio::time::interval(STATS_EVERY);
    loop {
        every.tick().await;
        let s = worker.backend.track_stats();
        let stats = proto::Stats {
            routed: s.routed,
            unrouted: s.unrouted,
            streams: s.streams as u64,
            published_underruns: s.published_underruns,
        };
        if worker
            .out
            .send(answer(0, proto::from_worker::Op::Stats(stats)))
            .is_err()
        {
            return;
        }
    }
}

/// The worker's doorbell: after each kick of the front, wakes the tasks whose track rings the
/// front has written to.
async fn ring_track_doorbell(
    doorbell: Doorbell,
    kick: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    wakers: Arc<[Arc<SlotWaker>]>,
) {
    loop {
        let Ok(mut ready) = kick.readable().await else {
            return;
        };
        match process::drain(kick.get_ref()) {
            Ok(true) => {}
            Ok(false) => {
                ready.clear_ready();
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "room worker: its track doorbell failed");
                return;
            }
        }
        doorbell.take(|ring| {
            if let Some(w) = wakers.get(ring as usize) {
                w.wake();
            }
        });
    }
}

/// A track ring's reader's bell: marks the ring's bit in the front's doorbell (after the
/// slots').
struct TrackBell {
    bell: Arc<KickBell>,
    shape: Shape,
}

impl Bell for TrackBell {
    fn ring(&self, ring: u32) {
        self.bell.ring(self.shape.track_bit(ring));
    }
}

enum Slot {
    /// Joining; `leave`: the front has left it meanwhile, so the room is left once joined.
    Joining { leave: bool },
    Joined {
        room: Arc<dyn Room>,
        /// The track rings opened for the room, closed when it is left.
        tracks: Vec<u32>,
    },
}

struct Worker {
    /// Real rooms; LiveKit's library is loaded at the first.
    backend: FfiBackend,
    /// Simulated rooms, when the front sends them here.
    sim: SimBackend,
    region: Arc<Region>,
    /// Rings the front when a session ring has audio (its bit is the slot).
    bell: Arc<KickBell>,
    /// Rings the front when a track ring has space.
    track_bell: Arc<TrackBell>,
    /// The track rings' readers' wakers, woken by the worker's doorbell.
    track_wakers: Arc<[Arc<SlotWaker>]>,
    overflow: Overflow,
    out: mpsc::UnboundedSender<proto::FromWorker>,
    slots: Mutex<HashMap<u32, Slot>>,
}

impl Worker {
    fn send(&self, m: proto::FromWorker) {
        let _ = self.out.send(m);
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn handle(self: &Arc<Self>, m: proto::ToWorker) {
        use proto::to_worker::Op;
        let id = m.id;
        match m.op {
            Some(Op::Join(j)) => self.join(id, j),
            Some(Op::Leave(l)) => self.leave(id, l.slot),
            Some(Op::OpenTrack(o)) => self.open_track(id, o),
            Some(Op::Hello(_)) | None => self.send(failure(
                id,
                &RoomError::Library("a room worker takes Join, Leave and OpenTrack".into()),
            )),
        }
    }

    fn join(self: &Arc<Self>, id: u64, j: proto::Join) {
        let slot = j.slot;
        let memory = self.region.slot(slot, self.region.clone());
        let Some(memory) = memory.filter(|_| !self.slots().contains_key(&slot)) else {
            self.send(failure(
                id,
                &RoomError::Library(format!("ring slot {slot} is out of range or in use")),
            ));
            return;
        };
        let source = wire::from_audio_source(j.audio_source());
        let sink = Arc::new(WorkerSink {
            slot,
            producer: Some(
                MappedProducer::new(memory, slot, self.overflow, self.bell.clone())
                    .closed_by_the_consumer(),
            ),
            filter: AudioFilter::new(&j.target_identity, source),
            out: self.out.clone(),
        });
        let timeout = Duration::from_millis(j.timeout_ms);
        let request = ConnectRequest {
            user_id: j.user_id,
            url: j.url,
            token: j.token,
            room_name: j.room_name,
            target_identity: j.target_identity,
            timeout,
            audio_source: source,
            ring: None,
        };
        self.slots().insert(slot, Slot::Joining { leave: false });
        let worker = self.clone();
        tokio::spawn(async move {
            let backend: &dyn RoomBackend = if is_sim(&request.url) {
                &worker.sim
            } else {
                &worker.backend
            };
            let connected = tokio::time::timeout(timeout, backend.connect(request, sink))
                .await
                .unwrap_or(Err(RoomError::Timeout(timeout)));
            let connected = match connected {
                Ok(c) => c,
                Err(e) => {
                    worker.slots().remove(&slot);
                    worker.send(failure(id, &e));
                    return;
                }
            };
            let room: Arc<dyn Room> = Arc::from(connected.room);
            let left = {
                let mut slots = worker.slots();
                let left = matches!(slots.get(&slot), Some(Slot::Joining { leave: true }) | None);
                if left {
                    slots.remove(&slot);
                } else {
                    slots.insert(
                        slot,
                        Slot::Joined {
                            room: room.clone(),
                            tracks: Vec::new(),
                        },
                    );
                }
                left
            };
            if left {
                room.disconnect().await;
                worker.send(failure(
                    id,
                    &RoomError::NotConnected("the session left while its room was joining".into()),
                ));
                return;
            }
            worker.send(answer(
                id,
                proto::from_worker::Op::Joined(proto::Joined {
                    participant_id: connected.participant_id,
                    participant_count: connected.participant_count,
                }),
            ));
        });
    }

    fn leave(&self, id: u64, slot: u32) {
        let room = {
            let mut slots = self.slots();
            match slots.remove(&slot) {
                Some(Slot::Joined { room, tracks }) => {
                    for ring in tracks {
                        if let Some(closer) = self.track_closer(ring) {
                            closer.close();
                        }
                    }
                    Some(room)
                }
                Some(Slot::Joining { .. }) => {
                    slots.insert(slot, Slot::Joining { leave: true });
                    None
                }
                None => None,
            }
        };
        let out = self.out.clone();
        tokio::spawn(async move {
            if let Some(room) = room {
                room.disconnect().await;
            }
            let _ = out.send(done(id));
        });
    }

    /// Closes track ring `ring` from this side: its reader's task ends, and a writer waiting in
    /// the front learns.
    fn track_closer(&self, ring: u32) -> Option<TrackRingCloser> {
        let memory = self.region.track(ring, self.region.clone())?;
        let waker = self.track_wakers.get(ring as usize)?.clone();
        Some(TrackRingCloser::new(
            memory,
            ring,
            waker,
            self.track_bell.clone(),
        ))
    }

    fn open_track(self: &Arc<Self>, id: u64, o: proto::OpenTrack) {
        let ring = o.ring;
        let memory = self.region.track(ring, self.region.clone());
        let (Some(memory), Some(waker)) = (memory, self.track_wakers.get(ring as usize)) else {
            self.send(failure(
                id,
                &RoomError::Library(format!("track ring {ring} is out of range")),
            ));
            return;
        };
        let room = match self.slots().get(&o.slot) {
            Some(Slot::Joined { room, .. }) => room.clone(),
            _ => {
                self.send(failure(
                    id,
                    &RoomError::NotConnected("the room is not joined".into()),
                ));
                return;
            }
        };
        let reader = TrackRingReader::new(memory, ring, waker.clone(), self.track_bell.clone());
        let worker = self.clone();
        tokio::spawn(async move {
            // The track is made (or refused: the server revoked the permission to publish)
            // before the front writes to it, so a refusal answers the open.
            let made = room.publish(&o.track, &[]).await;
            // The ring is the room's from here until its task forgets it, unless the room was
            // left meanwhile.
            let made = made.and_then(|()| {
                if worker.track_opened(o.slot, &room, ring) {
                    Ok(())
                } else {
                    Err(RoomError::NotConnected("the room was left".into()))
                }
            });
            if let Err(e) = made {
                // Closed before it is released, so the front may reuse it then.
                drop(reader);
                worker.send(failure(id, &e));
                worker.send(released(ring));
                return;
            }
            worker.send(done(id));
            worker.play_track(room, o.slot, o.track, reader, ring).await;
        });
    }

    /// Lists track ring `ring` as `slot`'s, for its room (`room`) to close when it is left;
    /// false if that room is left.
    fn track_opened(&self, slot: u32, room: &Arc<dyn Room>, ring: u32) -> bool {
        match self.slots().get_mut(&slot) {
            Some(Slot::Joined { room: r, tracks }) if Arc::ptr_eq(r, room) => {
                tracks.push(ring);
                true
            }
            _ => false,
        }
    }

    /// One published track: publishes what the front writes into its ring, in order, as the
    /// room takes it (the track's clock waits while it is ahead, and meanwhile the ring fills
    /// and the front's writer waits: the backpressure). A publish the room refuses is reported
    /// and the ring left for the front to close, so that its writer learns why before it
    /// learns of the close. Ends when the ring is closed (the session left, the front's writer
    /// gone); then the ring is forgotten, so that leaving the room cannot close it once the
    /// front has reused it, and released.
    async fn play_track(
        &self,
        room: Arc<dyn Room>,
        slot: u32,
        track: String,
        mut reader: TrackRingReader,
        ring: u32,
    ) {
        let mut pcm = Vec::with_capacity(super::region::TRACK_RING_BYTES);
        loop {
            pcm.clear();
            if reader.read(&mut pcm, usize::MAX).await.is_none() {
                break;
            }
            if let Err(e) = room.publish(&track, &pcm).await {
                let failed = proto::TrackFailed {
                    ring,
                    failed: Some(wire::failed(&e)),
                };
                self.send(answer(0, proto::from_worker::Op::TrackFailed(failed)));
                reader.closed().await;
                break;
            }
        }
        if let Some(Slot::Joined { tracks, .. }) = self.slots().get_mut(&slot) {
            tracks.retain(|r| *r != ring);
        }
        drop(reader);
        self.send(released(ring));
    }
}

/// A session's [`RoomEvents`] in a worker: audio into its mapped ring, the rest to the front.
struct WorkerSink {
    slot: u32,
    /// Taken (and so closed) before `Released` is sent, in `drop`.
    producer: Option<MappedProducer>,
    filter: AudioFilter,
    out: mpsc::UnboundedSender<proto::FromWorker>,
}

impl WorkerSink {
    fn event(&self, event: proto::room_event::Event) {
        let _ = self.out.send(answer(
            0,
            proto::from_worker::Op::Event(proto::RoomEvent {
                slot: self.slot,
                event: Some(event),
            }),
        ));
    }
}

impl RoomEvents for WorkerSink {
    fn on_data(
        &self,
        from: &str,
        _kind: DataKind,
        topic: &str,
        payload: &[u8],
    ) -> Option<PushOutcome> {
        let now = self.filter.data(from, topic)?;
        Some(self.producer.as_ref()?.push(now, payload))
    }

    fn on_track_audio(&self, pcm: &[u8]) -> Option<PushOutcome> {
        let now = self.filter.track()?;
        Some(self.producer.as_ref()?.push(now, pcm))
    }

    fn on_participants(&self, count: u32) {
        self.event(proto::room_event::Event::Participants(count));
    }

    fn on_reconnecting(&self, reconnecting: bool) {
        self.event(proto::room_event::Event::Reconnecting(reconnecting));
    }

    fn on_disconnected(&self, why: Disconnect) {
        self.event(proto::room_event::Event::Disconnected(wire::disconnected(
            why,
        )));
    }
}

impl Drop for WorkerSink {
    /// The library holds no reference any more: no push can follow. The producer is dropped
    /// first, so when the front reuses the slot nothing of this session is left to touch it;
    /// the front closes the ring when it reads `Released`, after the room's last event.
    fn drop(&mut self) {
        drop(self.producer.take());
        let _ = self.out.send(answer(
            0,
            proto::from_worker::Op::Released(proto::Released { slot: self.slot }),
        ));
    }
}

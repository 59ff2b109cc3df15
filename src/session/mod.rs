//! A session: one user's room, ring, state and stream ownership.
//!
//! A session is created by JoinRoom and lives until it is closed, exactly once, for one
//! [`EndReason`]. Closing closes its ring (so no frame reaches it afterwards, whatever thread
//! still calls back), ends its stream, and disconnects its room. Everything that closes a
//! session holds that session, never a user id, so it cannot close a successor.

mod registry;
mod sink;
mod totals;

pub use registry::{Drained, JoinTicket, Registry, SessionCounts, Superseded};
pub use totals::Totals;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use crate::audio::{Closer, Consumer, RingConfig, RingStats};
use crate::playback::{Output, Playbacks};
use crate::room::{
    AudioFilter, BoxFuture, ConnectRequest, Connected, Room, RoomBackend, RoomError, SessionRing,
};

/// Why a session ended. The first reason wins.
///
/// How its stream ends follows one rule: with an error status (the backend rejoins after 2 s)
/// when a retry can succeed, OK when a retry would fight another bridge or an operator, or
/// when the backend itself asked for the end. The end table in docs/backend.md lists every reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// LeaveRoom, with the caller's reason.
    Left(String),
    /// A newer JoinRoom for the same user, here, took over (whether LiveKit's kick of the old
    /// participant or the local close came first).
    Replaced,
    /// Another participant joined the room with the bridge's identity: another bridge or pod
    /// took the user over (LiveKit's `DUPLICATE_IDENTITY`).
    ReplacedElsewhere(String),
    /// An operator removed the bridge's participant from the room.
    Removed(String),
    /// An operator deleted the room.
    RoomDeleted(String),
    /// A JoinRoom that was issued later (or a LeaveRoom) won the race against this one.
    Superseded,
    /// The room went away for any other reason (server shutdown, connection lost and not
    /// resumed, failed join, refused token): a new join can succeed.
    RoomLost(String),
    /// The session's StreamAudio client failed or cancelled.
    ClientGone(String),
    /// The bridge is shutting down.
    Shutdown,
    /// No StreamAudio was attached for this long: the backend went away without LeaveRoom.
    Idle(Duration),
}

/// What kind of end a session had, as the `x-bridge-end-reason` trailer, GetStatus and the
/// metrics name it: one per [`EndReason`], without its details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndCode {
    Left,
    Replaced,
    ReplacedElsewhere,
    Removed,
    RoomDeleted,
    Superseded,
    RoomLost,
    ClientGone,
    Shutdown,
    Idle,
}

impl EndCode {
    /// Every code, in declaration order (`code as usize` is its position).
    pub const ALL: [Self; 10] = [
        Self::Left,
        Self::Replaced,
        Self::ReplacedElsewhere,
        Self::Removed,
        Self::RoomDeleted,
        Self::Superseded,
        Self::RoomLost,
        Self::ClientGone,
        Self::Shutdown,
        Self::Idle,
    ];

    /// The code as it goes on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Replaced => "replaced",
            Self::ReplacedElsewhere => "replaced_elsewhere",
            Self::Removed => "removed",
            Self::RoomDeleted => "room_deleted",
            Self::Superseded => "superseded",
            Self::RoomLost => "room_lost",
            Self::ClientGone => "client_gone",
            Self::Shutdown => "shutdown",
            Self::Idle => "idle",
        }
    }
}

impl EndReason {
    /// This reason's code, sent as trailing metadata when a stream ends.
    pub fn code(&self) -> EndCode {
        match self {
            Self::Left(_) => EndCode::Left,
            Self::Replaced => EndCode::Replaced,
            Self::ReplacedElsewhere(_) => EndCode::ReplacedElsewhere,
            Self::Removed(_) => EndCode::Removed,
            Self::RoomDeleted(_) => EndCode::RoomDeleted,
            Self::Superseded => EndCode::Superseded,
            Self::RoomLost(_) => EndCode::RoomLost,
            Self::ClientGone(_) => EndCode::ClientGone,
            Self::Shutdown => EndCode::Shutdown,
            Self::Idle(_) => EndCode::Idle,
        }
    }

    /// Whether the stream ends with an error status, so that the backend rejoins: a retry
    /// can succeed (on this bridge, another, or the LiveKit node that replaces a lost one).
    pub fn retry_can_succeed(&self) -> bool {
        matches!(self, Self::RoomLost(_) | Self::Shutdown)
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Left(r) if r.is_empty() => "session left".into(),
            Self::Left(r) => format!("session left: {r}"),
            Self::Replaced => "session replaced by a newer JoinRoom".into(),
            Self::ReplacedElsewhere(r) => format!("session taken over elsewhere: {r}"),
            Self::Removed(r) => format!("removed from the room: {r}"),
            Self::RoomDeleted(r) => format!("the room was deleted: {r}"),
            Self::Superseded => "JoinRoom superseded by a newer request for this user".into(),
            Self::RoomLost(r) => format!("room lost: {r}"),
            Self::ClientGone(r) => format!("stream client went away: {r}"),
            Self::Shutdown => "bridge shutting down".into(),
            Self::Idle(after) => format!(
                "no StreamAudio for {} s (BRIDGE_IDLE_S): the backend went away without LeaveRoom",
                after.as_secs()
            ),
        }
    }
}

pub use crate::room::unix_ms;

/// The part of a session that the room's callback threads see.
pub(crate) struct SessionCore {
    user_id: String,
    generation: u64,
    /// `connected` and `participant_count` are status read on its own (GetStatus, HealthCheck,
    /// PlayAudio's precondition): Relaxed. What must never race, audio after close, is the
    /// ring's close protocol and the `closed` token's, not these.
    connected: AtomicBool,
    participant_count: AtomicU32,
    /// The room's connection is lost and being resumed by the library. Status, Relaxed.
    reconnecting: AtomicBool,
    /// When (unix ms) the target's last audio packet arrived; 0: none yet. Status, Relaxed.
    last_audio_ms: AtomicI64,
    end: OnceLock<(EndReason, i64, Instant)>,
    closer: Closer,
    /// Cancelled when the session closes.
    closed: CancellationToken,
    /// A newer JoinRoom for this user has begun here: LiveKit's `DUPLICATE_IDENTITY` kick,
    /// which its connect causes, means `Replaced`, not `ReplacedElsewhere`. Release/Acquire.
    /// The store precedes the newer join's connect in program order; the kick it causes
    /// reaches the callback thread through the library's request channel, the signalling
    /// socket at both ends (a write and a read under the kernel's socket lock) and the
    /// library's event channel, each of which synchronises, so the callback's Acquire load
    /// reads `true`. The simulated room's kick goes through its participant table's mutex.
    /// Were the chain ever broken, the cost is the end trailer's word (`replaced_elsewhere`
    /// for `replaced`): both end the stream OK and neither makes the backend rejoin.
    replacing: AtomicBool,
    /// When (unix ms) the session last had no StreamAudio attached: made, or a stream's lease
    /// dropped. Status for idle reaping, Relaxed.
    detached_ms: AtomicI64,
    totals: Arc<Totals>,
}

/// The session's ring counters join the bridge's totals when the last reference goes: the
/// sink (producer), the session and any stream lease (consumer) hold one each, so no push or
/// pop can follow.
impl Drop for SessionCore {
    fn drop(&mut self) {
        self.totals.retire(self.closer.stats());
    }
}

impl SessionCore {
    /// Closes the session for `reason`; only the first call has an effect. Callable from any
    /// thread: it closes the ring (two atomic writes and a wake; never a wait: a push copying its
    /// frame is waited out by the consumer, see [`crate::audio::ring`]) and cancels a token.
    pub(crate) fn close(&self, reason: EndReason) -> bool {
        let code = reason.code();
        if self.end.set((reason, unix_ms(), Instant::now())).is_err() {
            return false;
        }
        self.totals.count_end(code);
        self.connected.store(false, Ordering::Relaxed);
        self.closer.close();
        self.closed.cancel();
        true
    }
}

/// The StreamAudio that owns a session's audio.
struct StreamOwner {
    id: u64,
    /// Cancelled when a newer stream takes the audio over.
    taken_over: CancellationToken,
}

/// A live (or recently ended) session of one user.
pub struct Session {
    core: Arc<SessionCore>,
    room: Box<dyn Room>,
    participant_id: String,
    consumer: Arc<tokio::sync::Mutex<Consumer>>,
    /// The stream that currently owns the session's audio.
    stream: Mutex<StreamOwner>,
    next_stream: AtomicU64,
    room_released: AtomicBool,
    playbacks: Playbacks,
    /// When (unix ms) the session was made.
    began_ms: i64,
    /// When (unix ms) the last room audio handed to a stream arrived; 0: none yet. Status,
    /// Relaxed.
    last_delivered_ms: AtomicI64,
}

/// The exclusive right to a session's room audio, held by one StreamAudio at a time.
pub struct StreamLease {
    pub id: u64,
    /// Cancelled when another stream takes the session over.
    pub taken_over: CancellationToken,
    pub consumer: OwnedMutexGuard<Consumer>,
    _detach: DetachStamp,
}

/// Stamps the session's `detached_ms` when a stream's lease is dropped.
struct DetachStamp(Arc<SessionCore>);

impl Drop for DetachStamp {
    fn drop(&mut self) {
        self.0.detached_ms.store(unix_ms(), Ordering::Relaxed);
    }
}

impl Session {
    /// Connects a room for `user_id` and builds the session around it. The ring exists before
    /// the room does, so the room's very first callback has somewhere safe to go.
    pub async fn connect(
        user_id: &str,
        generation: u64,
        backend: &dyn RoomBackend,
        mut request: ConnectRequest,
        ring: RingConfig,
        totals: Arc<Totals>,
    ) -> Result<Arc<Session>, RoomError> {
        let SessionRing {
            producer,
            consumer,
            closer,
            slot,
        } = backend.ring(ring)?;
        request.ring = slot;
        let core = Arc::new(SessionCore {
            user_id: user_id.to_string(),
            generation,
            connected: AtomicBool::new(false),
            participant_count: AtomicU32::new(0),
            end: OnceLock::new(),
            closer,
            closed: CancellationToken::new(),
            replacing: AtomicBool::new(false),
            reconnecting: AtomicBool::new(false),
            last_audio_ms: AtomicI64::new(0),
            detached_ms: AtomicI64::new(unix_ms()),
            totals,
        });
        let sink = sink::SessionSink::new(
            core.clone(),
            producer,
            AudioFilter::new(&request.target_identity, request.audio_source),
        );
        let timeout = request.timeout;
        let connected = tokio::time::timeout(timeout, backend.connect(request, Arc::new(sink)))
            .await
            .unwrap_or(Err(RoomError::Timeout(timeout)));
        let Connected {
            room,
            participant_id,
            participant_count,
        } = connected.inspect_err(|_| {
            core.closer.close();
        })?;
        core.participant_count
            .store(participant_count, Ordering::Relaxed);
        core.connected.store(true, Ordering::Relaxed);
        let session = Arc::new(Session {
            core,
            room,
            participant_id,
            consumer: Arc::new(tokio::sync::Mutex::new(consumer)),
            stream: Mutex::new(StreamOwner {
                id: 0,
                taken_over: CancellationToken::new(),
            }),
            next_stream: AtomicU64::new(1),
            room_released: AtomicBool::new(false),
            playbacks: Playbacks::default(),
            began_ms: unix_ms(),
            last_delivered_ms: AtomicI64::new(0),
        });
        tokio::spawn(session.clone().release_room_when_closed());
        Ok(session)
    }

    /// Whatever closes the session, its room is disconnected here, on a task, never on a
    /// callback thread.
    async fn release_room_when_closed(self: Arc<Self>) {
        self.core.closed.cancelled().await;
        self.release_room().await;
    }

    async fn release_room(&self) {
        // Relaxed: only which call wins matters, and a swap is atomic under any ordering.
        if !self.room_released.swap(true, Ordering::Relaxed) {
            self.room.disconnect().await;
        }
    }

    /// Closes the session (see [`SessionCore::close`]) and disconnects its room before
    /// returning. Returns true for the call that closed it.
    pub async fn close(&self, reason: EndReason) -> bool {
        let first = self.core.close(reason);
        self.release_room().await;
        first
    }

    pub fn user_id(&self) -> &str {
        &self.core.user_id
    }

    /// A newer JoinRoom for this user has begun here (see `SessionCore::replacing`).
    fn expect_replacement(&self) {
        self.core.replacing.store(true, Ordering::Release);
    }

    /// The JoinRooms that would have replaced it all failed.
    fn expect_replacement_no_more(&self) {
        self.core.replacing.store(false, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.core.generation
    }

    pub fn participant_id(&self) -> &str {
        &self.participant_id
    }

    pub fn is_connected(&self) -> bool {
        self.core.connected.load(Ordering::Relaxed)
    }

    /// Whether the room's connection is being resumed.
    pub fn is_reconnecting(&self) -> bool {
        self.core.reconnecting.load(Ordering::Relaxed) && self.ended().is_none()
    }

    /// How long ago the target's last audio packet arrived, or the session began if none has.
    pub fn audio_silent_for(&self) -> Duration {
        let last = (self.core.last_audio_ms.load(Ordering::Relaxed))
            .max(self.core.closer.last_arrival_ms());
        let since = if last == 0 { self.began_ms } else { last };
        Duration::from_millis(u64::try_from(unix_ms() - since).unwrap_or(0))
    }

    /// How long ago the last room audio handed to a stream arrived, if any was.
    pub fn delivered_ago(&self) -> Option<Duration> {
        let last = self.last_delivered_ms.load(Ordering::Relaxed);
        (last != 0).then(|| Duration::from_millis(u64::try_from(unix_ms() - last).unwrap_or(0)))
    }

    /// A frame that arrived at `arrived_ms` (unix ms) was handed to the session's stream. Its
    /// arrival time, already known, stands for the hand-off (they differ by the ring's few
    /// milliseconds), so the writer reads no clock per frame.
    pub fn delivered(&self, arrived_ms: i64) {
        self.last_delivered_ms.store(arrived_ms, Ordering::Relaxed);
    }

    pub fn participant_count(&self) -> u32 {
        self.core.participant_count.load(Ordering::Relaxed)
    }

    /// Why and when (unix ms) the session ended, if it has.
    pub fn ended(&self) -> Option<(EndReason, i64)> {
        self.core.end.get().map(|(r, at, _)| (r.clone(), *at))
    }

    /// How long ago the session ended, if it has.
    pub fn ended_for(&self) -> Option<Duration> {
        self.core.end.get().map(|(_, _, at)| at.elapsed())
    }

    /// Resolves when the session closes.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.core.closed.cancelled()
    }

    pub fn ring_stats(&self) -> RingStats {
        self.core.closer.stats()
    }

    /// The room, for publishing client audio.
    pub fn room(&self) -> &dyn Room {
        self.room.as_ref()
    }

    /// Takes the session's audio for a new stream. An earlier stream is told to end and gives
    /// the ring up before this one gets it, so frames are never split between two streams.
    pub async fn attach_stream(&self) -> Option<StreamLease> {
        // Relaxed: ids only have to be unique; the `stream` mutex orders the takeover.
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let taken_over = CancellationToken::new();
        {
            let mut owner = self.stream.lock().unwrap_or_else(PoisonError::into_inner);
            owner.taken_over.cancel();
            *owner = StreamOwner {
                id,
                taken_over: taken_over.clone(),
            };
        }
        tokio::select! {
            consumer = self.consumer.clone().lock_owned() => Some(StreamLease {
                id,
                taken_over,
                consumer,
                _detach: DetachStamp(self.core.clone()),
            }),
            () = taken_over.cancelled() => None,
        }
    }

    /// How long the session has had no StreamAudio attached, or None while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        // A stream holds the consumer's lock for as long as it is attached.
        let free = self.consumer.try_lock().is_ok();
        let since = self.core.detached_ms.load(Ordering::Relaxed);
        free.then(|| Duration::from_millis(unix_ms().saturating_sub(since).max(0) as u64))
    }

    /// Whether stream `id` still owns the session's audio.
    pub fn owns_stream(&self, id: u64) -> bool {
        self.stream
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .id
            == id
    }
}

/// PlayAudio plays into a session's room; its playbacks stop by themselves when it closes.
impl Output for Session {
    fn publish<'a>(
        &'a self,
        track: &'a str,
        pcm: &'a [u8],
    ) -> BoxFuture<'a, Result<(), RoomError>> {
        self.room.publish(track, pcm)
    }

    fn closed(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            self.core.closed.cancelled().await;
            self.ended()
                .map_or_else(|| "closed".into(), |(reason, _)| reason.describe())
        })
    }

    fn playbacks(&self) -> &Playbacks {
        &self.playbacks
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user_id", &self.core.user_id)
            .field("generation", &self.core.generation)
            .field("connected", &self.is_connected())
            .finish()
    }
}

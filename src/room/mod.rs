//! `RoomBackend`: the only way a session reaches LiveKit.
//!
//! A backend connects to a room with a URL and token and then calls the session back through
//! [`RoomEvents`] on threads it owns, as LiveKit's SDKs do: possibly from two threads at once,
//! possibly after disconnect was asked for, possibly for a session that has since been replaced.
//! Sessions are written so that all of that is harmless (see [`crate::audio::ring`]).
//! [`Backends`] picks the backend from the URL's scheme: `sim://` is the simulated room in
//! [`sim`]; `ws://` and `wss://` go to room worker processes through [`worker`], each running
//! LiveKit's own SDK library through [`ffi`] (and `sim://` too when [`SimRooms::Workers`] says
//! so: a worker runs either). Nothing above this module names any of them: the
//! service reaches rooms through [`Backends`] and the traits here.

mod backends;
pub mod ffi;
mod filter;
pub mod sim;
pub mod worker;

pub use backends::{Backends, SimRooms};
/// Where LiveKit's SDK library is looked for unless a setting says otherwise.
pub use ffi::DEFAULT_PATH as DEFAULT_LIVEKIT_LIBRARY;
pub use filter::{AudioFilter, unix_ms};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::audio::{Closer, Consumer, FrameProducer, PushOutcome, RingConfig, audio_ring};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Waits for a turn on `turns` (the joins worked on at once); the turn, to hold until the room
/// is set up, and what is left of `timeout` once it came (the wait counts against it).
pub(crate) async fn turn_to_join(
    turns: &tokio::sync::Semaphore,
    timeout: Duration,
) -> Result<(tokio::sync::SemaphorePermit<'_>, Duration), RoomError> {
    let asked = tokio::time::Instant::now();
    let turn = turns
        .acquire()
        .await
        .map_err(|_| RoomError::Unavailable("the join queue was closed".into()))?;
    let left = timeout
        .saturating_sub(asked.elapsed())
        .max(Duration::from_millis(1));
    Ok((turn, left))
}

/// Everything a backend needs to join a room for one user.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    /// The user the session is for (JoinRoom's `user_id`).
    pub user_id: String,
    pub url: String,
    pub token: String,
    pub room_name: String,
    /// The participant whose data packets carry the user's audio.
    pub target_identity: String,
    /// How long the session layer waits for `connect` before giving up.
    pub timeout: Duration,
    /// Where the target's audio may come from: data packets, its audio tracks, or both.
    pub audio_source: AudioSource,
    /// The session's ring, when it is in a room worker's memory ([`RoomBackend::ring`]).
    pub ring: Option<RingSlot>,
}

/// Where a session's ring is in a room worker's shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSlot {
    /// The worker (its number, unique for the process's life).
    pub worker: u64,
    pub index: u32,
}

/// A session's ring, made by the backend its room is on: where the room's audio goes.
pub struct SessionRing {
    /// The producer, when the room's callbacks run in this process; `None` when they run in a
    /// room worker, which holds the producer itself.
    pub producer: Option<FrameProducer>,
    pub consumer: Consumer,
    pub closer: Closer,
    pub slot: Option<RingSlot>,
}

impl SessionRing {
    /// A ring in this process's memory.
    pub fn local(config: RingConfig) -> Self {
        let (producer, consumer, closer) = audio_ring(config);
        Self {
            producer: Some(producer),
            consumer: Consumer::Local(consumer),
            closer: Closer::Local(closer),
            slot: None,
        }
    }
}

/// Where a session takes the target's audio from (`BRIDGE_AUDIO_SOURCE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AudioSource {
    /// Only data packets carrying 16 kHz mono PCM16 (the phone and glasses apps).
    Data,
    /// Only the target's published audio tracks (browsers, LiveKit's SDKs), subscribed to and
    /// decoded by the backend into 10 ms frames of 16 kHz mono PCM16.
    Track,
    /// Both: data packets win while they flow (see [`DATA_HOLD_MS`]), so the two never
    /// interleave.
    #[default]
    Both,
}

impl AudioSource {
    /// Whether a backend should subscribe to the target's audio tracks at all.
    pub fn tracks(self) -> bool {
        self != Self::Data
    }
}

/// With [`AudioSource::Both`], track audio is dropped until this long after the last data
/// packet: data packets come every 10 to 20 ms while a phone sends, so a pause this long means
/// the phone has stopped, not that a packet was lost.
pub const DATA_HOLD_MS: i64 = 500;

/// A connected room and what the join learned about it.
pub struct Connected {
    pub room: Box<dyn Room>,
    pub participant_id: String,
    pub participant_count: u32,
}

/// Which data channel a packet came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    Lossy,
    Reliable,
}

/// Why a room went away without the bridge asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    pub cause: DisconnectCause,
    /// What the server said, worded for GetStatus and the logs.
    pub reason: String,
}

/// What a server-initiated disconnect means for the session, by who caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectCause {
    /// Another participant joined with the same identity: another bridge, or this one's own
    /// newer JoinRoom (LiveKit's `DUPLICATE_IDENTITY`).
    DuplicateIdentity,
    /// An operator removed the participant (`PARTICIPANT_REMOVED`).
    Removed,
    /// An operator deleted the room (`ROOM_DELETED`).
    RoomDeleted,
    /// Anything else: the server shutting down, the connection lost and not resumed, a failed
    /// join, a refused token. A new join can succeed.
    Lost,
}

/// Callbacks from a backend's threads into a session. Implementations must not block, take a
/// lock anything slow can hold, or call back into the backend.
pub trait RoomEvents: Send + Sync + 'static {
    /// A data packet arrived. The hot path: called for every audio frame. Returns what became of
    /// the frame, or `None` when the packet is not audio for this session.
    fn on_data(
        &self,
        from: &str,
        kind: DataKind,
        topic: &str,
        payload: &[u8],
    ) -> Option<PushOutcome>;
    /// A frame of the target's audio track arrived, decoded to 16 kHz mono PCM16 (native byte
    /// order, which is little-endian on every target the bridge builds for). Hot path, like
    /// `on_data`. Returns what became of the frame, or `None` when the session does not take
    /// track audio now.
    fn on_track_audio(&self, pcm: &[u8]) -> Option<PushOutcome>;
    /// The number of participants in the room changed.
    fn on_participants(&self, count: u32);
    /// The connection to the server was lost and is being resumed (`true`), or is back.
    fn on_reconnecting(&self, reconnecting: bool);
    /// The server closed the room (room deleted, duplicate identity, token expired, ...).
    fn on_disconnected(&self, why: Disconnect);
}

/// A joined room.
pub trait Room: Send + Sync {
    /// Publishes 16 kHz mono PCM16 (little-endian) to the audio track called `track`, creating
    /// and publishing the track on first use. Resolves when the room has taken the audio (a
    /// room in a worker: when the track's ring has, and a refusal shows on the next call); a
    /// backend that paces playout applies backpressure here.
    fn publish<'a>(&'a self, track: &'a str, pcm: &'a [u8])
    -> BoxFuture<'a, Result<(), RoomError>>;
    /// Leaves the room. Callbacks may still arrive for a while afterwards.
    fn disconnect(&self) -> BoxFuture<'_, ()>;
}

/// A way of reaching rooms.
pub trait RoomBackend: Send + Sync {
    /// Whether a room can be joined through this backend now; why not, worded for the
    /// operator (readiness probe).
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    /// What became of the frames of the target's audio tracks (metrics).
    fn track_stats(&self) -> TrackStats {
        TrackStats::default()
    }

    /// Makes the ring for a session about to connect through this backend, before the room
    /// exists, so the room's first callback has somewhere safe to go. In this process's memory
    /// unless the backend's rooms live elsewhere.
    fn ring(&self, config: RingConfig) -> Result<SessionRing, RoomError> {
        Ok(SessionRing::local(config))
    }

    fn connect(
        &self,
        request: ConnectRequest,
        events: Arc<dyn RoomEvents>,
    ) -> BoxFuture<'static, Result<Connected, RoomError>>;
}

/// Frames of target audio tracks, and gaps in published ones, as a backend counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackStats {
    /// Frames handed to a session.
    pub routed: u64,
    /// Frames of streams no longer routed (the session had ended).
    pub unrouted: u64,
    /// Track audio streams open now.
    pub streams: usize,
    /// Gaps in published tracks: audio that resumed after the track's clock found no frame
    /// mid-utterance (the publisher was late).
    pub published_underruns: u64,
}

/// What went wrong reaching a room, and whose fault it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// The request cannot work as given (bad URL, unknown parameter): the caller must fix it.
    #[error("invalid livekit_url: {0}")]
    InvalidUrl(String),
    /// LiveKit refused or failed the connection.
    #[error("could not connect to the room: {0}")]
    ConnectFailed(String),
    /// The room did not connect in time.
    #[error("timed out after {0:?} connecting to the room")]
    Timeout(Duration),
    /// The room is gone (disconnected, closed).
    #[error("room is not connected: {0}")]
    NotConnected(String),
    /// The backend this URL needs is not available in this process.
    #[error("{0}")]
    Unavailable(String),
    /// The LiveKit library failed a request or answered one unexpectedly.
    #[error("LiveKit library: {0}")]
    Library(String),
}

/// The scheme of a room URL, lower case (`sim`, `ws`, `wss`, ...); `None` without `://`.
pub fn scheme(url: &str) -> Option<String> {
    url.split_once("://").map(|(s, _)| s.to_ascii_lowercase())
}

/// Whether `url` names a simulated room (`sim://`, any case).
pub fn is_sim(url: &str) -> bool {
    scheme(url).as_deref() == Some("sim")
}

/// The name of the published track for a contract track id: 0 `speaker`, 1 `app_audio`,
/// 2 `tts`, any other n `track_<n>`.
pub fn track_name(track_id: i32) -> String {
    match track_id {
        0 => "speaker".into(),
        1 => "app_audio".into(),
        2 => "tts".into(),
        n => format!("track_{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_names_follow_the_contract() {
        assert_eq!(track_name(0), "speaker");
        assert_eq!(track_name(1), "app_audio");
        assert_eq!(track_name(2), "tts");
        assert_eq!(track_name(7), "track_7");
        assert_eq!(track_name(-3), "track_-3");
    }
}

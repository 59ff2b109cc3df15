//! PlayAudio and StopAudio: audio from a URL, played into one of a session's tracks.
//!
//! One playback is three workers joined by bounded channels, so that playout starts while the
//! download is still running and nothing runs ahead of the room by more than a few seconds:
//!
//! ```text
//! fetch task (async, HTTP)  --body chunks-->  decode thread (symphonia, rubato)
//!                                                 --10 ms frames-->  playout task (paced)
//! ```
//!
//! - [`fetch`]: one shared HTTP client (rustls), connect and read timeouts, a size limit, a
//!   bound on redirects, `http`/`https` only.
//! - [`decode`]: sniffs the first bytes (an HTML error page is not audio), probes the format
//!   from the bytes with Content-Type and the URL's extension as hints, decodes, and hands the
//!   samples to [`frames`].
//! - [`frames`]: downmix, resample to the track's rate, volume with clipping, 10 ms frames.
//! - [`worker`]: the same decode in a child process with an address-space limit, which is
//!   how the release binary runs it: no file can take the bridge's memory.
//! - [`table`]: a session's playbacks by track, interruption and StopAudio.
//! - [`playout`]: one playback from request to final event, and the paced playout.
//!
//! Playback knows nothing of sessions or of gRPC: it plays into an [`Output`] (a session
//! implements it) and reports [`PlayEvent`]s, which the service turns into the wire's events.
//!
//! Stopping a playback (StopAudio, a newer playback on its track, `stop_other`, the session
//! closing, the caller cancelling) aborts the fetch task, drops the frame channel and raises
//! the decoder's cancel flag, then waits for all three to be gone before the FAILED event is
//! sent and StopAudio answers. [`PlaybackStats`] counts the live workers so that tests and
//! operators can see that nothing is left running.

pub mod decode;
pub mod egress;
pub mod fetch;
pub mod frames;
pub mod playbacks;
pub mod playout;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

pub use decode::SourceInfo;
pub use frames::{FrameMaker, measure_tone};
pub use playbacks::{Playbacks, StopCause, StopTarget};
pub use playout::{PlayRequest, Player};

use crate::room::{BoxFuture, RoomError};

/// What a playback plays into, seen only through what playback needs. A session is one.
pub trait Output: Send + Sync + 'static {
    /// Publishes 10 ms of 16 kHz mono PCM16 to the audio track `track`, resolving when the
    /// room has taken it (see [`crate::room::Room::publish`]).
    fn publish<'a>(&'a self, track: &'a str, pcm: &'a [u8])
    -> BoxFuture<'a, Result<(), RoomError>>;
    /// Resolves when the output closes, with why, worded for a FAILED event.
    fn closed(&self) -> BoxFuture<'_, String>;
    /// The output's playbacks.
    fn playbacks(&self) -> &Playbacks;
}

/// What a playback reports, in this order: `Started`, `Progress` about once a second of audio,
/// then `Completed` or `Failed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlayEvent {
    /// The first frame was handed to the track, `latency` after the request.
    Started {
        latency: Duration,
        source: Option<SourceInfo>,
    },
    Progress {
        position: Duration,
    },
    /// The last frame was handed over and its time has passed.
    Completed {
        duration: Duration,
    },
    /// The playback ended early: `position` is how far it got.
    Failed {
        error: PlaybackError,
        position: Duration,
    },
}

/// How playbacks fetch and buffer.
#[derive(Clone, Debug)]
pub struct PlaybackSettings {
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// The longest the server may go without sending a byte, headers included.
    pub read_timeout: Duration,
    /// The largest body accepted, in bytes.
    pub max_bytes: u64,
    /// Redirects followed before giving up.
    pub max_redirects: usize,
    /// Decoded audio held ahead of playout.
    pub lookahead: Duration,
    /// How long playout may wait for audio past when it is due (the first frame: after the
    /// response headers) before the download counts as unable to keep up.
    pub max_stall: Duration,
    /// The rate of the room's tracks.
    pub sample_rate: u32,
    /// Extra root certificates (PEM) trusted for https URLs, besides the built-in web roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Which servers may be fetched from beyond the public internet ([`egress`]).
    pub egress: egress::EgressPolicy,
    /// Every fetch goes through this HTTP proxy (CONNECT for https, forwarded for http); its
    /// user name and password, if any, are sent as basic proxy authorization.
    pub proxy: Option<reqwest::Url>,
    /// Decode each playback in a child process with this binary and memory limit
    /// ([`worker`]); `None` decodes on a thread of this process (tests, benchmarks).
    pub decoder_process: Option<worker::DecoderProcess>,
}

impl PlaybackSettings {
    /// The defaults of the settings that have one (PLAYBACK_CONNECT_TIMEOUT_MS and friends).
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_BYTES: u64 = 50 * 1024 * 1024;
    pub const MAX_REDIRECTS: usize = 5;
    pub const MAX_STALL: Duration = Duration::from_secs(5);
}

impl Default for PlaybackSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Self::CONNECT_TIMEOUT,
            read_timeout: Self::READ_TIMEOUT,
            max_bytes: Self::MAX_BYTES,
            max_redirects: Self::MAX_REDIRECTS,
            lookahead: Duration::from_secs(2),
            max_stall: Self::MAX_STALL,
            sample_rate: crate::audio::format::SAMPLE_RATE,
            ca_file: None,
            egress: egress::EgressPolicy::default(),
            proxy: None,
            decoder_process: None,
        }
    }
}

/// Why a playback failed, worded for the person reading the FAILED event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaybackError {
    /// The server answered with an error status.
    #[error("HTTP {status} fetching {url}")]
    HttpStatus { status: u16, url: String },
    /// The download could not be made or broke off.
    #[error("{0}")]
    Fetch(String),
    /// The server went quiet.
    #[error("{0}")]
    Timeout(String),
    /// The body is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// What came is not audio, or not a format the bridge decodes.
    #[error("{0}")]
    Unsupported(String),
    /// The audio is damaged or cut short.
    #[error("{0}")]
    Corrupt(String),
    /// The room would not take the audio.
    #[error("{0}")]
    Room(String),
    /// The playback was stopped before it finished.
    #[error("{0}")]
    Stopped(String),
}

/// What kind of failure a playback had, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    HttpStatus,
    Fetch,
    Timeout,
    TooLarge,
    Unsupported,
    Corrupt,
    Room,
    Stopped,
}

impl FailureKind {
    /// Every kind, in declaration order (`kind as usize` is its position).
    pub const ALL: [Self; 8] = [
        Self::HttpStatus,
        Self::Fetch,
        Self::Timeout,
        Self::TooLarge,
        Self::Unsupported,
        Self::Corrupt,
        Self::Room,
        Self::Stopped,
    ];

    /// The kind as the `kind` label of `playback_failures_total` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpStatus => "http_status",
            Self::Fetch => "fetch",
            Self::Timeout => "timeout",
            Self::TooLarge => "too_large",
            Self::Unsupported => "unsupported",
            Self::Corrupt => "corrupt",
            Self::Room => "room",
            Self::Stopped => "stopped",
        }
    }
}

impl PlaybackError {
    /// The kind of this failure.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::HttpStatus { .. } => FailureKind::HttpStatus,
            Self::Fetch(_) => FailureKind::Fetch,
            Self::Timeout(_) => FailureKind::Timeout,
            Self::TooLarge(_) => FailureKind::TooLarge,
            Self::Unsupported(_) => FailureKind::Unsupported,
            Self::Corrupt(_) => FailureKind::Corrupt,
            Self::Room(_) => FailureKind::Room,
            Self::Stopped(_) => FailureKind::Stopped,
        }
    }
}

/// Live workers of every playback, and totals. Each worker holds a [`Gauge`] while it runs.
///
/// Relaxed throughout: a playback's gauge drops before its final event is sent, and the event
/// channel orders the two, so a caller that has the final event reads a count without it
/// (a load that happens after a write sees it, whatever the orderings).
#[derive(Debug, Default)]
pub struct PlaybackStats {
    pub fetchers: AtomicUsize,
    pub decoders: AtomicUsize,
    pub playouts: AtomicUsize,
    pub started: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Failures by [`FailureKind`].
    pub failed_by: [AtomicU64; FailureKind::ALL.len()],
    /// Body bytes downloaded.
    pub bytes_fetched: AtomicU64,
}

impl PlaybackStats {
    /// Fetch tasks, decode threads and playout tasks still running.
    pub fn live_workers(&self) -> usize {
        self.fetchers.load(Ordering::Relaxed)
            + self.decoders.load(Ordering::Relaxed)
            + self.playouts.load(Ordering::Relaxed)
    }

    pub fn playing(&self) -> usize {
        self.playouts.load(Ordering::Relaxed)
    }
}

/// Counts one running worker until dropped.
pub(crate) struct Gauge(Arc<PlaybackStats>, fn(&PlaybackStats) -> &AtomicUsize);

impl Gauge {
    pub(crate) fn new(
        stats: &Arc<PlaybackStats>,
        which: fn(&PlaybackStats) -> &AtomicUsize,
    ) -> Self {
        which(stats).fetch_add(1, Ordering::Relaxed);
        Self(stats.clone(), which)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::Relaxed);
    }
}

//! The state every RPC shares ([`BridgeState`]): settings, sessions, metrics, admission, the
//! room backends and the player, and what runs beside the RPCs (the drain, housekeeping).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::admission::{self, Admission};
use crate::audio::RingConfig;
use crate::error::BridgeError;
use crate::metrics::Metrics;
use crate::playback::fetch::ClientError;
use crate::playback::{PlaybackSettings, Player};
use crate::room::worker::WorkerSettings;
use crate::room::{AudioSource, Backends};
use crate::session::{EndReason, Registry, Session, Totals};

/// What the service is tuned with.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// How long JoinRoom waits for a room to connect.
    pub connect_timeout: Duration,
    /// Where sessions take the target's audio from.
    pub audio_source: AudioSource,
    /// Size and overflow policy of each session's ring.
    pub ring: RingConfig,
    /// How long StreamAudio waits for the first chunk, which names the session.
    pub first_chunk_timeout: Duration,
    /// How long a session whose room was lost stays visible to GetStatus.
    pub keep_ended: Duration,
    /// PlayAudio's fetch limits and buffering.
    pub playback: PlaybackSettings,
    /// Where LiveKit's SDK library is, for ws:// and wss:// rooms.
    pub livekit_ffi_lib: std::path::PathBuf,
    /// Joins of real rooms the library works on at once; 0: twice the cores.
    pub joins_at_once: usize,
    /// Room worker processes; 0: one per core.
    pub room_workers: usize,
    /// Where `sim://` rooms run.
    pub sim_rooms: crate::room::SimRooms,
    /// The binary room workers run; None: this process's own (a test harness names the
    /// bridge's binary, since its own executable is the test).
    pub room_worker_exe: Option<std::path::PathBuf>,
    /// How the room workers log (the bridge's own format and filter).
    /// What becomes of LiveKit's library's own log records.
    pub livekit_logs: crate::room::ffi::LibraryLogs,
    pub worker_log: (crate::logging::LogFormat, String),
    /// Admission control's limits.
    pub limits: admission::Limits,
    /// A session with no StreamAudio for this long is closed as idle; None: never.
    pub idle: Option<Duration>,
    /// Every RPC must carry `authorization: Bearer <this>`; None: no authentication.
    pub auth_token: Option<String>,
    /// The TCP listener's certificate chain and private key (PEM); None: plaintext.
    pub tls: Option<TlsPem>,
}

/// A certificate chain and its private key, PEM, checked to parse.
#[derive(Clone)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsPem { .. }")
    }
}

impl ServiceSettings {
    /// The defaults of the settings that have one (BRIDGE_CONNECT_TIMEOUT_MS and friends).
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const FIRST_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
    pub const KEEP_ENDED: Duration = Duration::from_secs(600);
    pub const IDLE: Duration = Duration::from_secs(300);
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Self::CONNECT_TIMEOUT,
            audio_source: AudioSource::default(),
            ring: RingConfig::default(),
            first_chunk_timeout: Self::FIRST_CHUNK_TIMEOUT,
            keep_ended: Self::KEEP_ENDED,
            playback: PlaybackSettings::default(),
            livekit_ffi_lib: crate::room::DEFAULT_LIVEKIT_LIBRARY.into(),
            joins_at_once: 0,
            room_workers: 0,
            sim_rooms: crate::room::SimRooms::Front,
            room_worker_exe: None,
            livekit_logs: crate::room::ffi::LibraryLogs::Captured,
            worker_log: (crate::logging::LogFormat::Text, "info".into()),
            limits: admission::Limits::default(),
            idle: Some(Self::IDLE),
            auth_token: None,
            tls: None,
        }
    }
}

/// Why the service's state cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Playback(#[from] ClientError),
    #[error("cannot register the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// State shared by every RPC.
pub struct BridgeState {
    pub registry: Arc<Registry>,
    /// What every session did, ended ones included (the metrics' counters).
    pub totals: Arc<Totals>,
    pub metrics: Metrics,
    pub admission: Admission,
    pub backends: Backends,
    pub settings: ServiceSettings,
    pub player: Arc<Player>,
    pub(super) started: Instant,
    pub(super) open_streams: AtomicI64,
    pub(super) draining: AtomicBool,
    /// Cancelled when the bridge starts shutting down; streams end cleanly on it.
    pub(super) shutdown: CancellationToken,
}

impl BridgeState {
    /// The service's state, or why `settings` cannot work (PlayAudio's HTTP client cannot
    /// be built from `PLAYBACK_CA_FILE`).
    pub fn new(settings: ServiceSettings) -> Result<Arc<Self>, StateError> {
        Ok(Arc::new(Self {
            registry: Arc::default(),
            totals: Arc::default(),
            metrics: Metrics::new()?,
            admission: Admission::new(settings.limits),
            backends: Backends::new(
                WorkerSettings {
                    workers: settings.room_workers,
                    library: settings.livekit_ffi_lib.clone(),
                    joins_at_once: settings.joins_at_once,
                    library_logs: settings.livekit_logs,
                    ring: settings.ring,
                    log_format: settings.worker_log.0,
                    log_filter: settings.worker_log.1.clone(),
                    exe: settings.room_worker_exe.clone(),
                    ..WorkerSettings::default()
                },
                settings.sim_rooms,
            ),
            player: Player::new(settings.playback.clone())?,
            settings,
            started: Instant::now(),
            open_streams: AtomicI64::new(0),
            draining: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
        }))
    }

    pub fn open_streams(&self) -> i64 {
        self.open_streams.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        // Relaxed: a fast refusal. What orders joins against the drain is the registry's lock
        // (`Registry::drain`), not this flag.
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts the drain: refuse new joins and streams, close every session (which ends every
    /// stream cleanly) and disconnect every room.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.shutdown.cancel();
        let mut closing = tokio::task::JoinSet::new();
        for session in self.registry.drain() {
            closing.spawn(async move { session.close(EndReason::Shutdown).await });
        }
        while closing.join_next().await.is_some() {}
    }

    /// The session of `user_id`, or NOT_FOUND saying what to do.
    pub(super) fn session(&self, user_id: &str) -> Result<Arc<Session>, BridgeError> {
        self.registry.get(user_id).ok_or_else(|| {
            BridgeError::NoSession(format!(
                "no session for user_id {user_id:?}: call JoinRoom first"
            ))
        })
    }

    /// Sessions connected or reconnecting (not ended).
    /// Housekeeping, once a second until `stop`: a CPU sample for admission control, idle
    /// sessions closed, ended sessions forgotten after BRIDGE_KEEP_ENDED_S.
    pub async fn housekeeping(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(admission::CPU_SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {
                    self.admission.sample_cpu();
                    self.reap_idle().await;
                    let removed = self.registry.sweep(self.settings.keep_ended);
                    if removed > 0 {
                        tracing::debug!(removed, "forgot sessions whose room was lost");
                    }
                }
            }
        }
    }

    pub fn live_sessions(&self) -> usize {
        self.registry.counts().connected
    }

    /// The metrics exposition, read now.
    pub fn render_metrics(&self) -> String {
        let sessions = self.registry.sessions();
        let live = self.live_sessions();
        self.metrics.render(&crate::metrics::Snapshot {
            sessions: &sessions,
            totals: &self.totals,
            open_streams: self.open_streams(),
            capacity_left: self.admission.sessions_left(live),
            cpu_used: self.admission.cpu_used(),
            playback: self.player.stats(),
            track_frames: self.backends.track_stats(),
            workers: &self.backends.worker_counts(),
        })
    }

    /// Closes the sessions that have had no StreamAudio for the idle limit; how many.
    pub async fn reap_idle(&self) -> usize {
        let Some(limit) = self.settings.idle else {
            return 0;
        };
        let mut reaped = 0;
        for session in self.registry.sessions() {
            if session.ended().is_some() {
                continue;
            }
            if let Some(idle) = session.idle_for().filter(|d| *d >= limit)
                && session.close(EndReason::Idle(limit)).await
            {
                reaped += 1;
                tracing::info!(
                    user_id = session.user_id(),
                    idle_s = idle.as_secs(),
                    "closed an idle session: no StreamAudio (BRIDGE_IDLE_S)"
                );
            }
        }
        reaped
    }

    pub(super) fn refuse_if_draining(&self) -> Result<(), BridgeError> {
        if self.is_draining() {
            return Err(BridgeError::ShuttingDown);
        }
        Ok(())
    }

    pub(super) fn stream_opened(self: &Arc<Self>) -> OpenStream {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(self.clone())
    }
}

/// Counts an open StreamAudio for as long as it lives.
pub(super) struct OpenStream(Arc<BridgeState>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

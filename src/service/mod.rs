//! The gRPC service of the wire contract (`mentra.livekit.bridge.LiveKitBridge`).
//!
//! Connect failures travel in JoinRoom's response body (`success: false`), as the backend
//! expects; a request the caller got wrong gets INVALID_ARGUMENT with what to fix; a session
//! that does not exist gets NOT_FOUND (LeaveRoom and GetStatus answer in the body, as the
//! contract says).

pub mod admission;
pub mod checks;
mod play;
mod stream;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::audio::RingConfig;
use crate::error::BridgeError;
use crate::metrics::Metrics;
use crate::playback::fetch::ClientError;
use crate::playback::{PlaybackSettings, Player};
use crate::proto::{self, live_kit_bridge_server::LiveKitBridge};
use crate::room::{AudioSource, Backends, ConnectRequest};
use crate::session::{EndReason, Registry, Session, Totals};
use admission::Admission;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// HealthCheck counts a live session whose target has sent no audio for this long.
const SILENT_AFTER: Duration = Duration::from_secs(5);

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
    started: Instant,
    open_streams: AtomicI64,
    draining: AtomicBool,
    /// Cancelled when the bridge starts shutting down; streams end cleanly on it.
    shutdown: CancellationToken,
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
            backends: Backends::new(settings.livekit_ffi_lib.clone()),
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
    fn session(&self, user_id: &str) -> Result<Arc<Session>, BridgeError> {
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
        self.registry.counts().1
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

    fn refuse_if_draining(&self) -> Result<(), BridgeError> {
        if self.is_draining() {
            return Err(BridgeError::ShuttingDown);
        }
        Ok(())
    }

    /// JoinRoom, counted by result in the metrics.
    async fn join(
        self: Arc<Self>,
        req: proto::JoinRoomRequest,
    ) -> Result<proto::JoinRoomResponse, BridgeError> {
        let started = Instant::now();
        let (answer, result) = match self.clone().join_room(req).await {
            Ok((response, result)) => (Ok(response), result),
            Err(e) => {
                let result = match e {
                    BridgeError::ShuttingDown => "shutting_down",
                    _ => "invalid",
                };
                (Err(e), result)
            }
        };
        self.metrics
            .join(result, (result == "ok").then(|| started.elapsed()));
        answer
    }

    async fn join_room(
        self: Arc<Self>,
        req: proto::JoinRoomRequest,
    ) -> Result<(proto::JoinRoomResponse, &'static str), BridgeError> {
        // A join that replaces the user's live session does not add one.
        let replacing = self
            .registry
            .get(&req.user_id)
            .is_some_and(|s| s.ended().is_none());
        if !replacing && let Err(refusal) = self.admission.admit(self.live_sessions()) {
            tracing::warn!(user_id = %req.user_id, %refusal, "JoinRoom refused");
            return Ok((join_failed(refusal.to_string()), refusal.label()));
        }
        let backend = match self.backends.for_url(&req.livekit_url) {
            Ok(b) => b,
            Err(e @ crate::room::RoomError::InvalidUrl(_)) => return Err(e.into()),
            Err(e) => return Ok((join_failed(e.to_string()), "connect_failed")),
        };
        let ticket = self
            .registry
            .begin_join(&req.user_id)
            .map_err(|_| BridgeError::ShuttingDown)?;
        // What voided this join (a later JoinRoom or LeaveRoom, or the drain), as the session
        // it connected, if any, is closed for and as the caller is told.
        let voided_by = || {
            if self.is_draining() {
                EndReason::Shutdown
            } else {
                EndReason::Superseded
            }
        };
        let voided_answer = || match voided_by() {
            EndReason::Shutdown => (
                join_failed(BridgeError::ShuttingDown.to_string()),
                "shutting_down",
            ),
            reason => (join_failed(reason.describe()), "superseded"),
        };
        let turn = tokio::select! {
            turn = ticket.turn() => turn.ok(),
            () = ticket.voided() => None,
        };
        let Some(_turn) = turn else {
            return Ok(voided_answer());
        };
        let request = ConnectRequest {
            user_id: req.user_id.clone(),
            url: req.livekit_url,
            token: req.token,
            room_name: req.room_name,
            // The phone joins under the user's id, which is what the backend sends here; an
            // empty target falls back to it rather than matching nobody.
            target_identity: if req.target_identity.is_empty() {
                req.user_id.clone()
            } else {
                req.target_identity
            },
            timeout: self.settings.connect_timeout,
            audio_source: self.settings.audio_source,
        };
        // A join that a newer one (or a LeaveRoom, or the drain) has voided stops connecting:
        // the newer one must not wait out this one's connect timeout for its turn.
        let connecting = Session::connect(
            &req.user_id,
            ticket.generation(),
            backend.as_ref(),
            request,
            self.settings.ring,
            self.totals.clone(),
        );
        let connected = tokio::select! {
            connected = connecting => connected,
            () = ticket.voided() => return Ok(voided_answer()),
        };
        let session = match connected {
            Ok(s) => s,
            Err(e @ crate::room::RoomError::InvalidUrl(_)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(user_id = %req.user_id, error = %e, "JoinRoom failed");
                let result = match e {
                    crate::room::RoomError::Timeout(_) => "timeout",
                    _ => "connect_failed",
                };
                return Ok((join_failed(e.to_string()), result));
            }
        };
        match ticket.install(session.clone()) {
            Ok(replaced) => {
                if let Some(old) = replaced {
                    old.close(EndReason::Replaced).await;
                }
                tracing::info!(user_id = %req.user_id, generation = session.generation(), "joined room");
                let response = proto::JoinRoomResponse {
                    success: true,
                    error: String::new(),
                    participant_id: session.participant_id().to_string(),
                    participant_count: clamp_i32(session.participant_count()),
                    metadata: HashMap::from([
                        ("generation".into(), session.generation().to_string()),
                        ("bridge_version".into(), VERSION.into()),
                    ]),
                };
                Ok((response, "ok"))
            }
            Err(_) => {
                session.close(voided_by()).await;
                Ok(voided_answer())
            }
        }
    }

    fn stream_opened(self: &Arc<Self>) -> OpenStream {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(self.clone())
    }
}

/// Counts an open StreamAudio for as long as it lives.
struct OpenStream(Arc<BridgeState>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

fn join_failed(error: String) -> proto::JoinRoomResponse {
    proto::JoinRoomResponse {
        success: false,
        error,
        ..Default::default()
    }
}

fn clamp_i32(n: impl TryInto<i32>) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

/// The gRPC face of [`BridgeState`].
#[derive(Clone)]
pub struct Bridge {
    state: Arc<BridgeState>,
}

impl Bridge {
    pub fn new(state: Arc<BridgeState>) -> Self {
        Self { state }
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl LiveKitBridge for Bridge {
    type StreamAudioStream = EventStream<proto::AudioChunk>;
    type PlayAudioStream = EventStream<proto::PlayAudioEvent>;

    async fn stream_audio(
        &self,
        request: Request<Streaming<proto::AudioChunk>>,
    ) -> Result<Response<Self::StreamAudioStream>, Status> {
        let stream = stream::open(self.state.clone(), request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn join_room(
        &self,
        request: Request<proto::JoinRoomRequest>,
    ) -> Result<Response<proto::JoinRoomResponse>, Status> {
        let req = request.into_inner();
        checks::join(&req)?;
        self.state.refuse_if_draining()?;
        // On its own task, so a caller that goes away mid-connect cannot leave a room behind.
        let joined = tokio::spawn(self.state.clone().join(req)).await;
        let response = joined.map_err(|e| BridgeError::Internal(format!("join task: {e}")))??;
        Ok(Response::new(response))
    }

    async fn leave_room(
        &self,
        request: Request<proto::LeaveRoomRequest>,
    ) -> Result<Response<proto::LeaveRoomResponse>, Status> {
        let req = request.into_inner();
        checks::leave(&req)?;
        let Some(session) = self.state.registry.leave(&req.user_id) else {
            return Ok(Response::new(proto::LeaveRoomResponse {
                success: false,
                error: "session not found".into(),
            }));
        };
        tracing::info!(user_id = %req.user_id, reason = %req.reason, "leaving room");
        session.close(EndReason::Left(req.reason)).await;
        Ok(Response::new(proto::LeaveRoomResponse {
            success: true,
            error: String::new(),
        }))
    }

    async fn play_audio(
        &self,
        request: Request<proto::PlayAudioRequest>,
    ) -> Result<Response<Self::PlayAudioStream>, Status> {
        let events = play::play(&self.state, request.into_inner())?;
        Ok(Response::new(events))
    }

    async fn stop_audio(
        &self,
        request: Request<proto::StopAudioRequest>,
    ) -> Result<Response<proto::StopAudioResponse>, Status> {
        let response = play::stop(&self.state, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn health_check(
        &self,
        request: Request<proto::HealthCheckRequest>,
    ) -> Result<Response<proto::HealthCheckResponse>, Status> {
        use proto::health_check_response::ServingStatus;
        let req = request.into_inner();
        checks::health(&req)?;
        let service = req.service;
        let status = if !service.is_empty() && service != proto::SERVICE_NAME {
            ServingStatus::ServiceUnknown
        } else if self.state.is_draining() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        let (registered, connected) = self.state.registry.counts();
        let sessions = self.state.registry.sessions();
        let live = sessions.iter().filter(|s| s.ended().is_none());
        let (reconnecting, silent) = live.fold((0, 0), |(r, q), s| {
            let quiet = s.audio_silent_for() > SILENT_AFTER;
            (r + usize::from(s.is_reconnecting()), q + usize::from(quiet))
        });
        Ok(Response::new(proto::HealthCheckResponse {
            status: status as i32,
            active_sessions: clamp_i32(connected),
            active_streams: clamp_i32(self.state.open_streams()),
            uptime_seconds: self.state.started.elapsed().as_secs() as i64,
            metadata: HashMap::from([
                ("version".into(), VERSION.into()),
                ("registered_sessions".into(), registered.to_string()),
                ("sessions_reconnecting".into(), reconnecting.to_string()),
                ("sessions_without_audio_5s".into(), silent.to_string()),
                (
                    "capacity_sessions_left".into(),
                    self.state
                        .admission
                        .sessions_left(connected)
                        .map_or_else(|| "unlimited".into(), |n| n.to_string()),
                ),
                (
                    "machine_cpu_used".into(),
                    self.state
                        .admission
                        .cpu_used()
                        .map_or_else(|| "unknown".into(), |c| format!("{c:.2}")),
                ),
                (
                    "playbacks_playing".into(),
                    self.state.player.stats().playing().to_string(),
                ),
                (
                    "playback_workers".into(),
                    self.state.player.stats().live_workers().to_string(),
                ),
            ]),
        }))
    }

    async fn get_status(
        &self,
        request: Request<proto::BridgeStatusRequest>,
    ) -> Result<Response<proto::BridgeStatusResponse>, Status> {
        let req = request.into_inner();
        checks::status(&req)?;
        let mut status = proto::BridgeStatusResponse {
            server_version: VERSION.into(),
            ..Default::default()
        };
        let mut headers = tonic::metadata::MetadataMap::new();
        if let Some(session) = self.state.registry.get(&req.user_id) {
            status.connected = session.is_connected();
            status.participant_id = session.participant_id().to_string();
            status.participant_count = clamp_i32(session.participant_count());
            if let Some((reason, at)) = session.ended() {
                status.last_disconnect_at = at;
                status.last_disconnect_reason = reason.describe();
            }
            // What the contract's message has no field for travels as response metadata.
            let state = match (session.ended(), session.is_reconnecting()) {
                (Some(_), _) => "ended",
                (None, true) => "reconnecting",
                (None, false) => "connected",
            };
            let seconds = |d: Duration| format!("{:.1}", d.as_secs_f64());
            let delivered = session
                .delivered_ago()
                .map_or_else(|| "never".into(), seconds);
            for (key, value) in [
                ("x-bridge-session-state", state.to_string()),
                (
                    "x-bridge-target-audio-age-s",
                    seconds(session.audio_silent_for()),
                ),
                ("x-bridge-delivered-audio-age-s", delivered),
            ] {
                if let Ok(value) = value.parse() {
                    headers.insert(key, value);
                }
            }
        }
        let mut response = Response::new(status);
        *response.metadata_mut() = headers;
        Ok(response)
    }
}

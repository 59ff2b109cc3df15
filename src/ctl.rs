//! `livekit-bridge ctl`: an operator's client for a running bridge, so a bridge can be checked
//! without grpcurl or a proto file. It speaks the contract over the same transports the
//! backend uses (TCP, optionally TLS, or the Unix socket) and carries `BRIDGE_AUTH_TOKEN`.
//!
//! ```text
//! livekit-bridge ctl --addr unix:/run/bridge.sock health
//! livekit-bridge ctl --addr 127.0.0.1:9090 status USER
//! livekit-bridge ctl join USER URL TOKEN [--target IDENTITY] [--room NAME]
//! livekit-bridge ctl leave USER | play USER URL [--track N] [--volume V] | stop USER
//! livekit-bridge ctl record USER --seconds N --out FILE.wav
//! ```
//!
//! `play` and `record` print a progress line as they go. `record` writes what the stream
//! delivers as a 16 kHz mono 16-bit WAV (the `hound` crate), from its first chunk to the last.
//! Exit status: 0 done, 1 the bridge answered with a failure, 2 the bridge could not be
//! reached or the command line is wrong.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use crate::audio::format;
use crate::proto::live_kit_bridge_client::LiveKitBridgeClient;
use crate::proto::{self, play_audio_event::EventType};

/// The client's options and what to do.
#[derive(clap::Args, Debug)]
pub struct Ctl {
    /// The bridge: `host:port` (TCP) or `unix:/path/to/socket`.
    #[arg(long, env = "BRIDGE_CTL_ADDR", default_value = "127.0.0.1:9090")]
    addr: String,
    /// The bridge's BRIDGE_AUTH_TOKEN, if it requires one.
    #[arg(long, env = "BRIDGE_AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Connect with TLS, trusting this CA (PEM).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// How long each call may take, in seconds (`record` and `play` run as long as they need).
    #[arg(long, default_value_t = 20)]
    timeout_s: u64,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// HealthCheck: serving status, sessions, streams, capacity.
    Health,
    /// GetStatus of one user's session, with the session's state and audio ages.
    Status { user: String },
    /// JoinRoom: join USER's room at URL with TOKEN.
    Join {
        user: String,
        url: String,
        token: String,
        /// The participant whose audio is forwarded (default: USER).
        #[arg(long)]
        target: Option<String>,
        /// The room's name (default: USER).
        #[arg(long)]
        room: Option<String>,
    },
    /// LeaveRoom.
    Leave { user: String },
    /// PlayAudio: play URL into USER's room, printing progress until it ends.
    Play {
        user: String,
        url: String,
        #[arg(long, default_value_t = 2)]
        track: i32,
        #[arg(long, default_value_t = 1.0)]
        volume: f32,
    },
    /// StopAudio: stop USER's playbacks.
    Stop { user: String },
    /// StreamAudio: record what the stream delivers for N seconds into a WAV file. This takes
    /// the session's stream over (the backend's ends `stream_taken_over`) and the session
    /// closes when the recording ends: for test users, not live ones.
    Record {
        user: String,
        #[arg(long)]
        seconds: f64,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Why a command did not succeed: the exit status and what to print.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The bridge could not be reached, or the arguments are unusable.
    #[error("{0}")]
    Usage(String),
    /// The bridge answered with a failure.
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Failed(_) => 1,
        }
    }
}

impl From<Status> for CtlError {
    fn from(s: Status) -> Self {
        Self::Failed(format!("{:?}: {}", s.code(), s.message()))
    }
}

/// The bearer token every request carries, if any, and the per-call timeout.
struct Calls {
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    timeout: Duration,
}

impl Calls {
    /// A request carrying the token.
    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        r
    }

    /// A unary request carrying the token, with the timeout.
    fn unary<T>(&self, msg: T) -> Request<T> {
        let mut r = self.request(msg);
        r.set_timeout(self.timeout);
        r
    }
}

/// Runs `ctl`, printing to `out`.
pub async fn run(ctl: Ctl, out: &mut dyn Write) -> Result<(), CtlError> {
    let channel = connect(&ctl).await?;
    let token = match &ctl.token {
        Some(t) => Some(
            MetadataValue::try_from(format!("Bearer {t}"))
                .map_err(|_| CtlError::Usage("the token is not a valid header value".into()))?,
        ),
        None => None,
    };
    let mut bridge = Bridge {
        client: LiveKitBridgeClient::new(channel),
        calls: Calls {
            token,
            timeout: Duration::from_secs(ctl.timeout_s),
        },
        out,
    };
    match ctl.action {
        Action::Health => bridge.health().await,
        Action::Status { user } => bridge.status(&user).await,
        Action::Join {
            user,
            url,
            token,
            target,
            room,
        } => {
            let request = proto::JoinRoomRequest {
                room_name: room.unwrap_or_else(|| user.clone()),
                target_identity: target.unwrap_or_else(|| user.clone()),
                user_id: user,
                token,
                livekit_url: url,
            };
            bridge.join(request).await
        }
        Action::Leave { user } => bridge.leave(&user).await,
        Action::Stop { user } => bridge.stop(&user).await,
        Action::Play {
            user,
            url,
            track,
            volume,
        } => {
            let request = proto::PlayAudioRequest {
                request_id: format!("ctl-{}", std::process::id()),
                audio_url: url,
                volume,
                stop_other: false,
                user_id: user,
                track_id: track,
            };
            bridge.play(request).await
        }
        Action::Record {
            user,
            seconds,
            out: path,
        } => {
            if !(seconds > 0.0 && seconds <= 86_400.0) {
                return Err(CtlError::Usage("--seconds must be in (0, 86400]".into()));
            }
            bridge.record(&user, seconds, &path).await
        }
    }
}

/// The bridge `ctl` talks to and where it prints: one method per action.
struct Bridge<'a> {
    client: LiveKitBridgeClient<Channel>,
    calls: Calls,
    out: &'a mut dyn Write,
}

impl Bridge<'_> {
    fn say(&mut self, line: String) {
        let _ = writeln!(self.out, "{line}");
    }

    /// HealthCheck; fails unless the bridge is SERVING.
    async fn health(&mut self) -> Result<(), CtlError> {
        let request = self.calls.unary(proto::HealthCheckRequest::default());
        let h = self.client.health_check(request).await?.into_inner();
        let status = proto::health_check_response::ServingStatus::try_from(h.status)
            .map_or_else(|_| h.status.to_string(), |s| s.as_str_name().to_string());
        self.say(format!(
            "{status}: {} sessions, {} streams, up {} s",
            h.active_sessions, h.active_streams, h.uptime_seconds
        ));
        let mut metadata: Vec<_> = h.metadata.into_iter().collect();
        metadata.sort();
        for (k, v) in metadata {
            self.say(format!("  {k}: {v}"));
        }
        if status != "SERVING" {
            return Err(CtlError::Failed(format!("the bridge is {status}")));
        }
        Ok(())
    }

    /// GetStatus, with the session's state and audio ages from its headers; fails unless the
    /// user is connected.
    async fn status(&mut self, user: &str) -> Result<(), CtlError> {
        let request = self.calls.unary(proto::BridgeStatusRequest {
            user_id: user.to_string(),
        });
        let response = self.client.get_status(request).await?;
        let headers = response.metadata().clone();
        let s = response.into_inner();
        let header = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let ago = |k: &str| match header(k) {
            v if v.parse::<f64>().is_ok() => format!("{v} s ago"),
            v => v,
        };
        self.say(format!(
            "{user}: {} ({}), participant {:?}, {} in the room",
            if s.connected {
                "connected"
            } else {
                "not connected"
            },
            header("x-bridge-session-state"),
            s.participant_id,
            s.participant_count
        ));
        self.say(format!(
            "  target audio: {}; delivered to a stream: {}",
            ago("x-bridge-target-audio-age-s"),
            ago("x-bridge-delivered-audio-age-s")
        ));
        if !s.last_disconnect_reason.is_empty() {
            self.say(format!("  ended: {}", s.last_disconnect_reason));
        }
        if !s.connected {
            return Err(CtlError::Failed(format!("{user} is not connected")));
        }
        Ok(())
    }

    async fn join(&mut self, request: proto::JoinRoomRequest) -> Result<(), CtlError> {
        let user = request.user_id.clone();
        let request = self.calls.unary(request);
        let r = self.client.join_room(request).await?.into_inner();
        if !r.success {
            return Err(CtlError::Failed(format!("join failed: {}", r.error)));
        }
        self.say(format!(
            "{user} joined as {}; {} in the room",
            r.participant_id, r.participant_count
        ));
        Ok(())
    }

    async fn leave(&mut self, user: &str) -> Result<(), CtlError> {
        let request = self.calls.unary(proto::LeaveRoomRequest {
            user_id: user.to_string(),
            reason: "ctl".into(),
        });
        let r = self.client.leave_room(request).await?.into_inner();
        if !r.success {
            return Err(CtlError::Failed(format!("leave failed: {}", r.error)));
        }
        self.say(format!("{user} left"));
        Ok(())
    }

    async fn stop(&mut self, user: &str) -> Result<(), CtlError> {
        let request = self.calls.unary(proto::StopAudioRequest {
            user_id: user.to_string(),
            ..Default::default()
        });
        let r = self.client.stop_audio(request).await?.into_inner();
        self.say(format!("{user}: {r:?}"));
        Ok(())
    }

    /// PlayAudio, printing its events until the final one.
    async fn play(&mut self, request: proto::PlayAudioRequest) -> Result<(), CtlError> {
        let request = self.calls.request(request);
        let mut events = self.client.play_audio(request).await?.into_inner();
        while let Some(e) = events.message().await? {
            match EventType::try_from(e.r#type) {
                Ok(EventType::Started) => self.say("started".into()),
                Ok(EventType::Progress) => self.say(format!("playing: {} ms", e.position_ms)),
                Ok(EventType::Completed) => {
                    self.say(format!("completed: {} ms", e.duration_ms));
                    return Ok(());
                }
                Ok(EventType::Failed) => {
                    return Err(CtlError::Failed(format!("playback failed: {}", e.error)));
                }
                _ => {}
            }
        }
        Err(CtlError::Failed(
            "the playback ended without a final event".into(),
        ))
    }

    /// StreamAudio for `seconds`, written to `path` as a WAV, with a progress line.
    async fn record(&mut self, user: &str, seconds: f64, path: &Path) -> Result<(), CtlError> {
        let spec = hound::WavSpec {
            channels: format::CHANNELS as u16,
            sample_rate: format::SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut wav = hound::WavWriter::create(path, spec)
            .map_err(|e| CtlError::Usage(format!("cannot write {}: {e}", path.display())))?;
        // The first chunk names the session; the stream then stays open for the room's audio.
        let first = proto::AudioChunk {
            user_id: user.to_string(),
            sample_rate: format::SAMPLE_RATE as i32,
            channels: format::CHANNELS as i32,
            ..Default::default()
        };
        let request = self.calls.request(tokio_stream::once(first));
        let mut stream = self.client.stream_audio(request).await?.into_inner();
        let wanted = (seconds * f64::from(format::SAMPLE_RATE)) as u64;
        let (mut samples, started) = (0u64, Instant::now());
        let mut last_report = Instant::now();
        while samples < wanted {
            let left = Duration::from_secs_f64(seconds) + Duration::from_secs(10);
            let chunk =
                tokio::time::timeout(left.saturating_sub(started.elapsed()), stream.message())
                    .await
                    .map_err(|_| CtlError::Failed(format!("no audio for {user} in time")))??;
            let Some(chunk) = chunk else {
                let _ = writeln!(self.out);
                return Err(CtlError::Failed(format!(
                    "the stream ended after {:.2} s of audio",
                    samples as f64 / f64::from(format::SAMPLE_RATE)
                )));
            };
            for pair in chunk.pcm_data.chunks_exact(2) {
                if samples >= wanted {
                    break;
                }
                wav.write_sample(i16::from_le_bytes([pair[0], pair[1]]))
                    .map_err(|e| CtlError::Usage(format!("writing {}: {e}", path.display())))?;
                samples += 1;
            }
            if last_report.elapsed() >= Duration::from_millis(500) {
                let _ = write!(
                    self.out,
                    "\rrecording {user}: {:.1} / {seconds:.1} s",
                    samples as f64 / f64::from(format::SAMPLE_RATE)
                );
                let _ = self.out.flush();
                last_report = Instant::now();
            }
        }
        wav.finalize()
            .map_err(|e| CtlError::Usage(format!("writing {}: {e}", path.display())))?;
        let _ = writeln!(
            self.out,
            "\rrecorded {:.2} s of {user} into {}",
            samples as f64 / f64::from(format::SAMPLE_RATE),
            path.display()
        );
        Ok(())
    }
}

/// A channel to a bridge over its Unix socket, as the backend reaches one. The authority it
/// sends is `localhost`, which h2 accepts on its own.
pub async fn unix_channel(path: &std::path::Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

async fn connect(ctl: &Ctl) -> Result<Channel, CtlError> {
    let unreachable = |e: &dyn std::fmt::Display| {
        CtlError::Usage(format!("cannot reach the bridge at {}: {e}", ctl.addr))
    };
    if let Some(path) = ctl.addr.strip_prefix("unix:") {
        let path = PathBuf::from(path.trim_start_matches("//"));
        return unix_channel(&path).await.map_err(|e| unreachable(&e));
    }
    let scheme = if ctl.ca_file.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", ctl.addr))
        .map_err(|e| CtlError::Usage(format!("--addr {}: {e}", ctl.addr)))?
        .connect_timeout(Duration::from_secs(ctl.timeout_s));
    if let Some(ca) = &ctl.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| CtlError::Usage(format!("--ca-file {}: {e}", ca.display())))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(|e| CtlError::Usage(format!("--ca-file {}: {e}", ca.display())))?;
    }
    endpoint.connect().await.map_err(|e| unreachable(&e))
}

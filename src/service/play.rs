//! PlayAudio and StopAudio: the checked request goes to [`crate::playback`], and playback's
//! events come back as the wire's `PlayAudioEvent`s.
//!
//! Answers, as the contract has them: an empty or non-http(s) URL, or a volume that is not a
//! finite number in 0..=16, gets a FAILED event and then INVALID_ARGUMENT (see
//! [`checks::play`]); a user without a session gets NOT_FOUND; a session whose room is not
//! connected gets FAILED_PRECONDITION.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::checks::{self, PlayRefused};
use super::{BridgeState, EventStream};
use crate::error::BridgeError;
use crate::playback::fetch::redacted;
use crate::playback::{Output, PlayEvent, PlayRequest, StopCause, StopTarget};
use crate::proto::{self, PlayAudioEvent, play_audio_event::EventType};

/// Events queued for a PlayAudio caller.
const EVENT_QUEUE: usize = 8;

pub(super) fn play(
    state: &Arc<BridgeState>,
    req: proto::PlayAudioRequest,
) -> Result<EventStream<PlayAudioEvent>, Status> {
    let request = match checks::play(&req) {
        Ok(request) => request,
        Err(PlayRefused {
            error,
            failed_event: false,
        }) => return Err(error.into()),
        Err(PlayRefused {
            error,
            failed_event: true,
        }) => {
            let failed = PlayAudioEvent {
                r#type: EventType::Failed as i32,
                request_id: req.request_id,
                error: error.to_string(),
                ..Default::default()
            };
            return Ok(Box::pin(tokio_stream::iter([
                Ok(failed),
                Err(error.into()),
            ])));
        }
    };
    let session = state.session(&req.user_id)?;
    if !session.is_connected() {
        let why = session
            .ended()
            .map_or_else(|| "not connected".into(), |(r, _)| r.describe());
        return Err(BridgeError::RoomNotConnected(format!(
            "the room of user_id {:?} is not connected ({why}): call JoinRoom again",
            req.user_id
        ))
        .into());
    }
    tracing::info!(user_id = %req.user_id, request_id = %request.request_id, track = %request.track, url = %redacted(&request.url), "playing");
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let wire = WireEvent::of(&request);
    state.player.start(session, request, tx);
    Ok(Box::pin(
        ReceiverStream::new(rx).map(move |e| Ok(wire.convert(e))),
    ))
}

/// What every event of one playback carries.
struct WireEvent {
    request_id: String,
    track: String,
}

impl WireEvent {
    fn of(request: &PlayRequest) -> Self {
        Self {
            request_id: request.request_id.clone(),
            track: request.track.clone(),
        }
    }

    /// The wire's event for `event`: STARTED carries the start latency and the source's codec,
    /// rate and channels in its metadata; every event names its track.
    fn convert(&self, event: PlayEvent) -> PlayAudioEvent {
        let mut wire = PlayAudioEvent {
            request_id: self.request_id.clone(),
            metadata: HashMap::from([("track".to_string(), self.track.clone())]),
            ..Default::default()
        };
        let (kind, position) = match event {
            PlayEvent::Started { latency, source } => {
                let m = &mut wire.metadata;
                m.insert("start_latency_ms".into(), latency.as_millis().to_string());
                if let Some(s) = source {
                    m.insert("codec".into(), s.codec);
                    m.insert("source_sample_rate".into(), s.sample_rate.to_string());
                    m.insert("source_channels".into(), s.channels.to_string());
                }
                (EventType::Started, None)
            }
            PlayEvent::Progress { position } => (EventType::Progress, Some(position)),
            PlayEvent::Completed { duration } => {
                wire.duration_ms = millis(duration);
                (EventType::Completed, Some(duration))
            }
            PlayEvent::Failed { error, position } => {
                wire.error = error.to_string();
                (EventType::Failed, Some(position))
            }
        };
        wire.r#type = kind as i32;
        wire.position_ms = position.map_or(0, millis);
        wire
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) async fn stop(
    state: &Arc<BridgeState>,
    req: proto::StopAudioRequest,
) -> Result<proto::StopAudioResponse, BridgeError> {
    checks::stop(&req)?;
    let session = state.session(&req.user_id)?;
    let target = if !req.request_id.is_empty() {
        StopTarget::Request(req.request_id)
    } else if req.track_id == -1 {
        StopTarget::All
    } else {
        StopTarget::Track(req.track_id)
    };
    let stopped = session
        .playbacks()
        .stop(&target, StopCause::StopAudio(req.reason))
        .await;
    tracing::info!(user_id = %req.user_id, ?target, ?stopped, "StopAudio");
    Ok(proto::StopAudioResponse {
        success: true,
        error: String::new(),
        stopped_request_id: stopped.join(","),
    })
}

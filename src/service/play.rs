//! PlayAudio and StopAudio: checking the request, finding the session, and handing over to
//! [`crate::playback`].
//!
//! Answers, as the contract has them: an empty or non-http(s) URL, or a volume that is not a
//! finite number in 0..=16, gets a FAILED event and then INVALID_ARGUMENT; a user without a
//! session gets NOT_FOUND; a session whose room is not connected gets FAILED_PRECONDITION.
//! `volume: 0` means unset, i.e. 1.0: proto3 cannot tell the two apart, and the backend leaves
//! it unset for full volume.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{BridgeState, EventStream, checks};
use crate::error::BridgeError;
use crate::playback::fetch::{parse_url, redacted};
use crate::playback::{PlayRequest, PlaybackError, StopCause, StopTarget};
use crate::proto::{self, play_audio_event::EventType};
use crate::room::track_name;

/// Events queued for a PlayAudio caller.
const EVENT_QUEUE: usize = 8;
/// The loudest gain accepted.
const MAX_VOLUME: f32 = 16.0;

/// The contract's volume: 0 is unset (1.0); otherwise a finite gain in (0, 16].
fn volume(v: f32) -> Result<f32, PlaybackError> {
    if v == 0.0 {
        Ok(1.0)
    } else if v.is_finite() && v > 0.0 && v <= MAX_VOLUME {
        Ok(v)
    } else {
        Err(PlaybackError::Invalid(format!(
            "volume {v} is not valid: use 0 < volume <= {MAX_VOLUME} (0 means 1.0)"
        )))
    }
}

fn failed_then(
    request_id: &str,
    error: &str,
    status: Status,
) -> EventStream<proto::PlayAudioEvent> {
    let failed = proto::PlayAudioEvent {
        r#type: EventType::Failed as i32,
        request_id: request_id.to_string(),
        error: error.to_string(),
        ..Default::default()
    };
    Box::pin(tokio_stream::iter([Ok(failed), Err(status)]))
}

pub(super) fn play(
    state: &Arc<BridgeState>,
    req: proto::PlayAudioRequest,
) -> Result<EventStream<proto::PlayAudioEvent>, Status> {
    checks::play(&req)?;
    let checked = parse_url(&req.audio_url).and_then(|url| Ok((url, volume(req.volume)?)));
    let (url, volume) = match checked {
        Ok(c) => c,
        Err(e) => {
            let text = e.to_string();
            return Ok(failed_then(
                &req.request_id,
                &text,
                BridgeError::InvalidArgument(text.clone()).into(),
            ));
        }
    };
    let session = state.registry.get(&req.user_id).ok_or_else(|| {
        BridgeError::NotFound(format!(
            "no session for user_id {:?}: call JoinRoom first",
            req.user_id
        ))
    })?;
    if !session.is_connected() {
        let why = session
            .ended()
            .map_or_else(|| "not connected".into(), |(r, _)| r.describe());
        return Err(BridgeError::FailedPrecondition(format!(
            "the room of user_id {:?} is not connected ({why}): call JoinRoom again",
            req.user_id
        ))
        .into());
    }
    let request = PlayRequest {
        request_id: req.request_id,
        url,
        volume,
        track_id: req.track_id,
        track: track_name(req.track_id),
        stop_other: req.stop_other,
    };
    tracing::info!(user_id = %req.user_id, request_id = %request.request_id, track = %request.track, url = %redacted(&request.url), "playing");
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    state.player.start(session, request, tx);
    Ok(Box::pin(ReceiverStream::new(rx).map(Ok)))
}

pub(super) async fn stop(
    state: &Arc<BridgeState>,
    req: proto::StopAudioRequest,
) -> Result<proto::StopAudioResponse, BridgeError> {
    checks::stop(&req)?;
    let session = state.registry.get(&req.user_id).ok_or_else(|| {
        BridgeError::NotFound(format!("no session for user_id {:?}", req.user_id))
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_zero_is_full_volume_and_nonsense_is_refused() {
        assert_eq!(volume(0.0), Ok(1.0));
        assert_eq!(volume(0.25), Ok(0.25));
        assert_eq!(volume(16.0), Ok(16.0));
        for bad in [-0.5, 16.5, f32::NAN, f32::INFINITY] {
            assert!(volume(bad).is_err(), "{bad}");
        }
    }
}

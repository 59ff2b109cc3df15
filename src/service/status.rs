//! HealthCheck and GetStatus: the bridge's and one session's state, with what the contract's
//! messages have no field for as metadata.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::{BridgeState, VERSION, checks, clamp_i32};
use crate::proto;

/// HealthCheck counts a live session whose target has sent no audio for this long.
const SILENT_AFTER: Duration = Duration::from_secs(5);

/// The HealthCheck RPC.
pub(super) fn health_check(
    state: &BridgeState,
    request: Request<proto::HealthCheckRequest>,
) -> Result<Response<proto::HealthCheckResponse>, Status> {
    use proto::health_check_response::ServingStatus;
    let req = request.into_inner();
    checks::health(&req)?;
    let service = req.service;
    let status = if !service.is_empty() && service != proto::SERVICE_NAME {
        ServingStatus::ServiceUnknown
    } else if state.is_draining() {
        ServingStatus::NotServing
    } else {
        ServingStatus::Serving
    };
    let crate::session::SessionCounts {
        registered,
        connected,
    } = state.registry.counts();
    let sessions = state.registry.sessions();
    let live = sessions.iter().filter(|s| s.ended().is_none());
    let (reconnecting, silent) = live.fold((0, 0), |(r, q), s| {
        let quiet = s.audio_silent_for() > SILENT_AFTER;
        (r + usize::from(s.is_reconnecting()), q + usize::from(quiet))
    });
    Ok(Response::new(proto::HealthCheckResponse {
        status: status as i32,
        active_sessions: clamp_i32(connected),
        active_streams: clamp_i32(state.open_streams()),
        uptime_seconds: state.started.elapsed().as_secs() as i64,
        metadata: HashMap::from([
            ("version".into(), VERSION.into()),
            ("registered_sessions".into(), registered.to_string()),
            ("sessions_reconnecting".into(), reconnecting.to_string()),
            ("sessions_without_audio_5s".into(), silent.to_string()),
            (
                "capacity_sessions_left".into(),
                state
                    .admission
                    .sessions_left(connected)
                    .map_or_else(|| "unlimited".into(), |n| n.to_string()),
            ),
            (
                "machine_cpu_used".into(),
                state
                    .admission
                    .cpu_used()
                    .map_or_else(|| "unknown".into(), |c| format!("{c:.2}")),
            ),
            (
                "playbacks_playing".into(),
                state.player.stats().playing().to_string(),
            ),
            (
                "playback_workers".into(),
                state.player.stats().live_workers().to_string(),
            ),
        ]),
    }))
}

/// The GetStatus RPC.
pub(super) fn get_status(
    state: &BridgeState,
    request: Request<proto::BridgeStatusRequest>,
) -> Result<Response<proto::BridgeStatusResponse>, Status> {
    let req = request.into_inner();
    checks::status(&req)?;
    let mut status = proto::BridgeStatusResponse {
        server_version: VERSION.into(),
        ..Default::default()
    };
    let mut headers = tonic::metadata::MetadataMap::new();
    if let Some(session) = state.registry.get(&req.user_id) {
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

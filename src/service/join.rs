//! JoinRoom and LeaveRoom: a session made, replaced or ended for a user.
//!
//! Connect failures travel in JoinRoom's response body (`success: false`), as the backend
//! expects; a LeaveRoom for no session answers in the body too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::{BridgeState, VERSION, checks, clamp_i32};
use crate::error::BridgeError;
use crate::metrics::JoinResult;
use crate::proto;
use crate::room::ConnectRequest;
use crate::session::{EndReason, Session};

/// The JoinRoom RPC.
pub(super) async fn join_room(
    state: &Arc<BridgeState>,
    request: Request<proto::JoinRoomRequest>,
) -> Result<Response<proto::JoinRoomResponse>, Status> {
    let req = request.into_inner();
    checks::join(&req)?;
    state.refuse_if_draining()?;
    // On its own task, so a caller that goes away mid-connect cannot leave a room behind.
    let joined = tokio::spawn(state.clone().join(req)).await;
    let response = joined.map_err(|e| BridgeError::Internal(format!("join task: {e}")))??;
    Ok(Response::new(response))
}

/// The LeaveRoom RPC.
pub(super) async fn leave_room(
    state: &BridgeState,
    request: Request<proto::LeaveRoomRequest>,
) -> Result<Response<proto::LeaveRoomResponse>, Status> {
    let req = request.into_inner();
    checks::leave(&req)?;
    let Some(session) = state.registry.leave(&req.user_id) else {
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

impl BridgeState {
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
                    BridgeError::ShuttingDown => JoinResult::ShuttingDown,
                    _ => JoinResult::Invalid,
                };
                (Err(e), result)
            }
        };
        self.metrics.join(
            result,
            (result == JoinResult::Ok).then(|| started.elapsed()),
        );
        answer
    }

    async fn join_room(
        self: Arc<Self>,
        req: proto::JoinRoomRequest,
    ) -> Result<(proto::JoinRoomResponse, JoinResult), BridgeError> {
        // A join that replaces the user's live session does not add one.
        let replacing = self
            .registry
            .get(&req.user_id)
            .is_some_and(|s| s.ended().is_none());
        if !replacing && let Err(refusal) = self.admission.admit(self.live_sessions()) {
            tracing::warn!(user_id = %req.user_id, %refusal, "JoinRoom refused");
            return Ok((join_failed(refusal.to_string()), refusal.result()));
        }
        let backend = match self.backends.for_url(&req.livekit_url) {
            Ok(b) => b,
            Err(e @ crate::room::RoomError::InvalidUrl(_)) => return Err(e.into()),
            Err(e) => return Ok((join_failed(e.to_string()), JoinResult::ConnectFailed)),
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
                JoinResult::ShuttingDown,
            ),
            reason => (join_failed(reason.describe()), JoinResult::Superseded),
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
            ring: None,
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
                    crate::room::RoomError::Timeout(_) => JoinResult::Timeout,
                    _ => JoinResult::ConnectFailed,
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
                Ok((response, JoinResult::Ok))
            }
            Err(_) => {
                session.close(voided_by()).await;
                Ok(voided_answer())
            }
        }
    }
}

fn join_failed(error: String) -> proto::JoinRoomResponse {
    proto::JoinRoomResponse {
        success: false,
        error,
        ..Default::default()
    }
}

//! The service's one error type: whose fault it is and what the caller can do, and its one
//! conversion to a gRPC status.

use tonic::{Code, Status};

use crate::room::RoomError;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The caller sent something that cannot work; the message says what to fix.
    /// INVALID_ARGUMENT.
    #[error("{0}")]
    BadRequest(String),
    /// The caller named a user without a session: JoinRoom first. NOT_FOUND.
    #[error("{0}")]
    NoSession(String),
    /// The session's room is not connected: JoinRoom again. FAILED_PRECONDITION.
    #[error("{0}")]
    RoomNotConnected(String),
    /// The session ended, its room gone on LiveKit's side: a new JoinRoom can succeed.
    /// UNAVAILABLE.
    #[error("{0}")]
    SessionEnded(String),
    /// This bridge is draining: another one can take the request. UNAVAILABLE.
    #[error("the bridge is shutting down; retry on another instance")]
    ShuttingDown,
    /// A fault of the bridge itself. INTERNAL.
    #[error("internal error: {0}")]
    Internal(String),
}

impl BridgeError {
    /// An empty required field.
    pub fn missing(field: &str) -> Self {
        Self::BadRequest(format!("{field} is required and was empty"))
    }
}

impl From<BridgeError> for Status {
    fn from(e: BridgeError) -> Self {
        let code = match &e {
            BridgeError::BadRequest(_) => Code::InvalidArgument,
            BridgeError::NoSession(_) => Code::NotFound,
            BridgeError::RoomNotConnected(_) => Code::FailedPrecondition,
            BridgeError::SessionEnded(_) | BridgeError::ShuttingDown => Code::Unavailable,
            BridgeError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<RoomError> for BridgeError {
    /// Only a URL the caller got wrong is the caller's fault; the rest travel in JoinRoom's
    /// response body, as the contract says, and never reach here.
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::InvalidUrl(_) => Self::BadRequest(e.to_string()),
            _ => Self::SessionEnded(e.to_string()),
        }
    }
}

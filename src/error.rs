//! The service's one error type: whose fault it is, and its one conversion to a gRPC status.

use tonic::{Code, Status};

use crate::room::RoomError;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The caller sent something that cannot work; the message says what to fix.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller named a session that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The session exists but is not in a state to do this (its room is not connected).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The session exists but its room is gone.
    #[error("{0}")]
    Unavailable(String),
    /// The RPC exists in the contract but not in this build.
    #[error("{0}")]
    Unimplemented(String),
    /// A fault of the bridge itself.
    #[error("internal error: {0}")]
    Internal(String),
}

impl BridgeError {
    /// An empty required field.
    pub fn missing(field: &str) -> Self {
        Self::InvalidArgument(format!("{field} is required and was empty"))
    }
}

impl From<BridgeError> for Status {
    fn from(e: BridgeError) -> Self {
        let code = match &e {
            BridgeError::InvalidArgument(_) => Code::InvalidArgument,
            BridgeError::NotFound(_) => Code::NotFound,
            BridgeError::FailedPrecondition(_) => Code::FailedPrecondition,
            BridgeError::Unavailable(_) => Code::Unavailable,
            BridgeError::Unimplemented(_) => Code::Unimplemented,
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
            RoomError::InvalidUrl(_) => Self::InvalidArgument(e.to_string()),
            _ => Self::Unavailable(e.to_string()),
        }
    }
}

//! The library's words in the bridge's: disconnect reasons and log records.

use super::proto;
use crate::room::{Disconnect, DisconnectCause};

/// A disconnect the bridge did not ask for: what it means for the session, worded for GetStatus
/// and the logs. `gave_up`: it came while the library was reconnecting, so its reconnect
/// attempts failed.
pub(super) fn disconnect(reason: i32, gave_up: bool) -> Disconnect {
    use proto::DisconnectReason as R;
    let cause = match R::try_from(reason) {
        Ok(R::DuplicateIdentity) => DisconnectCause::DuplicateIdentity,
        Ok(R::ParticipantRemoved) => DisconnectCause::Removed,
        Ok(R::RoomDeleted) => DisconnectCause::RoomDeleted,
        _ => DisconnectCause::Lost,
    };
    Disconnect {
        cause,
        reason: disconnect_reason(reason, gave_up),
    }
}

fn disconnect_reason(reason: i32, gave_up: bool) -> String {
    use proto::DisconnectReason as R;
    let text = match R::try_from(reason) {
        Ok(R::UnknownReason) | Err(_) if gave_up => {
            "the connection to LiveKit was lost and every attempt to reconnect failed"
        }
        Ok(R::ClientInitiated) => "the bridge left the room",
        Ok(R::DuplicateIdentity) => "another participant joined with the same identity",
        Ok(R::ServerShutdown) => "the LiveKit server shut down",
        Ok(R::ParticipantRemoved) => "the participant was removed from the room",
        Ok(R::RoomDeleted) => "the room was deleted",
        Ok(R::StateMismatch) => "the server and client disagreed on state",
        Ok(R::JoinFailure) => {
            "LiveKit refused the join or the rejoin after a lost connection: the token was \
             rejected or has expired, or the room is full; join again with a fresh token"
        }
        Ok(R::Migration) => "the session migrated",
        Ok(R::SignalClose) => "the signalling connection closed (token expired or network lost)",
        Ok(R::RoomClosed) => "the room was closed",
        Ok(R::ConnectionTimeout) => "the connection timed out",
        Ok(R::MediaFailure) => "media failed",
        _ => "disconnected",
    };
    let name = R::try_from(reason).map_or_else(|_| reason.to_string(), |r| r.as_str_name().into());
    format!("{text} ({name})")
}

/// One of the library's log records, into the bridge's logs under the target `livekit_ffi`.
pub(super) fn log_record(r: &proto::LogRecord) {
    use proto::LogLevel as L;
    let (module, message) = (r.target.as_str(), r.message.as_str());
    match L::try_from(r.level) {
        Ok(L::LogError) => tracing::error!(target: "livekit_ffi", module, "{message}"),
        Ok(L::LogWarn) => tracing::warn!(target: "livekit_ffi", module, "{message}"),
        Ok(L::LogInfo) => tracing::info!(target: "livekit_ffi", module, "{message}"),
        Ok(L::LogDebug) => tracing::debug!(target: "livekit_ffi", module, "{message}"),
        _ => tracing::trace!(target: "livekit_ffi", module, "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_follow_who_disconnected() {
        use proto::DisconnectReason as R;
        let cause = |r: R| disconnect(r as i32, false).cause;
        assert_eq!(
            cause(R::DuplicateIdentity),
            DisconnectCause::DuplicateIdentity
        );
        assert_eq!(cause(R::ParticipantRemoved), DisconnectCause::Removed);
        assert_eq!(cause(R::RoomDeleted), DisconnectCause::RoomDeleted);
        for lost in [
            R::ServerShutdown,
            R::SignalClose,
            R::JoinFailure,
            R::RoomClosed,
        ] {
            assert_eq!(cause(lost), DisconnectCause::Lost, "{lost:?}");
        }
        assert_eq!(disconnect(9999, false).cause, DisconnectCause::Lost);
    }

    #[test]
    fn reasons_are_worded_and_named() {
        let dup = disconnect_reason(proto::DisconnectReason::DuplicateIdentity as i32, false);
        assert_eq!(
            dup,
            "another participant joined with the same identity (DUPLICATE_IDENTITY)"
        );
        assert_eq!(disconnect_reason(9999, false), "disconnected (9999)");
        let unknown = proto::DisconnectReason::UnknownReason as i32;
        assert_eq!(
            disconnect_reason(unknown, true),
            "the connection to LiveKit was lost and every attempt to reconnect failed \
             (UNKNOWN_REASON)"
        );
    }
}

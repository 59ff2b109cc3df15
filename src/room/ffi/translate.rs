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

/// One of the library's log records, into the bridge's logs under the target `livekit_ffi`,
/// with any access token in it redacted. The redaction runs only when the record is written:
/// the library sends its verbose records too (libwebrtc's, a hex dump of every SCTP packet
/// among them), many a second per room, and the filter drops most of them.
pub(super) fn log_record(r: &proto::LogRecord) {
    use proto::LogLevel as L;
    let module = r.target.as_str();
    let message = Redacted(&r.message);
    match L::try_from(r.level) {
        Ok(L::LogError) => tracing::error!(target: "livekit_ffi", module, "{message}"),
        Ok(L::LogWarn) => tracing::warn!(target: "livekit_ffi", module, "{message}"),
        Ok(L::LogInfo) => tracing::info!(target: "livekit_ffi", module, "{message}"),
        Ok(L::LogDebug) => tracing::debug!(target: "livekit_ffi", module, "{message}"),
        _ => tracing::trace!(target: "livekit_ffi", module, "{message}"),
    }
}

/// A text shown with its access tokens redacted ([`without_tokens`]), when it is formatted.
struct Redacted<'a>(&'a str);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&without_tokens(self.0))
    }
}

/// `text` with every JSON Web Token in it (`eyJ…` and two more dot-separated base64url
/// parts) replaced by `<token>`. LiveKit's server echoes a refused token whole in its 401
/// ("invalid token: eyJ…, error: token is expired"), which the library passes on in its
/// connect error and its log; a token is a credential, and must reach neither JoinRoom's
/// answer nor the logs. What the server said about it stays.
pub(super) fn without_tokens(text: &str) -> String {
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("eyJ") {
        out.push_str(&rest[..at]);
        let candidate = &rest[at..];
        let len = candidate
            .find(|c: char| !is_part(c) && c != '.')
            .unwrap_or(candidate.len());
        let word = &candidate[..len];
        let parts = word.split('.').filter(|p| !p.is_empty()).count();
        if parts == 3 && word.matches('.').count() == 2 {
            out.push_str("<token>");
            rest = &candidate[len..];
        } else {
            out.push_str("eyJ");
            rest = &candidate[3..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted_and_the_servers_words_kept() {
        let said = "401 Unauthorized - invalid token: eyJhbGci.eyJ2aWRlbyI6.NGz4Qe-_q0, error: \
                    token is expired";
        assert_eq!(
            without_tokens(said),
            "401 Unauthorized - invalid token: <token>, error: token is expired"
        );
        for kept in ["no token", "eyJ alone", "eyJa.b", "a.eyJb.c.d.e", ""] {
            assert_eq!(without_tokens(kept), kept);
        }
    }

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

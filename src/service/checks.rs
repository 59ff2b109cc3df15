//! Every size and shape a caller controls, checked in one place before any work is done: the
//! README's bad-input table is this file. A value outside its bound is INVALID_ARGUMENT with
//! the field, the bound and what was sent (its length, never the value itself when that is
//! too long or unprintable, so one request cannot flood the logs or the reply).

use crate::error::BridgeError;
use crate::proto;

/// A string field of a request and its bounds.
struct Field {
    name: &'static str,
    required: bool,
    max_bytes: usize,
    /// Identifiers are printable; free text (reasons) may hold any character, since logs
    /// escape control characters.
    printable: bool,
}

const fn id(name: &'static str, required: bool) -> Field {
    Field {
        name,
        required,
        max_bytes: MAX_ID_BYTES,
        printable: true,
    }
}

/// User ids, identities, room names, request ids.
pub const MAX_ID_BYTES: usize = 256;
/// LiveKit access tokens (JWTs are a few hundred bytes to a few KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// `livekit_url` and PlayAudio's `audio_url` (presigned URLs run to a couple of KiB).
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// LeaveRoom's and StopAudio's free-text `reason`.
pub const MAX_REASON_BYTES: usize = 1024;
/// Track ids a session may publish on: `0..MAX_TRACKS` (StopAudio also takes -1, all tracks).
pub const MAX_TRACKS: i32 = 64;

const USER_ID: Field = id("user_id", true);
const REQUEST_ID: Field = id("request_id", false);

fn url(name: &'static str, required: bool) -> Field {
    Field {
        name,
        required,
        max_bytes: MAX_URL_BYTES,
        printable: true,
    }
}

const REASON: Field = Field {
    name: "reason",
    required: false,
    max_bytes: MAX_REASON_BYTES,
    printable: false,
};

fn check(field: &Field, value: &str) -> Result<(), BridgeError> {
    let invalid = |what: String| {
        Err(BridgeError::InvalidArgument(format!(
            "{} {what}",
            field.name
        )))
    };
    if value.is_empty() {
        return if field.required {
            Err(BridgeError::missing(field.name))
        } else {
            Ok(())
        };
    }
    if value.len() > field.max_bytes {
        return invalid(format!(
            "is {} bytes; at most {} are accepted",
            value.len(),
            field.max_bytes
        ));
    }
    if field.printable && value.chars().any(char::is_control) {
        return invalid("contains control characters (newline, NUL, escape, ...)".into());
    }
    Ok(())
}

/// A track a session may publish on.
pub fn track(track_id: i32) -> Result<(), BridgeError> {
    if (0..MAX_TRACKS).contains(&track_id) {
        return Ok(());
    }
    Err(BridgeError::InvalidArgument(format!(
        "track_id {track_id} is out of range: use 0..={} (0 speaker, 1 app_audio, 2 tts)",
        MAX_TRACKS - 1
    )))
}

pub fn join(req: &proto::JoinRoomRequest) -> Result<(), BridgeError> {
    check(&USER_ID, &req.user_id)?;
    check(&url("livekit_url", true), &req.livekit_url)?;
    check(&id("room_name", false), &req.room_name)?;
    check(&id("target_identity", false), &req.target_identity)?;
    check(
        &Field {
            name: "token",
            required: false,
            max_bytes: MAX_TOKEN_BYTES,
            printable: true,
        },
        &req.token,
    )
}

pub fn leave(req: &proto::LeaveRoomRequest) -> Result<(), BridgeError> {
    check(&USER_ID, &req.user_id)?;
    check(&REASON, &req.reason)
}

pub fn status(req: &proto::BridgeStatusRequest) -> Result<(), BridgeError> {
    check(&USER_ID, &req.user_id)
}

pub fn health(req: &proto::HealthCheckRequest) -> Result<(), BridgeError> {
    check(&id("service", false), &req.service)
}

/// The first chunk of a StreamAudio, which names the session.
pub fn first_chunk(chunk: &proto::AudioChunk) -> Result<(), BridgeError> {
    check(&id("user_id of the first AudioChunk", true), &chunk.user_id)
}

/// PlayAudio's identifiers and URL length (the URL's form and the volume are checked by
/// playback, which reports them in a FAILED event).
pub fn play(req: &proto::PlayAudioRequest) -> Result<(), BridgeError> {
    check(&USER_ID, &req.user_id)?;
    check(&REQUEST_ID, &req.request_id)?;
    // An empty URL is reported by playback, as a FAILED event before the status.
    check(&url("audio_url", false), &req.audio_url)?;
    track(req.track_id)
}

pub fn stop(req: &proto::StopAudioRequest) -> Result<(), BridgeError> {
    check(&USER_ID, &req.user_id)?;
    check(&REQUEST_ID, &req.request_id)?;
    check(&REASON, &req.reason)?;
    if req.track_id == -1 {
        return Ok(());
    }
    track(req.track_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_with(user_id: &str) -> proto::JoinRoomRequest {
        proto::JoinRoomRequest {
            user_id: user_id.into(),
            livekit_url: "sim://tone".into(),
            ..Default::default()
        }
    }

    #[test]
    fn ids_are_bounded_and_printable() {
        assert!(join(&join_with("u1@example.com")).is_ok());
        for bad in ["", "a\nERROR forged", "nul\0", "esc\u{1b}[31m"] {
            assert!(join(&join_with(bad)).is_err(), "{bad:?}");
        }
        let huge = "x".repeat(1 << 20);
        let err = join(&join_with(&huge)).expect_err("too long").to_string();
        assert!(err.contains("1048576 bytes") && err.len() < 200, "{err}");
    }

    #[test]
    fn reasons_may_hold_anything_short() {
        let mut leave_req = proto::LeaveRoomRequest {
            user_id: "u".into(),
            reason: "line one\nline two".into(),
        };
        assert!(leave(&leave_req).is_ok());
        leave_req.reason = "r".repeat(MAX_REASON_BYTES + 1);
        assert!(leave(&leave_req).is_err());
    }

    #[test]
    fn tracks_are_bounded() {
        assert!(track(0).is_ok() && track(MAX_TRACKS - 1).is_ok());
        assert!(track(-1).is_err() && track(MAX_TRACKS).is_err());
        let stop_all = proto::StopAudioRequest {
            user_id: "u".into(),
            track_id: -1,
            ..Default::default()
        };
        assert!(stop(&stop_all).is_ok());
    }
}

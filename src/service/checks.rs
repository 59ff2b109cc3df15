//! The bounds of every request field a caller controls, checked before any work is done, and
//! the message size limit. A value outside its bound is INVALID_ARGUMENT with the field, the
//! bound and what was sent (its length, never the value itself when that is too long or
//! unprintable, so one request cannot flood the logs or the reply).
//!
//! Checks that need more than the request live where that is: a StreamAudio chunk's format
//! against its session and the first chunk's deadline (`stream.rs`), a `sim://` URL's grammar
//! (`room/sim`), and PlayAudio's URL against the egress policy (`playback/egress.rs`).

use reqwest::Url;

use crate::error::BridgeError;
use crate::playback::PlayRequest;
use crate::proto;
use crate::room::track_name;

/// The largest message accepted or sent, both ways, as the service it replaces had it.
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

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
/// The loudest PlayAudio gain accepted.
pub const MAX_VOLUME: f32 = 16.0;
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
    let invalid = |what: String| Err(BridgeError::BadRequest(format!("{} {what}", field.name)));
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
    Err(BridgeError::BadRequest(format!(
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

/// A PlayAudio the bridge will not start. `error` is the status it ends with; with
/// `failed_event` the contract wants a FAILED event first (the audio URL or the volume cannot
/// work; ids and lengths out of bounds get the status alone).
#[derive(Debug)]
pub struct PlayRefused {
    pub error: BridgeError,
    pub failed_event: bool,
}

/// PlayAudio, whole: its ids and lengths, its URL and its volume.
pub fn play(req: &proto::PlayAudioRequest) -> Result<PlayRequest, PlayRefused> {
    let status = |error| PlayRefused {
        error,
        failed_event: false,
    };
    check(&USER_ID, &req.user_id).map_err(status)?;
    check(&REQUEST_ID, &req.request_id).map_err(status)?;
    // An empty URL is reported as a FAILED event before the status, below.
    check(&url("audio_url", false), &req.audio_url).map_err(status)?;
    track(req.track_id).map_err(status)?;
    let event = |error| PlayRefused {
        error,
        failed_event: true,
    };
    Ok(PlayRequest {
        request_id: req.request_id.clone(),
        url: audio_url(&req.audio_url).map_err(event)?,
        volume: volume(req.volume).map_err(event)?,
        track_id: req.track_id,
        track: track_name(req.track_id),
        stop_other: req.stop_other,
    })
}

/// A PlayAudio URL: only absolute `http` and `https` URLs with a host.
pub fn audio_url(url: &str) -> Result<Url, BridgeError> {
    let invalid = |why: String| BridgeError::BadRequest(format!("audio_url {url:?} {why}"));
    if url.trim().is_empty() {
        return Err(BridgeError::missing("audio_url"));
    }
    let parsed = Url::parse(url.trim()).map_err(|e| invalid(format!("is not a valid URL: {e}")))?;
    match parsed.scheme() {
        "http" | "https" if parsed.host().is_some() => Ok(parsed),
        "http" | "https" => Err(invalid("has no host".into())),
        other => Err(invalid(format!(
            "has scheme {other:?}; only http and https are supported"
        ))),
    }
}

/// The contract's volume: 0 is unset (1.0), as proto3 cannot tell the two apart and the
/// backend leaves it unset for full volume; otherwise a finite gain in (0, 16].
fn volume(v: f32) -> Result<f32, BridgeError> {
    if v == 0.0 {
        Ok(1.0)
    } else if v.is_finite() && v > 0.0 && v <= MAX_VOLUME {
        Ok(v)
    } else {
        Err(BridgeError::BadRequest(format!(
            "volume {v} is not valid: use 0 < volume <= {MAX_VOLUME} (0 means 1.0)"
        )))
    }
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
    fn volume_zero_is_full_volume_and_nonsense_is_refused() {
        assert_eq!(volume(0.0).ok(), Some(1.0));
        assert_eq!(volume(0.25).ok(), Some(0.25));
        assert_eq!(volume(16.0).ok(), Some(16.0));
        for bad in [-0.5, 16.5, f32::NAN, f32::INFINITY] {
            assert!(volume(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_http_and_https_urls_with_a_host() {
        assert!(audio_url("http://h/a.mp3").is_ok());
        assert!(audio_url("HTTPS://h/a.mp3?x=1.wav").is_ok());
        for bad in [
            "",
            "  ",
            "file:///etc/passwd",
            "ftp://h/a.mp3",
            "h/a.mp3",
            "http://",
        ] {
            assert!(audio_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_url_or_volume_is_reported_as_an_event_and_bad_ids_are_not() {
        let mut req = proto::PlayAudioRequest {
            user_id: "u".into(),
            request_id: "r".into(),
            audio_url: "https://h/a.wav".into(),
            track_id: 2,
            ..Default::default()
        };
        let ok = play(&req).expect("valid");
        assert_eq!((ok.track.as_str(), ok.volume), ("tts", 1.0));
        req.volume = -1.0;
        assert!(play(&req).expect_err("bad volume").failed_event);
        req.volume = 0.0;
        req.audio_url = "ftp://h/a.wav".into();
        assert!(play(&req).expect_err("bad scheme").failed_event);
        req.request_id = "a\nb".into();
        assert!(!play(&req).expect_err("bad id").failed_event);
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

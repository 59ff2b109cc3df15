//! The `sim://` URL: its grammar, every parameter and its default, is in `docs/backend.md`
//! (the simulated room), written once; [`SimSpec::parse`] implements it and names what is wrong
//! with a URL.

use crate::room::{DisconnectCause, RoomError};

/// What a simulated room does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Tone,
    Echo,
    Silent,
}

/// How a simulated room delivers the target's audio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Data packets (`RoomEvents::on_data`).
    Data,
    /// Frames of the target's audio track (`RoomEvents::on_track_audio`).
    Track,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    Realtime,
    Max,
}

/// A parsed `sim://` URL (grammar: `docs/backend.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct SimSpec {
    pub mode: Mode,
    pub hz: f64,
    pub level: f64,
    pub frame_ms: u32,
    pub pace: Pace,
    pub frames: Option<u64>,
    pub identity: Option<String>,
    pub via: Via,
    pub chatter_ms: u64,
    pub participants: u32,
    pub join_after_ms: Option<u64>,
    pub linger_ms: u64,
    pub drop_after_ms: Option<u64>,
    pub drop_reason: DisconnectCause,
    pub kick_delay_ms: u64,
    pub server: Option<String>,
    pub fail: Option<String>,
    pub connect_delay_ms: u64,
}

impl SimSpec {
    pub fn parse(url: &str) -> Result<Self, RoomError> {
        let bad = |what: String| RoomError::InvalidUrl(format!("{url:?}: {what}"));
        let rest = url
            .get(..6)
            .filter(|s| s.eq_ignore_ascii_case("sim://"))
            .map(|_| &url[6..])
            .ok_or_else(|| bad("not a sim:// URL".into()))?;
        let (mode, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mode = match mode.trim_end_matches('/') {
            "tone" => Mode::Tone,
            "echo" => Mode::Echo,
            "silent" => Mode::Silent,
            "" => {
                return Err(bad(
                    "no mode: use sim://tone, sim://echo or sim://silent".into()
                ));
            }
            other => return Err(bad(format!("unknown mode {other:?} (tone, echo, silent)"))),
        };
        let mut spec = SimSpec {
            mode,
            hz: 440.0,
            level: 0.5,
            frame_ms: 10,
            pace: Pace::Realtime,
            frames: None,
            identity: None,
            via: Via::Data,
            chatter_ms: 20,
            participants: 2,
            join_after_ms: None,
            linger_ms: 20,
            drop_after_ms: None,
            drop_reason: DisconnectCause::Lost,
            kick_delay_ms: 0,
            server: None,
            fail: None,
            connect_delay_ms: 0,
        };
        if let Some(at) = bad_escape(query) {
            return Err(bad(format!(
                "bad escape {:?}: % must be followed by two hex digits",
                &query[at..query.len().min(at + 3)]
            )));
        }
        let mut seen: Vec<String> = Vec::new();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let (key, value) = (key.as_ref(), value.into_owned());
            // Each parameter once: a repeat is a mistake (which one was meant?), and refusing it
            // also bounds the work a URL can ask for to the few known parameters.
            if seen.iter().any(|k| k == key) {
                return Err(bad(format!("parameter {key:?} is given more than once")));
            }
            seen.push(key.to_string());
            if value.contains(char::REPLACEMENT_CHARACTER) {
                return Err(bad(format!("{key} is not UTF-8 once decoded")));
            }
            let num = |lo: u64, hi: u64| {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (lo..=hi).contains(n))
                    .ok_or_else(|| bad(format!("{key} must be an integer in {lo}..={hi}")))
            };
            let unit = || {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|x| (0.0..=1.0).contains(x))
                    .ok_or_else(|| bad(format!("{key} must be a number in 0..=1")))
            };
            const DAY_MS: u64 = 86_400_000;
            match key {
                "hz" => {
                    spec.hz = value
                        .parse::<f64>()
                        .ok()
                        .filter(|x| (1.0..8000.0).contains(x))
                        .ok_or_else(|| bad("hz must be a number in 1..8000".into()))?
                }
                "level" => spec.level = unit()?,
                "frame_ms" => spec.frame_ms = num(1, 100)? as u32,
                "pace" => {
                    spec.pace = match value.as_str() {
                        "realtime" => Pace::Realtime,
                        "max" => Pace::Max,
                        _ => return Err(bad("pace must be realtime or max".into())),
                    }
                }
                "frames" => spec.frames = Some(num(0, u64::MAX)?),
                "identity" => spec.identity = Some(value),
                "via" => {
                    spec.via = match value.as_str() {
                        "data" => Via::Data,
                        "track" => Via::Track,
                        _ => return Err(bad("via must be data or track".into())),
                    }
                }
                "chatter_ms" => spec.chatter_ms = num(1, DAY_MS)?,
                "participants" => spec.participants = num(1, 10_000)? as u32,
                "join_after_ms" => spec.join_after_ms = Some(num(0, DAY_MS)?),
                "linger_ms" => spec.linger_ms = num(0, 60_000)?,
                "drop_after_ms" => spec.drop_after_ms = Some(num(0, DAY_MS)?),
                "drop_reason" => {
                    spec.drop_reason = match value.as_str() {
                        "lost" => DisconnectCause::Lost,
                        "removed" => DisconnectCause::Removed,
                        "deleted" => DisconnectCause::RoomDeleted,
                        "duplicate_identity" => DisconnectCause::DuplicateIdentity,
                        _ => {
                            return Err(bad(
                                "drop_reason must be lost, removed, deleted or duplicate_identity"
                                    .into(),
                            ));
                        }
                    }
                }
                "kick_delay_ms" => spec.kick_delay_ms = num(0, 60_000)?,
                "server" => spec.server = Some(value),
                "fail" => spec.fail = Some(value),
                "connect_delay_ms" => spec.connect_delay_ms = num(0, DAY_MS)?,
                _ => return Err(bad(format!("unknown parameter {key:?}"))),
            }
        }
        Ok(spec)
    }
}

/// Where `query` has a `%` not followed by two hex digits. The form decoding (`url`) would
/// keep such a `%` as text; a `sim://` URL is an instrument, so a typo in one is refused.
fn bad_escape(query: &str) -> Option<usize> {
    let b = query.as_bytes();
    (0..b.len()).find(|&i| {
        b[i] == b'%'
            && !b
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_parses_and_rejects_clearly() {
        let kicked = SimSpec::parse("sim://silent?drop_after_ms=5&drop_reason=removed&server=s1")
            .expect("valid");
        assert_eq!(kicked.drop_reason, DisconnectCause::Removed);
        assert_eq!(kicked.server.as_deref(), Some("s1"));
        assert!(SimSpec::parse("sim://silent?drop_reason=bored").is_err());
        let s = SimSpec::parse("sim://tone?hz=1000&frame_ms=20&pace=max&fail=room%20full")
            .expect("valid");
        assert_eq!(
            (s.mode, s.hz, s.frame_ms, s.pace),
            (Mode::Tone, 1000.0, 20, Pace::Max)
        );
        assert_eq!(s.fail.as_deref(), Some("room full"));
        assert_eq!(SimSpec::parse("sim://echo").map(|s| s.mode), Ok(Mode::Echo));
        for bad in [
            "sim://noise",
            "sim://",
            "sim://?hz=440",
            "sim://tone?hz=440&hz=441",
            "sim://tone?frame_ms=0",
            "sim://tone?hz=abc",
            "sim://tone?colour=red",
            "sim://tone?fail=%zz",
            "ws://tone",
        ] {
            let err = SimSpec::parse(bad).expect_err(bad);
            assert!(matches!(err, RoomError::InvalidUrl(_)), "{bad}: {err}");
        }
    }
}

//! The simulated server: who is in which room, kept for every bridge in the process, so that a
//! join with an identity already connected kicks the older participant as LiveKit does
//! (`DUPLICATE_IDENTITY`); and each participant's [`Lifetime`], which its callback sources
//! poll to know when to stop.
//!
//! A sim room has no token to read room and identity from: they are the join's `room_name`
//! and token, or the user's own where either is empty ([`Participant::joining`]), so that
//! independent users never collide while tests that name one room and token share it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::lock;
use crate::room::ConnectRequest;

/// When the room's threads stop: `linger_ms` after disconnect was asked for or the server
/// dropped the room. Its atomic is Relaxed: the threads poll it for its own value, and nothing
/// else is published through it.
pub(super) struct Lifetime {
    pub(super) started: Instant,
    /// Milliseconds after `started` when the stop was asked for; `u64::MAX` while running.
    stop_asked_ms: AtomicU64,
    linger_ms: u64,
    /// When the simulated server kicks this participant for a newer one with its identity.
    kick_at: Mutex<Option<Instant>>,
}

impl Lifetime {
    pub(super) fn new(linger_ms: u64) -> Self {
        Self {
            started: Instant::now(),
            stop_asked_ms: AtomicU64::new(u64::MAX),
            linger_ms,
            kick_at: Mutex::new(None),
        }
    }

    pub(super) fn ask_stop(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let _ = self.stop_asked_ms.compare_exchange(
            u64::MAX,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The simulated server kicks this participant `after` from now.
    pub(super) fn kick_after(&self, after: Duration) {
        *lock(&self.kick_at) = Some(Instant::now() + after);
    }

    pub(super) fn kick_due(&self, now: Instant) -> bool {
        lock(&self.kick_at).is_some_and(|at| now >= at)
    }

    pub(super) fn stopping(&self) -> bool {
        self.stop_asked_ms.load(Ordering::Relaxed) != u64::MAX
    }

    pub(super) fn over(&self) -> bool {
        let asked = self.stop_asked_ms.load(Ordering::Relaxed);
        asked != u64::MAX && self.started.elapsed().as_millis() as u64 >= asked + self.linger_ms
    }
}

/// One participant of a simulated server: the bridge's identity in a room.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Participant {
    /// The bridge's own server, or the one a `server=` parameter names.
    server: String,
    pub(super) room: String,
    identity: String,
}

/// The simulated servers' participants, shared by every bridge in the process: the live room
/// of each.
fn participants() -> &'static Mutex<HashMap<Participant, Arc<Lifetime>>> {
    static PARTICIPANTS: OnceLock<Mutex<HashMap<Participant, Arc<Lifetime>>>> = OnceLock::new();
    PARTICIPANTS.get_or_init(Mutex::default)
}

impl Participant {
    /// Who a sim join enters as, on `server`, where a LiveKit token would name room and
    /// identity: the join's `room_name` and token, or the user's own where either is empty.
    pub(super) fn joining(server: String, request: &ConnectRequest) -> Self {
        let room = if request.room_name.is_empty() {
            request.user_id.clone()
        } else {
            request.room_name.clone()
        };
        let identity = if request.token.is_empty() {
            format!("cloud-agent:{}", request.user_id)
        } else {
            request.token.clone()
        };
        Self {
            server,
            room,
            identity,
        }
    }

    /// Enters the server with `life`; the older participant with this identity, if one is
    /// still running (the caller kicks it).
    pub(super) fn enter(&self, life: &Arc<Lifetime>) -> Option<Arc<Lifetime>> {
        let older = lock(participants()).insert(self.clone(), life.clone());
        older.filter(|o| !o.stopping())
    }

    /// Leaves the server, unless a newer participant with this identity took its place.
    pub(super) fn leave(&self, life: &Arc<Lifetime>) {
        let mut all = lock(participants());
        if all.get(self).is_some_and(|l| Arc::ptr_eq(l, life)) {
            all.remove(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(user: &str, room: &str, token: &str) -> ConnectRequest {
        ConnectRequest {
            user_id: user.into(),
            room_name: room.into(),
            token: token.into(),
            url: "sim://silent".into(),
            target_identity: "phone".into(),
            timeout: Duration::ZERO,
            audio_source: Default::default(),
            ring: None,
        }
    }

    #[test]
    fn users_without_room_or_token_never_share_an_identity() {
        let a = Participant::joining("s".into(), &request("a", "", ""));
        let b = Participant::joining("s".into(), &request("b", "", ""));
        assert_ne!(a, b);
        let one = Participant::joining("s".into(), &request("a", "r", "t"));
        let other = Participant::joining("s".into(), &request("b", "r", "t"));
        assert_eq!(
            one, other,
            "one room and token: one identity, as LiveKit's token makes it"
        );
    }
}

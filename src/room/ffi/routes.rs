//! The routing table of connected rooms: where the event callback finds, for every data
//! packet and room event, the session it is for.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_utils::sync::ShardedLock;
use tokio::sync::mpsc;

use crate::room::RoomEvents;

/// A track event for the target's audio, from the event callback to the room's subscription
/// task (`subscribe`).
#[derive(Debug)]
pub(super) enum TrackEvent {
    /// An audio publication of the target; the handle is now the task's.
    Published {
        sid: String,
        publication: u64,
        /// Its source is the microphone (not, say, a screen share's audio).
        microphone: bool,
    },
    Unpublished {
        sid: String,
    },
    /// The target's audio track, subscribed; the handle is now the task's.
    Subscribed {
        sid: String,
        track: u64,
    },
    Unsubscribed {
        sid: String,
    },
    /// The room's connection is back after the library reconnected it.
    Reconnected,
}

/// A room's entry in the routing table: the session's callbacks and its participant count.
pub(super) struct Route {
    pub events: Arc<dyn RoomEvents>,
    /// Participants in the room, the bridge included.
    pub participants: AtomicU32,
    /// The library is reconnecting the room (a disconnect now means it gave up).
    pub reconnecting: AtomicBool,
    /// The participant whose audio the session takes.
    pub target: String,
    /// The room's subscription task, when the session takes the target's audio tracks.
    pub tracks: Option<mpsc::UnboundedSender<TrackEvent>>,
    /// The bridge's own identity in the room.
    pub local_identity: String,
    /// The bridge's own tracks the server unpublished, shared with the room's publisher.
    pub unpublished: Unpublished,
}

/// The bridge's own tracks the server took out of the room: by publication SID (a
/// `LocalTrackUnpublished`), or all of them (its publish permission revoked, which the library
/// reports as a `ParticipantPermissionChanged` only). The event callback records it; the
/// room's next publish on such a track sees it gone and publishes it anew. A mutex: a room
/// event, rare, never on the audio path.
#[derive(Clone, Default)]
pub(super) struct Unpublished(Arc<Mutex<Gone>>);

#[derive(Default)]
struct Gone {
    sids: HashSet<String>,
    /// How many times every track was taken out; a track published before the latest is gone.
    all: u64,
    /// The bridge's publish permission is revoked.
    revoked: bool,
}

impl Unpublished {
    pub fn add(&self, sid: &str) {
        self.lock().sids.insert(sid.to_string());
    }

    /// The publish permission changed: revoked, every track published until now is gone.
    pub fn permission(&self, may_publish: bool) {
        let mut gone = self.lock();
        if !may_publish && !gone.revoked {
            gone.all += 1;
        }
        gone.revoked = !may_publish;
    }

    /// Whether the bridge may publish (its permission is not revoked).
    pub fn may_publish(&self) -> bool {
        !self.lock().revoked
    }

    /// The count of [`Self::all`] so far, to stamp a track published now.
    pub fn generation(&self) -> u64 {
        self.lock().all
    }

    /// Whether the track `sid`, published at `generation`, was taken out; forgets it.
    pub fn take(&self, sid: &str, generation: u64) -> bool {
        let mut gone = self.lock();
        gone.sids.remove(sid) || gone.all > generation
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gone> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Connected rooms by handle. Written only to insert or remove one room; read by the callback
/// threads for every packet (a `ShardedLock`: readers on different threads do not contend).
#[derive(Default)]
pub(super) struct Routes {
    rooms: ShardedLock<HashMap<u64, Arc<Route>>>,
}

impl Routes {
    /// The route of `room_handle`, if the room is still routed.
    pub fn get(&self, room_handle: u64) -> Option<Arc<Route>> {
        self.read().get(&room_handle).cloned()
    }

    /// Runs `f` on the route of `room_handle` under the read lock, without touching the
    /// route's reference count: the hot path of every data packet.
    pub fn with<R>(&self, room_handle: u64, f: impl FnOnce(Option<&Route>) -> R) -> R {
        f(self.read().get(&room_handle).map(Arc::as_ref))
    }

    pub fn add(&self, room_handle: u64, route: Route) {
        self.write().insert(room_handle, Arc::new(route));
    }

    pub fn remove(&self, room_handle: u64) {
        self.write().remove(&room_handle);
    }

    fn read(&self) -> crossbeam_utils::sync::ShardedLockReadGuard<'_, HashMap<u64, Arc<Route>>> {
        self.rooms.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> crossbeam_utils::sync::ShardedLockWriteGuard<'_, HashMap<u64, Arc<Route>>> {
        self.rooms.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_taken_out_are_seen_once_and_revoking_takes_all_published_before() {
        let gone = Unpublished::default();
        let before = gone.generation();
        gone.add("TR_a");
        assert!(gone.take("TR_a", before));
        assert!(
            !gone.take("TR_a", before),
            "seen once: the new track is not gone"
        );
        gone.permission(false);
        assert!(!gone.may_publish());
        assert!(gone.take("TR_b", before), "published before the revocation");
        gone.permission(false);
        let after = gone.generation();
        gone.permission(true);
        assert!(gone.may_publish());
        assert!(!gone.take("TR_c", after), "published after it");
    }
}

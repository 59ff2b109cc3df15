//! Open audio streams of the target's tracks, by stream handle: where the event callback sends
//! each frame of track audio (`subscribe` registers and releases them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use crossbeam_utils::sync::ShardedLock;

use crate::room::RoomEvents;

/// Open audio streams by handle: where the event callback sends each frame.
#[derive(Default)]
pub(super) struct Streams {
    table: ShardedLock<HashMap<u64, Arc<dyn RoomEvents>>>,
    /// Frames pushed to a session, and frames of streams no longer registered.
    pub routed: AtomicU64,
    pub unrouted: AtomicU64,
}

impl Streams {
    /// Hands one frame of stream `handle` to its session, if it is still registered.
    /// The hot path: a read lock that only registration and release take for writing.
    pub fn frame(&self, handle: u64, pcm: &[u8]) {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        // Relaxed counters: statistics, read on their own.
        match table.get(&handle) {
            Some(events) => {
                events.on_track_audio(pcm);
                self.routed.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.unrouted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn register(&self, handle: u64, events: Arc<dyn RoomEvents>) {
        self.table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(handle, events);
    }

    pub fn unregister(&self, handle: u64) {
        self.table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&handle);
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

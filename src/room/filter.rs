//! `AudioFilter`: which of a room's audio is the user's, decided on the room's callback
//! threads wherever they run (the session's sink here, a room worker's sink there).
//!
//! The target's audio comes as data packets, as frames of its audio track, or both
//! ([`AudioSource`]). With both, data packets win: a track frame is taken only when no data
//! packet has arrived for [`DATA_HOLD_MS`], so a stream never interleaves the two.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{AudioSource, DATA_HOLD_MS};

pub struct AudioFilter {
    /// The identity whose untopiced data packets are the user's audio.
    target: String,
    source: AudioSource,
    /// When the last data packet of the user's audio arrived (unix ms; 0: never).
    last_packet_ms: AtomicI64,
}

impl AudioFilter {
    pub fn new(target: &str, source: AudioSource) -> Self {
        Self {
            target: target.to_string(),
            source,
            last_packet_ms: AtomicI64::new(0),
        }
    }

    /// When (unix ms) a data packet from `from` on `topic` arrived, if it is the user's
    /// audio. A comparison and, when it is, a clock read and a store.
    pub fn data(&self, from: &str, topic: &str) -> Option<i64> {
        if from != self.target || !topic.is_empty() || self.source == AudioSource::Track {
            return None;
        }
        let now = unix_ms();
        // Relaxed: only a time compared with the clock; a track frame that reads it a moment
        // late is one frame decided by the previous packet.
        self.last_packet_ms.store(now, Ordering::Relaxed);
        Some(now)
    }

    /// When (unix ms) a frame of the target's track arrived, if it is taken.
    pub fn track(&self) -> Option<i64> {
        let now = unix_ms();
        let taken = match self.source {
            AudioSource::Data => false,
            AudioSource::Both => now - self.last_packet_ms.load(Ordering::Relaxed) >= DATA_HOLD_MS,
            AudioSource::Track => true,
        };
        taken.then_some(now)
    }
}

/// Now, in milliseconds since the Unix epoch: the clock every arrival time is stamped with.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

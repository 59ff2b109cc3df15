//! `SessionSink`: the [`RoomEvents`] a session hands its room. It runs on the room's callback
//! threads, so it only pushes into the ring, stores atomics, or closes the session.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{EndReason, SessionCore, unix_ms};
use crate::audio::{FrameProducer, PushOutcome};
use crate::room::{DataKind, Disconnect, DisconnectCause, RoomEvents};

pub(super) struct SessionSink {
    core: Arc<SessionCore>,
    producer: FrameProducer,
    /// The identity whose untopiced data packets are the user's audio.
    target: String,
}

impl SessionSink {
    pub(super) fn new(core: Arc<SessionCore>, producer: FrameProducer, target: &str) -> Self {
        Self {
            core,
            producer,
            target: target.to_string(),
        }
    }
}

impl RoomEvents for SessionSink {
    /// The hot path: a comparison, a clock read and a ring push. No allocation, no lock.
    fn on_data(
        &self,
        from: &str,
        _kind: DataKind,
        topic: &str,
        payload: &[u8],
    ) -> Option<PushOutcome> {
        if from != self.target || !topic.is_empty() {
            return None;
        }
        let now = unix_ms();
        // Relaxed: an age shown to operators, read on its own.
        self.core.last_audio_ms.store(now, Ordering::Relaxed);
        Some(self.producer.push(now, payload))
    }

    fn on_reconnecting(&self, reconnecting: bool) {
        self.core
            .reconnecting
            .store(reconnecting, Ordering::Relaxed);
    }

    fn on_participants(&self, count: u32) {
        self.core.participant_count.store(count, Ordering::Relaxed);
    }

    fn on_disconnected(&self, why: Disconnect) {
        let reason = match why.cause {
            DisconnectCause::DuplicateIdentity if self.core.replacing.load(Ordering::Acquire) => {
                EndReason::Replaced
            }
            DisconnectCause::DuplicateIdentity => EndReason::ReplacedElsewhere(why.reason),
            DisconnectCause::Removed => EndReason::Removed(why.reason),
            DisconnectCause::RoomDeleted => EndReason::RoomDeleted(why.reason),
            DisconnectCause::Lost => EndReason::RoomLost(why.reason),
        };
        self.core.close(reason);
    }
}

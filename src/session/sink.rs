//! `SessionSink`: the [`RoomEvents`] a session hands its room. It runs on the room's callback
//! threads, so it only pushes into the ring, stores atomics, or closes the session.
//!
//! Which audio is the user's is the [`AudioFilter`]'s to decide. The ring takes pushes from
//! any thread (a push that meets another at the same instant is dropped and counted as
//! contended), so the track's callback thread and the data packets' threads can both reach
//! it, before, during and after close. A session whose ring is in a room worker's memory has
//! no producer here: the worker's own sink pushes, and only the room's other events come here.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{EndReason, SessionCore};
use crate::audio::{FrameProducer, PushOutcome};
use crate::room::{AudioFilter, DataKind, Disconnect, DisconnectCause, RoomEvents};

pub(super) struct SessionSink {
    core: Arc<SessionCore>,
    /// `None` when the room's callbacks run in a worker process, which pushes itself.
    producer: Option<FrameProducer>,
    filter: AudioFilter,
}

impl SessionSink {
    pub(super) fn new(
        core: Arc<SessionCore>,
        producer: Option<FrameProducer>,
        filter: AudioFilter,
    ) -> Self {
        Self {
            core,
            producer,
            filter,
        }
    }

    fn push(&self, now: i64, pcm: &[u8]) -> Option<PushOutcome> {
        let producer = self.producer.as_ref()?;
        // Relaxed: an age shown to operators, read on its own.
        self.core.last_audio_ms.store(now, Ordering::Relaxed);
        Some(producer.push(now, pcm))
    }
}

/// Disconnect causes in the session's words.
pub(super) fn end_reason(why: Disconnect, replacing: bool) -> EndReason {
    match why.cause {
        DisconnectCause::DuplicateIdentity if replacing => EndReason::Replaced,
        DisconnectCause::DuplicateIdentity => EndReason::ReplacedElsewhere(why.reason),
        DisconnectCause::Removed => EndReason::Removed(why.reason),
        DisconnectCause::RoomDeleted => EndReason::RoomDeleted(why.reason),
        DisconnectCause::Lost => EndReason::RoomLost(why.reason),
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
        let now = self.filter.data(from, topic)?;
        self.push(now, payload)
    }

    /// Hot path for track audio: a clock read, a comparison and a ring push.
    fn on_track_audio(&self, pcm: &[u8]) -> Option<PushOutcome> {
        let now = self.filter.track()?;
        self.push(now, pcm)
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
        let reason = end_reason(why, self.core.replacing.load(Ordering::Acquire));
        self.core.close(reason);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::audio::RingConfig;
    use crate::room::sim::SimBackend;
    use crate::room::{AudioSource, ConnectRequest};
    use crate::session::{EndReason, Session};

    /// Frames a simulated room delivering its tone `via` data packets or its track puts in the
    /// ring of a session taking `source`, in 300 ms.
    async fn received(via: &str, source: AudioSource) -> u64 {
        let request = ConnectRequest {
            user_id: "u".into(),
            url: format!("sim://tone?via={via}&chatter_ms=1000"),
            token: String::new(),
            room_name: "r".into(),
            target_identity: "u".into(),
            timeout: Duration::from_secs(5),
            audio_source: source,
            ring: None,
        };
        let backend = SimBackend::default();
        let session = Session::connect(
            "u",
            1,
            &backend,
            request,
            RingConfig::default(),
            Arc::default(),
        )
        .await
        .expect("a simulated room connects");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let received = session.ring_stats().received;
        session.close(EndReason::Left("done".into())).await;
        received
    }

    #[tokio::test]
    async fn the_audio_source_decides_which_path_reaches_the_ring() {
        assert!(received("data", AudioSource::Data).await >= 10);
        assert!(received("track", AudioSource::Track).await >= 10);
        assert!(received("data", AudioSource::Both).await >= 10);
        assert!(received("track", AudioSource::Both).await >= 10);
        assert_eq!(received("track", AudioSource::Data).await, 0);
        assert_eq!(received("data", AudioSource::Track).await, 0);
    }
}

//! Driving PlayAudio: requests, and the events of one playback with when each arrived.

use std::time::{Duration, Instant};

use livekit_bridge::proto::play_audio_event::EventType;
use livekit_bridge::proto::{self, PlayAudioEvent};
use tonic::{Status, Streaming};

use super::Client;

pub fn play_request(
    user: &str,
    id: &str,
    url: &str,
    volume: f32,
    track_id: i32,
) -> proto::PlayAudioRequest {
    proto::PlayAudioRequest {
        request_id: id.into(),
        audio_url: url.into(),
        volume,
        stop_other: false,
        user_id: user.into(),
        track_id,
    }
}

/// Events of one PlayAudio, with when each arrived, and how its stream ended.
pub struct Events {
    stream: Streaming<PlayAudioEvent>,
    pub seen: Vec<(Instant, PlayAudioEvent)>,
}

impl Events {
    pub async fn open(client: &mut Client, req: proto::PlayAudioRequest) -> Self {
        let stream = client
            .play_audio(req)
            .await
            .expect("PlayAudio")
            .into_inner();
        Self {
            stream,
            seen: Vec::new(),
        }
    }

    /// The next event, or the end (Ok(None)) or the status.
    pub async fn next(&mut self) -> Result<Option<PlayAudioEvent>, Status> {
        let item = tokio::time::timeout(Duration::from_secs(30), self.stream.message())
            .await
            .expect("no PlayAudio event within 30 s")?;
        if let Some(e) = &item {
            self.seen.push((Instant::now(), e.clone()));
        }
        Ok(item)
    }

    pub async fn expect(&mut self, kind: EventType) -> PlayAudioEvent {
        loop {
            let e = self
                .next()
                .await
                .expect("event status")
                .unwrap_or_else(|| panic!("stream ended before {kind:?}: {:?}", self.seen));
            if e.r#type == EventType::Progress as i32 && kind != EventType::Progress {
                continue;
            }
            assert_eq!(e.r#type, kind as i32, "{e:?}");
            return e;
        }
    }

    /// Reads to the end: the last event must be FAILED containing `text`, then a clean end.
    /// STARTED and PROGRESS may come first (a cut-short file plays what it has).
    pub async fn failed_with(&mut self, text: &str) -> PlayAudioEvent {
        let e = loop {
            let e = self
                .next()
                .await
                .expect("event status")
                .unwrap_or_else(|| panic!("stream ended before FAILED: {:?}", self.seen));
            if e.r#type == EventType::Started as i32 || e.r#type == EventType::Progress as i32 {
                continue;
            }
            break e;
        };
        assert_eq!(e.r#type, EventType::Failed as i32, "{e:?}");
        assert!(
            e.error.contains(text),
            "FAILED error {:?} should contain {text:?}",
            e.error
        );
        assert!(
            self.next().await.expect("clean end").is_none(),
            "FAILED is the last event"
        );
        e
    }

    pub fn at(&self, kind: EventType) -> Instant {
        self.seen
            .iter()
            .find(|(_, e)| e.r#type == kind as i32)
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no {kind:?} in {:?}", self.seen))
    }
}

/// Plays `url` for `user` at full volume on track 0 and reads to the end: the FAILED error, or
/// `None` if it completed.
pub async fn outcome(client: &mut Client, user: &str, id: &str, url: &str) -> Option<String> {
    let mut events = Events::open(client, play_request(user, id, url, 0.0, 0)).await;
    let mut last = None;
    loop {
        match events.next().await {
            Ok(Some(e)) => last = Some(e),
            Ok(None) => break,
            Err(status) => panic!("{id}: the PlayAudio stream broke: {status:?}"),
        }
    }
    let last = last.unwrap_or_else(|| panic!("{id}: no event at all"));
    match EventType::try_from(last.r#type) {
        Ok(EventType::Completed) => None,
        Ok(EventType::Failed) => Some(last.error),
        other => panic!("{id}: unexpected last event {other:?}"),
    }
}

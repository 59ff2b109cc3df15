//! The target's audio tracks: subscribed to, streamed at 16 kHz mono in 10 ms frames, and routed
//! to the session's ring like its data packets.
//!
//! Rooms are joined with `auto_subscribe` off, so the library subscribes to nothing by itself:
//! no video, no other participant's audio, nothing the bridge would decode and throw away.
//! [`super::dispatch`] sees the room's track events on the library's thread and passes only the
//! target's audio ones here, to one task per room, because subscribing and opening a stream are
//! requests into the library, which its event thread must never make. The handle of every other
//! publication is released at once ([`offer`]).
//!
//! One track at a time: a target may publish more than one audio track (a microphone and a
//! screen share's audio, or a republished microphone before the old one is gone), and two
//! tracks pushed into one ring would interleave. The task listens to the latest microphone
//! publication, or failing one the latest audio publication of any source, and unsubscribes
//! from the one it listened to before.
//!
//! Per room, the task:
//! - on `TrackPublished` (the target published audio, or had when the bridge joined): keeps the
//!   publication until it is unpublished, and `SetSubscribed(true)` if it is now the one to
//!   listen to (`SetSubscribed(false)` on the previous one);
//! - on `TrackSubscribed`: `NewAudioStream` (16 kHz, mono, 10 ms frames), then registers the
//!   stream's handle in the stream table ([`super::streams`]), where the event callback finds it for
//!   every frame;
//! - on `TrackUnsubscribed` or `TrackUnpublished`: unregisters and releases the stream (the
//!   library ends the stream when its handle is released; the track's handle is the library's
//!   to release when the room is left, see `Subscriptions::release`); an unpublished track
//!   that was listened to gives way to the next publication to choose;
//! - when the room is left (its route removed, so the channel closes): unregisters and releases
//!   everything it holds.
//!
//! After the library reconnects the room, the chosen track is asked for again if it has not
//! arrived: a subscription asked for while the library was still reconnecting can be lost.
//!
//! A track republished with a new SID is a new publication: it is subscribed to as the first
//! was, with no call from the backend. So is the same SID announced again with a new
//! publication handle, which is how the library presents remote tracks after it has
//! reconnected the room in full. Frames of a stream that is no longer registered (the
//! room was left while the library still had one queued) are counted as unrouted and released.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::client::{Client, unexpected};
use super::library::Library;
use super::proto::{self, ffi_request, ffi_response};
use super::routes::TrackEvent;
use crate::audio::format;
use crate::room::{RoomError, RoomEvents};

/// Frames the library may queue per stream before it drops the oldest: 100 ms. The callback
/// only copies into the ring, so a queue is only needed for a stalled callback thread.
const STREAM_QUEUE_FRAMES: u32 = 10;
/// The frame length asked of the library's stream, the bridge's frame.
const FRAME_MS: u32 = 10;

/// One of a room's remote publications, as the join found it or as the library announced it:
/// an audio one goes to `task` (the room's subscription task, when the publisher is the
/// target and the session takes its tracks), which then owns its handle; the handle of any
/// other, or of one the task can no longer take, is released here.
pub(super) fn offer(
    lib: &Library,
    task: Option<&mpsc::UnboundedSender<TrackEvent>>,
    publication: &proto::OwnedTrackPublication,
) {
    let info = &publication.info;
    let handle = publication.handle.id;
    let taken = task
        .filter(|_| info.kind == proto::TrackKind::KindAudio as i32)
        .is_some_and(|tx| {
            tx.send(TrackEvent::Published {
                sid: info.sid.clone(),
                publication: handle,
                microphone: info.source == proto::TrackSource::SourceMicrophone as i32,
            })
            .is_ok()
        });
    if !taken {
        lib.drop_handle(handle);
    }
}

/// Starts the task that subscribes to the target's audio in room `room_handle`; its events
/// go to the returned sender, and it releases everything once that sender is dropped.
pub(super) fn start(
    client: &'static Client,
    room_handle: u64,
    events: Arc<dyn RoomEvents>,
) -> mpsc::UnboundedSender<TrackEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(client, room_handle, events, rx));
    tx
}

/// One subscribed track and the stream reading it.
struct Subscribed {
    /// For the logs: the library releases track handles itself.
    track: u64,
    stream: Option<u64>,
}

/// One of the target's audio publications.
struct Publication {
    handle: u64,
    microphone: bool,
    /// When it was published, in the task's order: the latest microphone wins.
    order: u64,
}

/// The publication to listen to among `publications`: the latest microphone, else the latest
/// of any source.
fn choose(publications: &HashMap<String, Publication>) -> Option<&str> {
    publications
        .iter()
        .max_by_key(|(_, p)| (p.microphone, p.order))
        .map(|(sid, _)| sid.as_str())
}

/// The room's subscription state: the target's audio publications, the one chosen, and the
/// tracks subscribed with their streams.
struct Subscriptions {
    client: &'static Client,
    room_handle: u64,
    events: Arc<dyn RoomEvents>,
    publications: HashMap<String, Publication>,
    chosen: Option<String>,
    tracks: HashMap<String, Subscribed>,
    published: u64,
}

impl Subscriptions {
    fn handle(&mut self, event: TrackEvent) {
        let room_handle = self.room_handle;
        match event {
            TrackEvent::Published {
                sid,
                publication,
                microphone,
            } => {
                self.published += 1;
                let p = Publication {
                    handle: publication,
                    microphone,
                    order: self.published,
                };
                if let Some(old) = self.publications.insert(sid.clone(), p) {
                    // The same track announced again with a new publication: the library
                    // reconnected the room in full and its subscriptions went with the old
                    // one, so it is subscribed to afresh.
                    self.client.lib.drop_handle(old.handle);
                    if self.chosen.as_deref() == Some(sid.as_str()) {
                        self.chosen = None;
                        if let Some(sub) = self.tracks.remove(&sid) {
                            self.release(sub);
                        }
                    }
                }
                self.rechoose();
            }
            TrackEvent::Subscribed { sid, track } => {
                if self.chosen.as_deref() != Some(sid.as_str()) {
                    // Subscribed before another publication was chosen: not listened to (its
                    // handle is the library's to release, see `release`).
                    return;
                }
                let stream = match open_stream(self.client, track) {
                    Ok(stream) => {
                        self.client.streams.register(stream, self.events.clone());
                        tracing::info!(room_handle, track_sid = %sid, "receiving the target's audio track");
                        Some(stream)
                    }
                    Err(e) => {
                        tracing::warn!(room_handle, track_sid = %sid, error = %e, "could not read the target's audio track");
                        None
                    }
                };
                if let Some(old) = self.tracks.insert(sid, Subscribed { track, stream }) {
                    self.release(old);
                }
            }
            TrackEvent::Unsubscribed { sid } => {
                if let Some(sub) = self.tracks.remove(&sid) {
                    self.release(sub);
                    tracing::info!(room_handle, track_sid = %sid, "the target's audio track ended");
                }
            }
            TrackEvent::Reconnected => {
                // A subscription asked for while the library was still reconnecting can be lost
                // with the old connection (seen: the track presented again 36 ms before the
                // room was back, its subscription never reaching the server). Ask again for the
                // chosen track if it has not arrived.
                let Some(sid) = self.chosen.clone() else {
                    return;
                };
                if self.tracks.contains_key(&sid) {
                    return;
                }
                if let Some(p) = self.publications.get(&sid) {
                    match set_subscribed(self.client, p.handle, true) {
                        Ok(()) => {
                            tracing::info!(room_handle, track_sid = %sid, "subscribing again to the target's audio track after the room reconnected")
                        }
                        Err(e) => {
                            tracing::warn!(room_handle, track_sid = %sid, error = %e, "could not subscribe again to the target's audio track")
                        }
                    }
                }
            }
            TrackEvent::Unpublished { sid } => {
                if let Some(sub) = self.tracks.remove(&sid) {
                    self.release(sub);
                }
                if let Some(p) = self.publications.remove(&sid) {
                    self.client.lib.drop_handle(p.handle);
                    tracing::info!(room_handle, track_sid = %sid, "the target unpublished its audio track");
                }
                if self.chosen.as_deref() == Some(sid.as_str()) {
                    self.chosen = None;
                }
                self.rechoose();
            }
        }
    }

    /// Listens to the publication [`choose`] picks, if it is not the one listened to already:
    /// the previous one is unsubscribed (its stream released), the new one subscribed to.
    fn rechoose(&mut self) {
        let room_handle = self.room_handle;
        let Some(best) = choose(&self.publications).map(str::to_string) else {
            return;
        };
        if self.chosen.as_deref() == Some(best.as_str()) {
            return;
        }
        if let Some(previous) = self.chosen.take() {
            if let Some(sub) = self.tracks.remove(&previous) {
                self.release(sub);
            }
            if let Some(p) = self.publications.get(&previous)
                && let Err(e) = set_subscribed(self.client, p.handle, false)
            {
                tracing::warn!(room_handle, track_sid = %previous, error = %e, "could not unsubscribe from the target's earlier audio track");
            }
        }
        let Some(p) = self.publications.get(&best) else {
            return;
        };
        match set_subscribed(self.client, p.handle, true) {
            Ok(()) => {
                tracing::info!(room_handle, track_sid = %best, microphone = p.microphone, "subscribing to the target's audio track");
                self.chosen = Some(best);
            }
            Err(e) => {
                tracing::warn!(room_handle, track_sid = %best, error = %e, "could not subscribe to the target's audio track")
            }
        }
    }

    /// Stops reading a track: its stream is unregistered and released (which ends it). The
    /// track's own handle is not released here: the library keeps every remote track handle
    /// it gives out in its room and releases them all when the room is left, warning about
    /// each one the client released first.
    fn release(&self, sub: Subscribed) {
        tracing::debug!(room_handle = self.room_handle, track = sub.track, stream = ?sub.stream, "releasing a track's stream");
        if let Some(stream) = sub.stream {
            self.client.streams.unregister(stream);
            self.client.lib.drop_handle(stream);
        }
    }

    /// The room was left: unregisters and releases everything.
    fn release_all(&mut self) {
        for (_, sub) in std::mem::take(&mut self.tracks) {
            self.release(sub);
        }
        for (_, p) in std::mem::take(&mut self.publications) {
            self.client.lib.drop_handle(p.handle);
        }
    }
}

async fn run(
    client: &'static Client,
    room_handle: u64,
    events: Arc<dyn RoomEvents>,
    mut rx: mpsc::UnboundedReceiver<TrackEvent>,
) {
    let mut subs = Subscriptions {
        client,
        room_handle,
        events,
        publications: HashMap::new(),
        chosen: None,
        tracks: HashMap::new(),
        published: 0,
    };
    while let Some(event) = rx.recv().await {
        subs.handle(event);
    }
    // The room was left: its route, and with it the sender, is gone.
    subs.release_all();
}

fn set_subscribed(client: &Client, publication: u64, subscribe: bool) -> Result<(), RoomError> {
    let answer = client.request(ffi_request::Message::SetSubscribed(
        proto::SetSubscribedRequest {
            subscribe,
            publication_handle: publication,
        },
    ))?;
    match answer {
        ffi_response::Message::SetSubscribed(_) => Ok(()),
        other => Err(unexpected("SetSubscribed", other)),
    }
}

/// A stream of `track`'s audio as the bridge's frames: 16 kHz mono, 10 ms.
fn open_stream(client: &Client, track: u64) -> Result<u64, RoomError> {
    let answer = client.request(ffi_request::Message::NewAudioStream(
        proto::NewAudioStreamRequest {
            track_handle: track,
            r#type: proto::AudioStreamType::AudioStreamNative as i32,
            sample_rate: Some(format::SAMPLE_RATE),
            num_channels: Some(format::CHANNELS),
            frame_size_ms: Some(FRAME_MS),
            queue_size_frames: Some(STREAM_QUEUE_FRAMES),
        },
    ))?;
    match answer {
        ffi_response::Message::NewAudioStream(r) => Ok(r.stream.handle.id),
        other => Err(unexpected("NewAudioStream", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_microphone_is_listened_to_else_the_latest_of_any_source() {
        let mut p = HashMap::new();
        assert_eq!(choose(&p), None);
        let publication = |microphone, order| Publication {
            handle: order,
            microphone,
            order,
        };
        p.insert("TR_screen".to_string(), publication(false, 1));
        assert_eq!(choose(&p), Some("TR_screen"));
        p.insert("TR_mic".to_string(), publication(true, 2));
        assert_eq!(choose(&p), Some("TR_mic"));
        p.insert("TR_screen2".to_string(), publication(false, 3));
        assert_eq!(
            choose(&p),
            Some("TR_mic"),
            "a microphone beats a later screen share"
        );
        p.insert("TR_mic_again".to_string(), publication(true, 4));
        assert_eq!(
            choose(&p),
            Some("TR_mic_again"),
            "a republished microphone wins"
        );
        p.remove("TR_mic_again");
        assert_eq!(choose(&p), Some("TR_mic"));
    }
}

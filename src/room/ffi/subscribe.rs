//! The target's audio tracks: subscribed to, streamed at 16 kHz mono in 10 ms frames, and routed
//! to the session's ring like its data packets.
//!
//! Rooms are joined with `auto_subscribe` off, so the library subscribes to nothing by itself:
//! no video, no other participant's audio, nothing the bridge would decode and throw away.
//! [`super::dispatch`] sees the room's track events on the library's thread and passes only the
//! target's audio ones here, to one task per room, because subscribing and opening a stream are
//! requests into the library, which its event thread must never make. Every handle the library
//! gives for anything else is released on that thread at once.
//!
//! Per room, the task:
//! - on `TrackPublished` (the target published audio, or had when the bridge joined):
//!   `SetSubscribed(true)` on the publication, which it keeps until unpublished;
//! - on `TrackSubscribed`: `NewAudioStream` (16 kHz, mono, 10 ms frames), then registers the
//!   stream's handle in the routing table ([`Streams`]), where the event callback finds it for
//!   every frame;
//! - on `TrackUnsubscribed` or `TrackUnpublished`: unregisters and releases the stream and the
//!   track (the library ends the stream when its handle is released);
//! - when the room is left (its route removed, so the channel closes): unregisters and releases
//!   everything it holds.
//!
//! A track republished with a new SID is a new publication: it is subscribed to as the first
//! was, with no call from the backend. Frames of a stream that is no longer registered (the
//! room was left while the library still had one queued) are counted as unrouted and released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use crossbeam_utils::sync::ShardedLock;
use tokio::sync::mpsc;

use super::client::{Client, unexpected};
use super::proto::{self, ffi_request, ffi_response};
use crate::audio::format;
use crate::room::{RoomError, RoomEvents};

/// Frames the library may queue per stream before it drops the oldest: 100 ms. The callback
/// only copies into the ring, so a queue is only needed for a stalled callback thread.
const STREAM_QUEUE_FRAMES: u32 = 10;
/// The frame length asked of the library's stream, the bridge's frame.
const FRAME_MS: u32 = 10;

/// A track event for the target's audio, from the event callback to the room's task.
#[derive(Debug)]
pub(super) enum TrackEvent {
    /// An audio publication of the target; the handle is now the task's.
    Published { sid: String, publication: u64 },
    Unpublished { sid: String },
    /// The target's audio track, subscribed; the handle is now the task's.
    Subscribed { sid: String, track: u64 },
    Unsubscribed { sid: String },
}

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

    fn register(&self, handle: u64, events: Arc<dyn RoomEvents>) {
        self.table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(handle, events);
    }

    fn unregister(&self, handle: u64) {
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
    track: u64,
    stream: Option<u64>,
}

async fn run(
    client: &'static Client,
    room_handle: u64,
    events: Arc<dyn RoomEvents>,
    mut rx: mpsc::UnboundedReceiver<TrackEvent>,
) {
    let mut publications: HashMap<String, u64> = HashMap::new();
    let mut tracks: HashMap<String, Subscribed> = HashMap::new();
    let release = |sub: Subscribed| {
        if let Some(stream) = sub.stream {
            client.shared.streams.unregister(stream);
            client.lib.drop_handle(stream);
        }
        client.lib.drop_handle(sub.track);
    };
    while let Some(event) = rx.recv().await {
        match event {
            TrackEvent::Published { sid, publication } => {
                if let Some(old) = publications.insert(sid.clone(), publication) {
                    client.lib.drop_handle(old);
                }
                match subscribe(client, publication) {
                    Ok(()) => tracing::info!(room_handle, track_sid = %sid, "subscribing to the target's audio track"),
                    Err(e) => {
                        tracing::warn!(room_handle, track_sid = %sid, error = %e, "could not subscribe to the target's audio track")
                    }
                }
            }
            TrackEvent::Subscribed { sid, track } => {
                let stream = match open_stream(client, track) {
                    Ok(stream) => {
                        client.shared.streams.register(stream, events.clone());
                        tracing::info!(room_handle, track_sid = %sid, "receiving the target's audio track");
                        Some(stream)
                    }
                    Err(e) => {
                        tracing::warn!(room_handle, track_sid = %sid, error = %e, "could not read the target's audio track");
                        None
                    }
                };
                if let Some(old) = tracks.insert(sid, Subscribed { track, stream }) {
                    release(old);
                }
            }
            TrackEvent::Unsubscribed { sid } => {
                if let Some(sub) = tracks.remove(&sid) {
                    release(sub);
                    tracing::info!(room_handle, track_sid = %sid, "the target's audio track ended");
                }
            }
            TrackEvent::Unpublished { sid } => {
                if let Some(sub) = tracks.remove(&sid) {
                    release(sub);
                }
                if let Some(publication) = publications.remove(&sid) {
                    client.lib.drop_handle(publication);
                    tracing::info!(room_handle, track_sid = %sid, "the target unpublished its audio track");
                }
            }
        }
    }
    // The room was left: its route, and with it the sender, is gone.
    tracks.into_values().for_each(release);
    for publication in publications.into_values() {
        client.lib.drop_handle(publication);
    }
}

fn subscribe(client: &Client, publication: u64) -> Result<(), RoomError> {
    let answer = client.request(ffi_request::Message::SetSubscribed(
        proto::SetSubscribedRequest {
            subscribe: true,
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

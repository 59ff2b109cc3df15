//! The library's events, on its own worker threads: data packets and track audio frames to
//! their session's ring, answers to the calls waiting for them, room events to their session,
//! the target's track events to its room's subscription task.
//!
//! A data packet is read without allocating, its room found under the routing table's read
//! lock, and pushed into the session's ring; an audio frame likewise, found by its stream's
//! handle; the library's buffer is released after the copy (by [`super::library`]). Other
//! events come decoded with prost (once, by [`super::library`]). Nothing here blocks or calls
//! back into the library, except to release handles: every publication handle not passed to a
//! subscription task is released here.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::calls::Calls;
use super::library::{EventSink, Library};
use super::packet::{AudioFrameRef, DataPacketRef};
use super::proto::{self, ffi_event};
use super::routes::{Route, Routes, TrackEvent};
use super::streams::Streams;
use super::subscribe;
use super::translate::{disconnect, log_record};
use crate::room::DataKind;

/// Receives the library's events: the tables it routes by and the calls it answers.
pub(super) struct Dispatch {
    pub calls: Arc<Calls>,
    pub routes: Arc<Routes>,
    pub streams: Arc<Streams>,
}

impl EventSink for Dispatch {
    fn data_packet(&self, _lib: &Library, p: &DataPacketRef<'_>, payload: &[u8]) {
        // A packet for a room no longer routed (its session closed) is dropped.
        self.routes.with(p.room_handle, |route| {
            if let Some(route) = route {
                let kind = if p.kind == 1 {
                    DataKind::Reliable
                } else {
                    DataKind::Lossy
                };
                route.events.on_data(p.identity, kind, p.topic, payload);
            }
        });
    }

    fn audio_frame(&self, _lib: &Library, frame: &AudioFrameRef, pcm: &[u8]) {
        // The stream was asked for the bridge's format; anything else (or a frame the library
        // callback would not read) is not pushed as audio.
        if frame.num_channels != crate::audio::format::CHANNELS
            || frame.sample_rate != crate::audio::format::SAMPLE_RATE
            || pcm.is_empty()
        {
            self.streams.unrouted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.streams.frame(frame.stream_handle, pcm);
    }

    fn other(&self, lib: &Library, event: proto::FfiEvent) {
        let Some(message) = event.message else { return };
        let async_id = match &message {
            ffi_event::Message::Connect(c) => c.async_id,
            ffi_event::Message::Disconnect(c) => c.async_id,
            ffi_event::Message::PublishTrack(c) => c.async_id,
            ffi_event::Message::UnpublishTrack(c) => c.async_id,
            ffi_event::Message::CaptureAudioFrame(c) => c.async_id,
            ffi_event::Message::Dispose(c) => c.async_id,
            ffi_event::Message::GetStats(c) => c.async_id,
            ffi_event::Message::RoomEvent(e) => {
                self.room_event(lib, e);
                return;
            }
            ffi_event::Message::Logs(batch) => {
                batch.records.iter().for_each(log_record);
                return;
            }
            ffi_event::Message::Panic(p) => {
                tracing::error!(message = %p.message, "the LiveKit library panicked");
                return;
            }
            // Frames were handled before decoding; the end of a stream needs nothing (the
            // subscription task releases streams when their track goes).
            ffi_event::Message::AudioStreamEvent(_) => return,
        };
        self.calls.answer(async_id, message);
    }
}

impl Dispatch {
    fn room_event(&self, lib: &Library, e: &proto::RoomEvent) {
        use proto::room_event::Message as M;
        let route = self.routes.get(e.room_handle);
        // Participant handles are not needed: release them at once, routed or not.
        if let Some(M::ParticipantConnected(p)) = &e.message {
            lib.drop_handle(p.info.handle.id);
        }
        if let Some(track) = track_event(lib, e, route.as_deref()) {
            return track;
        }
        let Some(route) = route else { return };
        // Relaxed: the count is one number, read on its own (GetStatus); the callback threads
        // that change it need no other memory ordered with it.
        match &e.message {
            Some(M::ParticipantConnected(_)) => {
                let n = route.participants.fetch_add(1, Ordering::Relaxed) + 1;
                route.events.on_participants(n);
            }
            Some(M::ParticipantDisconnected(_)) => {
                // Never below 1: the bridge itself is in the room.
                let before = route
                    .participants
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(1).max(1))
                    })
                    .unwrap_or(1);
                route
                    .events
                    .on_participants(before.saturating_sub(1).max(1));
            }
            Some(M::LocalTrackUnpublished(u)) => {
                tracing::warn!(
                    room_handle = e.room_handle,
                    publication_sid = %u.publication_sid,
                    "the server unpublished one of the bridge's tracks; the next audio for it publishes it again"
                );
                route.unpublished.add(&u.publication_sid);
            }
            Some(M::ParticipantPermissionChanged(p))
                if p.participant_identity == route.local_identity =>
            {
                let may_publish = p.permission.as_ref().is_some_and(|p| p.can_publish);
                if may_publish != route.unpublished.may_publish() {
                    tracing::warn!(
                        room_handle = e.room_handle,
                        may_publish,
                        "the bridge's permission to publish in this room changed (UpdateParticipant)"
                    );
                }
                route.unpublished.permission(may_publish);
            }
            Some(M::Disconnected(d)) => {
                // Relaxed: one flag, written and read by the library's event thread.
                let gave_up = route.reconnecting.load(Ordering::Relaxed);
                route.events.on_disconnected(disconnect(d.reason, gave_up));
            }
            Some(M::ConnectionStateChanged(c)) => {
                let reconnecting = c.state == proto::ConnectionState::ConnReconnecting as i32;
                let was = route.reconnecting.load(Ordering::Relaxed);
                if reconnecting && !was {
                    tracing::warn!(
                        room_handle = e.room_handle,
                        "room connection lost; the LiveKit library is reconnecting"
                    );
                } else if was && c.state == proto::ConnectionState::ConnConnected as i32 {
                    tracing::warn!(room_handle = e.room_handle, "room connection restored");
                    if let Some(tx) = &route.tracks {
                        let _ = tx.send(TrackEvent::Reconnected);
                    }
                }
                // Cleared only when connected again: the library reports Disconnected as a
                // state before its Disconnected event, which must still see it gave up.
                if reconnecting || c.state == proto::ConnectionState::ConnConnected as i32 {
                    route.reconnecting.store(reconnecting, Ordering::Relaxed);
                }
                route.events.on_reconnecting(reconnecting);
            }
            _ => {}
        }
    }
}

/// Handles `e` if it is a track event: the target's audio ones go to its room's subscription
/// task (with their handles); the publication handles of all others are released. `None` if
/// `e` is not a track event.
fn track_event(lib: &Library, e: &proto::RoomEvent, route: Option<&Route>) -> Option<()> {
    use proto::room_event::Message as M;
    let message = e.message.as_ref()?;
    let tasks = route.and_then(|r| r.tracks.as_ref().map(|tx| (r.target.as_str(), tx)));
    let for_target = |identity: &str| tasks.filter(|(target, _)| *target == identity);
    let audio = proto::TrackKind::KindAudio as i32;
    match message {
        M::TrackPublished(p) => {
            let task = for_target(&p.participant_identity).map(|(_, tx)| tx);
            subscribe::offer(lib, task, &p.publication);
        }
        M::TrackSubscribed(t) => {
            // A track's handle is never released here: the library releases every remote
            // track handle itself when the room is left (see `subscribe`).
            if let Some((_, tx)) =
                for_target(&t.participant_identity).filter(|_| t.track.info.kind == audio)
            {
                let _ = tx.send(TrackEvent::Subscribed {
                    sid: t.track.info.sid.clone(),
                    track: t.track.handle.id,
                });
            }
        }
        M::TrackUnpublished(u) => {
            if let Some((_, tx)) = for_target(&u.participant_identity) {
                let _ = tx.send(TrackEvent::Unpublished {
                    sid: u.publication_sid.clone(),
                });
            }
        }
        M::TrackUnsubscribed(u) => {
            if let Some((_, tx)) = for_target(&u.participant_identity) {
                let _ = tx.send(TrackEvent::Unsubscribed {
                    sid: u.track_sid.clone(),
                });
            }
        }
        M::TrackSubscriptionFailed(f) => {
            if for_target(&f.participant_identity).is_some() {
                tracing::warn!(
                    room_handle = e.room_handle,
                    track_sid = %f.track_sid,
                    error = %f.error,
                    "subscribing to the target's audio track failed"
                );
            }
        }
        M::TrackMuted(m) => {
            if for_target(&m.participant_identity).is_some() {
                tracing::info!(room_handle = e.room_handle, track_sid = %m.track_sid, "the target muted its audio track");
            }
        }
        M::TrackUnmuted(m) => {
            if for_target(&m.participant_identity).is_some() {
                tracing::info!(room_handle = e.room_handle, track_sid = %m.track_sid, "the target unmuted its audio track");
            }
        }
        _ => return None,
    }
    Some(())
}

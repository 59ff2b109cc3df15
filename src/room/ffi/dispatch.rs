//! The library's events, on its own worker threads: data packets to their session's ring,
//! answers to the calls waiting for them, room events to their session.
//!
//! A data packet is read without allocating, its room found under the routing table's read
//! lock, and pushed into the session's ring; the library's buffer is released after the copy
//! (by [`super::library`]). Other events are decoded with prost. Nothing here blocks or calls
//! back into the library, except to release handles.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prost::Message;

use super::client::{self, Shared};
use super::library::EventSink;
use super::packet::DataPacketRef;
use super::proto::{self, ffi_event};
use super::translate::{disconnect, log_record};
use crate::room::DataKind;

/// Receives the library's events.
pub(super) struct Dispatch(Arc<Shared>);

impl Dispatch {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self(shared)
    }
}

impl EventSink for Dispatch {
    fn data_packet(&self, p: &DataPacketRef<'_>, payload: &[u8]) {
        let rooms = self
            .0
            .rooms
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Relaxed counters: statistics, read by nobody who needs them ordered with the audio.
        match rooms.get(&p.room_handle) {
            Some(route) => {
                let kind = if p.kind == 1 {
                    DataKind::Reliable
                } else {
                    DataKind::Lossy
                };
                route.events.on_data(p.identity, kind, p.topic, payload);
                self.0.routed.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.0.unrouted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn other(&self, event: &[u8]) {
        let Ok(event) = proto::FfiEvent::decode(event) else {
            tracing::warn!(
                bytes = event.len(),
                "undecodable event from the LiveKit library"
            );
            return;
        };
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
                self.room_event(e);
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
        };
        self.0.answer(async_id, message);
    }
}

impl Dispatch {
    fn room_event(&self, e: &proto::RoomEvent) {
        use proto::room_event::Message as M;
        let route = self.0.route(e.room_handle);
        // Participant handles are not needed: release them at once, routed or not.
        if let (Some(M::ParticipantConnected(p)), Some(c)) = (&e.message, client::opened()) {
            c.lib.drop_handle(p.info.handle.id);
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

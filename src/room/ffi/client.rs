//! The process's client of the library: synchronous requests, asynchronous calls answered by
//! an event carrying the call's id, and the table that routes room events to sessions.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crossbeam_utils::sync::ShardedLock;
use prost::Message;
use tokio::sync::oneshot;

use super::dispatch::Dispatch;
use super::library::{self, Library};
use super::proto::{self, ffi_event, ffi_request, ffi_response};
use super::subscribe::{Streams, TrackEvent};
use crate::room::{RoomError, RoomEvents};

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
    pub tracks: Option<tokio::sync::mpsc::UnboundedSender<TrackEvent>>,
}

/// What the client and the event callback share.
#[derive(Default)]
pub(super) struct Shared {
    next_async_id: AtomicU64,
    /// Calls waiting for their answer, by async id.
    pub pending: Mutex<HashMap<u64, oneshot::Sender<ffi_event::Message>>>,
    /// Connected rooms by handle. Written only to insert or remove one room; read by the
    /// callback threads for every packet (a `ShardedLock`: readers on different threads do
    /// not contend).
    pub rooms: ShardedLock<HashMap<u64, Arc<Route>>>,
    /// Data packets routed to a room, and ones for rooms no longer routed (closed sessions).
    pub routed: AtomicU64,
    pub unrouted: AtomicU64,
    /// Open audio streams of target tracks, by handle.
    pub streams: Streams,
}

impl Shared {
    /// The route of `room_handle`, if the room is still routed.
    pub fn route(&self, room_handle: u64) -> Option<Arc<Route>> {
        self.rooms
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&room_handle)
            .cloned()
    }

    pub fn add_route(&self, room_handle: u64, route: Route) {
        self.rooms
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(room_handle, Arc::new(route));
    }

    pub fn remove_route(&self, room_handle: u64) {
        self.rooms
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&room_handle);
    }

    /// Hands `message` to the call waiting for `async_id`, if it still waits.
    pub fn answer(&self, async_id: u64, message: ffi_event::Message) {
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&async_id);
        if let Some(tx) = waiter {
            let _ = tx.send(message);
        }
    }

    fn forget(&self, async_id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&async_id);
    }
}

/// The process's connection to the library.
pub(super) struct Client {
    pub lib: &'static Library,
    pub shared: Arc<Shared>,
}

static CLIENT: OnceLock<Client> = OnceLock::new();

/// The client, opening the library at `path` on first use.
pub(super) fn client(path: &Path) -> Result<&'static Client, library::LibraryError> {
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let shared = Arc::new(Shared {
        next_async_id: AtomicU64::new(1),
        ..Default::default()
    });
    let for_sink = shared.clone();
    let lib = library::global(path, move || Box::new(Dispatch::new(for_sink)))?;
    Ok(CLIENT.get_or_init(|| Client { lib, shared }))
}

/// The client, if the library has been opened.
pub(super) fn opened() -> Option<&'static Client> {
    CLIENT.get()
}

impl Client {
    /// A synchronous request: the library answers in the response.
    pub fn request(
        &self,
        message: ffi_request::Message,
    ) -> Result<ffi_response::Message, RoomError> {
        let request = proto::FfiRequest {
            message: Some(message),
        };
        let bytes = self
            .lib
            .request(&request.encode_to_vec())
            .map_err(|e| RoomError::Library(e.to_string()))?;
        decode_response(&bytes)
    }

    /// An asynchronous request: `build` gets the async id to put in the request; the result
    /// comes as an event carrying that id.
    pub async fn call(
        &self,
        build: impl FnOnce(u64) -> ffi_request::Message,
        timeout: Duration,
    ) -> Result<ffi_event::Message, RoomError> {
        self.call_with(|id| self.request(build(id)).map(drop), timeout)
            .await
    }

    /// An asynchronous request sent by `send`, which gets the async id.
    pub async fn call_with(
        &self,
        send: impl FnOnce(u64) -> Result<(), RoomError>,
        timeout: Duration,
    ) -> Result<ffi_event::Message, RoomError> {
        // Relaxed: ids only have to be unique.
        let id = self.shared.next_async_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        if let Err(e) = send(id) {
            self.shared.forget(id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(event)) => Ok(event),
            Ok(Err(_)) => Err(RoomError::NotConnected(
                "the LiveKit library dropped the call".into(),
            )),
            Err(_) => {
                self.shared.forget(id);
                Err(RoomError::Timeout(timeout))
            }
        }
    }
}

/// An encoded `FfiResponse`'s message.
pub(super) fn decode_response(bytes: &[u8]) -> Result<ffi_response::Message, RoomError> {
    proto::FfiResponse::decode(bytes)
        .ok()
        .and_then(|r| r.message)
        .ok_or_else(|| RoomError::Library("undecodable response".into()))
}

/// The library answered `what` with something else: a bug on one side, never a default.
pub(super) fn unexpected(what: &str, answer: impl std::fmt::Debug) -> RoomError {
    let answer = format!("{answer:?}");
    let shown: String = answer.chars().take(120).collect();
    RoomError::Library(format!("unexpected answer to {what}: {shown}"))
}

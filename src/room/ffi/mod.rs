//! The `ffi` backend: real LiveKit rooms (`ws://`, `wss://`) through LiveKit's own SDK library,
//! `liblivekit_ffi.so`, driven by its FFI protobuf protocol.
//!
//! - [`library`]: opening the pinned library, its C ABI and the event callback: the only
//!   module here with `unsafe` code or that hands the library an address.
//! - [`packet`]: the zero-copy read of data packet events, the hot path.
//! - `client`: requests, asynchronous calls answered by id, the room routing table.
//! - `dispatch`: the library's events, on its threads, to rings, waiting calls and sessions.
//! - `subscribe`: the target's audio tracks, subscribed to and streamed into the same rings.
//! - `translate`: the library's disconnect reasons and log records in the bridge's words.
//! - here: [`FfiBackend`] and connecting; `room`: the joined room (publishing, leaving);
//!   `reframe`: client audio into the 10 ms frames the library's audio source takes.
//!
//! An answer from the library that is not the one asked for is an error
//! ([`RoomError::Library`]), never a default value.

mod client;
mod dispatch;
pub mod library;
pub mod packet;
mod reframe;
mod room;
mod subscribe;
mod translate;

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    //! LiveKit's FFI protocol, the subset in `proto/livekit_ffi/`, generated at build time.
    include!(concat!(env!("OUT_DIR"), "/livekit.proto.rs"));

    /// The encoded descriptors of that subset, for checking it against the pinned library.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/livekit_ffi_descriptor.bin"));
}

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::oneshot;

use self::client::{Client, Route, unexpected};
use self::proto::{connect_callback, ffi_event, ffi_request};
use self::room::{CALL_TIMEOUT, FfiRoom};
use super::{BoxFuture, ConnectRequest, Connected, Room, RoomBackend, RoomError, RoomEvents};

/// Real LiveKit rooms through `liblivekit_ffi.so` at `library`.
pub struct FfiBackend {
    library: PathBuf,
}

impl FfiBackend {
    pub fn new(library: PathBuf) -> Self {
        Self { library }
    }

    /// Whether a ws:// room can be joined: the library is loaded, or its file is there (its
    /// checksum is checked when it is loaded). Why not, otherwise.
    pub fn available(&self) -> Result<(), String> {
        if client::opened().is_some() || self.library.is_file() {
            return Ok(());
        }
        Err(format!(
            "LiveKit's SDK library is missing at {} (LIVEKIT_FFI_LIB)",
            self.library.display()
        ))
    }

    /// Data packets routed to sessions, and ones that arrived for rooms no longer routed.
    pub fn packet_counts() -> (u64, u64) {
        client::opened().map_or((0, 0), |c| {
            (
                c.shared.routed.load(Ordering::Relaxed),
                c.shared.unrouted.load(Ordering::Relaxed),
            )
        })
    }

    /// Frames of target audio tracks routed to sessions, frames of streams no longer routed,
    /// and the streams open now.
    pub fn track_frame_counts() -> (u64, u64, usize) {
        client::opened().map_or((0, 0, 0), |c| {
            let s = &c.shared.streams;
            (
                s.routed.load(Ordering::Relaxed),
                s.unrouted.load(Ordering::Relaxed),
                s.open(),
            )
        })
    }

    /// Rooms currently routed (connected and not yet left).
    pub fn routed_rooms() -> usize {
        client::opened().map_or(0, |c| {
            c.shared
                .rooms
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len()
        })
    }
}

impl RoomBackend for FfiBackend {
    fn connect(
        &self,
        request: ConnectRequest,
        events: Arc<dyn RoomEvents>,
    ) -> BoxFuture<'static, Result<Connected, RoomError>> {
        let path = self.library.clone();
        Box::pin(async move {
            let client =
                client::client(&path).map_err(|e| RoomError::Unavailable(e.to_string()))?;
            // The session layer may give up waiting (its own timeout, or the caller leaving)
            // while the library is still connecting. The connect runs on its own task, so a
            // room that connects after nobody wants it is left again, not leaked.
            let (tx, rx) = oneshot::channel();
            tokio::spawn(async move {
                let connected = connect(client, request, events).await;
                if let Err(Ok(unwanted)) = tx.send(connected) {
                    unwanted.room.disconnect().await;
                }
            });
            rx.await
                .unwrap_or_else(|_| Err(RoomError::ConnectFailed("the connect task failed".into())))
        })
    }
}

async fn connect(
    client: &'static Client,
    request: ConnectRequest,
    events: Arc<dyn RoomEvents>,
) -> Result<Connected, RoomError> {
    let timeout_ms = request.timeout.as_millis() as u64;
    let (url, token) = (request.url.clone(), request.token.clone());
    let answer = client
        .call(
            move |id| {
                ffi_request::Message::Connect(proto::ConnectRequest {
                    url,
                    token,
                    options: proto::RoomOptions {
                        auto_subscribe: Some(false),
                        adaptive_stream: Some(false),
                        dynacast: Some(false),
                        join_retries: Some(0),
                        // LiveKit's two-connection protocol, which every server speaks.
                        // The single connection mode pre-creates 3 audio and 3 video receive
                        // transceivers, kept even when the server lacks it: 6 threads and
                        // 2 MiB per room in a bridge that receives no video (BENCHMARKS.md).
                        single_peer_connection: Some(false),
                        connect_timeout_ms: Some(timeout_ms),
                    },
                    request_async_id: Some(id),
                })
            },
            // The library gives up after `connect_timeout_ms`; this only guards against it never
            // answering at all.
            request.timeout + CALL_TIMEOUT,
        )
        .await?;
    let result = match answer {
        ffi_event::Message::Connect(callback) => match callback.message {
            Some(connect_callback::Message::Result(r)) => r,
            Some(connect_callback::Message::Error(e)) => return Err(RoomError::ConnectFailed(e)),
            None => return Err(unexpected("Connect", "an empty callback")),
        },
        other => return Err(unexpected("Connect", other)),
    };
    let room_handle = result.room.handle.id;
    let local = &result.local_participant;
    let local_handle = local.handle.id;
    let participant_id = if local.info.sid.is_empty() {
        local.info.identity.clone()
    } else {
        local.info.sid.clone()
    };
    let tracks = request
        .audio_source
        .tracks()
        .then(|| subscribe::start(client, room_handle, events.clone()));
    // Participant handles are not needed; the target's audio publications already there go to
    // the subscription task, every other publication handle is released.
    for p in &result.participants {
        client.lib.drop_handle(p.participant.handle.id);
        let is_target = p.participant.info.identity == request.target_identity;
        let task = tracks.as_ref().filter(|_| is_target);
        for publication in &p.publications {
            subscribe::offer(client.lib, task, publication);
        }
    }
    let participants = result.participants.len() as u32 + 1;
    client.shared.add_route(
        room_handle,
        Route {
            events,
            participants: AtomicU32::new(participants),
            reconnecting: AtomicBool::new(false),
            target: request.target_identity.clone(),
            tracks,
        },
    );
    let room = FfiRoom::new(client, room_handle, local_handle);
    let ready = client.request(ffi_request::Message::ReadyForRoomEvent(
        proto::ReadyForRoomEventRequest { room_handle },
    ));
    if let Err(e) = ready {
        room.disconnect().await;
        return Err(e);
    }
    tracing::info!(room = %request.room_name, room_handle, participant_id, "joined LiveKit room");
    Ok(Connected {
        room: Box::new(room),
        participant_id,
        participant_count: participants,
    })
}

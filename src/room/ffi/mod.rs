//! The `ffi` backend: real LiveKit rooms (`ws://`, `wss://`) through LiveKit's own SDK library,
//! `liblivekit_ffi.so`, driven by its FFI protobuf protocol. It runs inside each room worker
//! process ([`super::worker`]), one library instance per process.
//!
//! - `library`: opening the pinned library, its C ABI, typed requests and the event callback:
//!   the only module here with `unsafe` code or that hands the library an address.
//! - [`packet`]: the zero-copy read of data packet events, the hot path.
//! - `client`: synchronous requests and asynchronous calls (`calls`: the ones waiting for
//!   their answer, by id).
//! - `routes`: connected rooms by handle; `streams`: the target's open audio streams by
//!   handle. The event callback routes by both.
//! - `dispatch`: the library's events, on its threads, to rings, waiting calls and sessions.
//! - `subscribe`: the target's audio tracks, subscribed to and streamed into the same rings.
//! - `translate`: the library's disconnect reasons and log records in the bridge's words.
//! - `grant`: the room a join token grants, so a join naming another room is refused.
//! - here: [`FfiBackend`], connecting (a few joins at a time), and the wiring of one client,
//!   its tables and the dispatcher to the process's library; `room`: the joined room
//!   (publishing, leaving); `reframe`: client audio into the 10 ms frames the library's audio
//!   source takes; `feeder`: each published track's clock, pacing those frames into the
//!   source.
//!
//! The modules depend one way: `library`, `packet` and `grant` on nothing here; `calls`,
//! `routes` and `streams` on nothing but the protocol; `client` on those; `subscribe` and
//! `feeder` on `client`; `room` on `client` and `feeder`; `dispatch` on the tables and
//! `subscribe`; this module on all of them.
//!
//! An answer from the library that is not the one asked for is an error
//! ([`RoomError::Library`]), never a default value.

mod calls;
mod client;
mod dispatch;
mod feeder;
mod grant;
mod library;
pub mod packet;
mod reframe;
mod room;
mod routes;
mod streams;
mod subscribe;
mod translate;

pub(crate) use client::default_joins_at_once;
pub use library::{DEFAULT_PATH, LibraryLogs};

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    //! LiveKit's FFI protocol, the subset in `proto/livekit_ffi/`, generated at build time.
    include!(concat!(env!("OUT_DIR"), "/livekit.proto.rs"));

    /// The encoded descriptors of that subset, for checking it against the pinned library.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/livekit_ffi_descriptor.bin"));
}

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::oneshot;

use self::client::{CALL_TIMEOUT, Client, unexpected};
use self::dispatch::Dispatch;
use self::proto::{connect_callback, ffi_event, ffi_request};
use self::room::FfiRoom;
use self::routes::{Route, Unpublished};
use super::{
    BoxFuture, ConnectRequest, Connected, Room, RoomBackend, RoomError, RoomEvents, TrackStats,
};

static CLIENT: OnceLock<Client> = OnceLock::new();
static OPENING: Mutex<()> = Mutex::new(());

/// The process's client, opening the library at `path` on first use with a dispatcher
/// sharing the client's tables and `joins_at_once` turns to join. One opening at a time, so
/// the dispatcher the library calls and the client share the same tables.
fn client(
    path: &Path,
    joins_at_once: usize,
    logs: LibraryLogs,
) -> Result<&'static Client, library::LibraryError> {
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let _one_at_a_time = OPENING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let dispatch = Dispatch {
        calls: Arc::default(),
        routes: Arc::default(),
        streams: Arc::default(),
    };
    let (calls, routes, streams) = (
        dispatch.calls.clone(),
        dispatch.routes.clone(),
        dispatch.streams.clone(),
    );
    let lib = library::global(path, logs, move || Box::new(dispatch))?;
    Ok(CLIENT.get_or_init(|| Client {
        lib,
        calls,
        routes,
        streams,
        joining: tokio::sync::Semaphore::new(joins_at_once),
    }))
}

/// Real LiveKit rooms through `liblivekit_ffi.so` at `library`.
pub struct FfiBackend {
    library: PathBuf,
    joins_at_once: usize,
    logs: LibraryLogs,
}

impl FfiBackend {
    /// The library at `library`, working on `joins_at_once` joins at a time (0: twice the
    /// cores, see `client::default_joins_at_once`), its log records going as `logs` says.
    pub fn new(library: PathBuf, joins_at_once: usize, logs: LibraryLogs) -> Self {
        let joins_at_once = match joins_at_once {
            0 => client::default_joins_at_once(),
            n => n,
        };
        Self {
            library,
            joins_at_once,
            logs,
        }
    }
}

impl RoomBackend for FfiBackend {
    /// Ready when the library is loaded, or its file is there (its checksum is checked when it
    /// is loaded).
    fn ready(&self) -> Result<(), String> {
        if CLIENT.get().is_some() || self.library.is_file() {
            return Ok(());
        }
        Err(format!(
            "LiveKit's SDK library is missing at {} (LIVEKIT_FFI_LIB)",
            self.library.display()
        ))
    }

    fn track_stats(&self) -> TrackStats {
        CLIENT.get().map_or_else(TrackStats::default, |c| {
            // Relaxed: statistics, each read on its own.
            let s = &c.streams;
            TrackStats {
                routed: s.routed.load(Ordering::Relaxed),
                unrouted: s.unrouted.load(Ordering::Relaxed),
                streams: s.open(),
                published_underruns: feeder::underruns(),
            }
        })
    }

    fn connect(
        &self,
        request: ConnectRequest,
        events: Arc<dyn RoomEvents>,
    ) -> BoxFuture<'static, Result<Connected, RoomError>> {
        let (path, joins_at_once, logs) = (self.library.clone(), self.joins_at_once, self.logs);
        Box::pin(async move {
            let client = client(&path, joins_at_once, logs)
                .map_err(|e| RoomError::Unavailable(e.to_string()))?;
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
    if let Some(why) = grant::refusal(&request.room_name, &request.token) {
        return Err(RoomError::ConnectFailed(why));
    }
    // The session's own timeout covers the wait, so the library is given what is left of it.
    let (_turn, timeout) = super::turn_to_join(&client.joining, request.timeout).await?;
    let timeout_ms = timeout.as_millis() as u64;
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
                        // The single connection mode costs more on LiveKit's own server:
                        // 13-38 % more CPU and 23-31 % more memory per room, and 25 joins
                        // done 0.3-1.5 s later (BENCHMARKS.md, "Rooms per core").
                        single_peer_connection: Some(false),
                        connect_timeout_ms: Some(timeout_ms),
                    },
                    request_async_id: Some(id),
                })
            },
            // The library gives up after `connect_timeout_ms`; this only guards against it never
            // answering at all.
            timeout + CALL_TIMEOUT,
        )
        .await?;
    let result = match answer {
        ffi_event::Message::Connect(callback) => match callback.message {
            Some(connect_callback::Message::Result(r)) => r,
            Some(connect_callback::Message::Error(e)) => {
                return Err(RoomError::ConnectFailed(translate::without_tokens(&e)));
            }
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
    let unpublished = Unpublished::default();
    client.routes.add(
        room_handle,
        Route {
            events,
            participants: AtomicU32::new(participants),
            reconnecting: AtomicBool::new(false),
            target: request.target_identity.clone(),
            tracks,
            local_identity: local.info.identity.clone(),
            unpublished: unpublished.clone(),
        },
    );
    let room = FfiRoom::new(client, room_handle, local_handle, unpublished);
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

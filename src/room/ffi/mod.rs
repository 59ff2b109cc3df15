//! The `ffi` backend: real LiveKit rooms (`ws://`, `wss://`) through LiveKit's own SDK library,
//! `liblivekit_ffi.so`, driven by its FFI protobuf protocol.
//!
//! - [`library`]: opening the pinned library, its C ABI, and the event callback (the only
//!   `unsafe` code of the crate).
//! - [`packet`]: the zero-copy read of data packet events, the hot path.
//! - here: the client (requests, async callbacks by id, routing room events to sessions) and
//!   the [`RoomBackend`]/[`Room`] implementations.
//!
//! Threads: the library calls [`library::EventSink`] on its own worker threads. A data packet
//! is read without allocating, its room found under a read lock that writers hold only to
//! insert or remove one entry (a `ShardedLock`: readers on different threads do not contend;
//! a thread's first read registers it once, later reads take only their own shard),
//! and pushed into the session's ring; the buffer handle is dropped after the copy. Other
//! events (connect results, participant changes, disconnects, capture acknowledgements) are
//! decoded with prost and handed to waiting tasks through oneshot channels or atomics. Nothing
//! on the callback thread blocks or calls back into the library, except dropping handles.

pub mod library;
pub mod packet;

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    //! LiveKit's FFI protocol, the subset in `proto/livekit_ffi/`, generated at build time.
    include!(concat!(env!("OUT_DIR"), "/livekit.proto.rs"));

    /// The encoded descriptors of that subset, for checking it against the pinned library.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/livekit_ffi_descriptor.bin"));
}

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_utils::sync::ShardedLock;
use prost::Message;
use tokio::sync::oneshot;

use self::library::{EventSink, Library};
use self::packet::DataPacketRef;
use self::proto::{ffi_event, ffi_request, ffi_response};
use super::{
    BoxFuture, ConnectRequest, Connected, DataKind, Disconnect, Room, RoomBackend, RoomError,
    RoomEvents,
};

/// The rate and layout of published audio: the contract's 16 kHz mono PCM16.
const SAMPLE_RATE: u32 = 16_000;
const FRAME_SAMPLES: usize = 160;
/// Audio the library queues per published track before capture applies backpressure.
const SOURCE_QUEUE_MS: u32 = 500;
/// How long leaving a room may take before its handles are released anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any other call into the library may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A room's entry in the routing table: the session's callbacks and its participant count.
struct Route {
    events: Arc<dyn RoomEvents>,
    /// Participants in the room, the bridge included.
    participants: AtomicU32,
}

/// The process's connection to the library: pending async calls and the room routing table.
struct Client {
    lib: &'static Library,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    next_async_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<ffi_event::Message>>>,
    rooms: ShardedLock<HashMap<u64, Arc<Route>>>,
    /// Data packets routed to a room, and ones for rooms no longer routed (closed sessions).
    routed: AtomicU64,
    unrouted: AtomicU64,
}

/// Receives the library's events (see the module docs for what runs where).
struct Dispatch(Arc<Shared>);

impl EventSink for Dispatch {
    fn data_packet(&self, p: &DataPacketRef<'_>, payload: &[u8]) {
        let rooms = self.0.rooms.read().unwrap_or_else(PoisonError::into_inner);
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
            ffi_event::Message::Connect(c) => Some(c.async_id),
            ffi_event::Message::Disconnect(c) => Some(c.async_id),
            ffi_event::Message::PublishTrack(c) => Some(c.async_id),
            ffi_event::Message::UnpublishTrack(c) => Some(c.async_id),
            ffi_event::Message::CaptureAudioFrame(c) => Some(c.async_id),
            ffi_event::Message::Dispose(c) => Some(c.async_id),
            ffi_event::Message::RoomEvent(e) => {
                self.room_event(e);
                None
            }
            ffi_event::Message::Logs(batch) => {
                for r in &batch.records {
                    log_record(r);
                }
                None
            }
            ffi_event::Message::Panic(p) => {
                tracing::error!(message = %p.message, "the LiveKit library panicked");
                None
            }
        };
        if let Some(id) = async_id {
            let waiter = self
                .0
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            if let Some(tx) = waiter {
                let _ = tx.send(message);
            }
        }
    }
}

impl Dispatch {
    fn room_event(&self, e: &proto::RoomEvent) {
        use proto::room_event::Message as M;
        let route = self
            .0
            .rooms
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&e.room_handle)
            .cloned();
        let lib = library_if_open();
        // Participant handles are not needed: release them at once, routed or not.
        if let (Some(M::ParticipantConnected(p)), Some(lib)) = (&e.message, lib) {
            lib.drop_handle(p.info.handle.id);
        }
        let Some(route) = route else { return };
        match &e.message {
            Some(M::ParticipantConnected(_)) => {
                let n = route.participants.fetch_add(1, Ordering::SeqCst) + 1;
                route.events.on_participants(n);
            }
            Some(M::ParticipantDisconnected(_)) => {
                // Never below 1: the bridge itself is in the room.
                let before = route
                    .participants
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                        Some(n.saturating_sub(1).max(1))
                    })
                    .unwrap_or(1);
                route
                    .events
                    .on_participants(before.saturating_sub(1).max(1));
            }
            Some(M::Disconnected(d)) => {
                route.events.on_disconnected(Disconnect {
                    reason: disconnect_reason(d.reason),
                });
            }
            Some(M::ConnectionStateChanged(c)) => {
                tracing::debug!(
                    room_handle = e.room_handle,
                    state = c.state,
                    "connection state"
                );
            }
            _ => {}
        }
    }
}

/// One of the library's log records, into the bridge's logs under the target `livekit_ffi`.
fn log_record(r: &proto::LogRecord) {
    use proto::LogLevel as L;
    let (module, message) = (r.target.as_str(), r.message.as_str());
    match L::try_from(r.level) {
        Ok(L::LogError) => tracing::error!(target: "livekit_ffi", module, "{message}"),
        Ok(L::LogWarn) => tracing::warn!(target: "livekit_ffi", module, "{message}"),
        Ok(L::LogInfo) => tracing::info!(target: "livekit_ffi", module, "{message}"),
        Ok(L::LogDebug) => tracing::debug!(target: "livekit_ffi", module, "{message}"),
        _ => tracing::trace!(target: "livekit_ffi", module, "{message}"),
    }
}

fn library_if_open() -> Option<&'static Library> {
    CLIENT.get().map(|c| c.lib)
}

/// What a server-initiated disconnect means, for GetStatus and the logs.
fn disconnect_reason(reason: i32) -> String {
    use proto::DisconnectReason as R;
    let text = match R::try_from(reason) {
        Ok(R::ClientInitiated) => "the bridge left the room",
        Ok(R::DuplicateIdentity) => "another participant joined with the same identity",
        Ok(R::ServerShutdown) => "the LiveKit server shut down",
        Ok(R::ParticipantRemoved) => "the participant was removed from the room",
        Ok(R::RoomDeleted) => "the room was deleted",
        Ok(R::StateMismatch) => "the server and client disagreed on state",
        Ok(R::JoinFailure) => "joining failed",
        Ok(R::Migration) => "the session migrated",
        Ok(R::SignalClose) => "the signalling connection closed (token expired or network lost)",
        Ok(R::RoomClosed) => "the room was closed",
        Ok(R::ConnectionTimeout) => "the connection timed out",
        Ok(R::MediaFailure) => "media failed",
        _ => "disconnected",
    };
    let name = R::try_from(reason).map_or_else(|_| reason.to_string(), |r| r.as_str_name().into());
    format!("{text} ({name})")
}

static CLIENT: std::sync::OnceLock<Client> = std::sync::OnceLock::new();

fn client(path: &std::path::Path) -> Result<&'static Client, String> {
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let shared = Arc::new(Shared {
        next_async_id: AtomicU64::new(1),
        ..Default::default()
    });
    let for_sink = shared.clone();
    let lib = library::global(path, move || Box::new(Dispatch(for_sink)))?;
    Ok(CLIENT.get_or_init(|| Client { lib, shared }))
}

impl Client {
    /// A synchronous request: the library answers in the response.
    fn request(&self, message: ffi_request::Message) -> Result<ffi_response::Message, RoomError> {
        let request = proto::FfiRequest {
            message: Some(message),
        };
        let bytes = self
            .lib
            .request(&request.encode_to_vec())
            .map_err(|e| RoomError::Unavailable(format!("LiveKit library: {e}")))?;
        proto::FfiResponse::decode(bytes.as_slice())
            .ok()
            .and_then(|r| r.message)
            .ok_or_else(|| RoomError::Unavailable("LiveKit library: undecodable response".into()))
    }

    /// An asynchronous request: `build` gets the async id to put in the request; the result
    /// comes as an event carrying that id.
    async fn call(
        &self,
        build: impl FnOnce(u64) -> ffi_request::Message,
        timeout: Duration,
    ) -> Result<ffi_event::Message, RoomError> {
        let id = self.shared.next_async_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let forget = || {
            self.shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        };
        if let Err(e) = self.request(build(id)) {
            forget();
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(event)) => Ok(event),
            Ok(Err(_)) => Err(RoomError::NotConnected(
                "the LiveKit library dropped the call".into(),
            )),
            Err(_) => {
                forget();
                Err(RoomError::Timeout(timeout))
            }
        }
    }
}

/// Real LiveKit rooms through `liblivekit_ffi.so` at `library`.
pub struct FfiBackend {
    library: PathBuf,
}

impl FfiBackend {
    pub fn new(library: PathBuf) -> Self {
        Self { library }
    }

    /// Data packets routed to sessions, and ones that arrived for rooms no longer routed.
    pub fn packet_counts() -> (u64, u64) {
        CLIENT.get().map_or((0, 0), |c| {
            (
                c.shared.routed.load(Ordering::Relaxed),
                c.shared.unrouted.load(Ordering::Relaxed),
            )
        })
    }

    /// Rooms currently routed (connected and not yet left).
    pub fn routed_rooms() -> usize {
        CLIENT.get().map_or(0, |c| {
            c.shared
                .rooms
                .read()
                .unwrap_or_else(PoisonError::into_inner)
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
            let client = client(&path).map_err(RoomError::Unavailable)?;
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
    let ffi_event::Message::Connect(callback) = answer else {
        return Err(RoomError::ConnectFailed(
            "unexpected answer to Connect".into(),
        ));
    };
    let result = match callback.message {
        Some(proto::connect_callback::Message::Result(r)) => r,
        Some(proto::connect_callback::Message::Error(e)) => {
            return Err(RoomError::ConnectFailed(e));
        }
        None => return Err(RoomError::ConnectFailed("empty answer to Connect".into())),
    };
    let room_handle = result.room.handle.id;
    let local = &result.local_participant;
    let local_handle = local.handle.id;
    let participant_id = if local.info.sid.is_empty() {
        local.info.identity.clone()
    } else {
        local.info.sid.clone()
    };
    for p in &result.participants {
        client.lib.drop_handle(p.participant.handle.id);
    }
    let participants = result.participants.len() as u32 + 1;
    let route = Arc::new(Route {
        events,
        participants: AtomicU32::new(participants),
    });
    client
        .shared
        .rooms
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(room_handle, route);
    let room = FfiRoom {
        client,
        room_handle,
        local_handle,
        tracks: Mutex::new(HashMap::new()),
        left: AtomicBool::new(false),
    };
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

/// One published track: its audio source, track and publication, and a frame being filled.
struct Track {
    source: u64,
    track: u64,
    publication: u64,
    sid: String,
    /// Bytes of an incomplete 10 ms frame, carried to the next publish.
    carry: Vec<u8>,
    /// The frame handed to the library, as aligned samples.
    frame: Vec<i16>,
}

/// A joined LiveKit room.
struct FfiRoom {
    client: &'static Client,
    room_handle: u64,
    local_handle: u64,
    tracks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Track>>>>>,
    left: AtomicBool,
}

impl FfiRoom {
    async fn create_track(&self, name: &str) -> Result<Track, RoomError> {
        let c = self.client;
        let source = match c.request(ffi_request::Message::NewAudioSource(
            proto::NewAudioSourceRequest {
                r#type: proto::AudioSourceType::AudioSourceNative as i32,
                options: Some(proto::AudioSourceOptions {
                    echo_cancellation: false,
                    noise_suppression: false,
                    auto_gain_control: false,
                }),
                sample_rate: Some(SAMPLE_RATE),
                num_channels: Some(1),
                queue_size_ms: Some(SOURCE_QUEUE_MS),
            },
        ))? {
            ffi_response::Message::NewAudioSource(r) => r.source.handle.id,
            _ => 0,
        };
        let track = match c.request(ffi_request::Message::CreateAudioTrack(
            proto::CreateAudioTrackRequest {
                name: name.to_string(),
                source_handle: source,
            },
        ))? {
            ffi_response::Message::CreateAudioTrack(r) => r.track.handle.id,
            _ => 0,
        };
        let local = self.local_handle;
        let published = c
            .call(
                move |id| {
                    ffi_request::Message::PublishTrack(proto::PublishTrackRequest {
                        local_participant_handle: local,
                        track_handle: track,
                        options: proto::TrackPublishOptions {
                            dtx: Some(false),
                            red: Some(true),
                            source: Some(proto::TrackSource::SourceMicrophone as i32),
                        },
                        request_async_id: Some(id),
                    })
                },
                CALL_TIMEOUT,
            )
            .await;
        let publication = match published {
            Ok(ffi_event::Message::PublishTrack(cb)) => match cb.message {
                Some(proto::publish_track_callback::Message::Publication(p)) => p,
                Some(proto::publish_track_callback::Message::Error(e)) => {
                    c.lib.drop_handle(track);
                    c.lib.drop_handle(source);
                    return Err(RoomError::NotConnected(format!(
                        "publishing track {name}: {e}"
                    )));
                }
                None => proto::OwnedTrackPublication::default(),
            },
            Ok(_) => proto::OwnedTrackPublication::default(),
            Err(e) => {
                c.lib.drop_handle(track);
                c.lib.drop_handle(source);
                return Err(e);
            }
        };
        tracing::info!(
            room_handle = self.room_handle,
            track = name,
            "published track"
        );
        Ok(Track {
            source,
            track,
            publication: publication.handle.id,
            sid: publication.info.sid,
            carry: Vec::with_capacity(FRAME_SAMPLES * 2),
            frame: vec![0; FRAME_SAMPLES],
        })
    }

    /// Hands one 10 ms frame to the track's source and waits until the library takes more.
    async fn capture(&self, t: &mut Track, frame: &[u8]) -> Result<(), RoomError> {
        for (s, b) in t.frame.iter_mut().zip(frame.chunks_exact(2)) {
            *s = i16::from_le_bytes([b[0], b[1]]);
        }
        let (source, ptr) = (t.source, t.frame.as_ptr() as u64);
        let answer = self
            .client
            .call(
                move |id| {
                    ffi_request::Message::CaptureAudioFrame(proto::CaptureAudioFrameRequest {
                        source_handle: source,
                        // The library copies the samples during the request, while `t.frame`
                        // is borrowed here and cannot move.
                        buffer: proto::AudioFrameBufferInfo {
                            data_ptr: ptr,
                            num_channels: 1,
                            sample_rate: SAMPLE_RATE,
                            samples_per_channel: FRAME_SAMPLES as u32,
                        },
                        request_async_id: Some(id),
                    })
                },
                CALL_TIMEOUT,
            )
            .await?;
        match answer {
            ffi_event::Message::CaptureAudioFrame(cb) => match cb.error {
                Some(e) if !e.is_empty() => Err(RoomError::NotConnected(format!("capture: {e}"))),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn release(&self, t: Track) {
        let lib = self.client.lib;
        for h in [t.publication, t.track, t.source] {
            lib.drop_handle(h);
        }
    }
}

impl Room for FfiRoom {
    fn publish<'a>(
        &'a self,
        track: &'a str,
        pcm: &'a [u8],
    ) -> BoxFuture<'a, Result<(), RoomError>> {
        Box::pin(async move {
            if self.left.load(Ordering::SeqCst) {
                return Err(RoomError::NotConnected("the room was left".into()));
            }
            let slot = self
                .tracks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(track.to_string())
                .or_default()
                .clone();
            let mut slot = slot.lock().await;
            if slot.is_none() {
                *slot = Some(self.create_track(track).await?);
            }
            let Some(t) = slot.as_mut() else {
                return Ok(());
            };
            let frame_bytes = FRAME_SAMPLES * 2;
            let mut rest = pcm;
            if !t.carry.is_empty() {
                let need = (frame_bytes - t.carry.len()).min(rest.len());
                t.carry.extend_from_slice(&rest[..need]);
                rest = &rest[need..];
                if t.carry.len() == frame_bytes {
                    let frame = std::mem::take(&mut t.carry);
                    let sent = self.capture(t, &frame).await;
                    t.carry = frame;
                    t.carry.clear();
                    sent?;
                }
            }
            let mut frames = rest.chunks_exact(frame_bytes);
            for frame in &mut frames {
                self.capture(t, frame).await?;
            }
            t.carry.extend_from_slice(frames.remainder());
            Ok(())
        })
    }

    fn disconnect(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.left.swap(true, Ordering::SeqCst) {
                return;
            }
            let c = self.client;
            let tracks: Vec<_> = self
                .tracks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain()
                .map(|(_, t)| t)
                .collect();
            for slot in tracks {
                if let Some(t) = slot.lock().await.take() {
                    let (local, sid) = (self.local_handle, t.sid.clone());
                    let _ = c
                        .call(
                            move |id| {
                                ffi_request::Message::UnpublishTrack(proto::UnpublishTrackRequest {
                                    local_participant_handle: local,
                                    track_sid: sid,
                                    stop_on_unpublish: true,
                                    request_async_id: Some(id),
                                })
                            },
                            LEAVE_TIMEOUT,
                        )
                        .await;
                    self.release(t);
                }
            }
            let room = self.room_handle;
            let left = c
                .call(
                    move |id| {
                        ffi_request::Message::Disconnect(proto::DisconnectRequest {
                            room_handle: room,
                            request_async_id: Some(id),
                            reason: Some(proto::DisconnectReason::ClientInitiated as i32),
                        })
                    },
                    LEAVE_TIMEOUT,
                )
                .await;
            if let Err(e) = left {
                tracing::warn!(room_handle = room, error = %e, "leaving the LiveKit room did not finish");
            }
            c.shared
                .rooms
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&room);
            c.lib.drop_handle(self.local_handle);
            c.lib.drop_handle(room);
            tracing::info!(room_handle = room, "left LiveKit room");
        })
    }
}

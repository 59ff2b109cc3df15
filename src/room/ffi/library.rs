//! Loading `liblivekit_ffi.so`, LiveKit's Rust SDK compiled with libwebrtc, and its C ABI.
//!
//! The library is opened at run time, not linked, so the bridge builds and runs without it;
//! only a `ws://`/`wss://` JoinRoom needs it. Before anything of it runs, the file's sha256 is
//! checked against the pinned build (from the PyPI wheel `livekit==1.2.1`), because the FFI
//! protocol's field numbers in `proto/livekit_ffi/` are only known to match that build.
//!
//! This is the only module of the LiveKit adapter that uses `unsafe` or hands the library an
//! address: calling foreign functions, reading memory the library lends us, and lending it
//! the samples of a captured frame. Each says why it is sound. Requests are typed: no caller
//! outside can put an address in one (see [`Library::request`]), so the module's edge is the
//! adapter's one `unsafe` boundary.
#![allow(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use prost::Message;
use sha2::{Digest, Sha256};

use super::packet::{AudioFrameRef, DataPacketRef, audio_frame_of, read_data_packet};
use super::proto;

/// The pinned library: version and sha256 of `liblivekit_ffi.so` in the wheel.
pub const LIB_VERSION: &str = "1.2.1";
pub const LIB_SHA256: &str = "b0e3b91dcf42b486045b6acca4863b132e3c4d114d5701b5759c7661c04ea1eb";
/// Where `scripts/fetch-livekit-ffi` puts it, relative to the project.
pub const DEFAULT_PATH: &str = "vendor/livekit-ffi/liblivekit_ffi.so";

/// `void (*)(const uint8_t *data, size_t len)`: receives each encoded `FfiEvent`.
type EventCallback = extern "C" fn(*const u8, usize);
type InitializeFn = unsafe extern "C" fn(EventCallback, bool, *const i8, *const i8);
type RequestFn = unsafe extern "C" fn(*const u8, usize, *mut *const u8, *mut usize) -> u64;
type DropHandleFn = unsafe extern "C" fn(u64) -> bool;

/// The opened library and its entry points.
pub struct Library {
    request: RequestFn,
    drop_handle: DropHandleFn,
    initialize: InitializeFn,
    // Keeps the code above mapped. Never unloaded: the library's threads live until exit.
    _lib: libloading::Library,
}

/// What went wrong with the library, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// The file is missing, not the pinned build, or does not load.
    #[error(
        "LiveKit's SDK library is not usable at {} ({why}); run scripts/fetch-livekit-ffi \
         or point LIVEKIT_FFI_LIB (--livekit-ffi-lib) at liblivekit_ffi.so {LIB_VERSION}",
        path.display()
    )]
    Unusable { path: PathBuf, why: String },
    /// The library answered a request with no response.
    #[error("it refused the request")]
    Refused,
    /// The library's response did not decode as an `FfiResponse`.
    #[error("undecodable response")]
    Undecodable,
    /// A request carrying an address was sent other than through the call that lends it.
    #[error("a request that carries an address must go through its own call")]
    CarriesAddress,
    /// A frame too long to describe to the library.
    #[error("an audio frame of {0} samples is too long")]
    FrameTooLong(usize),
}

fn unusable(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> LibraryError + '_ {
    move |why| LibraryError::Unusable {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl Library {
    /// Opens the library at `path` after checking it is the pinned build.
    fn open(path: &Path) -> Result<Self, LibraryError> {
        let unusable = unusable(path);
        let digest = sha256_of(path).map_err(|e| unusable(&e))?;
        if digest != LIB_SHA256 {
            let why = format!("sha256 {digest} is not the pinned {LIB_VERSION} build");
            return Err(unusable(&why));
        }
        // SAFETY: the file is the pinned build of LiveKit's library (checked above); loading
        // it runs its initialisers, which only set up its own state.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| unusable(&e))?;
        // SAFETY: the symbol types are the C ABI of the pinned build (its livekit_ffi.h and the
        // official SDKs' bindings agree), and the pointers are kept alive by `_lib`.
        let (initialize, request, drop_handle) = unsafe {
            let i = *lib
                .get::<InitializeFn>(b"livekit_ffi_initialize\0")
                .map_err(|e| unusable(&e))?;
            let r = *lib
                .get::<RequestFn>(b"livekit_ffi_request\0")
                .map_err(|e| unusable(&e))?;
            let d = *lib
                .get::<DropHandleFn>(b"livekit_ffi_drop_handle\0")
                .map_err(|e| unusable(&e))?;
            (i, r, d)
        };
        Ok(Self {
            request,
            drop_handle,
            initialize,
            _lib: lib,
        })
    }

    /// Registers `callback` for every event. Called once per process.
    fn initialize(&self, callback: EventCallback, logs: LibraryLogs) {
        // Reported to the LiveKit server as the client SDK; it knows "rust" (the library is
        // LiveKit's Rust SDK).
        let sdk = c"rust";
        let version = c"0.1.0";
        let capture = logs == LibraryLogs::Captured;
        // SAFETY: `callback` is a plain `extern "C"` function that lives forever; the strings
        // are NUL-terminated statics.
        unsafe { (self.initialize)(callback, capture, sdk.as_ptr(), version.as_ptr()) }
    }

    /// Sends one request and returns the library's response. A request that would hand the
    /// library an address (`CaptureAudioFrame`) is refused: only [`Library::capture_frame`]
    /// builds one, from samples it borrows for the call.
    pub fn request(
        &self,
        message: proto::ffi_request::Message,
    ) -> Result<proto::ffi_response::Message, LibraryError> {
        if matches!(message, proto::ffi_request::Message::CaptureAudioFrame(_)) {
            return Err(LibraryError::CarriesAddress);
        }
        self.send(&proto::FfiRequest {
            message: Some(message),
        })
    }

    /// Sends a `CaptureAudioFrame` request, call `async_id`, handing `samples` (mono, at
    /// `sample_rate`) to the audio source `source`.
    ///
    /// The request carries the samples' address, not the samples. That is sound because the
    /// library reads exactly `num_channels * samples_per_channel` samples, both set here from
    /// `samples` itself, and copies them before the request returns (livekit-ffi's
    /// `FfiAudioSource::capture_frame` copies the buffer, then spawns the capture), so the
    /// borrow of `samples` for this call covers every read.
    pub fn capture_frame(
        &self,
        source: u64,
        samples: &[i16],
        sample_rate: u32,
        async_id: u64,
    ) -> Result<proto::ffi_response::Message, LibraryError> {
        self.send(&proto::FfiRequest {
            message: Some(proto::ffi_request::Message::CaptureAudioFrame(
                proto::CaptureAudioFrameRequest {
                    source_handle: source,
                    buffer: proto::AudioFrameBufferInfo {
                        data_ptr: samples.as_ptr() as u64,
                        num_channels: 1,
                        sample_rate,
                        samples_per_channel: u32::try_from(samples.len())
                            .map_err(|_| LibraryError::FrameTooLong(samples.len()))?,
                    },
                    request_async_id: Some(async_id),
                },
            )),
        })
    }

    /// Sends one `FfiRequest` and decodes the `FfiResponse`. Every address in `request` must
    /// stay valid for the call: the callers above see to it.
    fn send(
        &self,
        request: &proto::FfiRequest,
    ) -> Result<proto::ffi_response::Message, LibraryError> {
        let encoded = request.encode_to_vec();
        let mut ptr: *const u8 = std::ptr::null();
        let mut len: usize = 0;
        // SAFETY: `encoded` is a live slice for the duration of the call; `ptr` and `len` are
        // valid places for the library to write the response's location.
        let handle = unsafe { (self.request)(encoded.as_ptr(), encoded.len(), &mut ptr, &mut len) };
        if handle == 0 || ptr.is_null() {
            return Err(LibraryError::Refused);
        }
        // SAFETY: the library guarantees `ptr..ptr+len` stays valid until `handle` is dropped,
        // which happens right after this decode.
        let response = proto::FfiResponse::decode(unsafe { std::slice::from_raw_parts(ptr, len) });
        self.drop_handle(handle);
        response
            .ok()
            .and_then(|r| r.message)
            .ok_or(LibraryError::Undecodable)
    }

    /// Releases a handle the library gave us (room, participant, track, buffer, ...).
    pub fn drop_handle(&self, handle: u64) -> bool {
        if handle == 0 {
            return false;
        }
        // SAFETY: dropping takes a plain integer; an unknown handle is reported as false.
        unsafe { (self.drop_handle)(handle) }
    }
}

/// Where the library's events go, on the library's threads; each call may release handles
/// through `lib`, and must not make any other request of it.
pub trait EventSink: Send + Sync + 'static {
    /// A user data packet; `payload` is borrowed from the library for this call only. The hot
    /// path: must not allocate, block, or take a lock anything slow can hold.
    fn data_packet(&self, lib: &Library, packet: &DataPacketRef<'_>, payload: &[u8]);
    /// A frame of a remote audio stream; `pcm` (16-bit samples, native byte order) is borrowed
    /// from the library for this call only. Hot path, like `data_packet`.
    fn audio_frame(&self, lib: &Library, frame: &AudioFrameRef, pcm: &[u8]);
    /// Any other event, decoded.
    fn other(&self, lib: &Library, event: proto::FfiEvent);
}

/// The longest audio frame the callback will read: one second of 48 kHz stereo, far beyond
/// the 10 ms of 16 kHz mono the bridge asks for. A longer one is handed on empty.
const MAX_FRAME_BYTES: usize = 48_000 * 2 * 2;

/// What becomes of the library's own log records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LibraryLogs {
    /// Sent as events into the bridge's logging (its filter, its format, tokens redacted).
    /// The library then sends every record it makes, its verbose ones too (libwebrtc's hex
    /// dump of every data channel packet among them): about 14 % of a listening room's CPU
    /// (BENCHMARKS.md, "Rooms per core").
    Captured,
    /// None: the library writes nothing (its own stderr logger is set to `off` in the room
    /// worker's environment), and makes no event of a record.
    Off,
}

static LIBRARY: OnceLock<Library> = OnceLock::new();
static SINK: OnceLock<Box<dyn EventSink>> = OnceLock::new();
static OPENING: Mutex<()> = Mutex::new(());

/// The process's library, opened and initialised on first use with `sink` receiving its
/// events and its log records going as `logs` says. The library can be initialised once per
/// process: later calls get the same one, whatever they name.
pub fn global(
    path: &Path,
    logs: LibraryLogs,
    sink: impl FnOnce() -> Box<dyn EventSink>,
) -> Result<&'static Library, LibraryError> {
    if let Some(lib) = LIBRARY.get() {
        return Ok(lib);
    }
    let _one_at_a_time = OPENING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(lib) = LIBRARY.get() {
        return Ok(lib);
    }
    let lib = Library::open(path)?;
    let _ = SINK.set(sink());
    let lib = LIBRARY.get_or_init(|| lib);
    lib.initialize(on_event, logs);
    Ok(lib)
}

/// The library's event callback, on its own worker threads.
extern "C" fn on_event(data: *const u8, len: usize) {
    // A panic must not unwind into the library; there is nothing to do with one but drop the
    // event (it is a bug, and would be logged by the panic hook).
    let _ = std::panic::catch_unwind(|| {
        let (Some(lib), Some(sink)) = (LIBRARY.get(), SINK.get()) else {
            return;
        };
        if data.is_null() {
            return;
        }
        // SAFETY: the library passes an encoded FfiEvent that is valid for this call.
        let event = unsafe { std::slice::from_raw_parts(data, len) };
        match read_data_packet(event) {
            Some(packet) => {
                let payload = if packet.data_ptr == 0 || packet.data_len == 0 {
                    &[][..]
                } else {
                    // SAFETY: `data_ptr`/`data_len` describe the OwnedBuffer this very event
                    // hands us; the buffer lives until its handle is dropped, which happens
                    // only after the sink has copied what it needs, two lines down.
                    unsafe {
                        std::slice::from_raw_parts(
                            packet.data_ptr as usize as *const u8,
                            packet.data_len as usize,
                        )
                    }
                };
                sink.data_packet(lib, &packet, payload);
                lib.drop_handle(packet.buffer_handle);
            }
            // Every other event is decoded once, here: frames are taken out of it, the rest
            // goes to the sink as it is.
            None => match proto::FfiEvent::decode(event) {
                Err(_) => tracing::warn!(
                    bytes = event.len(),
                    "undecodable event from the LiveKit library"
                ),
                Ok(decoded) => match audio_frame_of(&decoded) {
                    Some(frame) => {
                        let pcm = match frame.byte_len(MAX_FRAME_BYTES) {
                            Some(len) if frame.data_ptr != 0 && len > 0 => {
                                // SAFETY: `data_ptr` and the sample count describe the
                                // OwnedAudioFrameBuffer this very event hands us (16-bit samples,
                                // read here as their bytes, so no alignment is assumed); the
                                // buffer lives until its handle is dropped, which happens only
                                // after the sink has copied what it needs, two lines down.
                                unsafe {
                                    std::slice::from_raw_parts(
                                        frame.data_ptr as usize as *const u8,
                                        len,
                                    )
                                }
                            }
                            _ => &[][..],
                        };
                        sink.audio_frame(lib, &frame, pcm);
                        lib.drop_handle(frame.buffer_handle);
                    }
                    None => sink.other(lib, decoded),
                },
            },
        }
    });
}

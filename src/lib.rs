//! A gRPC bridge between a cloud backend and LiveKit rooms.
//!
//! # Layout
//! Each layer uses only the ones below it; playback and rooms know nothing of sessions or
//! gRPC, and nothing above [`room`] names a concrete room backend.
//!
//! ```text
//! main.rs        settings, logging, bind, signals; runs `ctl` and `decode-worker` (thin binary)
//! config         settings from flags and the environment (clap), checked and typed
//! ctl            the operator's client: health, status, join, leave, play, stop, record
//! server         tonic server: the contract + grpc.health.v1 + reflection, drain with a deadline
//! listener       accept loop (back-off, connection limit, handshake deadline), socket ownership
//! auth           BRIDGE_AUTH_TOKEN: a tower layer refusing every RPC without the bearer token
//! authority      Unix socket: a socket-path :authority (grpcio, grpc-java, grpcurl) -> localhost
//! http           the operators' HTTP listener: /metrics, /livez, /readyz, /availability
//! metrics        Prometheus metrics: events counted where they happen, state read at scrape
//! logging        tracing set-up; control characters in fields escaped
//! error          BridgeError: whose fault (caller, LiveKit, bridge) and its one gRPC status
//! service/       the contract's RPCs and the state they share (BridgeState, housekeeping);
//!                checks.rs: the bounds of every request field and the message size;
//!                stream.rs: StreamAudio (the response body polls the ring; a watcher ends it);
//!                play.rs: PlayAudio and StopAudio; admission.rs: session and CPU limits
//! session/       Session (ring halves, room, state, cancellation; a playback Output),
//!                registry.rs (sessions by generation; refuses joins once drained),
//!                sink.rs (what room callbacks call: the hot path), totals.rs (ends by reason,
//!                retired ring counters)
//! playback/      PlayAudio into an Output: fetch.rs (HTTP), egress.rs (which addresses may be
//!                fetched), decode.rs (symphonia), worker.rs (the decoder in a memory-limited
//!                child), frames.rs (downmix, resample, volume, 10 ms frames), playbacks.rs (a
//!                session's playbacks per track, interruption, StopAudio), playout.rs (paced)
//! room/          RoomBackend and RoomEvents, the only way to a room; backends.rs: the backend
//!                for a URL's scheme; sim/: the simulated room (`sim://`) and its pacer threads;
//!                ffi/: real LiveKit rooms through liblivekit_ffi.so (its module docs list
//!                its files and the one way they depend on each other)
//! audio/         the lock-free core: format.rs (16 kHz mono PCM16, 10 ms), payload.rs (the
//!                contract's payload rule), ring.rs (AudioRing and its close protocol),
//!                storage.rs (the bytes under the ring: rtrb), waker.rs (an atomic waker); no
//!                tokio, gRPC or LiveKit: it builds without the `server` feature, which is how
//!                loom checks it (`loom-tests/`)
//! sync.rs        atomics and Arc from std, or from loom under cfg(loom)
//! ```
//!
//! Room audio: a backend's thread calls `SessionSink::on_data` (identity and topic filter,
//! clock read) or, for the target's audio track, `SessionSink::on_track_audio`, which pushes
//! into the session's ring ([`audio::ring`]: payload rule, claim, copy, release, wake); the
//! StreamAudio response body, polled by hyper's task for the stream, pops it into an
//! `AudioChunk { pcm_data, sample_rate: 16000, channels: 1, timestamp_ms }`.
//!
//! `unsafe` is denied everywhere (`[lints]` in Cargo.toml) but in four modules that allow it
//! and justify each block with `// SAFETY:`: `audio::ring`, `audio::storage` and
//! `audio::waker` (the lock-free core), and `room::ffi::library` (the C ABI of LiveKit's
//! library).

pub mod audio;
mod sync;

#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod authority;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod ctl;
#[cfg(feature = "server")]
pub mod error;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod listener;
#[cfg(feature = "server")]
pub mod logging;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod playback;
#[cfg(feature = "server")]
pub mod proto;
#[cfg(feature = "server")]
pub mod room;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod session;

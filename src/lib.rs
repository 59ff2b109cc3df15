//! A gRPC bridge between a cloud backend and LiveKit rooms.
//!
//! # Layout
//! - [`audio`]: the lock-free core. One SPSC ring per session carries room audio from the room's
//!   event thread to the session's gRPC writer; its close protocol is why a late callback can
//!   never reach a closed or replaced session. No tokio, gRPC or LiveKit in it.
//! - `room`: the [`room::RoomBackend`] trait, the only way sessions reach LiveKit, and the
//!   simulated room (`sim://` URLs).
//! - `session`: a session (ring halves, room, state, cancellation) and the registry that maps
//!   user ids to sessions by generation.
//! - `playback`: PlayAudio's fetch, decode, resample and paced playout, and StopAudio, into
//!   an `Output` (a session is one), reporting its own events: it knows nothing of sessions
//!   or gRPC.
//! - `service`: the gRPC service of the wire contract; `server`: serving it with health,
//!   reflection and graceful shutdown; `listener`: the accept loop (back-off, connection
//!   limit, handshake deadline) and the Unix socket's ownership; `config`: settings from flags
//!   and environment.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

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

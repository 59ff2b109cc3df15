//! The process's client of the library: synchronous requests, and asynchronous calls answered
//! by an event carrying the call's id. The tables the event callback routes by live beside it
//! ([`super::routes`], [`super::streams`]); `ffi/mod.rs` wires one of each to the library.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::calls::Calls;
use super::library::Library;
use super::proto::{ffi_event, ffi_request, ffi_response};
use super::routes::Routes;
use super::streams::Streams;
use crate::room::RoomError;

/// How long a call into the library may take, unless it says otherwise.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The process's connection to the library, and the tables its event callback shares.
pub(super) struct Client {
    pub lib: &'static Library,
    pub calls: Arc<Calls>,
    pub routes: Arc<Routes>,
    pub streams: Arc<Streams>,
    /// Joins the library works on at once; the rest wait their turn, in order (see
    /// [`default_joins_at_once`]).
    pub joining: Semaphore,
}

/// How many joins the library works on at once unless `BRIDGE_JOINS_AT_ONCE` says: twice the
/// cores.
///
/// A join costs the cores the same whether it waits or not, but each join in flight holds the
/// library's transient signalling and transport buffers, and glibc keeps that high-water mark
/// mapped. 25 joins at once on 2 cores took 1.18 s and left 3.4 MiB per room; 4 at once took
/// 1.46 s and left 1.06 MiB; one at a time 6.2 s and 0.85 MiB (BENCHMARKS.md, joins at once).
pub(crate) fn default_joins_at_once() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) * 2
}

impl Client {
    /// A synchronous request: the library answers in the response.
    pub fn request(
        &self,
        message: ffi_request::Message,
    ) -> Result<ffi_response::Message, RoomError> {
        self.lib.request(message).map_err(library_error)
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
        let (id, rx) = self.calls.open();
        if let Err(e) = send(id) {
            self.calls.forget(id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(event)) => Ok(event),
            Ok(Err(_)) => Err(RoomError::NotConnected(
                "the LiveKit library dropped the call".into(),
            )),
            Err(_) => {
                self.calls.forget(id);
                Err(RoomError::Timeout(timeout))
            }
        }
    }
}

/// A library failure in the session layer's words.
pub(super) fn library_error(e: super::library::LibraryError) -> RoomError {
    RoomError::Library(e.to_string())
}

/// The library answered `what` with something else: a bug on one side, never a default.
pub(super) fn unexpected(what: &str, answer: impl std::fmt::Debug) -> RoomError {
    let answer = format!("{answer:?}");
    let shown: String = answer.chars().take(120).collect();
    RoomError::Library(format!("unexpected answer to {what}: {shown}"))
}

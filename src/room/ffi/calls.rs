//! Asynchronous calls into the library waiting for their answers: the library answers a call
//! with an event carrying the call's async id, on its own thread, and [`Calls::answer`] hands
//! that event to the task waiting for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::oneshot;

use super::proto::ffi_event;

/// Calls waiting for their answer, by async id.
pub(super) struct Calls {
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<ffi_event::Message>>>,
}

impl Default for Calls {
    fn default() -> Self {
        Self {
            // 0 is not an id the library would send back: ids start at 1.
            next_id: AtomicU64::new(1),
            pending: Mutex::default(),
        }
    }
}

impl Calls {
    /// A new call: its async id and where its answer will arrive.
    pub fn open(&self) -> (u64, oneshot::Receiver<ffi_event::Message>) {
        // Relaxed: ids only have to be unique.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        (id, rx)
    }

    /// Hands `message` to the call waiting for `async_id`, if it still waits.
    pub fn answer(&self, async_id: u64, message: ffi_event::Message) {
        let waiter = self.lock().remove(&async_id);
        if let Some(tx) = waiter {
            let _ = tx.send(message);
        }
    }

    /// Stops waiting for `async_id` (the call failed to send, or timed out).
    pub fn forget(&self, async_id: u64) {
        self.lock().remove(&async_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<ffi_event::Message>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

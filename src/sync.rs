//! The synchronisation primitives the lock-free core is written against.
//!
//! Under `cfg(loom)` they come from `loom`, so the models in `loom-tests/` check the very code
//! that ships; otherwise they are `std`'s. `UnsafeCell` follows loom's closure-based API in both
//! builds, so every access to a cell is visible to the model checker.

#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Waits for another thread to leave a bounded critical section (a memcpy of one frame that
/// never blocks): spins briefly, then yields the CPU.
#[cfg(not(loom))]
pub(crate) struct SpinWait(crossbeam_utils::Backoff);

#[cfg(not(loom))]
impl SpinWait {
    pub(crate) fn new() -> Self {
        Self(crossbeam_utils::Backoff::new())
    }

    pub(crate) fn snooze(&self) {
        self.0.snooze();
    }
}

/// Under loom a spin loop must yield, or the model checker explores it forever; and a wait
/// that the awaited thread can never end (it is gone) must fail the model rather than spin it
/// forever, so a wait is allowed a bounded number of turns.
#[cfg(loom)]
pub(crate) struct SpinWait(std::cell::Cell<u32>);

#[cfg(loom)]
impl SpinWait {
    /// Far more turns than any wait for a live thread takes under loom's scheduler.
    const TURNS: u32 = 1000;

    pub(crate) fn new() -> Self {
        Self(std::cell::Cell::new(0))
    }

    pub(crate) fn snooze(&self) {
        let turns = self.0.get() + 1;
        assert!(
            turns < Self::TURNS,
            "a wait spun {turns} turns: the thread it waits for can never end it"
        );
        self.0.set(turns);
        loom::thread::yield_now();
    }
}

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `std::cell::UnsafeCell` behind loom's closure API.
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

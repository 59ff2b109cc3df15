//! The synchronisation primitives the lock-free core is written against.
//!
//! Under `cfg(loom)` they come from `loom`, so the loom models in `loom-tests/` check the very
//! code that ships; otherwise they are `std`'s. `UnsafeCell` follows loom's closure-based API
//! in both builds, so every access to a cell is visible to the model checker.

#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Waits for another thread to make progress inside a bounded critical section.
#[cfg(loom)]
pub(crate) fn spin_wait() {
    loom::thread::yield_now();
}

/// Waits for another thread to make progress inside a bounded critical section.
#[cfg(not(loom))]
pub(crate) fn spin_wait() {
    std::hint::spin_loop();
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

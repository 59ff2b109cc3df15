//! A single-consumer atomic waker slot: the consumer parks its `Waker` here, producers and the
//! closer take it out to wake the consumer. No locks, no allocation on the waking side.
//!
//! # Protocol
//! `state` holds two bits. `REGISTERING` is held by the consumer while it writes the slot;
//! `WAKING` is held by a waker while it takes the slot. Whoever holds a bit owns the slot.
//! - `register`: CAS `WAITING → REGISTERING` (Acquire: see the slot as the last owner left it),
//!   store the waker, then CAS `REGISTERING → WAITING` (AcqRel: publish the waker). If that CAS
//!   fails, a `wake` arrived meanwhile and could not take the slot: the consumer takes the waker
//!   back and wakes it itself, so that wake is not lost.
//! - `wake`: `fetch_or(WAKING)` (AcqRel). From `WAITING` it owns the slot: take the waker, wake
//!   it, clear `WAKING` (Release). From `REGISTERING` the consumer will see `WAKING` and wake
//!   itself. From `WAKING` another waker is already waking.
//! - `clear` (the consumer going away): CAS `WAITING → WAKING`, retried while a wake is in
//!   progress, then empty the slot. Afterwards no wake can reach the old waker.
//!
//! Callers pair it with a check: the consumer registers, then re-checks its condition; the
//! producer changes the condition, then wakes. Either the consumer's re-check sees the change or
//! the producer's wake finds the registered waker.

// Unsafe code here: one `unsafe impl Sync` and one cell access, each with its SAFETY reason.
#![allow(unsafe_code)]

use std::task::Waker;

use crate::sync::{AtomicUsize, Ordering, SpinWait, UnsafeCell};

const WAITING: usize = 0;
const REGISTERING: usize = 0b01;
const WAKING: usize = 0b10;

/// See the module documentation for the protocol.
#[derive(Debug)]
pub(crate) struct AtomicWaker {
    state: AtomicUsize,
    /// Written only by the holder of `REGISTERING` or `WAKING` (never both at once).
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: the slot is only touched by the thread that owns it through `state` (see the module
// documentation), so sharing the struct between threads cannot race on it. `Waker` is Send+Sync.
unsafe impl Sync for AtomicWaker {}

impl AtomicWaker {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicUsize::new(WAITING),
            waker: UnsafeCell::new(None),
        }
    }

    /// Parks `waker`. Called by the single consumer only.
    pub(crate) fn register(&self, waker: &Waker) {
        match self.state.compare_exchange(
            WAITING,
            REGISTERING,
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.with_slot(|slot| match slot {
                    Some(old) if old.will_wake(waker) => {}
                    _ => *slot = Some(waker.clone()),
                });
                if let Err(actual) = self.state.compare_exchange(
                    REGISTERING,
                    WAITING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    // A wake arrived while we held the slot. We still own it: take the waker
                    // back, reset the state and deliver the wake ourselves.
                    debug_assert_eq!(actual, REGISTERING | WAKING);
                    let pending = self.with_slot(Option::take);
                    self.state.swap(WAITING, Ordering::AcqRel);
                    if let Some(w) = pending {
                        w.wake();
                    }
                }
            }
            // A waker is taking the slot right now: its wake may be for an older registration,
            // so make sure this task polls again, and give the waker a moment to finish.
            Err(WAKING) => {
                waker.wake_by_ref();
                SpinWait::new().snooze();
            }
            Err(_) => debug_assert!(false, "AtomicWaker::register called concurrently"),
        }
    }

    /// Wakes the parked consumer, if any. Safe to call from any number of threads. The wake
    /// happens while `WAKING` is held, so [`clear`](Self::clear) can wait for it to finish.
    pub(crate) fn wake(&self) {
        if self.state.fetch_or(WAKING, Ordering::AcqRel) == WAITING {
            if let Some(w) = self.with_slot(Option::take) {
                w.wake();
            }
            self.state.fetch_and(!WAKING, Ordering::Release);
        }
    }

    /// Empties the slot for a consumer that is going away. Waits for a wake in progress to
    /// finish (it holds `WAKING` for one `Waker::wake`, which never blocks), so once this
    /// returns the consumer's waker is never woken again.
    pub(crate) fn clear(&self) {
        if super::weaken::CLEAR_SKIPS_WAKE_WAIT {
            if self.state.fetch_or(WAKING, Ordering::AcqRel) == WAITING {
                let old = self.with_slot(Option::take);
                self.state.fetch_and(!WAKING, Ordering::Release);
                drop(old);
            }
            return;
        }
        let spin = SpinWait::new();
        while self
            .state
            .compare_exchange(WAITING, WAKING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spin.snooze();
        }
        let old = self.with_slot(Option::take);
        self.state.fetch_and(!WAKING, Ordering::Release);
        drop(old);
    }

    fn with_slot<R>(&self, f: impl FnOnce(&mut Option<Waker>) -> R) -> R {
        self.waker.with_mut(|ptr| {
            // SAFETY: callers hold REGISTERING or WAKING, which makes them the slot's only user.
            f(unsafe { &mut *ptr })
        })
    }
}

/// A `Waker` that counts its wakes: what the ring's tests and the loom models of its wakeup
/// protocol observe. Its counter is the core's atomic, so under loom the model checks it too.
#[derive(Debug, Default)]
pub struct WakeCounter(AtomicUsize);

impl WakeCounter {
    /// A counter and a waker that increments it.
    pub fn waker() -> (std::sync::Arc<Self>, Waker) {
        let counter = std::sync::Arc::new(Self::default());
        (counter.clone(), Waker::from(counter))
    }

    /// Wakes so far.
    pub fn wakes(&self) -> usize {
        // SeqCst: a test reads it after the wake it expects, in any thread.
        self.0.load(Ordering::SeqCst)
    }
}

impl std::task::Wake for WakeCounter {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{AtomicWaker, WakeCounter};

    #[test]
    fn wake_reaches_the_registered_waker_once() {
        let (count, waker) = WakeCounter::waker();
        let slot = AtomicWaker::new();
        slot.register(&waker);
        slot.wake();
        slot.wake();
        assert_eq!(count.wakes(), 1);
    }

    #[test]
    fn clear_empties_the_slot() {
        let (count, waker) = WakeCounter::waker();
        let slot = AtomicWaker::new();
        slot.register(&waker);
        slot.clear();
        slot.wake();
        assert_eq!(count.wakes(), 0);
    }
}

//! Deliberate weakenings of the close and wakeup protocols, for proving that the loom models in
//! `loom-tests/` can fail. Each is compiled in only with `--cfg loom_weaken="<name>"`; in every
//! other build these are `false` constants and the branches they guard vanish.
//! `loom-tests/README.md` lists which model catches which weakening.

/// The consumer reads the ring without first checking `CLOSED`.
pub(crate) const POP_SKIPS_CLOSED_CHECK: bool = cfg!(loom_weaken = "pop_skips_closed_check");
/// The consumer discards a closed ring's frames without waiting for an in-flight push.
pub(crate) const DISCARD_SKIPS_CLAIM_WAIT: bool = cfg!(loom_weaken = "discard_skips_claim_wait");
/// The consumer does not re-check the ring after registering its waker.
pub(crate) const NO_RECHECK_AFTER_REGISTER: bool = cfg!(loom_weaken = "no_recheck_after_register");
/// A push releases its claim with a Relaxed store instead of Release.
pub(crate) const RELAXED_CLAIM_RELEASE: bool = cfg!(loom_weaken = "relaxed_claim_release");
/// Dropping the producer does not close the ring.
pub(crate) const PRODUCER_DROP_SKIPS_CLOSE: bool = cfg!(loom_weaken = "producer_drop_skips_close");
/// A consumer going away does not wait for a wake in progress.
pub(crate) const CLEAR_SKIPS_WAKE_WAIT: bool = cfg!(loom_weaken = "clear_skips_wake_wait");
/// Close sets `CLOSED` in the producer's word only, not in the consumer's.
pub(crate) const CLOSE_SKIPS_FLAGS: bool = cfg!(loom_weaken = "close_skips_flags");
/// Close sets `CLOSED` in the consumer's word with a Relaxed write instead of Release.
pub(crate) const RELAXED_CLOSE_FLAGS: bool = cfg!(loom_weaken = "relaxed_close_flags");
/// Abandoning a mapped ring does not set `ABANDONED`, so the consumer waits for the dead
/// producer's claim.
pub(crate) const ABANDON_SKIPS_FLAG: bool = cfg!(loom_weaken = "abandon_skips_flag");
/// The doorbell's coalescing consumer stops looking without a last `take`, leaving `pending`
/// set, so the next mark does not kick.
pub(crate) const COALESCING_SKIPS_FINAL_TAKE: bool =
    cfg!(loom_weaken = "coalescing_skips_final_take");
/// The doorbell's consumer clears `pending` after taking the marks instead of before.
pub(crate) const DOORBELL_CLEARS_PENDING_LAST: bool =
    cfg!(loom_weaken = "doorbell_clears_pending_last");
/// A track ring's side that finds nothing to do sleeps without looking again after it parks.
pub(crate) const TRACK_RING_NO_RECHECK: bool = cfg!(loom_weaken = "track_ring_no_recheck");

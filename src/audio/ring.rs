//! `AudioRing`: one session's lock-free path from the room's event thread to its gRPC writer.
//!
//! The producer half ([`FrameProducer`]) belongs to whatever thread the room backend calls back
//! on; the consumer half ([`FrameConsumer`]) belongs to the task that writes the session's
//! StreamAudio responses; [`RingCloser`] handles let anyone (LeaveRoom, a replacing JoinRoom, a
//! server disconnect, shutdown) close the ring. Frames are variable-length PCM payloads stored
//! back to back in rtrb's wait-free byte ring, each behind a 12-byte header (length, arrival
//! time), written in one commit so the consumer never sees half a frame.
//!
//! # The close protocol
//!
//! Two atomic words, each on a cache line of its own:
//! - `state`, the producer's word: `CLOSED` (set once, never cleared), `CLAIMED` (held by the
//!   producer for the duration of one push: a copy of at most one frame into preallocated
//!   memory, which never blocks, allocates or calls out) and `PARKED` (the consumer has
//!   registered its waker and wants a wake on the next push). The producer writes it twice per
//!   push; the consumer touches it only to go to sleep and after a close.
//! - `flags`, the consumer's word: `CLOSED` again, and `LAGGED` (see [`Overflow::DropOldest`]).
//!   The consumer reads it once per pop; it is written only when the ring closes or overflows,
//!   so in steady state it sits unmodified in both cores' caches and a pop moves no line but
//!   the byte ring's own indices.
//!
//! 1. **Push** (producer): `fetch_or(CLAIMED, Acquire)` on `state`. If `CLOSED` was already set
//!    the frame is counted `dropped_closed` and nothing is written. Otherwise the frame is
//!    written and committed (rtrb's Release store of its tail). Either way the claim is then
//!    released with `fetch_and(!(CLAIMED | PARKED), Release)`; if that found `PARKED`, the
//!    consumer's waker is woken. Claim and close are read-modify-writes of the same word, so
//!    they are totally ordered: a push either sees `CLOSED` or its claim precedes the close.
//! 2. **Close** (anyone, any number of times, from any thread): `fetch_or(CLOSED, AcqRel)` on
//!    `state`, then `fetch_or(CLOSED, Release)` on `flags`, then wake the consumer. Close never
//!    waits. Every push whose claim comes after it in `state`'s modification order sees
//!    `CLOSED` and writes nothing.
//! 3. **Pop** (consumer): `load(Acquire)` of `flags` *before* reading the ring. If `CLOSED` is
//!    set, the close's first step, which precedes its second, is visible too, so the consumer's
//!    loads of `state` read it or later: it waits while `CLAIMED` is set (a push that claimed
//!    before the close is finishing its copy; the wait is bounded by one frame copy and is the
//!    protocol's only wait), and its Acquire load of the released claim makes that frame
//!    visible. The ring's contents are now final; the consumer discards them, counted
//!    `dropped_closed` exactly once (only the consumer consumes), and reports closed.
//!    Otherwise it pops at most one frame. A close returns only after its second step, so a
//!    pop that starts after a close has returned delivers nothing: **no frame reaches a
//!    closed session.**
//! 4. **Wait** (consumer): register the waker in an [`AtomicWaker`], then `fetch_or(PARKED,
//!    AcqRel)` on `state` and re-check. The producer's release and the consumer's park are
//!    read-modify-writes of `state`, so one comes first: if the park, the release finds
//!    `PARKED` and wakes; if the release, the park reads from it and the re-check sees the
//!    committed frame. A close's first step and the park are ordered the same way: if the
//!    close comes first, the park reads `CLOSED` and the consumer ends as in step 3; if the
//!    park, the close's wake finds the registered waker. **No wakeup is lost**, and a push
//!    costs two RMWs of a line the consumer does not read while audio flows.
//!
//! A replaced session cannot leak into its successor because rings are never reused: each
//! session gets a new ring, and a late callback from an old room holds only the old ring's
//! producer, whose pushes now count as `dropped_closed`.
//!
//! Only one thread may push at a time (the ring is single-producer). Room backends deliver one
//! room's data from one thread; if two threads ever push at once, the second finds `CLAIMED` set
//! and its frame is counted `dropped_contended` instead of waiting, so the event thread never
//! waits on anything.
//!
//! # Accounting
//!
//! `received = skipped + delivered + dropped_full + dropped_closed + dropped_contended + queued`,
//! and `queued` is 0 once the consumer has seen the ring closed or has been dropped. Each
//! counter has one writer (the claim holder, or the consumer) and is bumped with a Relaxed load
//! and store; only the rare skipped and contended counts, bumped outside the claim, use an RMW.

// Unsafe code here: one `unsafe impl Sync` and one cell access, each with its SAFETY reason.
#![allow(unsafe_code)]

use std::fmt;
use std::task::{Context, Poll};

use crossbeam_utils::CachePadded;

use super::format;
use super::payload::sample_aligned;
use super::storage::{ByteReader, ByteWriter, byte_ring};
use super::waker::AtomicWaker;
use super::weaken;
use crate::sync::{Arc, AtomicU64, AtomicUsize, Ordering, SpinWait, UnsafeCell};

const CLOSED: usize = 0b0001;
const CLAIMED: usize = 0b0010;
const PARKED: usize = 0b0100;
const LAGGED: usize = 0b1000;

/// Bytes in front of every frame: payload length (u32 LE) and arrival time (i64 LE, unix ms).
pub const FRAME_HEADER: usize = 12;

/// What happens when a frame arrives and the ring is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// The arriving frame is dropped; what is queued plays out. This is the old bridge's policy.
    #[default]
    DropNewest,
    /// The arriving frame is dropped (an SPSC producer cannot remove frames), and the consumer,
    /// on its next pop, skips the oldest frames until half the ring is free, so a reader that
    /// fell behind is brought back to live audio at once instead of staying a full ring late.
    DropOldest,
}

/// Size and overflow policy of one session's ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Bytes of storage, headers included.
    pub capacity_bytes: usize,
    pub overflow: Overflow,
}

impl RingConfig {
    /// A ring holding about `ms` milliseconds of 10 ms frames.
    pub fn for_duration_ms(ms: u32, overflow: Overflow) -> Self {
        let frames = (ms as usize)
            .div_ceil(format::FRAME.as_millis() as usize)
            .max(1);
        Self {
            capacity_bytes: frames * (format::FRAME_BYTES + FRAME_HEADER),
            overflow,
        }
    }
}

impl RingConfig {
    /// Audio a ring holds by default (BRIDGE_RING_MS), in milliseconds.
    pub const DEFAULT_MS: u32 = 2000;
}

impl Default for RingConfig {
    /// About 2 s of audio, dropping the newest frame when full, as the old bridge did.
    fn default() -> Self {
        Self::for_duration_ms(Self::DEFAULT_MS, Overflow::default())
    }
}

/// What became of one pushed payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued for the consumer.
    Queued,
    /// The payload rule left no samples; nothing was queued.
    Skipped,
    /// The ring was full (or the frame can never fit); the frame was dropped.
    Full,
    /// The ring is closed; the frame was dropped.
    Closed,
    /// Another thread was pushing at the same instant; the frame was dropped.
    Contended,
}

/// What one non-blocking pop found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pop {
    /// A frame was appended to the output buffer; it arrived at this time (unix ms).
    Frame {
        arrived_ms: i64,
    },
    Empty,
    Closed,
}

/// A snapshot of a ring's counters (see the module documentation for how they add up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    pub received: u64,
    pub skipped: u64,
    pub delivered: u64,
    pub dropped_full: u64,
    pub dropped_closed: u64,
    pub dropped_contended: u64,
}

impl RingStats {
    /// Frames received and not yet delivered or dropped. Exact once pushes have stopped; a
    /// snapshot taken while a push runs may be off by that push.
    pub fn queued(&self) -> u64 {
        self.received.saturating_sub(
            self.skipped
                + self.delivered
                + self.dropped_full
                + self.dropped_closed
                + self.dropped_contended,
        )
    }

    pub fn add(&mut self, o: &RingStats) {
        self.received += o.received;
        self.skipped += o.skipped;
        self.delivered += o.delivered;
        self.dropped_full += o.dropped_full;
        self.dropped_closed += o.dropped_closed;
        self.dropped_contended += o.dropped_contended;
    }
}

/// Counters are statistics: read after the fact, no decision depends on them. Each is written
/// by one side only, so most are bumped without a read-modify-write.
#[derive(Default)]
struct Counters {
    /// Written by the claim holder.
    claimed: AtomicU64,
    full: AtomicU64,
    closed_on_push: AtomicU64,
    /// Written outside the claim, by any pushing thread.
    skipped: AtomicU64,
    contended: AtomicU64,
}

/// Counters written by the consumer only.
#[derive(Default)]
struct ConsumerCounters {
    delivered: AtomicU64,
    discarded_closed: AtomicU64,
    skipped_backlog: AtomicU64,
}

/// Adds to a counter that has a single writer.
fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// Adds to a counter that several threads may write at once.
fn add_shared(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

struct Shared {
    /// The producer's word, `CLOSED | CLAIMED | PARKED`; see the module documentation.
    state: CachePadded<AtomicUsize>,
    /// The consumer's word, `CLOSED | LAGGED`, written only on close and overflow.
    flags: CachePadded<AtomicUsize>,
    waker: AtomicWaker,
    counters: CachePadded<Counters>,
    consumer_counters: CachePadded<ConsumerCounters>,
    config: RingConfig,
}

impl Shared {
    /// Step 2 of the close protocol. Returns true for the call that closed the ring.
    fn close(&self) -> bool {
        let first = self.state.fetch_or(CLOSED, Ordering::AcqRel) & CLOSED == 0;
        if !weaken::CLOSE_SKIPS_FLAGS {
            // Release: a consumer that reads CLOSED here reads the first step in `state`.
            let order = if weaken::RELAXED_CLOSE_FLAGS {
                Ordering::Relaxed
            } else {
                Ordering::Release
            };
            self.flags.fetch_or(CLOSED, order);
        }
        self.waker.wake();
        first
    }

    fn is_closed(&self) -> bool {
        self.flags.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Waits until no push is in flight. Acquire: the frame the last push committed is visible.
    fn wait_unclaimed(&self) {
        let spin = SpinWait::new();
        while self.state.load(Ordering::Acquire) & CLAIMED != 0 {
            spin.snooze();
        }
    }

    fn stats(&self) -> RingStats {
        let (p, c) = (&self.counters, &self.consumer_counters);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RingStats {
            received: get(&p.claimed) + get(&p.skipped) + get(&p.contended),
            skipped: get(&p.skipped),
            delivered: get(&c.delivered),
            dropped_full: get(&p.full) + get(&c.skipped_backlog),
            dropped_closed: get(&p.closed_on_push) + get(&c.discarded_closed),
            dropped_contended: get(&p.contended),
        }
    }
}

/// Creates a session's ring: the producer for the room's event thread, the consumer for the
/// gRPC writer, and a closer for everyone else. All memory is allocated here, once.
pub fn audio_ring(config: RingConfig) -> (FrameProducer, FrameConsumer, RingCloser) {
    let (writer, reader) = byte_ring(config.capacity_bytes.max(FRAME_HEADER + 2));
    let shared = Arc::new(Shared {
        state: CachePadded::new(AtomicUsize::new(0)),
        flags: CachePadded::new(AtomicUsize::new(0)),
        waker: AtomicWaker::new(),
        counters: CachePadded::new(Counters::default()),
        consumer_counters: CachePadded::new(ConsumerCounters::default()),
        config,
    });
    (
        FrameProducer {
            shared: shared.clone(),
            writer: UnsafeCell::new(writer),
        },
        FrameConsumer {
            shared: shared.clone(),
            reader,
        },
        RingCloser { shared },
    )
}

/// The room side of a ring. `push` may be called from any thread; see the module documentation.
pub struct FrameProducer {
    shared: Arc<Shared>,
    /// Touched only by the holder of `CLAIMED`.
    writer: UnsafeCell<ByteWriter>,
}

// SAFETY: the writer is only accessed by the thread that holds the `CLAIMED` bit, which
// `fetch_or` grants to one thread at a time; everything else in the struct is atomic.
unsafe impl Sync for FrameProducer {}

impl FrameProducer {
    /// Applies the payload rule and queues the samples with their arrival time. Never allocates,
    /// locks, blocks or panics, before, during or after close.
    pub fn push(&self, arrived_ms: i64, payload: &[u8]) -> PushOutcome {
        let s = &self.shared;
        let Some(pcm) = sample_aligned(payload) else {
            add_shared(&s.counters.skipped, 1);
            return PushOutcome::Skipped;
        };
        // Step 1 of the close protocol: claim, and learn whether the ring is closed.
        let prev = s.state.fetch_or(CLAIMED, Ordering::Acquire);
        if prev & CLAIMED != 0 {
            add_shared(&s.counters.contended, 1);
            return PushOutcome::Contended;
        }
        add(&s.counters.claimed, 1);
        let outcome = if prev & CLOSED != 0 {
            add(&s.counters.closed_on_push, 1);
            PushOutcome::Closed
        } else if self.write(arrived_ms, pcm) {
            PushOutcome::Queued
        } else {
            add(&s.counters.full, 1);
            if s.config.overflow == Overflow::DropOldest {
                // A hint: the consumer acts on it at its next pop, whenever it sees it. Set
                // once per lag, so a ring that stays full does not keep writing the
                // consumer's line.
                if s.flags.load(Ordering::Relaxed) & LAGGED == 0 {
                    s.flags.fetch_or(LAGGED, Ordering::Relaxed);
                }
            }
            PushOutcome::Full
        };
        // Release: a closer, consumer or next pusher that sees the claim gone also sees the
        // commit, the counters and the writer's state.
        let release = if weaken::RELAXED_CLAIM_RELEASE {
            Ordering::Relaxed
        } else {
            Ordering::Release
        };
        if s.state.fetch_and(!(CLAIMED | PARKED), release) & PARKED != 0 {
            s.waker.wake();
        }
        outcome
    }

    /// Writes one frame in one commit. Called only by the holder of `CLAIMED`.
    fn write(&self, arrived_ms: i64, pcm: &[u8]) -> bool {
        let Ok(len) = u32::try_from(pcm.len()) else {
            return false;
        };
        let mut header = [0u8; FRAME_HEADER];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&arrived_ms.to_le_bytes());
        self.writer.with_mut(|w| {
            // SAFETY: the caller holds CLAIMED, so this thread is the writer's only user.
            let w = unsafe { &mut *w };
            w.write_frame(&header, pcm)
        })
    }

    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    pub fn stats(&self) -> RingStats {
        self.shared.stats()
    }
}

impl Drop for FrameProducer {
    fn drop(&mut self) {
        if weaken::PRODUCER_DROP_SKIPS_CLOSE {
            return;
        }
        self.shared.close();
    }
}

impl fmt::Debug for FrameProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameProducer")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The consumer of a ring (the session's gRPC writer pops from it): one task at a time.
pub struct FrameConsumer {
    shared: Arc<Shared>,
    reader: ByteReader,
}

impl FrameConsumer {
    /// Pops at most one frame, appending its PCM to `out`. Never blocks.
    pub fn try_pop(&mut self, out: &mut Vec<u8>) -> Pop {
        // Step 3: the closed check comes before any read of the ring.
        let flags = self.shared.flags.load(Ordering::Acquire);
        if !weaken::POP_SKIPS_CLOSED_CHECK && flags & CLOSED != 0 {
            self.discard_closed();
            return Pop::Closed;
        }
        if flags & LAGGED != 0 {
            self.shared.flags.fetch_and(!LAGGED, Ordering::Relaxed);
            self.skip_backlog();
        }
        let Some((len, arrived_ms)) = self.reader.peek(parse_header) else {
            return Pop::Empty;
        };
        self.reader
            .consume(FRAME_HEADER + len, Some((FRAME_HEADER, out)));
        add(&self.shared.consumer_counters.delivered, 1);
        Pop::Frame { arrived_ms }
    }

    /// Like [`try_pop`](Self::try_pop), but when the ring is empty registers the task's waker
    /// and returns `Pending`. Step 4 of the close protocol.
    pub fn poll_pop(&mut self, cx: &mut Context<'_>, out: &mut Vec<u8>) -> Poll<Option<i64>> {
        loop {
            match self.try_pop(out) {
                Pop::Frame { arrived_ms } => return Poll::Ready(Some(arrived_ms)),
                Pop::Closed => return Poll::Ready(None),
                Pop::Empty => {}
            }
            self.shared.waker.register(cx.waker());
            // Park, then re-check: a push or close ordered before the park in `state` did not
            // see PARKED, so its effect must be visible here; one ordered after it finds the
            // registered waker.
            let state = self.shared.state.fetch_or(PARKED, Ordering::AcqRel);
            if weaken::NO_RECHECK_AFTER_REGISTER {
                return Poll::Pending;
            }
            if state & CLOSED != 0 {
                // The close's second step may not be visible yet; its first is, which is all
                // step 3 needs.
                self.discard_closed();
                return Poll::Ready(None);
            }
            if self.reader.queued() > 0 {
                continue;
            }
            return Poll::Pending;
        }
    }

    /// Waits for the next frame; `None` once the ring is closed.
    pub fn pop<'a>(&'a mut self, out: &'a mut Vec<u8>) -> impl Future<Output = Option<i64>> + 'a {
        std::future::poll_fn(move |cx| self.poll_pop(cx, out))
    }

    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    pub fn stats(&self) -> RingStats {
        self.shared.stats()
    }

    /// The ring is closed: wait for an in-flight push, then count what is left as dropped.
    fn discard_closed(&mut self) {
        if !weaken::DISCARD_SKIPS_CLAIM_WAIT {
            self.shared.wait_unclaimed();
        }
        let n = self.drop_frames_while(|_| true);
        add(&self.shared.consumer_counters.discarded_closed, n);
    }

    /// Under [`Overflow::DropOldest`], skips the oldest frames until half the ring is free.
    fn skip_backlog(&mut self) {
        let target = self.shared.config.capacity_bytes / 2;
        let n = self.drop_frames_while(|queued| queued > target);
        add(&self.shared.consumer_counters.skipped_backlog, n);
    }

    fn drop_frames_while(&mut self, keep_going: impl Fn(usize) -> bool) -> u64 {
        let mut n = 0;
        while keep_going(self.reader.queued())
            && let Some((len, _)) = self.reader.peek(parse_header)
        {
            self.reader.consume(FRAME_HEADER + len, None);
            n += 1;
        }
        n
    }
}

impl Drop for FrameConsumer {
    fn drop(&mut self) {
        // The consumer going away forgets its waker (no wake reaches it afterwards), closes the
        // ring so later pushes are counted, not queued, then counts what is queued, once.
        self.shared.waker.clear();
        self.shared.close();
        self.discard_closed();
    }
}

impl fmt::Debug for FrameConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameConsumer")
            .field("closed", &self.is_closed())
            .field("queued_bytes", &self.reader.queued())
            .finish()
    }
}

/// Closes a ring from anywhere and reads its counters.
#[derive(Clone)]
pub struct RingCloser {
    shared: Arc<Shared>,
}

impl RingCloser {
    /// Closes the ring (step 2 of the close protocol) without waiting for anything. Returns true
    /// for the call that closed it. Once it has returned, no frame is delivered any more.
    pub fn close(&self) -> bool {
        self.shared.close()
    }

    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    pub fn stats(&self) -> RingStats {
        self.shared.stats()
    }
}

impl fmt::Debug for RingCloser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingCloser")
            .field("closed", &self.is_closed())
            .finish()
    }
}

fn parse_header(&[l0, l1, l2, l3, ts @ ..]: &[u8; FRAME_HEADER]) -> (usize, i64) {
    (
        u32::from_le_bytes([l0, l1, l2, l3]) as usize,
        i64::from_le_bytes(ts),
    )
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::audio::WakeCounter;

    fn small(overflow: Overflow) -> RingConfig {
        RingConfig {
            capacity_bytes: 4 * (FRAME_HEADER + 4),
            overflow,
        }
    }

    #[test]
    fn frames_come_out_whole_in_order_with_their_arrival_time() {
        let (p, mut c, _) = audio_ring(RingConfig::default());
        assert_eq!(p.push(1, &[9, 1, 2, 3, 4]), PushOutcome::Queued);
        assert_eq!(p.push(2, &[5, 6]), PushOutcome::Queued);
        assert_eq!(p.push(3, &[7]), PushOutcome::Skipped);
        let mut out = Vec::new();
        assert_eq!(c.try_pop(&mut out), Pop::Frame { arrived_ms: 1 });
        assert_eq!(out, [1, 2, 3, 4]);
        out.clear();
        assert_eq!(c.try_pop(&mut out), Pop::Frame { arrived_ms: 2 });
        assert_eq!(out, [5, 6]);
        assert_eq!(c.try_pop(&mut out), Pop::Empty);
        let s = c.stats();
        assert_eq!(
            (s.received, s.skipped, s.delivered, s.queued()),
            (3, 1, 2, 0)
        );
    }

    #[test]
    fn drop_newest_keeps_the_queue_and_counts_the_rest() {
        let (p, mut c, _) = audio_ring(small(Overflow::DropNewest));
        for i in 0..6 {
            p.push(i, &[1, 2, 3, 4]);
        }
        let mut out = Vec::new();
        let mut got = Vec::new();
        while let Pop::Frame { arrived_ms } = c.try_pop(&mut out) {
            got.push(arrived_ms);
        }
        assert_eq!(got, [0, 1, 2, 3]);
        assert_eq!(c.stats().dropped_full, 2);
    }

    #[test]
    fn drop_oldest_skips_the_stale_backlog() {
        let (p, mut c, _) = audio_ring(small(Overflow::DropOldest));
        for i in 0..5 {
            p.push(i, &[1, 2, 3, 4]);
        }
        let mut out = Vec::new();
        let mut got = Vec::new();
        while let Pop::Frame { arrived_ms } = c.try_pop(&mut out) {
            got.push(arrived_ms);
        }
        assert_eq!(
            got,
            [2, 3],
            "the two oldest frames were skipped to free half the ring"
        );
        let s = c.stats();
        assert_eq!(s.dropped_full, 3);
        assert_eq!(s.queued(), 0);
    }

    #[test]
    fn nothing_is_delivered_after_close_and_everything_is_counted() {
        let (p, mut c, closer) = audio_ring(RingConfig::default());
        p.push(0, &[1, 2]);
        p.push(0, &[1, 2]);
        assert!(closer.close());
        assert!(!closer.close(), "only the first close reports closing");
        assert_eq!(p.push(0, &[1, 2]), PushOutcome::Closed);
        let mut out = Vec::new();
        assert_eq!(c.try_pop(&mut out), Pop::Closed);
        assert!(out.is_empty());
        let s = c.stats();
        assert_eq!((s.received, s.dropped_closed, s.queued()), (3, 3, 0));
    }

    #[test]
    fn dropping_the_consumer_closes_and_counts_the_backlog() {
        let (p, c, _) = audio_ring(RingConfig::default());
        p.push(0, &[1, 2]);
        drop(c);
        assert_eq!(p.push(0, &[1, 2]), PushOutcome::Closed);
        assert_eq!(p.stats().dropped_closed, 2);
    }

    #[test]
    fn a_frame_larger_than_the_ring_is_dropped_not_split() {
        let (p, mut c, _) = audio_ring(small(Overflow::DropNewest));
        assert_eq!(p.push(0, &[0u8; 200]), PushOutcome::Full);
        assert_eq!(c.try_pop(&mut Vec::new()), Pop::Empty);
    }

    #[test]
    fn a_waiting_consumer_is_woken_by_push_and_by_close() {
        let (p, mut c, closer) = audio_ring(RingConfig::default());
        let (count, waker) = WakeCounter::waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        assert!(c.poll_pop(&mut cx, &mut out).is_pending());
        p.push(7, &[1, 2]);
        assert_eq!(count.wakes(), 1);
        assert_eq!(c.poll_pop(&mut cx, &mut out), Poll::Ready(Some(7)));
        assert!(c.poll_pop(&mut cx, &mut out).is_pending());
        closer.close();
        assert_eq!(count.wakes(), 2);
        assert_eq!(c.poll_pop(&mut cx, &mut out), Poll::Ready(None));
    }

    #[test]
    fn two_threads_at_full_speed_lose_nothing_but_what_is_counted() {
        let (p, mut c, closer) = audio_ring(RingConfig::default());
        let producer = std::thread::spawn(move || {
            let mut payload = [0u8; 321];
            for i in 0..200_000u32 {
                payload[1..5].copy_from_slice(&i.to_le_bytes());
                p.push(i64::from(i), &payload);
            }
            p
        });
        let mut out = Vec::new();
        let mut last = -1i64;
        loop {
            out.clear();
            // Read before the pop: empty after the producer finished means nothing is left
            // (read after it, the producer could push between the pop and the check).
            let finished = producer.is_finished();
            match c.try_pop(&mut out) {
                Pop::Frame { arrived_ms } => {
                    assert!(arrived_ms > last, "frames stay in order");
                    assert_eq!(out.len(), 320);
                    last = arrived_ms;
                }
                Pop::Empty if finished => break,
                Pop::Empty => std::hint::spin_loop(),
                Pop::Closed => panic!("nobody closed the ring"),
            }
        }
        let p = producer.join().expect("producer thread");
        closer.close();
        assert_eq!(c.try_pop(&mut out), Pop::Closed);
        let s = p.stats();
        assert_eq!(s.received, 200_000);
        assert_eq!(s.queued(), 0);
        assert_eq!(s.delivered + s.dropped_full, 200_000);
    }
}

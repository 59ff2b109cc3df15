//! `MappedRing`: a session's ring in memory that two processes map, for rooms whose LiveKit
//! library runs in a worker process (the producer there, the gRPC writer here).
//!
//! It keeps [`ring`](super::ring)'s close protocol, steps 1 to 4 as written there, word for
//! word: the producer's `state` word (`CLOSED | CLAIMED | PARKED`), the consumer's `flags` word
//! (`CLOSED | LAGGED`), a push that claims, writes one frame in one commit and releases, a close
//! that never waits, a pop that checks `flags` first and waits out an in-flight push. What
//! differs is what cannot cross a process boundary, and what a second process adds:
//!
//! - **Storage.** rtrb's ring lives on the heap of the process that made it, so the bytes here
//!   are a plain SPSC byte ring in the mapping: `tail` (bytes committed, written by the claim
//!   holder with a Release store after the frame's bytes) and `head` (bytes consumed, written by
//!   the consumer with a Release store after it has read them). Each side reads the other's
//!   index with Acquire. Indices grow without bound and wrap modulo the capacity.
//! - **Wakeup.** A `Waker` is an address in the consumer's process. The consumer's
//!   [`SlotWaker`] stays in its process; a producer that finds `PARKED` rings the [`Bell`]
//!   instead, which marks the slot in the region's [`Doorbell`] and, for the first mark since
//!   the consumer's process last looked, kicks it (an `eventfd` write). The consumer's process
//!   takes the marks and wakes each slot's `SlotWaker`. A close from the consumer's side wakes
//!   its `SlotWaker` directly.
//! - **A producer that dies mid-push** (step 5, new). A push that claims and is then killed
//!   holds `CLAIMED` forever, and step 3's wait would never end. Only the consumer's process can
//!   know that the producer's process is dying, so only it calls [`MappedCloser::abandon`]:
//!   `ABANDONED` in `flags` (Release), and then closes the ring as any close does (the session's
//!   close). The claim wait re-reads `flags` on every turn and stops at `ABANDONED`; the discard
//!   then counts the committed frames (the dead push's frame, never committed, is invisible: its
//!   `tail` store never happened). **The consumer never waits on a dead producer.** Abandon
//!   comes once every thread of the producer's process has been told to exit, so no push starts
//!   after it; one already running on another core may still finish, writing only the free
//!   space the consumer never reads, and committing a frame nobody delivers (a later discard
//!   counts it; a slot of a dying process is never reused, so no later session can see it).
//! - **A producer that writes nonsense.** The consumer trusts no byte the other process wrote:
//!   a frame header whose length does not fit what is committed, or an index past the
//!   capacity, closes the ring (`Pop::Closed`) and is counted as `corrupt`; nothing is read out
//!   of bounds.
//!
//! The memory is zeroed when a slot is first used and [`SlotHeader::reset`] before each reuse,
//! which its owner does only when neither side holds the slot any more (the producer's process
//! said so, or is dead, and the consumer is dropped), so a late push from an earlier session can
//! never land in a later one.

// Unsafe code here: the slot memory's raw parts (`Send`/`Sync`, construction, the byte copies),
// each block with its SAFETY reason.
#![allow(unsafe_code)]

use std::fmt;
use std::ptr::NonNull;
use std::task::{Context, Poll};

use crossbeam_utils::CachePadded;

use super::payload::sample_aligned;
use super::ring::{FRAME_HEADER, Overflow, Pop, PushOutcome, RingStats};
use super::waker::AtomicWaker;
use super::weaken;
use crate::sync::{AtomicU64, AtomicUsize, Ordering, SpinWait};

const CLOSED: usize = 0b0001;
const CLAIMED: usize = 0b0010;
const PARKED: usize = 0b0100;
const LAGGED: usize = 0b1000;
/// In `flags`: the producer's process is gone; nothing waits for its claim.
const ABANDONED: usize = 0b1_0000;
/// In `flags`: the producer wrote a frame the consumer could not read.
const CORRUPT: usize = 0b10_0000;

/// The control words of one slot, at the start of its memory. All-zero is a fresh slot.
#[derive(Default)]
#[repr(C)]
pub struct SlotHeader {
    /// Also a track ring's (`super::track_ring`), with its own bits.
    pub(super) state: CachePadded<AtomicUsize>,
    flags: CachePadded<AtomicUsize>,
    pub(super) tail: CachePadded<AtomicUsize>,
    pub(super) head: CachePadded<AtomicUsize>,
    produced: CachePadded<ProducerCounters>,
    consumed: CachePadded<ConsumerCounters>,
}

/// Written by the claim holder, except `skipped` and `contended` (any pushing thread, RMW).
#[derive(Default)]
#[repr(C)]
struct ProducerCounters {
    claimed: AtomicU64,
    full: AtomicU64,
    closed_on_push: AtomicU64,
    skipped: AtomicU64,
    contended: AtomicU64,
    /// Arrival time (unix ms) of the last frame claimed; 0: none.
    last_ms: AtomicU64,
}

/// Written by the consumer only.
#[derive(Default)]
#[repr(C)]
struct ConsumerCounters {
    delivered: AtomicU64,
    discarded_closed: AtomicU64,
    skipped_backlog: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

impl SlotHeader {
    /// Makes the slot fresh again. Only its owner calls it, when neither a producer nor a
    /// consumer of the slot exists (see the module documentation).
    pub fn reset(&self) {
        for word in [&*self.state, &*self.flags, &*self.tail, &*self.head] {
            word.store(0, Ordering::Relaxed);
        }
        let p = &self.produced;
        let c = &self.consumed;
        for n in [
            &p.claimed,
            &p.full,
            &p.closed_on_push,
            &p.skipped,
            &p.contended,
            &p.last_ms,
            &c.delivered,
            &c.discarded_closed,
            &c.skipped_backlog,
        ] {
            n.store(0, Ordering::Relaxed);
        }
    }

    fn stats(&self) -> RingStats {
        let (p, c) = (&self.produced, &self.consumed);
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

    /// Step 2 of the close protocol; `extra` joins `CLOSED` in `flags`.
    fn close(&self, extra: usize) -> bool {
        let first = self.state.fetch_or(CLOSED, Ordering::AcqRel) & CLOSED == 0;
        self.flags.fetch_or(CLOSED | extra, Ordering::Release);
        first
    }
}

/// One slot's memory: its header and `capacity` bytes of frames, kept alive by `owner`.
#[derive(Clone)]
pub struct SlotMemory {
    header: NonNull<SlotHeader>,
    data: NonNull<u8>,
    capacity: usize,
    _owner: std::sync::Arc<dyn Send + Sync>,
}

// SAFETY: the header is atomics only; the data bytes are written only by the holder of the
// claim, below `tail`'s next value, and read only by the consumer, below the `tail` it has
// loaded with Acquire: the protocol, not the type, keeps the two apart, as in any SPSC ring.
unsafe impl Send for SlotMemory {}
// SAFETY: as for `Send`: every shared access goes through the header's atomics.
unsafe impl Sync for SlotMemory {}

impl SlotMemory {
    /// A slot in memory someone else owns (a shared mapping).
    ///
    /// # Safety
    /// `header` is aligned for and points at a [`SlotHeader`] that is all-zero or was
    /// [`reset`](SlotHeader::reset); `data` points at `capacity` bytes; both stay mapped while
    /// `owner` lives, and nothing but this slot's producer and consumer touches them.
    pub unsafe fn new(
        header: NonNull<SlotHeader>,
        data: NonNull<u8>,
        capacity: usize,
        owner: std::sync::Arc<dyn Send + Sync>,
    ) -> Self {
        Self {
            header,
            data,
            capacity,
            _owner: owner,
        }
    }

    /// A slot on this process's heap (tests and the loom models).
    pub fn heap(capacity: usize) -> Self {
        struct Heap {
            header: NonNull<SlotHeader>,
            data: NonNull<[u8]>,
        }
        // SAFETY: owned memory, freed once in `drop`; shared only through `SlotMemory`.
        unsafe impl Send for Heap {}
        // SAFETY: as for `Send`.
        unsafe impl Sync for Heap {}
        impl Drop for Heap {
            fn drop(&mut self) {
                // SAFETY: both came from `Box::into_raw` below and are freed only here.
                unsafe {
                    drop(Box::from_raw(self.header.as_ptr()));
                    drop(Box::from_raw(self.data.as_ptr()));
                }
            }
        }
        let capacity = capacity.max(2);
        let header = NonNull::from(Box::leak(Box::new(SlotHeader::default())));
        let data = NonNull::from(Box::leak(vec![0u8; capacity].into_boxed_slice()));
        let owner = std::sync::Arc::new(Heap { header, data });
        // SAFETY: a fresh, default header and `capacity` zeroed bytes, owned by `owner`.
        unsafe { Self::new(header, data.cast(), capacity, owner) }
    }

    pub fn header(&self) -> &SlotHeader {
        // SAFETY: valid for as long as `self` (see `new`).
        unsafe { self.header.as_ref() }
    }

    /// Bytes of the ring.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Copies `src` into the ring at index `at`, wrapping. `src` is at most the capacity.
    pub(super) fn put(&self, at: usize, src: &[u8]) {
        let start = at % self.capacity;
        let first = src.len().min(self.capacity - start);
        // SAFETY: `start + first <= capacity` and `src.len() - first <= capacity - first`
        // (a frame never exceeds the capacity: `write` checked), so both copies stay inside
        // the data; only the claim holder writes, and only bytes the consumer has released.
        unsafe {
            let base = self.data.as_ptr();
            std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(start), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), base, src.len() - first);
        }
    }

    /// Copies `dst.len()` bytes from the ring at index `at`, wrapping. At most the capacity.
    pub(super) fn get(&self, at: usize, dst: &mut [u8]) {
        let start = at % self.capacity;
        let first = dst.len().min(self.capacity - start);
        // SAFETY: as in `put`, with `dst.len() <= capacity` checked by the callers; the bytes
        // are below the `tail` the consumer loaded with Acquire, so the producer has finished
        // with them.
        unsafe {
            let base = self.data.as_ptr();
            std::ptr::copy_nonoverlapping(base.add(start), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(base, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }
}

/// How a producer reaches the consumer's process: marks its slot and kicks once.
pub trait Bell: Send + Sync {
    fn ring(&self, slot: u32);
}

/// The region's doorbell: one bit per slot and a `pending` word, in the shared memory.
///
/// - Producer ([`mark`](Self::mark)): `fetch_or` the slot's bit (AcqRel), then swap `pending`
///   to 1 (AcqRel); only the swap that found 0 kicks the consumer's process.
/// - Consumer ([`take`](Self::take)), after each kick: swap `pending` to 0 (AcqRel), then swap
///   each word of bits to 0 (AcqRel) and wake the slots found. A mark whose bit-RMW comes after
///   the take's swap of its word reads from that swap, so the take's clear of `pending`
///   happens before the mark's swap of `pending`, which therefore finds 0 (or the 1 of a mark
///   that kicks after that clear): **no mark is left without a kick that finds it**.
/// - Consumer, while marks keep coming ([`take_coalescing`](Self::take_coalescing)): swaps the
///   words of bits without clearing `pending`, so the producers that mark meanwhile find 1 and do not
///   kick; it looks again soon, and before it waits for a kick again it ends with a `take`,
///   which the argument above covers. A kick costs the producer a system call and the consumer
///   a wakeup: one per frame across many sessions without this, a few per millisecond with it.
pub struct Doorbell {
    pending: NonNull<AtomicUsize>,
    bits: NonNull<AtomicU64>,
    words: usize,
    _owner: std::sync::Arc<dyn Send + Sync>,
}

// SAFETY: atomics only, kept alive by `_owner`.
unsafe impl Send for Doorbell {}
// SAFETY: as for `Send`.
unsafe impl Sync for Doorbell {}

impl Doorbell {
    /// The words needed for `slots` slots.
    pub fn words_for(slots: usize) -> usize {
        slots.div_ceil(64)
    }

    /// A doorbell in memory someone else owns.
    ///
    /// # Safety
    /// `pending` and the `words` words at `bits` are aligned atomics, zero at first, that stay
    /// mapped while `owner` lives.
    pub unsafe fn new(
        pending: NonNull<AtomicUsize>,
        bits: NonNull<AtomicU64>,
        words: usize,
        owner: std::sync::Arc<dyn Send + Sync>,
    ) -> Self {
        Self {
            pending,
            bits,
            words,
            _owner: owner,
        }
    }

    /// A doorbell on this process's heap (tests and the loom models).
    pub fn heap(slots: usize) -> Self {
        struct Words(Box<AtomicUsize>, Box<[AtomicU64]>);
        let words = Self::words_for(slots).max(1);
        let owned = std::sync::Arc::new(Words(
            Box::new(AtomicUsize::new(0)),
            (0..words).map(|_| AtomicU64::new(0)).collect(),
        ));
        let pending = NonNull::from(&*owned.0);
        let bits = NonNull::from(&owned.1[0]);
        // SAFETY: fresh atomics owned by `owned`, which the doorbell keeps.
        unsafe { Self::new(pending, bits, words, owned) }
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        // SAFETY: `i < words` (callers check), inside the memory `new` was given.
        unsafe { &*self.bits.as_ptr().add(i) }
    }

    fn pending(&self) -> &AtomicUsize {
        // SAFETY: valid while `_owner` lives (see `new`).
        unsafe { self.pending.as_ref() }
    }

    /// Marks `slot`; true when the caller must kick the consumer's process.
    pub fn mark(&self, slot: u32) -> bool {
        let slot = slot as usize;
        if slot / 64 >= self.words {
            return false;
        }
        self.word(slot / 64)
            .fetch_or(1 << (slot % 64), Ordering::AcqRel);
        self.pending().swap(1, Ordering::AcqRel) == 0
    }

    /// Takes every mark, calling `wake` for each marked slot. The consumer's process calls it
    /// after each kick.
    pub fn take(&self, wake: impl FnMut(u32)) {
        if !weaken::DOORBELL_CLEARS_PENDING_LAST {
            self.pending().swap(0, Ordering::AcqRel);
        }
        self.take_marks(wake);
        if weaken::DOORBELL_CLEARS_PENDING_LAST {
            self.pending().swap(0, Ordering::AcqRel);
        }
    }

    /// After a kick, for a consumer whose process coalesces kicks: takes the marks, calls
    /// `pause` (which waits a little, and returns false to stop early), and looks again, for as
    /// long as it finds marks; then [`take`](Self::take)s, so the next mark kicks.
    pub fn take_coalescing(&self, mut wake: impl FnMut(u32), mut pause: impl FnMut() -> bool) {
        while self.take_marks(&mut wake) && pause() {}
        if !weaken::COALESCING_SKIPS_FINAL_TAKE {
            self.take(wake);
        }
    }

    /// Takes every mark, calling `wake` for each marked slot, and leaves `pending` as it is, so
    /// producers do not kick meanwhile; true if it found any.
    fn take_marks(&self, mut wake: impl FnMut(u32)) -> bool {
        let mut found = false;
        for i in 0..self.words {
            let mut bits = self.word(i).swap(0, Ordering::AcqRel);
            found |= bits != 0;
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                wake((i * 64) as u32 + b);
            }
        }
        found
    }
}

/// A slot's waker, in the consumer's process.
pub struct SlotWaker(AtomicWaker);

impl SlotWaker {
    pub fn new() -> Self {
        Self(AtomicWaker::new())
    }

    pub fn wake(&self) {
        self.0.wake();
    }

    pub(super) fn register(&self, waker: &std::task::Waker) {
        self.0.register(waker);
    }

    pub(super) fn clear(&self) {
        self.0.clear();
    }
}

impl Default for SlotWaker {
    fn default() -> Self {
        Self::new()
    }
}

/// The producer of a mapped ring, in the room's process. `push` as [`super::FrameProducer`].
pub struct MappedProducer {
    mem: SlotMemory,
    slot: u32,
    overflow: Overflow,
    bell: std::sync::Arc<dyn Bell>,
    /// Whether dropping the producer closes the ring (step 4's "the room's last reference going
    /// away ends the stream"), or leaves that to the consumer's process.
    closes_on_drop: bool,
}

impl MappedProducer {
    pub fn new(
        mem: SlotMemory,
        slot: u32,
        overflow: Overflow,
        bell: std::sync::Arc<dyn Bell>,
    ) -> Self {
        Self {
            mem,
            slot,
            overflow,
            bell,
            closes_on_drop: true,
        }
    }

    /// Leaves closing the ring, once this producer is gone, to the consumer's process, which
    /// must then learn of its going by another way, in order with what else the producer's
    /// process tells it. A room worker does: the room's last event (why it ended) and then
    /// `Released` cross the control socket in that order, and a close through the memory
    /// would overtake them, ending the stream before its session knew why.
    pub fn closed_by_the_consumer(mut self) -> Self {
        self.closes_on_drop = false;
        self
    }

    /// Applies the payload rule and queues the samples with their arrival time. Never allocates,
    /// locks, blocks or panics; the only call out is the bell, when the consumer is parked.
    pub fn push(&self, arrived_ms: i64, payload: &[u8]) -> PushOutcome {
        let h = self.mem.header();
        let Some(pcm) = sample_aligned(payload) else {
            h.produced.skipped.fetch_add(1, Ordering::Relaxed);
            return PushOutcome::Skipped;
        };
        let prev = h.state.fetch_or(CLAIMED, Ordering::Acquire);
        if prev & CLAIMED != 0 {
            h.produced.contended.fetch_add(1, Ordering::Relaxed);
            return PushOutcome::Contended;
        }
        add(&h.produced.claimed, 1);
        h.produced
            .last_ms
            .store(arrived_ms.max(0) as u64, Ordering::Relaxed);
        let outcome = if prev & CLOSED != 0 {
            add(&h.produced.closed_on_push, 1);
            PushOutcome::Closed
        } else if self.write(arrived_ms, pcm) {
            PushOutcome::Queued
        } else {
            add(&h.produced.full, 1);
            if self.overflow == Overflow::DropOldest
                && h.flags.load(Ordering::Relaxed) & LAGGED == 0
            {
                h.flags.fetch_or(LAGGED, Ordering::Relaxed);
            }
            PushOutcome::Full
        };
        if h.state.fetch_and(!(CLAIMED | PARKED), Ordering::Release) & PARKED != 0 {
            self.bell.ring(self.slot);
        }
        outcome
    }

    /// Writes one frame in one commit (`tail`'s Release store). Called by the claim holder.
    fn write(&self, arrived_ms: i64, pcm: &[u8]) -> bool {
        let h = self.mem.header();
        let total = FRAME_HEADER + pcm.len();
        let Ok(len) = u32::try_from(pcm.len()) else {
            return false;
        };
        let head = h.head.load(Ordering::Acquire);
        let tail = h.tail.load(Ordering::Relaxed);
        if total > self.mem.capacity - tail.wrapping_sub(head).min(self.mem.capacity) {
            return false;
        }
        let mut header = [0u8; FRAME_HEADER];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&arrived_ms.to_le_bytes());
        self.mem.put(tail, &header);
        self.mem.put(tail.wrapping_add(FRAME_HEADER), pcm);
        h.tail.store(tail.wrapping_add(total), Ordering::Release);
        true
    }

    pub fn is_closed(&self) -> bool {
        self.mem.header().flags.load(Ordering::Acquire) & CLOSED != 0
    }

    /// What a producer killed inside a push leaves: the claim taken and never released, no
    /// drop. For the tests and models of step 5; a live producer never calls it.
    pub fn vanish_mid_push(self) {
        self.mem.header().state.fetch_or(CLAIMED, Ordering::Acquire);
        std::mem::forget(self);
    }
}

impl Drop for MappedProducer {
    fn drop(&mut self) {
        if self.closes_on_drop {
            self.mem.header().close(0);
            self.bell.ring(self.slot);
        }
    }
}

impl fmt::Debug for MappedProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedProducer")
            .field("slot", &self.slot)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The consumer of a mapped ring, in the gRPC writer's process: `try_pop` and `poll_pop` as
/// [`super::FrameConsumer`].
pub struct MappedConsumer {
    mem: SlotMemory,
    waker: std::sync::Arc<SlotWaker>,
    capacity_target: usize,
}

impl MappedConsumer {
    pub fn new(mem: SlotMemory, waker: std::sync::Arc<SlotWaker>) -> Self {
        let capacity_target = mem.capacity / 2;
        Self {
            mem,
            waker,
            capacity_target,
        }
    }

    /// Pops at most one frame, appending its PCM to `out`. Never blocks.
    pub fn try_pop(&mut self, out: &mut Vec<u8>) -> Pop {
        let h = self.mem.header();
        let flags = h.flags.load(Ordering::Acquire);
        if flags & CLOSED != 0 {
            self.discard_closed();
            return Pop::Closed;
        }
        if flags & LAGGED != 0 {
            h.flags.fetch_and(!LAGGED, Ordering::Relaxed);
            let target = self.capacity_target;
            let n = self.drop_frames_while(|queued| queued > target);
            add(&h.consumed.skipped_backlog, n);
        }
        match self.peek() {
            Peek::Frame(len, arrived_ms) => {
                let start = out.len();
                out.resize(start + len, 0);
                let head = h.head.load(Ordering::Relaxed);
                self.mem
                    .get(head.wrapping_add(FRAME_HEADER), &mut out[start..]);
                h.head
                    .store(head.wrapping_add(FRAME_HEADER + len), Ordering::Release);
                add(&h.consumed.delivered, 1);
                Pop::Frame { arrived_ms }
            }
            Peek::Empty => Pop::Empty,
            Peek::Corrupt => {
                self.corrupt();
                Pop::Closed
            }
        }
    }

    /// Step 4, with the slot's waker in this process and the producer's wake by the bell.
    pub fn poll_pop(&mut self, cx: &mut Context<'_>, out: &mut Vec<u8>) -> Poll<Option<i64>> {
        loop {
            match self.try_pop(out) {
                Pop::Frame { arrived_ms } => return Poll::Ready(Some(arrived_ms)),
                Pop::Closed => return Poll::Ready(None),
                Pop::Empty => {}
            }
            self.waker.0.register(cx.waker());
            let state = self.mem.header().state.fetch_or(PARKED, Ordering::AcqRel);
            if state & CLOSED != 0 {
                self.discard_closed();
                return Poll::Ready(None);
            }
            if !matches!(self.peek(), Peek::Empty) {
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
        self.mem.header().flags.load(Ordering::Acquire) & CLOSED != 0
    }

    pub fn stats(&self) -> RingStats {
        self.mem.header().stats()
    }

    /// The next frame's length and arrival time, if one is committed; whether the bytes make
    /// sense is checked here, since another process wrote them.
    fn peek(&self) -> Peek {
        let h = self.mem.header();
        let head = h.head.load(Ordering::Relaxed);
        let queued = h.tail.load(Ordering::Acquire).wrapping_sub(head);
        if queued > self.mem.capacity {
            return Peek::Corrupt;
        }
        if queued < FRAME_HEADER {
            return if queued == 0 {
                Peek::Empty
            } else {
                Peek::Corrupt
            };
        }
        let mut header = [0u8; FRAME_HEADER];
        self.mem.get(head, &mut header);
        let [l0, l1, l2, l3, ts @ ..] = header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        if len > queued - FRAME_HEADER {
            return Peek::Corrupt;
        }
        Peek::Frame(len, i64::from_le_bytes(ts))
    }

    fn corrupt(&self) {
        let h = self.mem.header();
        h.close(CORRUPT);
        // What is left cannot be walked frame by frame; it is dropped as one.
        let head = h.head.load(Ordering::Relaxed);
        let tail = h.tail.load(Ordering::Acquire);
        if tail != head {
            add(&h.consumed.discarded_closed, 1);
        }
        h.head.store(tail, Ordering::Release);
    }

    /// Step 3's end: wait out an in-flight push unless its process is gone, then count what is
    /// left as dropped.
    fn discard_closed(&self) {
        let h = self.mem.header();
        let spin = SpinWait::new();
        while h.state.load(Ordering::Acquire) & CLAIMED != 0
            && h.flags.load(Ordering::Acquire) & ABANDONED == 0
        {
            spin.snooze();
        }
        let n = self.drop_frames_while(|_| true);
        add(&h.consumed.discarded_closed, n);
    }

    fn drop_frames_while(&self, keep_going: impl Fn(usize) -> bool) -> u64 {
        let h = self.mem.header();
        let mut n = 0;
        loop {
            let head = h.head.load(Ordering::Relaxed);
            let queued = h.tail.load(Ordering::Acquire).wrapping_sub(head);
            if !keep_going(queued) {
                return n;
            }
            match self.peek() {
                Peek::Frame(len, _) => {
                    h.head
                        .store(head.wrapping_add(FRAME_HEADER + len), Ordering::Release);
                    n += 1;
                }
                Peek::Empty => return n,
                Peek::Corrupt => {
                    self.corrupt();
                    return n;
                }
            }
        }
    }
}

enum Peek {
    Frame(usize, i64),
    Empty,
    Corrupt,
}

impl Drop for MappedConsumer {
    fn drop(&mut self) {
        self.waker.0.clear();
        self.mem.header().close(0);
        self.discard_closed();
    }
}

impl fmt::Debug for MappedConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedConsumer")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Closes a mapped ring from the consumer's process and reads its counters.
#[derive(Clone)]
pub struct MappedCloser {
    mem: SlotMemory,
    waker: std::sync::Arc<SlotWaker>,
}

impl MappedCloser {
    pub fn new(mem: SlotMemory, waker: std::sync::Arc<SlotWaker>) -> Self {
        Self { mem, waker }
    }

    /// Step 2: closes without waiting; true for the call that closed it.
    pub fn close(&self) -> bool {
        let first = self.mem.header().close(0);
        self.waker.wake();
        first
    }

    /// Step 5: the producer's process is dying (every thread of it told to exit): from now on
    /// nothing waits for its claim. It does not close the ring; the session's close does, after it, or did before
    /// (a consumer already waiting for the claim stops waiting). Returns whether a push was in
    /// flight when the producer died.
    pub fn abandon(&self) -> bool {
        let h = self.mem.header();
        if !weaken::ABANDON_SKIPS_FLAG {
            // Release, and before the close's RMW of the same word: a consumer that reads
            // `CLOSED` from that RMW or later reads `ABANDONED` too.
            h.flags.fetch_or(ABANDONED, Ordering::Release);
        }
        h.state.load(Ordering::Acquire) & CLAIMED != 0
    }

    pub fn is_closed(&self) -> bool {
        self.mem.header().flags.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Whether the producer wrote a frame that could not be read.
    pub fn is_corrupt(&self) -> bool {
        self.mem.header().flags.load(Ordering::Acquire) & CORRUPT != 0
    }

    pub fn stats(&self) -> RingStats {
        self.mem.header().stats()
    }

    /// Arrival time (unix ms) of the last frame the producer claimed; 0 if none.
    pub fn last_arrival_ms(&self) -> i64 {
        self.mem.header().produced.last_ms.load(Ordering::Relaxed) as i64
    }
}

impl fmt::Debug for MappedCloser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedCloser")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A heap-backed mapped ring and doorbell, as both processes would see them: for tests, the
/// loom models and benchmarks.
pub fn heap_ring(
    capacity: usize,
    overflow: Overflow,
) -> (
    MappedProducer,
    MappedConsumer,
    MappedCloser,
    std::sync::Arc<HeapBell>,
) {
    let mem = SlotMemory::heap(capacity.max(FRAME_HEADER + 2));
    let waker = std::sync::Arc::new(SlotWaker::new());
    let bell = std::sync::Arc::new(HeapBell {
        doorbell: Doorbell::heap(1),
        waker: waker.clone(),
    });
    (
        MappedProducer::new(mem.clone(), 0, overflow, bell.clone()),
        MappedConsumer::new(mem.clone(), waker.clone()),
        MappedCloser::new(mem, waker),
        bell,
    )
}

/// A bell whose kick is delivered at once, in the same process (see [`heap_ring`]).
pub struct HeapBell {
    pub doorbell: Doorbell,
    waker: std::sync::Arc<SlotWaker>,
}

impl Bell for HeapBell {
    fn ring(&self, slot: u32) {
        if self.doorbell.mark(slot) {
            self.doorbell.take(|_| self.waker.wake());
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::audio::WakeCounter;

    #[test]
    fn frames_come_out_whole_in_order_across_the_wrap() {
        let (p, mut c, _, _) = heap_ring(3 * (FRAME_HEADER + 6) + 5, Overflow::DropNewest);
        let mut out = Vec::new();
        for round in 0..50i64 {
            let b = round as u8;
            assert_eq!(p.push(round, &[b, b, b, b, b, b]), PushOutcome::Queued);
            assert_eq!(p.push(round, &[b; 4]), PushOutcome::Queued);
            out.clear();
            assert_eq!(c.try_pop(&mut out), Pop::Frame { arrived_ms: round });
            assert_eq!(c.try_pop(&mut out), Pop::Frame { arrived_ms: round });
            assert_eq!(out, [b; 10]);
            assert_eq!(c.try_pop(&mut out), Pop::Empty);
        }
        assert_eq!(c.stats().delivered, 100);
    }

    #[test]
    fn full_and_oldest_follow_the_policy() {
        let small = 4 * (FRAME_HEADER + 4);
        let (p, mut c, _, _) = heap_ring(small, Overflow::DropOldest);
        for i in 0..5 {
            p.push(i, &[1, 2, 3, 4]);
        }
        let mut out = Vec::new();
        let mut got = Vec::new();
        while let Pop::Frame { arrived_ms } = c.try_pop(&mut out) {
            got.push(arrived_ms);
        }
        assert_eq!(got, [2, 3]);
        let s = c.stats();
        assert_eq!((s.dropped_full, s.queued()), (3, 0));
    }

    #[test]
    fn close_delivers_nothing_more_and_counts_everything() {
        let (p, mut c, closer, _) = heap_ring(1024, Overflow::DropNewest);
        p.push(5, &[1, 2]);
        p.push(6, &[1, 2]);
        assert!(closer.close());
        assert_eq!(p.push(7, &[1, 2]), PushOutcome::Closed);
        assert_eq!(c.try_pop(&mut Vec::new()), Pop::Closed);
        let s = closer.stats();
        assert_eq!((s.received, s.dropped_closed, s.queued()), (3, 3, 0));
        assert_eq!(closer.last_arrival_ms(), 7);
    }

    #[test]
    fn a_parked_consumer_is_woken_through_the_bell_and_by_the_producer_going() {
        let (p, mut c, _, bell) = heap_ring(1024, Overflow::DropNewest);
        let (count, waker) = WakeCounter::waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        assert!(c.poll_pop(&mut cx, &mut out).is_pending());
        p.push(1, &[1, 2]);
        assert_eq!(count.wakes(), 1);
        assert_eq!(c.poll_pop(&mut cx, &mut out), Poll::Ready(Some(1)));
        assert!(c.poll_pop(&mut cx, &mut out).is_pending());
        p.push(2, &[1, 2]);
        assert_eq!(count.wakes(), 2);
        assert_eq!(c.poll_pop(&mut cx, &mut out), Poll::Ready(Some(2)));
        assert!(c.poll_pop(&mut cx, &mut out).is_pending());
        drop(p);
        assert_eq!(count.wakes(), 3);
        assert_eq!(c.poll_pop(&mut cx, &mut out), Poll::Ready(None));
        drop(bell);
    }

    #[test]
    fn a_producer_dead_mid_push_is_abandoned_not_waited_for() {
        let (p, mut c, closer, _) = heap_ring(1024, Overflow::DropNewest);
        p.push(1, &[1, 2]);
        p.vanish_mid_push();
        assert!(closer.abandon(), "the dead push's claim is reported");
        closer.close();
        assert_eq!(c.try_pop(&mut Vec::new()), Pop::Closed);
        assert_eq!(closer.stats().dropped_closed, 1);
    }

    #[test]
    fn nonsense_from_the_producer_closes_the_ring_without_reading_past_it() {
        let (p, mut c, closer, _) = heap_ring(256, Overflow::DropNewest);
        p.push(1, &[1, 2]);
        // A header whose length runs past what is committed.
        p.mem.put(0, &u32::MAX.to_le_bytes());
        assert_eq!(c.try_pop(&mut Vec::new()), Pop::Closed);
        assert!(closer.is_corrupt());
        let (p2, mut c2, closer2, _) = heap_ring(256, Overflow::DropNewest);
        p2.mem.header().tail.store(10_000, Ordering::Release);
        assert_eq!(c2.try_pop(&mut Vec::new()), Pop::Closed);
        assert!(closer2.is_corrupt());
    }

    #[test]
    fn a_reset_slot_is_fresh() {
        let (p, c, closer, _) = heap_ring(256, Overflow::DropNewest);
        p.push(1, &[1, 2]);
        let mem = p.mem.clone();
        drop((p, c, closer));
        mem.header().reset();
        assert_eq!(mem.header().stats(), RingStats::default());
        assert_eq!(mem.header().state.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_doorbell_finds_every_mark() {
        let bell = Doorbell::heap(130);
        assert!(bell.mark(3));
        assert!(!bell.mark(129), "one kick until the consumer looks");
        let mut seen = Vec::new();
        bell.take(|s| seen.push(s));
        assert_eq!(seen, [3, 129]);
        assert!(bell.mark(64));
        assert!(!bell.mark(999), "a slot past the region is ignored");
    }
}

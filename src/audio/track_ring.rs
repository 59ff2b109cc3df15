//! `TrackRing`: one published track's audio into the room, across the process boundary: the
//! backend's PCM (StreamAudio chunks, playback frames) written by the front and read by the
//! room worker whose LiveKit library publishes it, through memory both processes map.
//!
//! A session's ring ([`mapped`](super::mapped)) carries room audio the other way and never
//! makes its producer wait: a full ring drops, because the LiveKit callback must not block.
//! Here nothing is dropped: **a full ring makes the writer wait**, which is the backpressure
//! the track's clock applies in one process (a publisher that is ahead of real time waits, and
//! so does its StreamAudio in HTTP/2 flow control, or its playback in its decoder queue).
//!
//! ## Storage
//! The slot's bytes are a plain SPSC byte ring (the [`SlotMemory`] of a session's ring, with
//! its header's `state`, `tail` and `head` words): PCM with no framing, since the reader
//! reframes it into 10 ms for the track's clock anyway. `tail` (bytes written) is stored only
//! by the writer, with Release after the bytes; `head` (bytes read) only by the reader, with
//! Release after it has copied them out; each reads the other's with Acquire. The writer writes
//! whole samples only, so `tail` is always even; the reader trusts nothing the other process
//! wrote, and an odd or impossible count closes the ring.
//!
//! ## Waiting and waking
//! `state` holds `CLOSED` and one parked bit per side. Each side, finding nothing to do (the
//! reader no bytes, the writer no space), registers its waker in its own process, sets its
//! parked bit with an AcqRel RMW, and looks again (re-reading the other's index with Acquire)
//! before it sleeps. Each side, after storing its index, clears the other's parked bit with an
//! AcqRel RMW and, if it was set, rings the other's process ([`Bell`]: a doorbell mark and, for
//! the first mark since that process last looked, an `eventfd` kick), which wakes that side's
//! waker there. The RMWs on one word are totally ordered: if the clear comes first, the park's
//! RMW reads from it, so the index stored before the clear is visible to the look after the
//! park; if the park comes first, the clear sees the bit and rings. **No wait is left without a
//! wake.** (Loom: `a_track_ring_never_leaves_a_side_waiting`.) A side that is busy costs the
//! other nothing: no bit, no bell.
//!
//! ## Closing
//! Either side's drop, and [`TrackRingCloser::close`] (the front's when the worker reported the
//! track failed or died, the worker's when its session leaves the room), sets `CLOSED` and
//! wakes the other side.
//! After `CLOSED` the writer writes nothing more and the reader reads nothing more (what is
//! left is not published: the room is being left). Nobody waits on the other side for anything
//! but a wake, so a side whose process dies leaves nothing held: the front closes the worker's
//! rings when it learns of the death, and a dead worker's region is never reused.

use std::task::{Context, Poll};

use super::mapped::{Bell, SlotMemory, SlotWaker};
use super::weaken;
use std::sync::Arc;

use crate::sync::Ordering;

const CLOSED: usize = 0b0001;
/// The reader is waiting for bytes (its waker is registered in the worker).
const READER_PARKED: usize = 0b0100;
/// The writer is waiting for space (its waker is registered in the front).
const WRITER_PARKED: usize = 0b1000;

/// Why a write or read ended early: the ring is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed;

/// What each of the ring's handles holds: the memory, the ring's number (which the other
/// process's bell is rung with), this process's side's waker, and the bell to the other process.
struct End {
    mem: SlotMemory,
    index: u32,
    waker: Arc<SlotWaker>,
    bell: Arc<dyn Bell>,
}

impl End {
    fn is_closed(&self) -> bool {
        self.mem.header().state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Sets `CLOSED`; the first to set it rings the other process.
    fn close(&self) {
        if self.mem.header().state.fetch_or(CLOSED, Ordering::AcqRel) & CLOSED == 0 {
            self.bell.ring(self.index);
        }
    }

    /// A writer or reader going away: no wake reaches its waker any more, and the ring closes.
    fn go(&self) {
        self.waker.clear();
        self.close();
    }
}

/// The front's end: writes PCM, waiting for space. Its bell rings the reader's process.
pub struct TrackRingWriter(End);

impl TrackRingWriter {
    pub fn new(mem: SlotMemory, index: u32, waker: Arc<SlotWaker>, bell: Arc<dyn Bell>) -> Self {
        Self(End {
            mem,
            index,
            waker,
            bell,
        })
    }

    /// Writes as much of `pcm` as fits, advancing it; `Ready(Ok)` once all of it is written,
    /// `Pending` while the ring is full (woken when the reader makes room).
    pub fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        pcm: &mut &[u8],
    ) -> Poll<Result<(), Closed>> {
        let h = self.0.mem.header();
        loop {
            if h.state.load(Ordering::Acquire) & CLOSED != 0 {
                return Poll::Ready(Err(Closed));
            }
            let head = h.head.load(Ordering::Acquire);
            let tail = h.tail.load(Ordering::Relaxed);
            let free = self
                .0
                .mem
                .capacity()
                .saturating_sub(tail.wrapping_sub(head));
            // Whole samples only: the reader's count stays even.
            let n = free.min(pcm.len()) & !1;
            if n > 0 {
                self.0.mem.put(tail, &pcm[..n]);
                h.tail.store(tail.wrapping_add(n), Ordering::Release);
                *pcm = &pcm[n..];
                if h.state.fetch_and(!READER_PARKED, Ordering::AcqRel) & READER_PARKED != 0 {
                    self.0.bell.ring(self.0.index);
                }
            }
            if pcm.len() < 2 {
                return Poll::Ready(Ok(()));
            }
            self.0.waker.register(cx.waker());
            let state = h.state.fetch_or(WRITER_PARKED, Ordering::AcqRel);
            if state & CLOSED != 0 {
                return Poll::Ready(Err(Closed));
            }
            if weaken::TRACK_RING_NO_RECHECK || h.head.load(Ordering::Acquire) == head {
                return Poll::Pending;
            }
        }
    }

    /// Writes all of `pcm` (an odd last byte is not a sample and is left out).
    pub async fn write(&mut self, mut pcm: &[u8]) -> Result<(), Closed> {
        std::future::poll_fn(|cx| self.poll_write(cx, &mut pcm)).await
    }

    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

impl Drop for TrackRingWriter {
    fn drop(&mut self) {
        self.0.go();
    }
}

/// The worker's end: reads what the front wrote, waiting for it. Its bell rings the writer's
/// process.
pub struct TrackRingReader(End);

impl TrackRingReader {
    pub fn new(mem: SlotMemory, index: u32, waker: Arc<SlotWaker>, bell: Arc<dyn Bell>) -> Self {
        Self(End {
            mem,
            index,
            waker,
            bell,
        })
    }

    /// Appends to `out` what the ring holds, at most `max` bytes (rounded down to whole samples,
    /// at least one); `Ready(Some(n))` with the count, `Ready(None)` once closed, `Pending` while empty.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Poll<Option<usize>> {
        let h = self.0.mem.header();
        loop {
            if h.state.load(Ordering::Acquire) & CLOSED != 0 {
                return Poll::Ready(None);
            }
            let tail = h.tail.load(Ordering::Acquire);
            let head = h.head.load(Ordering::Relaxed);
            let queued = tail.wrapping_sub(head);
            if queued > self.0.mem.capacity() || !queued.is_multiple_of(2) {
                // Not what a writer following the protocol leaves: nothing more is read.
                self.0.close();
                return Poll::Ready(None);
            }
            let n = queued.min(max.max(2) & !1);
            if n > 0 {
                let start = out.len();
                out.resize(start + n, 0);
                self.0.mem.get(head, &mut out[start..]);
                h.head.store(head.wrapping_add(n), Ordering::Release);
                if h.state.fetch_and(!WRITER_PARKED, Ordering::AcqRel) & WRITER_PARKED != 0 {
                    self.0.bell.ring(self.0.index);
                }
                return Poll::Ready(Some(n));
            }
            self.0.waker.register(cx.waker());
            let state = h.state.fetch_or(READER_PARKED, Ordering::AcqRel);
            if state & CLOSED != 0 {
                return Poll::Ready(None);
            }
            if weaken::TRACK_RING_NO_RECHECK || h.tail.load(Ordering::Acquire) == tail {
                return Poll::Pending;
            }
        }
    }

    /// Waits for PCM and appends at most `max` bytes of it to `out`; `None` once closed.
    pub async fn read(&mut self, out: &mut Vec<u8>, max: usize) -> Option<usize> {
        std::future::poll_fn(|cx| self.poll_read(cx, out, max)).await
    }

    /// Resolves once the ring is closed, reading (and dropping) whatever comes meanwhile.
    pub async fn closed(&mut self) {
        let mut sink = Vec::new();
        while self.read(&mut sink, usize::MAX).await.is_some() {
            sink.clear();
        }
    }
}

impl Drop for TrackRingReader {
    fn drop(&mut self) {
        self.0.go();
    }
}

/// Closes a track ring from either process without its writer or reader: the front's when the
/// worker reported the track failed or died, the worker's when its session leaves the room. Its
/// waker is this process's side's.
pub struct TrackRingCloser(End);

impl TrackRingCloser {
    pub fn new(mem: SlotMemory, index: u32, waker: Arc<SlotWaker>, bell: Arc<dyn Bell>) -> Self {
        Self(End {
            mem,
            index,
            waker,
            bell,
        })
    }

    /// Sets `CLOSED` and wakes both sides: this process's at once, the other's by its bell.
    pub fn close(&self) {
        self.0.mem.header().state.fetch_or(CLOSED, Ordering::AcqRel);
        self.0.waker.wake();
        self.0.bell.ring(self.0.index);
    }
}

/// A heap-backed track ring whose bells wake the other side at once, as the two processes
/// would: for tests, the loom models and benchmarks.
pub fn heap_track_ring(capacity: usize) -> (TrackRingWriter, TrackRingReader) {
    struct Wake(Arc<SlotWaker>);
    impl Bell for Wake {
        fn ring(&self, _: u32) {
            self.0.wake();
        }
    }
    let mem = SlotMemory::heap(capacity);
    let (writer_waker, reader_waker) = (Arc::new(SlotWaker::new()), Arc::new(SlotWaker::new()));
    (
        TrackRingWriter::new(
            mem.clone(),
            0,
            writer_waker.clone(),
            Arc::new(Wake(reader_waker.clone())),
        ),
        TrackRingReader::new(mem, 0, reader_waker, Arc::new(Wake(writer_waker))),
    )
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::audio::WakeCounter;

    #[test]
    fn pcm_comes_out_in_order_across_the_wrap_and_a_full_ring_waits() {
        let (mut w, mut r) = heap_track_ring(14);
        let (counter, waker) = WakeCounter::waker();
        let mut cx = Context::from_waker(&waker);
        let pcm: Vec<u8> = (0..35).collect();
        let mut rest = &pcm[..];
        assert!(
            w.poll_write(&mut cx, &mut rest).is_pending(),
            "14 of 35 fit"
        );
        assert_eq!(rest.len(), 21);
        let mut out = Vec::new();
        assert_eq!(r.poll_read(&mut cx, &mut out, 4), Poll::Ready(Some(4)));
        assert_eq!(
            counter.wakes(),
            1,
            "the waiting writer is woken by the read"
        );
        assert!(w.poll_write(&mut cx, &mut rest).is_pending());
        assert_eq!(rest.len(), 17);
        while out.len() < 34 {
            match r.poll_read(&mut cx, &mut out, 100) {
                Poll::Ready(Some(_)) => {}
                other => panic!("{other:?}"),
            }
            let _ = w.poll_write(&mut cx, &mut rest);
        }
        assert_eq!(out, pcm[..34], "the odd last byte is not a sample");
        assert_eq!(r.poll_read(&mut cx, &mut out, 100), Poll::Pending);
        let before = counter.wakes();
        assert_eq!(
            w.poll_write(&mut cx, &mut &[7u8, 8][..]),
            Poll::Ready(Ok(()))
        );
        assert_eq!(
            counter.wakes(),
            before + 1,
            "the waiting reader is woken by the write"
        );
    }

    #[test]
    fn either_side_going_away_closes_and_wakes_the_other() {
        let (counter, waker) = WakeCounter::waker();
        let mut cx = Context::from_waker(&waker);
        let (w, mut r) = heap_track_ring(14);
        let mut out = Vec::new();
        assert_eq!(r.poll_read(&mut cx, &mut out, 8), Poll::Pending);
        drop(w);
        assert_eq!(counter.wakes(), 1);
        assert_eq!(r.poll_read(&mut cx, &mut out, 8), Poll::Ready(None));

        let (mut w, r) = heap_track_ring(14);
        let mut rest = &[1u8; 20][..];
        assert!(w.poll_write(&mut cx, &mut rest).is_pending());
        drop(r);
        assert_eq!(counter.wakes(), 2);
        assert_eq!(w.poll_write(&mut cx, &mut rest), Poll::Ready(Err(Closed)));
    }

    #[test]
    fn a_count_no_writer_leaves_closes_the_ring() {
        let (_, waker) = WakeCounter::waker();
        let mut cx = Context::from_waker(&waker);
        for tail in [3, 16] {
            let (w, mut r) = heap_track_ring(14);
            r.0.mem.header().tail.store(tail, Ordering::Release);
            let mut out = Vec::new();
            assert_eq!(
                r.poll_read(&mut cx, &mut out, 8),
                Poll::Ready(None),
                "{tail}"
            );
            assert!(out.is_empty() && w.is_closed());
        }
    }

    #[test]
    fn the_fronts_close_wakes_a_waiting_writer() {
        let (counter, waker) = WakeCounter::waker();
        let mut cx = Context::from_waker(&waker);
        let (mut w, _r) = heap_track_ring(14);
        let mut rest = &[1u8; 20][..];
        assert!(w.poll_write(&mut cx, &mut rest).is_pending());
        TrackRingCloser::new(w.0.mem.clone(), 0, w.0.waker.clone(), w.0.bell.clone()).close();
        assert_eq!(counter.wakes(), 1);
        assert!(w.is_closed());
        assert_eq!(w.poll_write(&mut cx, &mut rest), Poll::Ready(Err(Closed)));
    }
}

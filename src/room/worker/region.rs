//! The memory a front and one room worker share: every session ring of that worker, every
//! published track's ring, and the two doorbells, in one `memfd` the front creates and the
//! worker maps.
//!
//! Layout (offsets in bytes, each part aligned to [`ALIGN`]):
//! - `0`: the worker's lifeline, a process-shared robust mutex ([`super::lifeline`]);
//! - [`ALIGN`]: the front's doorbell's `pending` word, then its bits: one per slot (a session
//!   ring has audio), then one per track ring (a track ring has space);
//! - the worker's doorbell's `pending` word, then its bits, one per track ring (PCM to publish);
//! - `slots` slots, each a [`SlotHeader`] followed by `capacity` bytes of frames;
//! - `tracks` track rings, each a [`SlotHeader`] followed by [`TRACK_RING_BYTES`] of PCM.
//!
//! Both sides compute the layout from the same numbers (slots, capacity, tracks, and the
//! version in the handshake); nothing in the memory describes it, so nothing the other process
//! writes there can move a boundary. A fresh `memfd` is zero-filled, which is a fresh slot, and
//! only the pages a ring has used are ever committed.

// Unsafe code here: creating, mapping and unmapping the memory, and handing out its parts.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::audio::mapped::{Doorbell, SlotHeader, SlotMemory};
use std::sync::atomic::{AtomicU64, AtomicUsize};

/// Alignment of every part: a cache line pair, as `CachePadded` pads on x86-64.
const ALIGN: usize = 128;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Bytes of one published track's ring: 80 ms of 16 kHz PCM16. A publisher ahead of real time
/// gets this far ahead of the track's clock in the worker (besides the clock's own few frames)
/// before it waits; a playback, paced by itself, keeps it nearly empty.
pub const TRACK_RING_BYTES: usize = 2560;

/// The shape of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub slots: u32,
    /// Bytes of frames per slot.
    pub capacity: usize,
    /// Track rings: audio into the room, one per published track in use.
    pub tracks: u32,
}

impl Shape {
    /// The front's doorbell's bit for track ring `index` (after the slots').
    pub fn track_bit(self, index: u32) -> u32 {
        self.slots + index
    }

    fn words(bits: u32) -> usize {
        Doorbell::words_for(bits as usize).max(1)
    }

    fn pending_at(self) -> usize {
        ALIGN
    }

    fn bits_at(self) -> usize {
        2 * ALIGN
    }

    fn worker_pending_at(self) -> usize {
        self.bits_at() + align(Self::words(self.slots + self.tracks) * 8)
    }

    fn worker_bits_at(self) -> usize {
        self.worker_pending_at() + ALIGN
    }

    fn slots_at(self) -> usize {
        self.worker_bits_at() + align(Self::words(self.tracks) * 8)
    }

    fn stride(self) -> usize {
        align(size_of::<SlotHeader>()) + align(self.capacity)
    }

    fn tracks_at(self) -> usize {
        self.slots_at() + self.slots as usize * self.stride()
    }

    fn track_stride() -> usize {
        align(size_of::<SlotHeader>()) + align(TRACK_RING_BYTES)
    }

    pub fn len(self) -> usize {
        self.tracks_at() + self.tracks as usize * Self::track_stride()
    }
}

/// A mapped region.
pub struct Region {
    base: NonNull<u8>,
    shape: Shape,
    fd: OwnedFd,
}

// SAFETY: the mapping is shared memory accessed only through atomics and the rings' protocol
// (`crate::audio::mapped`); the pointer itself is never written.
unsafe impl Send for Region {}
// SAFETY: as for `Send`.
unsafe impl Sync for Region {}

impl Region {
    /// A new, zeroed region of `shape` (the front's side).
    pub fn create(shape: Shape) -> std::io::Result<Self> {
        // SAFETY: a NUL-terminated name and valid flags; the result is checked.
        let raw =
            unsafe { libc::memfd_create(c"livekit-bridge-rings".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = libc::off_t::try_from(shape.len())
            .map_err(|_| std::io::Error::other("the region is too large"))?;
        // SAFETY: a valid descriptor and length.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Self::map(fd, shape)
    }

    /// Maps a region of `shape` from `fd` (the worker's side). The file must be that long.
    pub fn map(fd: OwnedFd, shape: Shape) -> std::io::Result<Self> {
        // SAFETY: `stat` is plain data that fstat fills in; the result is checked.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a valid out pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if usize::try_from(stat.st_size).ok() != Some(shape.len()) {
            return Err(std::io::Error::other(format!(
                "the ring memory is {} bytes, not the {} its shape needs",
                stat.st_size,
                shape.len()
            )));
        }
        // SAFETY: a fresh shared mapping of the whole file; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                shape.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Self { base, shape, fd })
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Where the worker's lifeline lives (zero until the front initialises it).
    pub fn lifeline(&self) -> NonNull<libc::pthread_mutex_t> {
        self.base.cast()
    }

    /// Slot `index`'s memory, kept alive by `owner` (which must keep this region alive).
    pub fn slot(&self, index: u32, owner: Arc<dyn Send + Sync>) -> Option<SlotMemory> {
        if index >= self.shape.slots {
            return None;
        }
        let at = self.shape.slots_at() + index as usize * self.shape.stride();
        self.ring_at(at, self.shape.capacity, owner)
    }

    /// Track ring `index`'s memory, kept alive by `owner` (which must keep this region alive).
    pub fn track(&self, index: u32, owner: Arc<dyn Send + Sync>) -> Option<SlotMemory> {
        if index >= self.shape.tracks {
            return None;
        }
        let at = self.shape.tracks_at() + index as usize * Shape::track_stride();
        self.ring_at(at, TRACK_RING_BYTES, owner)
    }

    /// The ring whose header is at `at`, a ring's stride (header and `capacity`) inside the
    /// mapping, aligned to ALIGN.
    fn ring_at(
        &self,
        at: usize,
        capacity: usize,
        owner: Arc<dyn Send + Sync>,
    ) -> Option<SlotMemory> {
        // SAFETY: `at` plus the ring's stride is inside the mapping (the callers checked the
        // index against the shape), aligned to ALIGN, which satisfies SlotHeader's alignment
        // (checked below at compile time).
        let (header, data) = unsafe {
            let h = self.base.as_ptr().add(at);
            (h, h.add(align(size_of::<SlotHeader>())))
        };
        let header = NonNull::new(header.cast::<SlotHeader>())?;
        let data = NonNull::new(data)?;
        // SAFETY: the header is zero (fresh memfd) or reset by the front's tables before reuse;
        // `capacity` bytes follow it inside the mapping; `owner` keeps the region mapped; the
        // tables hand a ring to one session, or one track, at a time.
        Some(unsafe { SlotMemory::new(header, data, capacity, owner) })
    }

    /// The front's doorbell (session rings with audio, track rings with space), kept alive by
    /// `owner` (which must keep this region alive).
    pub fn doorbell(&self, owner: Arc<dyn Send + Sync>) -> Doorbell {
        let shape = self.shape;
        let words = Shape::words(shape.slots + shape.tracks);
        // SAFETY: see `doorbell_at`: the front's words are before the worker's.
        unsafe { self.doorbell_at(shape.pending_at(), shape.bits_at(), words, owner) }
    }

    /// The worker's doorbell (track rings with PCM), kept alive by `owner`.
    pub fn track_doorbell(&self, owner: Arc<dyn Send + Sync>) -> Doorbell {
        let shape = self.shape;
        let words = Shape::words(shape.tracks);
        // SAFETY: see `doorbell_at`: the worker's words are before the slots.
        unsafe {
            self.doorbell_at(
                shape.worker_pending_at(),
                shape.worker_bits_at(),
                words,
                owner,
            )
        }
    }

    /// # Safety
    /// `pending` and the `words` words at `bits` are inside the mapping, aligned, and used as
    /// nothing else.
    unsafe fn doorbell_at(
        &self,
        pending: usize,
        bits: usize,
        words: usize,
        owner: Arc<dyn Send + Sync>,
    ) -> Doorbell {
        // SAFETY: the caller's promise; zero at first, and live while `owner` is.
        unsafe {
            let pending =
                NonNull::new_unchecked(self.base.as_ptr().add(pending)).cast::<AtomicUsize>();
            let bits = NonNull::new_unchecked(self.base.as_ptr().add(bits)).cast::<AtomicU64>();
            Doorbell::new(pending, bits, words, owner)
        }
    }
}

const _: () = assert!(align_of::<SlotHeader>() <= ALIGN);
const _: () = assert!(size_of::<libc::pthread_mutex_t>() <= ALIGN);
const _: () = assert!(align_of::<libc::pthread_mutex_t>() <= ALIGN);

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; everything that handed out
        // pointers into it holds an owner that keeps the region alive, so none is left.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.shape.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::mapped::{Bell, MappedConsumer, MappedProducer, SlotWaker};
    use crate::audio::track_ring::{TrackRingReader, TrackRingWriter};
    use crate::audio::{Overflow, Pop, PushOutcome, WakeCounter};

    struct Kick(Doorbell, Arc<SlotWaker>);
    impl Bell for Kick {
        fn ring(&self, slot: u32) {
            if self.0.mark(slot) {
                self.0.take(|_| self.1.wake());
            }
        }
    }

    #[test]
    fn two_mappings_of_one_region_share_a_ring() {
        let shape = Shape {
            slots: 3,
            capacity: 1000,
            tracks: 2,
        };
        let front = Arc::new(Region::create(shape).unwrap());
        let dup = front.fd().try_clone().unwrap();
        let worker = Arc::new(Region::map(dup, shape).unwrap());
        let waker = Arc::new(SlotWaker::new());
        let bell = Arc::new(Kick(worker.doorbell(worker.clone()), waker.clone()));
        let p = MappedProducer::new(
            worker.slot(2, worker.clone()).unwrap(),
            2,
            Overflow::DropNewest,
            bell,
        );
        let mut c = MappedConsumer::new(front.slot(2, front.clone()).unwrap(), waker);
        assert_eq!(p.push(9, &[1, 2, 3, 4]), PushOutcome::Queued);
        let mut out = Vec::new();
        assert_eq!(c.try_pop(&mut out), Pop::Frame { arrived_ms: 9 });
        assert_eq!(out, [1, 2, 3, 4]);
        assert!(front.slot(3, front.clone()).is_none());
        // A track ring, the other way, with the worker's doorbell apart from the front's.
        let (front_waker, worker_waker) = (Arc::new(SlotWaker::new()), Arc::new(SlotWaker::new()));
        let to_worker = Arc::new(Kick(
            front.track_doorbell(front.clone()),
            worker_waker.clone(),
        ));
        let to_front = Arc::new(Kick(worker.doorbell(worker.clone()), front_waker.clone()));
        let mut w = TrackRingWriter::new(
            front.track(1, front.clone()).unwrap(),
            1,
            front_waker,
            to_worker,
        );
        let mut r = TrackRingReader::new(
            worker.track(1, worker.clone()).unwrap(),
            1,
            worker_waker,
            to_front,
        );
        let (_, waker) = WakeCounter::waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(w.poll_write(&mut cx, &mut &[5u8; 6][..]).is_ready());
        let mut pcm = Vec::new();
        assert_eq!(
            r.poll_read(&mut cx, &mut pcm, 100),
            std::task::Poll::Ready(Some(6))
        );
        assert_eq!(pcm, [5; 6]);
        assert_eq!(c.try_pop(&mut out), Pop::Empty, "the session ring is apart");
        assert!(front.track(2, front.clone()).is_none());
        let wrong = Shape { slots: 4, ..shape };
        assert!(Region::map(front.fd().try_clone().unwrap(), wrong).is_err());
    }
}

//! The hot path allocates nothing: a counting global allocator watches the room-side push (and
//! the writer-side pop into a reused buffer) for thousands of frames in steady state, including
//! full-ring drops and pushes after close.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use livekit_bridge::audio::{Overflow, Pop, PushOutcome, RingConfig, audio_ring};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::SeqCst)
}

#[test]
fn push_and_pop_allocate_nothing_per_frame() {
    for overflow in [Overflow::DropNewest, Overflow::DropOldest] {
        let (p, mut c, closer) = audio_ring(RingConfig::for_duration_ms(200, overflow));
        let packet = [7u8; 321];
        let mut out = Vec::with_capacity(4096);

        let before = allocations();
        let mut outcomes = [0u32; 2];
        for i in 0..10_000 {
            let o = p.push(i, &packet);
            outcomes[usize::from(o == PushOutcome::Full)] += 1;
            if i % 3 == 0 {
                out.clear();
                let _ = c.try_pop(&mut out);
            }
        }
        closer.close();
        for i in 0..1_000 {
            assert_eq!(p.push(i, &packet), PushOutcome::Closed);
        }
        assert_eq!(c.try_pop(&mut out), Pop::Closed);
        assert_eq!(
            allocations() - before,
            0,
            "{overflow:?}: the hot path allocated"
        );
        assert!(
            outcomes[1] > 0,
            "the ring filled up, so the full path was exercised too"
        );
    }
}

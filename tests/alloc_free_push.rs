//! The hot path allocates nothing: a counting global allocator watches the room-side push (and
//! the writer-side pop into a reused buffer) for thousands of frames in steady state, including
//! full-ring drops and pushes after close, and the zero-copy read of the LiveKit library's data
//! packet events that comes before the push.
// A counting global allocator is `unsafe` by its trait; each block says why it is sound.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use livekit_bridge::audio::{Overflow, Pop, PushOutcome, RingConfig, audio_ring};

struct Counting;

// Counted per thread, so the test harness's own allocations on other threads do not count.
thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    ALLOCATIONS.with(|a| a.set(a.get() + 1));
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread so far.
fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
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

/// The ring a room worker pushes into: the same, and ringing the doorbell for a parked
/// consumer (each push here finds it parked) allocates nothing either.
#[test]
fn a_mapped_ring_push_and_its_doorbell_allocate_nothing() {
    use livekit_bridge::audio::WakeCounter;
    use livekit_bridge::audio::mapped::heap_ring;
    use std::task::Context;
    for overflow in [Overflow::DropNewest, Overflow::DropOldest] {
        let capacity = RingConfig::for_duration_ms(200, overflow).capacity_bytes;
        let (p, mut c, closer, _bell) = heap_ring(capacity, overflow);
        let (wakes, waker) = WakeCounter::waker();
        let mut cx = Context::from_waker(&waker);
        let packet = [7u8; 321];
        let mut out = Vec::with_capacity(4096);
        let before = allocations();
        let mut full = 0;
        // A consumer that keeps up and parks (every push after its park rings the bell),
        // then one that stops reading (the ring fills).
        for i in 0..10_000 {
            if i < 5_000 && i % 3 == 0 {
                out.clear();
                while c.poll_pop(&mut cx, &mut out).is_ready() {
                    out.clear();
                }
            }
            full += u32::from(p.push(i, &packet) == PushOutcome::Full);
        }
        closer.close();
        assert_eq!(p.push(0, &packet), PushOutcome::Closed);
        assert_eq!(c.try_pop(&mut out), Pop::Closed);
        assert_eq!(
            allocations() - before,
            0,
            "{overflow:?}: the mapped ring's hot path allocated"
        );
        assert!(full > 0, "the ring filled up");
        assert!(
            wakes.wakes() > 1000,
            "the doorbell rang ({})",
            wakes.wakes()
        );
    }
}

#[test]
fn reading_a_data_packet_event_allocates_nothing() {
    use livekit_bridge::room::ffi::packet::{DataPacketRef, read_data_packet};
    use livekit_bridge::room::ffi::proto;
    use prost::Message;

    let event = DataPacketRef {
        room_handle: 9,
        identity: "user-1",
        buffer_handle: 3,
        data_ptr: 0x1000,
        data_len: 321,
        ..Default::default()
    }
    .to_event()
    .encode_to_vec();
    let before = allocations();
    let mut found = 0;
    for _ in 0..10_000 {
        if let Some(p) = read_data_packet(std::hint::black_box(&event)) {
            found += usize::from(p.identity == "user-1" && p.data_len == 321);
        }
    }
    assert_eq!(allocations() - before, 0, "the event reader allocated");
    assert_eq!(found, 10_000);
    // The general decoder, for contrast, allocates for every event.
    let before = allocations();
    for _ in 0..100 {
        let _ = std::hint::black_box(proto::FfiEvent::decode(event.as_slice()));
    }
    assert!(allocations() - before >= 100);
}

/// The track path's counterpart: an audio stream's frame event is decoded (numbers only, so
/// prost allocates nothing) and its 10 ms of PCM pushed into a ring, in steady state.
#[test]
fn reading_a_track_frame_event_and_pushing_it_allocates_nothing() {
    use livekit_bridge::room::ffi::packet::{AudioFrameRef, read_audio_frame};
    use prost::Message;

    let event = AudioFrameRef {
        stream_handle: 11,
        buffer_handle: 12,
        data_ptr: 0x2000,
        num_channels: 1,
        sample_rate: 16_000,
        samples_per_channel: 160,
    }
    .to_event()
    .encode_to_vec();
    let (p, mut c, _closer) = audio_ring(RingConfig::for_duration_ms(200, Overflow::DropNewest));
    let pcm = [3u8; 320];
    let mut out = Vec::with_capacity(4096);
    let before = allocations();
    let mut queued = 0;
    for i in 0..10_000 {
        let frame = read_audio_frame(std::hint::black_box(&event)).expect("a frame event");
        let len = frame.byte_len(4096).expect("within bounds");
        if p.push(i, &pcm[..len]) == PushOutcome::Queued {
            queued += 1;
        }
        out.clear();
        let _ = c.try_pop(&mut out);
    }
    assert_eq!(allocations() - before, 0, "the track path allocated");
    assert_eq!(queued, 10_000);
}

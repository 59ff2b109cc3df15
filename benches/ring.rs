//! Moving one PCM payload from a room callback to the stream writer: the session ring against
//! the channels it could have been, in the same run.
//!
//! Every contender does the same work per frame: take a borrowed payload on the producer side
//! and hand the consumer its bytes. The ring copies into preallocated memory; a channel of
//! frames must allocate an owned buffer per frame, as the old bridge's channel of byte slices
//! did. "old design" is the old bridge's shape: a lock-guarded closed check around a bounded
//! channel send.
//!
//! The floor: raw `rtrb`, the byte ring the session ring is built on, moving the same PCM bytes
//! with no close protocol, no frame header and no accounting (its consumer knows the frame
//! size). Whatever the session ring costs above it is the protocol's price.
//!
//! Run: `cargo bench --bench ring`.

use std::hint::black_box;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use livekit_bridge::audio::mapped::{MappedConsumer, MappedProducer, heap_ring};
use livekit_bridge::audio::{
    FrameConsumer, FrameProducer, Pop, PushOutcome, RingConfig, audio_ring,
};

/// Frames each queue can hold: about 2 s of 10 ms audio, as the bridge's default ring.
const DEPTH: usize = 200;
/// Payload sizes: a 10 ms frame (plus its sequence byte, trimmed by the payload rule) and 20 ms.
const SIZES: [usize; 2] = [320, 640];

/// One producer/consumer pair behind a common face.
trait Queue: Send + 'static {
    type Tx: Send + 'static;
    type Rx: Send + 'static;
    const NAME: &'static str;
    /// A pair for frames of `size` PCM bytes.
    fn pair(size: usize) -> (Self::Tx, Self::Rx);
    fn push(tx: &mut Self::Tx, payload: &[u8]) -> bool;
    fn pop(rx: &mut Self::Rx, out: &mut Vec<u8>) -> bool;
}

struct Ring;
impl Queue for Ring {
    type Tx = FrameProducer;
    type Rx = FrameConsumer;
    const NAME: &'static str = "audio_ring";
    fn pair(_size: usize) -> (FrameProducer, FrameConsumer) {
        let (p, c, _closer) = audio_ring(RingConfig::for_duration_ms(
            DEPTH as u32 * 20,
            Default::default(),
        ));
        (p, c)
    }
    fn push(tx: &mut FrameProducer, payload: &[u8]) -> bool {
        tx.push(0, payload) == PushOutcome::Queued
    }
    fn pop(rx: &mut FrameConsumer, out: &mut Vec<u8>) -> bool {
        out.clear();
        matches!(rx.try_pop(out), Pop::Frame { .. })
    }
}

/// The same ring protocol in memory two processes can map (a room worker's rings), here on
/// this process's heap: the byte ring in the mapping instead of rtrb, and the doorbell instead
/// of the waker (not rung here: a pop that finds nothing does not park).
struct Mapped;
impl Queue for Mapped {
    type Tx = MappedProducer;
    type Rx = MappedConsumer;
    const NAME: &'static str = "mapped_ring";
    fn pair(_size: usize) -> (MappedProducer, MappedConsumer) {
        let capacity = RingConfig::for_duration_ms(DEPTH as u32 * 20, Default::default());
        let (p, c, _closer, _bell) = heap_ring(capacity.capacity_bytes, Default::default());
        (p, c)
    }
    fn push(tx: &mut MappedProducer, payload: &[u8]) -> bool {
        tx.push(0, payload) == PushOutcome::Queued
    }
    fn pop(rx: &mut MappedConsumer, out: &mut Vec<u8>) -> bool {
        out.clear();
        matches!(rx.try_pop(out), Pop::Frame { .. })
    }
}

/// The floor: the same bytes through raw rtrb, nothing else.
struct RawRtrb;
impl Queue for RawRtrb {
    type Tx = rtrb::Producer<u8>;
    type Rx = (rtrb::Consumer<u8>, usize);
    const NAME: &'static str = "raw_rtrb_floor";
    fn pair(size: usize) -> (Self::Tx, Self::Rx) {
        let (tx, rx) = rtrb::RingBuffer::new(DEPTH * size);
        (tx, (rx, size))
    }
    fn push(tx: &mut Self::Tx, payload: &[u8]) -> bool {
        let pcm = &payload[1..]; // the sequence byte, as the payload rule trims it
        let Ok(mut chunk) = tx.write_chunk(pcm.len()) else {
            return false;
        };
        let (a, b) = chunk.as_mut_slices();
        a.copy_from_slice(&pcm[..a.len()]);
        b.copy_from_slice(&pcm[a.len()..]);
        chunk.commit_all();
        true
    }
    fn pop((rx, size): &mut Self::Rx, out: &mut Vec<u8>) -> bool {
        let Ok(chunk) = rx.read_chunk(*size) else {
            return false;
        };
        out.clear();
        let (a, b) = chunk.as_slices();
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        chunk.commit_all();
        true
    }
}

struct TokioMpsc;
impl Queue for TokioMpsc {
    type Tx = tokio::sync::mpsc::Sender<Vec<u8>>;
    type Rx = tokio::sync::mpsc::Receiver<Vec<u8>>;
    const NAME: &'static str = "tokio_mpsc";
    fn pair(_size: usize) -> (Self::Tx, Self::Rx) {
        tokio::sync::mpsc::channel(DEPTH)
    }
    fn push(tx: &mut Self::Tx, payload: &[u8]) -> bool {
        tx.try_send(payload.to_vec()).is_ok()
    }
    fn pop(rx: &mut Self::Rx, out: &mut Vec<u8>) -> bool {
        rx.try_recv().map(|v| *out = v).is_ok()
    }
}

struct StdSync;
impl Queue for StdSync {
    type Tx = SyncSender<Vec<u8>>;
    type Rx = Receiver<Vec<u8>>;
    const NAME: &'static str = "std_sync_channel";
    fn pair(_size: usize) -> (Self::Tx, Self::Rx) {
        sync_channel(DEPTH)
    }
    fn push(tx: &mut Self::Tx, payload: &[u8]) -> bool {
        tx.try_send(payload.to_vec()).is_ok()
    }
    fn pop(rx: &mut Self::Rx, out: &mut Vec<u8>) -> bool {
        rx.try_recv().map(|v| *out = v).is_ok()
    }
}

struct Crossbeam;
impl Queue for Crossbeam {
    type Tx = Arc<ArrayQueue<Vec<u8>>>;
    type Rx = Arc<ArrayQueue<Vec<u8>>>;
    const NAME: &'static str = "crossbeam_array_queue";
    fn pair(_size: usize) -> (Self::Tx, Self::Rx) {
        let q = Arc::new(ArrayQueue::new(DEPTH));
        (q.clone(), q)
    }
    fn push(tx: &mut Self::Tx, payload: &[u8]) -> bool {
        tx.push(payload.to_vec()).is_ok()
    }
    fn pop(rx: &mut Self::Rx, out: &mut Vec<u8>) -> bool {
        rx.pop().map(|v| *out = v).is_some()
    }
}

/// The old bridge's shape: check a mutex-guarded closed flag, then send on a bounded channel.
struct OldDesign;
impl Queue for OldDesign {
    type Tx = (Arc<Mutex<bool>>, SyncSender<Vec<u8>>);
    type Rx = Receiver<Vec<u8>>;
    const NAME: &'static str = "old_design_locked_channel";
    fn pair(_size: usize) -> (Self::Tx, Self::Rx) {
        let (tx, rx) = sync_channel(DEPTH);
        ((Arc::new(Mutex::new(false)), tx), rx)
    }
    fn push((closed, tx): &mut Self::Tx, payload: &[u8]) -> bool {
        let closed = closed.lock().unwrap_or_else(|e| e.into_inner());
        !*closed && tx.try_send(payload.to_vec()).is_ok()
    }
    fn pop(rx: &mut Self::Rx, out: &mut Vec<u8>) -> bool {
        match rx.try_recv() {
            Ok(v) => {
                *out = v;
                true
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => false,
        }
    }
}

/// A packet as it arrives: a sequence byte, then `size` bytes of PCM.
fn packet(size: usize) -> Vec<u8> {
    (0..=size).map(|i| i as u8).collect()
}

/// The queue must work before it is timed.
fn check<Q: Queue>(size: usize) {
    let (mut tx, mut rx) = Q::pair(size);
    let mut out = Vec::with_capacity(1024);
    assert!(Q::push(&mut tx, &packet(size)));
    assert!(Q::pop(&mut rx, &mut out));
    assert!(
        out.len() == size || out.len() == size + 1,
        "{}: got {} bytes",
        Q::NAME,
        out.len()
    );
    assert!(!Q::pop(&mut rx, &mut out));
}

fn one_thread<Q: Queue>(c: &mut Criterion) {
    let mut group = c.benchmark_group("push_pop_one_thread");
    for size in SIZES {
        check::<Q>(size);
        group.throughput(Throughput::Elements(1));
        let (mut tx, mut rx) = Q::pair(size);
        let payload = packet(size);
        let mut out = Vec::with_capacity(1024);
        group.bench_with_input(BenchmarkId::new(Q::NAME, size), &size, |b, _| {
            b.iter(|| {
                Q::push(&mut tx, black_box(&payload));
                Q::pop(&mut rx, &mut out);
                black_box(&out);
            })
        });
    }
    group.finish();
}

/// Producer and consumer on two threads, started together; time per frame over `iters`.
fn two_threads<Q: Queue>(c: &mut Criterion) {
    let mut group = c.benchmark_group("push_pop_two_threads");
    for size in SIZES {
        check::<Q>(size);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new(Q::NAME, size), &size, |b, &size| {
            b.iter_custom(|iters| transfer::<Q>(iters, size))
        });
    }
    group.finish();
}

fn transfer<Q: Queue>(iters: u64, size: usize) -> Duration {
    let (mut tx, mut rx) = Q::pair(size);
    let barrier = Arc::new(Barrier::new(2));
    let producer = {
        let barrier = barrier.clone();
        thread::spawn(move || {
            let payload = packet(size);
            barrier.wait();
            for _ in 0..iters {
                while !Q::push(&mut tx, black_box(&payload)) {
                    std::hint::spin_loop();
                }
            }
            tx // dropping the ring's producer closes it; keep it until the consumer is done
        })
    };
    let mut out = Vec::with_capacity(1024);
    barrier.wait();
    let start = Instant::now();
    for _ in 0..iters {
        while !Q::pop(&mut rx, &mut out) {
            std::hint::spin_loop();
        }
        black_box(&out);
    }
    let elapsed = start.elapsed();
    drop(producer.join().expect("producer"));
    elapsed
}

fn all(c: &mut Criterion) {
    one_thread::<RawRtrb>(c);
    one_thread::<Ring>(c);
    one_thread::<Mapped>(c);
    one_thread::<TokioMpsc>(c);
    one_thread::<StdSync>(c);
    one_thread::<Crossbeam>(c);
    one_thread::<OldDesign>(c);
    two_threads::<RawRtrb>(c);
    two_threads::<Ring>(c);
    two_threads::<Mapped>(c);
    two_threads::<TokioMpsc>(c);
    two_threads::<StdSync>(c);
    two_threads::<Crossbeam>(c);
    two_threads::<OldDesign>(c);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = all
}
criterion_main!(benches);

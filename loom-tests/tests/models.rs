//! Loom models of the ring's close and wakeup protocols (documented on
//! `livekit_bridge::audio::ring`). Each model explores every interleaving of two or three
//! threads up to `LOOM_MAX_PREEMPTIONS`. `loom-tests/README.md` lists the weakening of the
//! protocol each model catches.
#![cfg(loom)]

use std::task::{Context, Poll, Wake, Waker};

use livekit_bridge::audio::mapped::{Doorbell, heap_ring};
use livekit_bridge::audio::track_ring::{Closed, heap_track_ring};
use livekit_bridge::audio::{Overflow, Pop, PushOutcome, RingConfig, WakeCounter, audio_ring};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

/// Room for four 2-byte frames.
fn config() -> RingConfig {
    RingConfig {
        capacity_bytes: 4 * 14,
        overflow: Overflow::DropNewest,
    }
}

/// Push racing close: after close returns, nothing is delivered; every push is delivered or
/// counted as dropped, once.
#[test]
fn push_racing_close() {
    loom::model(|| {
        let (p, mut c, closer) = audio_ring(config());
        let producer = thread::spawn(move || {
            p.push(1, &[1, 2]);
            p.push(2, &[3, 4]);
            p
        });
        let close = thread::spawn(move || closer.close());
        let mut out = Vec::new();
        let early = c.try_pop(&mut out);
        assert!(close.join().expect("closer"));
        let mut after = Vec::new();
        assert_eq!(
            c.try_pop(&mut after),
            Pop::Closed,
            "a pop after close delivers nothing"
        );
        assert!(after.is_empty());
        let p = producer.join().expect("producer");
        let s = p.stats();
        assert_eq!(s.received, 2);
        assert_eq!(s.delivered, u64::from(matches!(early, Pop::Frame { .. })));
        assert_eq!(s.delivered + s.dropped_closed, 2, "{s:?}");
    });
}

/// Close racing the final drain: a consumer that has seen the ring closed has accounted for
/// every frame pushed before the close, exactly once.
#[test]
fn close_racing_final_drain() {
    loom::model(|| {
        let (p, mut c, closer) = audio_ring(config());
        let producer = thread::spawn(move || {
            let a = p.push(1, &[1, 2]);
            let b = p.push(2, &[3, 4]);
            (a, b, p)
        });
        let close = thread::spawn(move || closer.close());
        let mut out = Vec::new();
        let mut delivered = 0;
        while loom::future::block_on(c.pop(&mut out)).is_some() {
            delivered += 1;
        }
        // The consumer has seen the close; without popping again, everything the producer
        // pushed is delivered or counted, once, whatever the producer was doing at the time.
        close.join().expect("closer");
        let (a, b, p) = producer.join().expect("producer");
        let queued = [a, b].iter().filter(|o| **o == PushOutcome::Queued).count() as u64;
        let s = p.stats();
        assert_eq!(s.delivered, delivered);
        assert_eq!(
            s.delivered + s.dropped_closed,
            2,
            "a frame is stranded in a closed ring: {s:?}"
        );
        assert!(delivered <= queued);
    });
}

/// A consumer waiting for audio is woken by a push: no lost wakeup.
#[test]
fn wakeup_by_push() {
    loom::model(|| {
        let (p, mut c, _closer) = audio_ring(config());
        let producer = thread::spawn(move || {
            p.push(7, &[1, 2]);
            p
        });
        let mut out = Vec::new();
        assert_eq!(loom::future::block_on(c.pop(&mut out)), Some(7));
        assert_eq!(out, [1, 2]);
        drop(producer.join().expect("producer"));
    });
}

/// A consumer waiting for audio is woken by a close: no lost wakeup.
#[test]
fn wakeup_by_close() {
    loom::model(|| {
        let (_p, mut c, closer) = audio_ring(config());
        let close = thread::spawn(move || closer.close());
        assert_eq!(loom::future::block_on(c.pop(&mut Vec::new())), None);
        close.join().expect("closer");
    });
}

/// A consumer that has gone is never woken afterwards.
#[test]
fn no_wakeup_after_the_consumer_is_gone() {
    loom::model(|| {
        let (p, mut c, _closer) = audio_ring(config());
        let (wakes, waker) = WakeCounter::waker();
        let producer = thread::spawn(move || {
            p.push(1, &[1, 2]);
            p
        });
        let parked = c.poll_pop(&mut Context::from_waker(&waker), &mut Vec::new());
        drop(c);
        let at_drop = wakes.wakes();
        drop(producer.join().expect("producer"));
        assert_eq!(
            wakes.wakes(),
            at_drop,
            "woken after it had gone"
        );
        let _ = parked;
    });
}

/// Both halves dropped, in any order, with a closer closing twice: no panic, the waiting side
/// learns, and everything is counted.
#[test]
fn double_close_and_drops_in_any_order() {
    loom::model(|| {
        let (p, mut c, closer) = audio_ring(config());
        let drop_producer = thread::spawn(move || drop(p));
        let closes = thread::spawn(move || {
            let first = closer.close();
            let second = closer.close();
            assert!(!second);
            (first, closer)
        });
        assert_eq!(loom::future::block_on(c.pop(&mut Vec::new())), None);
        drop(c);
        drop_producer.join().expect("producer");
        let (_, closer) = closes.join().expect("closer");
        assert!(closer.is_closed());
        assert_eq!(closer.stats().received, 0);
    });
}

/// The producer going away (the room's last callback reference dropped) wakes a waiting
/// consumer, which then sees the ring closed.
#[test]
fn producer_drop_wakes_the_consumer() {
    loom::model(|| {
        let (p, mut c, _closer) = audio_ring(config());
        let producer = thread::spawn(move || drop(p));
        assert_eq!(loom::future::block_on(c.pop(&mut Vec::new())), None);
        producer.join().expect("producer");
    });
}

/// Two callback threads pushing at once (reliable and lossy): one wins the claim, the other's
/// frame is counted as contended; the writer is never touched by both.
#[test]
fn concurrent_pushes_never_share_the_writer() {
    loom::model(|| {
        let (p, mut c, _closer) = audio_ring(config());
        let p = Arc::new(p);
        let other = {
            let p = p.clone();
            thread::spawn(move || p.push(1, &[1, 2]))
        };
        let mine = p.push(2, &[3, 4]);
        let theirs = other.join().expect("pusher");
        let outcomes = [mine, theirs];
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, PushOutcome::Queued | PushOutcome::Contended))
        );
        let queued = outcomes
            .iter()
            .filter(|o| **o == PushOutcome::Queued)
            .count();
        let mut n = 0;
        while let Pop::Frame { .. } = c.try_pop(&mut Vec::new()) {
            n += 1;
        }
        assert_eq!(n, queued);
        let s = c.stats();
        assert_eq!(s.delivered + s.dropped_contended, 2);
    });
}

/// Replacement: a late callback from a replaced session, racing the new session's first frames,
/// never reaches the new session (rings are never reused), and the old session's consumer gets
/// nothing after its close. Under `loom_weaken="reuse_ring"` the model hands the successor the
/// old ring, as routing by user id alone would.
#[test]
fn a_replaced_session_never_leaks_into_its_successor() {
    const OLD: i64 = 1;
    const NEW: i64 = 2;
    loom::model(|| {
        let (old_p, mut old_c, old_closer) = audio_ring(config());
        let old_p = Arc::new(old_p);
        let late = {
            let p = old_p.clone();
            thread::spawn(move || {
                p.push(OLD, &[1, 1]);
            })
        };
        let reuse = cfg!(loom_weaken = "reuse_ring");
        let (new_p, mut new_c) = if reuse {
            (old_p.clone(), None)
        } else {
            old_closer.close();
            let (p, c, _) = audio_ring(config());
            (Arc::new(p), Some(c))
        };
        let first = thread::spawn(move || {
            new_p.push(NEW, &[2, 2]);
        });
        first.join().expect("new session's frame");
        late.join().expect("late callback");
        let successor = new_c.as_mut().unwrap_or(&mut old_c);
        while let Pop::Frame { arrived_ms } = successor.try_pop(&mut Vec::new()) {
            assert_eq!(
                arrived_ms, NEW,
                "a replaced session's frame reached its successor"
            );
        }
        if !reuse {
            assert_eq!(old_c.try_pop(&mut Vec::new()), Pop::Closed);
        }
    });
}

/// A consumer registered before a push was queued is polled again: the consumer side of the
/// wakeup, written out with an explicit waker.
#[test]
fn registered_consumer_is_woken_exactly_when_needed() {
    loom::model(|| {
        let (p, mut c, _closer) = audio_ring(config());
        let (wakes, waker) = WakeCounter::waker();
        let mut out = Vec::new();
        let producer = thread::spawn(move || {
            p.push(3, &[5, 6]);
            p
        });
        let first = c.poll_pop(&mut Context::from_waker(&waker), &mut out);
        let p = producer.join().expect("producer");
        if first == Poll::Pending {
            assert!(
                wakes.wakes() >= 1,
                "registered, then a push: woken"
            );
            assert_eq!(
                c.poll_pop(&mut Context::from_waker(&waker), &mut out),
                Poll::Ready(Some(3))
            );
        }
        drop(p);
    });
}

/// Step 5 of the mapped ring (`livekit_bridge::audio::mapped`): a producer killed while it holds
/// the claim is abandoned by the front, and the consumer ends without waiting for the claim,
/// having accounted for the frame committed before the death exactly once.
#[test]
fn a_producer_dead_mid_push_is_never_waited_for() {
    loom::model(|| {
        let (p, mut c, closer, _bell) = heap_ring(4 * 14, Overflow::DropNewest);
        let producer = thread::spawn(move || {
            p.push(1, &[1, 2]);
            p.vanish_mid_push();
        });
        let mut out = Vec::new();
        let early = c.try_pop(&mut out);
        producer.join().expect("producer");
        // The front abandons once the producer's process is dying, then the session closes.
        closer.abandon();
        closer.close();
        assert_eq!(c.try_pop(&mut out), Pop::Closed);
        let s = closer.stats();
        assert_eq!(s.received, 1);
        assert_eq!(s.delivered, u64::from(matches!(early, Pop::Frame { .. })));
        assert_eq!(s.delivered + s.dropped_closed, 1, "{s:?}");
    });
}

/// Step 5 when the producer's process is dying, not yet gone: the front abandons as soon as
/// the worker's main thread exits (its lifeline), when a push already running on another core
/// can still finish. The consumer waits for nothing, and once that push has ended its frame is
/// counted exactly once.
#[test]
fn a_dying_producers_last_push_races_the_abandon() {
    loom::model(|| {
        let (p, mut c, closer, _bell) = heap_ring(4 * 14, Overflow::DropNewest);
        let producer = thread::spawn(move || {
            p.push(1, &[1, 2]);
            // Its process ends: no drop runs.
            std::mem::forget(p);
        });
        closer.abandon();
        closer.close();
        let mut out = Vec::new();
        assert_eq!(c.try_pop(&mut out), Pop::Closed);
        producer.join().expect("producer");
        assert_eq!(c.try_pop(&mut out), Pop::Closed);
        let s = closer.stats();
        assert_eq!(s.received, 1);
        assert_eq!(s.delivered, 0, "nothing is delivered after the close");
        assert_eq!(s.dropped_closed, 1, "{s:?}");
    });
}

/// The mapped rings' doorbell: two producers mark their slots while the consumer's process
/// takes marks after the kicks it has seen; once every kick is taken, both marks were found.
#[test]
fn every_doorbell_mark_is_taken() {
    doorbell_model(false);
}

/// The same while the consumer coalesces: after a kick it takes marks leaving `pending` set
/// (producers meanwhile do not kick), as long as it finds some, and ends with a take.
#[test]
fn every_doorbell_mark_is_taken_while_coalescing() {
    doorbell_model(true);
}

fn doorbell_model(coalescing: bool) {
    loom::model(move || {
        let bell = Arc::new(Doorbell::heap(2));
        let kicks = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let producers: Vec<_> = (0..2u32)
            .map(|slot| {
                let (bell, kicks) = (bell.clone(), kicks.clone());
                thread::spawn(move || {
                    if bell.mark(slot) {
                        kicks.fetch_add(1, Ordering::Release);
                    }
                })
            })
            .collect();
        let take = |bell: &Doorbell, kicks: &AtomicUsize, seen: &AtomicUsize| {
            let wake = |slot: u32| {
                seen.fetch_or(1 << slot, Ordering::Relaxed);
            };
            while kicks.load(Ordering::Acquire) > 0 {
                kicks.fetch_sub(1, Ordering::AcqRel);
                if coalescing {
                    bell.take_coalescing(wake, || {
                        thread::yield_now();
                        true
                    });
                } else {
                    bell.take(wake);
                }
            }
        };
        take(&bell, &kicks, &seen);
        for p in producers {
            p.join().expect("producer");
        }
        take(&bell, &kicks, &seen);
        assert_eq!(seen.load(Ordering::Relaxed), 0b11, "a mark found no kick");
    });
}

/// A published track's ring (`src/audio/track_ring.rs`): a writer with more PCM than the ring
/// holds waits for space, the reader waits for PCM; every wait ends with a wake, and the bytes
/// come out whole and in order.
#[test]
fn a_track_ring_never_leaves_a_side_waiting() {
    loom::model(|| {
        let (mut w, mut r) = heap_track_ring(2);
        let writer = thread::spawn(move || {
            assert_eq!(loom::future::block_on(w.write(&[1, 2, 3, 4])), Ok(()));
            w
        });
        let mut out = Vec::new();
        while out.len() < 4 {
            assert!(loom::future::block_on(r.read(&mut out, 2)).is_some());
        }
        assert_eq!(out, [1, 2, 3, 4]);
        drop(writer.join().expect("writer"));
    });
}

/// A writer waiting for space is woken when the reader goes away (its room left, its worker
/// gone), and fails rather than waiting forever.
#[test]
fn a_waiting_track_writer_learns_the_reader_is_gone() {
    loom::model(|| {
        let (mut w, r) = heap_track_ring(2);
        let writer = thread::spawn(move || loom::future::block_on(w.write(&[1; 4])));
        drop(r);
        assert_eq!(writer.join().expect("writer"), Err(Closed));
    });
}

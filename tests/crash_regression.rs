//! The crash that started this project, as a regression test.
//!
//! The old bridge died with `send on closed channel` when a session closed while the LiveKit
//! callback thread was still delivering audio. Here simulated rooms pump audio as fast as the
//! bridge takes it (`pace=max`) and keep calling back for 30 ms after close (`linger_ms`), while
//! sessions are closed in every way the service knows: LeaveRoom, client cancel, replacement by
//! JoinRoom, server-initiated disconnect; the audio comes as data packets in some rooms and as
//! frames of the target's audio track (the other callback) in others. Each user's consecutive
//! rooms play different tones, so
//! a frame reaching the wrong session would be heard. After close, a session's ring must not
//! deliver one more frame, however many callbacks still arrive.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use livekit_bridge::audio::RingStats;
use livekit_bridge::room::SimRooms;
use livekit_bridge::service::ServiceSettings;
use livekit_bridge::session::Session;
use tonic::Code;

const WORKERS: usize = 8;
const CYCLES_PER_WORKER: usize = 400;

/// The tone of a cycle's room, and the band a frame of it must measure in.
fn tone(cycle: usize) -> (u32, std::ops::RangeInclusive<f64>) {
    if cycle.is_multiple_of(2) {
        (1000, 800.0..=1200.0)
    } else {
        (3000, 2700.0..=3300.0)
    }
}

#[derive(Default)]
struct Tally {
    cycles: usize,
    frames: usize,
    ring: RingStats,
    closed_checked: usize,
}

/// A closed session and what it had delivered when its close returned.
struct Closed(Arc<Session>, u64);

impl Closed {
    fn check(self, tally: &mut Tally) {
        let stats = self.0.ring_stats();
        assert_eq!(stats.delivered, self.1, "a frame was delivered after close");
        tally.ring.add(&stats);
        tally.closed_checked += 1;
    }
}

async fn worker(bridge: Arc<Bridge>, user: String) -> Tally {
    let mut c = bridge.client().await;
    let mut tally = Tally::default();
    let mut recently_closed = VecDeque::new();
    // A stream whose session the next JoinRoom replaces.
    let mut to_be_replaced: Option<(Stream, Arc<Session>)> = None;
    for cycle in 0..CYCLES_PER_WORKER {
        let way = cycle % 4;
        let (hz, band) = tone(cycle);
        let server_drop = if way == 3 { "&drop_after_ms=10" } else { "" };
        // Every way of ending, with the audio as data packets and as track frames in turn.
        let via = if (cycle / 4) % 2 == 0 {
            "data"
        } else {
            "track"
        };
        let url =
            format!("sim://tone?pace=max&hz={hz}&via={via}&linger_ms=30&chatter_ms=1{server_drop}");
        join_ok(&mut c, &user, &url).await;
        if let Some((mut old, session)) = to_be_replaced.take() {
            assert_eq!(old.end().await.2.as_deref(), Some("replaced"));
            recently_closed.push_back(Closed(session.clone(), session.ring_stats().delivered));
        }
        let session = bridge.state.registry.get(&user).expect("joined session");
        let mut stream = match open_with(&mut c, first_chunk(&user)).await {
            Ok(s) => s,
            Err(s) if way == 3 && s.code() == Code::Unavailable => {
                // The server closed the room before the stream opened: also a way to end.
                recently_closed.push_back(Closed(session.clone(), session.ring_stats().delivered));
                tally.cycles += 1;
                continue;
            }
            Err(s) => panic!("cycle {cycle}: StreamAudio: {s:?}"),
        };
        let mut frames = 0;
        loop {
            match stream.next().await {
                Ok(Some(f)) => {
                    let measured = zero_crossing_hz(&f.pcm_data);
                    assert!(
                        band.contains(&measured),
                        "cycle {cycle}: heard {measured} Hz, room plays {hz}"
                    );
                    frames += 1;
                    if frames == 3 && way != 3 {
                        break;
                    }
                }
                Ok(None) => panic!("cycle {cycle}: stream ended cleanly before its session closed"),
                Err(s) => {
                    assert_eq!(
                        (way, s.code()),
                        (3, Code::Unavailable),
                        "cycle {cycle}: {s:?}"
                    );
                    break;
                }
            }
        }
        tally.frames += frames;
        match way {
            0 => {
                assert!(leave(&mut c, &user).await.success);
                assert_eq!(stream.end().await.2.as_deref(), Some("left"));
            }
            1 => {
                drop(stream);
                let s = session.clone();
                eventually("the cancelled stream's session to close", move || {
                    s.ended().is_some()
                })
                .await;
            }
            2 => to_be_replaced = Some((stream, session.clone())),
            _ => assert!(session.ended().is_some(), "the room was lost"),
        }
        if way != 2 {
            recently_closed.push_back(Closed(session.clone(), session.ring_stats().delivered));
        }
        // Check sessions once their rooms have surely stopped calling back.
        while recently_closed.len() > 8 {
            if let Some(closed) = recently_closed.pop_front() {
                closed.check(&mut tally);
            }
        }
        tally.cycles += 1;
    }
    if let Some((mut old, session)) = to_be_replaced.take() {
        leave(&mut c, &user).await;
        old.end().await;
        recently_closed.push_back(Closed(session.clone(), session.ring_stats().delivered));
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    for closed in recently_closed {
        closed.check(&mut tally);
    }
    // A new session for the same user works right after all that.
    join_ok(&mut c, &user, "sim://tone?hz=1000").await;
    let mut stream = open(&mut c, &user).await;
    assert!(
        tone(0)
            .1
            .contains(&zero_crossing_hz(&stream.frame().await.pcm_data))
    );
    assert!(leave(&mut c, &user).await.success);
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_closed_every_way_while_audio_flows_never_crash_or_leak_frames() {
    regression(ServiceSettings::default()).await;
}

/// The same with the rooms in two room workers: the rings in memory the processes share, the
/// closes crossing the control socket while the worker's rooms keep pushing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_the_rooms_in_room_workers() {
    regression(ServiceSettings {
        sim_rooms: SimRooms::Workers,
        room_workers: 2,
        ..ServiceSettings::default()
    })
    .await;
}

async fn regression(settings: ServiceSettings) {
    let in_workers = settings.sim_rooms == SimRooms::Workers;
    let bridge = Arc::new(Bridge::with(settings).await);
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(worker(bridge.clone(), format!("user-{w}"))))
        .collect();
    let mut total = Tally::default();
    for w in workers {
        let t = w.await.expect("worker panicked");
        total.cycles += t.cycles;
        total.frames += t.frames;
        total.closed_checked += t.closed_checked;
        total.ring.add(&t.ring);
    }
    let r = total.ring;
    eprintln!(
        "crash regression: {} cycles in {:.1?}; {} frames checked by clients; {} closed sessions checked; \
         rings: received {}, delivered {}, dropped full {}, dropped closed {}, contended {}, skipped {}",
        total.cycles,
        started.elapsed(),
        total.frames,
        total.closed_checked,
        r.received,
        r.delivered,
        r.dropped_full,
        r.dropped_closed,
        r.dropped_contended,
        r.skipped
    );
    assert_eq!(total.cycles, WORKERS * CYCLES_PER_WORKER);
    assert_eq!(total.closed_checked, WORKERS * CYCLES_PER_WORKER);
    assert!(
        r.dropped_closed > 0,
        "rooms kept calling back after close, and it was harmless"
    );
    assert!(!bridge.served.is_finished(), "the server is still up");
    assert!(
        bridge.state.registry.is_empty(),
        "no session or join left behind"
    );
    eventually("every simulated room's threads to exit", || {
        bridge.state.backends.sim.live_callbacks() == 0
            && bridge
                .state
                .backends
                .worker_counts()
                .sessions
                .iter()
                .sum::<usize>()
                == 0
    })
    .await;
    if in_workers {
        let counts = bridge.state.backends.worker_counts();
        assert_eq!(counts.running, 2, "{counts:?}");
        assert!(counts.exits.is_empty(), "no worker ended: {counts:?}");
    }
}

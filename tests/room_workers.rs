//! Room workers without a LiveKit server: `sim://` rooms run in the workers
//! (`BRIDGE_SIM_ROOMS=workers`), so a worker's death, and what the backend sees of it, is tested
//! on every run. (With real rooms on LiveKit's own server, and the backend's own client, in
//! the end-to-end test `real_worker_faults`.)

mod common;

use std::time::{Duration, Instant};

use common::process::kill;
use common::procfs::room_workers;
use common::*;
use livekit_bridge::proto::AudioChunk;
use livekit_bridge::room::SimRooms;
use livekit_bridge::service::ServiceSettings;
use tonic::Code;

/// One bridge at a time in this process: a test counts (and kills) the process's workers.
static ONE_BRIDGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What became of a session's stream after its worker, or another, was killed.
enum After {
    /// It kept receiving frames.
    Heard,
    /// It ended, this long after the kill, with this status and end reason.
    Ended(Duration, Code, String, Option<String>),
}

/// Reads `s` until it has had [`FRAMES`] more frames or has ended.
async fn after_the_kill(mut s: Stream, killed: Instant) -> After {
    const FRAMES: usize = 30;
    for _ in 0..FRAMES {
        match s.next().await {
            Ok(Some(_)) => {}
            Ok(None) => return After::Ended(killed.elapsed(), Code::Ok, String::new(), None),
            Err(status) => {
                let reason = status
                    .metadata()
                    .get("x-bridge-end-reason")
                    .and_then(|v| v.to_str().ok().map(String::from));
                return After::Ended(
                    killed.elapsed(),
                    status.code(),
                    status.message().to_string(),
                    reason,
                );
            }
        }
    }
    After::Heard
}

/// Two workers, two sessions on each; one worker is killed with each signal in turn. Its
/// sessions, and only those, end UNAVAILABLE `room_lost` within a second, naming the signal;
/// the others carry on; a replacement worker is started, and a lost user who joins again
/// hears its room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_sessions_end_at_once_and_no_others() {
    let _one = ONE_BRIDGE.lock().await;
    let b = Bridge::with(ServiceSettings {
        room_workers: 2,
        sim_rooms: SimRooms::Workers,
        ..ServiceSettings::default()
    })
    .await;
    let mut c = b.client().await;
    for (round, signal) in ["KILL", "SEGV", "ABRT"].into_iter().enumerate() {
        let users: Vec<String> = (0..4).map(|i| format!("u{round}-{i}")).collect();
        let mut streams = Vec::new();
        for user in &users {
            join_ok(&mut c, user, "sim://tone").await;
            let mut s = open(&mut c, user).await;
            s.frame().await;
            streams.push(s);
        }
        let before = room_workers("self");
        assert_eq!(before.len(), 2, "workers {before:?}");
        let victim = before[0];
        let killed = Instant::now();
        kill(victim, signal);
        let watched: Vec<_> = streams
            .into_iter()
            .map(|s| tokio::spawn(after_the_kill(s, killed)))
            .collect();
        let mut lost = Vec::new();
        for (user, watch) in users.iter().zip(watched) {
            match watch.await.expect("the watch") {
                After::Heard => {}
                After::Ended(after, code, message, reason) => {
                    assert_eq!(code, Code::Unavailable, "{user}: {message}");
                    assert_eq!(reason.as_deref(), Some("room_lost"), "{user}: {message}");
                    assert!(
                        message.contains(&format!("pid {victim}"))
                            && message.contains(&format!("SIG{signal}")),
                        "{user}: {message}"
                    );
                    assert!(
                        after < Duration::from_secs(1),
                        "{user}: ended {after:?} after SIG{signal}"
                    );
                    lost.push(user.clone());
                }
            }
        }
        assert_eq!(lost.len(), 2, "SIG{signal}: lost {lost:?} of {users:?}");
        eventually("a replacement worker", || {
            let now = room_workers("self");
            now.len() == 2 && !now.contains(&victim)
        })
        .await;
        join_ok(&mut c, &lost[0], "sim://tone").await;
        open(&mut c, &lost[0]).await.frame().await;
        for user in &users {
            leave(&mut c, user).await;
        }
    }
}

/// Audio into the room through a worker's track ring: a client's chunks, many times what the
/// ring holds, on two tracks at once, come back from the simulated room's echo byte for byte
/// and in order; a session that leaves and joins again publishes anew. (The echo takes audio
/// as fast as it comes, so all of it comes back within the session ring's 2 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_audio_crosses_to_the_worker_whole_and_in_order() {
    let _one = ONE_BRIDGE.lock().await;
    let b = Bridge::with(ServiceSettings {
        room_workers: 1,
        sim_rooms: SimRooms::Workers,
        ..ServiceSettings::default()
    })
    .await;
    let mut c = b.client().await;
    for round in 0..2 {
        join_ok(&mut c, "echo", "sim://echo?frame_ms=10").await;
        assert_eq!(room_workers("self").len(), 1);
        let mut stream = open(&mut c, "echo").await;
        // 0.7 s of audio per track (9 times the track ring), in 100 ms chunks, speaker and tts
        // interleaved; each track's bytes are told apart by their parity.
        let chunk = |track: i32, n: usize| AudioChunk {
            pcm_data: (0..3200)
                .map(|i| ((n * 3200 + i) % 125 * 2 + track as usize / 2) as u8)
                .collect(),
            track_id: track,
            ..first_chunk("echo")
        };
        let sender = stream.tx.clone();
        let send = tokio::spawn(async move {
            for n in 0..7 {
                for track in [0, 2] {
                    sender.send(chunk(track, n)).await.expect("send");
                }
            }
        });
        let (mut speaker, mut tts) = (Vec::new(), Vec::new());
        while speaker.len() + tts.len() < 2 * 7 * 3200 {
            for pair in stream.frame().await.pcm_data.chunks(2) {
                let to = if pair[0] % 2 == 0 {
                    &mut speaker
                } else {
                    &mut tts
                };
                to.extend_from_slice(pair);
            }
        }
        send.await.expect("the sender");
        let expected =
            |track: i32| -> Vec<u8> { (0..7).flat_map(|n| chunk(track, n).pcm_data).collect() };
        assert!(
            speaker == expected(0),
            "round {round}: speaker's audio came back changed"
        );
        assert!(
            tts == expected(2),
            "round {round}: tts's audio came back changed"
        );
        leave(&mut c, "echo").await;
    }
}

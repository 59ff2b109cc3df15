//! Sequences of operations on the real service, over a real socket, with simulated rooms,
//! checked after every step against a model: at most one registered session per user, status
//! as the model says, streams ending the way the contract says, no frame delivered by a closed
//! session's ring, and ring counters that add up.
#![no_main]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use livekit_bridge::proto::live_kit_bridge_client::LiveKitBridgeClient;
use livekit_bridge::proto::{AudioChunk, BridgeStatusRequest, LeaveRoomRequest};
use livekit_bridge::server;
use livekit_bridge::service::{BridgeState, ServiceSettings};
use livekit_bridge::session::Session;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

#[path = "../../tests/common/client.rs"]
mod client;

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum Room {
    Tone,
    Echo,
    Silent,
    Fail,
    /// The server closes the room almost at once.
    Drop,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Join(u8, Room),
    Open(u8),
    Read(u8),
    Send(u8, u8),
    Leave(u8),
    Status(u8),
    CloseStream(u8),
}

const USERS: u8 = 3;

struct Harness {
    rt: tokio::runtime::Runtime,
    state: Arc<BridgeState>,
    client: LiveKitBridgeClient<Channel>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let state = BridgeState::new(ServiceSettings {
            connect_timeout: Duration::from_millis(200),
            first_chunk_timeout: Duration::from_millis(200),
            ..Default::default()
        })
        .expect("valid settings");
        let client = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(server::run(
                state.clone(),
                server::tcp_incoming(listener),
                std::future::pending(),
                Duration::from_secs(1),
            ));
            let channel = Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connect");
            LiveKitBridgeClient::new(channel)
        });
        Harness { rt, state, client }
    })
}

/// What the model knows of one user.
#[derive(Default)]
struct User {
    session: Option<(Arc<Session>, Room)>,
    /// The open stream and the generation of the session it was opened on.
    stream: Option<(mpsc::Sender<AudioChunk>, Streaming<AudioChunk>, u64)>,
}

/// A closed session and what its ring had delivered when it closed.
struct Closed(Arc<Session>, u64);

static INPUTS: AtomicU64 = AtomicU64::new(0);

fn url(room: Room) -> &'static str {
    match room {
        Room::Tone => "sim://tone?linger_ms=5",
        Room::Echo => "sim://echo?linger_ms=5",
        Room::Silent => "sim://silent?linger_ms=5",
        Room::Fail => "sim://tone?fail=refused",
        Room::Drop => "sim://tone?drop_after_ms=0&linger_ms=5",
    }
}

async fn next(s: &mut Streaming<AudioChunk>) -> Option<Result<Option<AudioChunk>, tonic::Status>> {
    tokio::time::timeout(Duration::from_millis(100), s.message())
        .await
        .ok()
}

async fn run(ops: &[Op]) {
    let h = harness();
    let mut client = h.client.clone();
    let input = INPUTS.fetch_add(1, Ordering::Relaxed);
    let name = |u: u8| format!("fuzz-{input}-{u}");
    let mut users: HashMap<u8, User> = HashMap::new();
    let mut closed: Vec<Closed> = Vec::new();
    let close = |closed: &mut Vec<Closed>, s: Arc<Session>| {
        let delivered = s.ring_stats().delivered;
        closed.push(Closed(s, delivered));
    };

    for op in ops.iter().take(24) {
        match *op {
            Op::Join(u, room) => {
                let u = u % USERS;
                let r = client::join(&mut client, &name(u), url(room)).await;
                let user = users.entry(u).or_default();
                if room == Room::Fail {
                    assert!(!r.success && r.error.contains("refused"), "{r:?}");
                    continue;
                }
                assert!(r.success, "{r:?}");
                if let Some((old, _)) = user.session.take() {
                    assert!(old.ended().is_some(), "a replaced session was left open");
                    close(&mut closed, old);
                }
                let session = h.state.registry.get(&name(u)).expect("registered");
                user.session = Some((session, room));
            }
            Op::Open(u) => {
                let u = u % USERS;
                let first = AudioChunk {
                    user_id: name(u),
                    ..Default::default()
                };
                let opened = client::open_with(&mut client, first).await;
                let user = users.entry(u).or_default();
                match (&user.session, opened) {
                    (None, Err(s)) => assert_eq!(s.code(), Code::NotFound),
                    (Some((_, Room::Drop)), Err(s)) => assert_eq!(s.code(), Code::Unavailable),
                    (Some((s, _)), Ok(r)) => user.stream = Some((r.tx, r.rx, s.generation())),
                    (session, other) => panic!(
                        "StreamAudio for {session:?}: {other:?}",
                        session = session.is_some(),
                        other = other.map(|_| "an open stream"),
                    ),
                }
            }
            Op::Read(u) => {
                let u = u % USERS;
                let user = users.entry(u).or_default();
                let Some((_, s, generation)) = user.stream.as_mut() else {
                    continue;
                };
                let owner_live = user
                    .session
                    .as_ref()
                    .is_some_and(|(s, _)| s.generation() == *generation && s.ended().is_none());
                match next(s).await {
                    None => {} // nothing within the wait: a silent or echo room
                    Some(Ok(Some(chunk))) => {
                        assert_eq!((chunk.sample_rate, chunk.channels), (16_000, 1));
                        assert_eq!(chunk.pcm_data.len() % 2, 0);
                    }
                    Some(Ok(None)) => {
                        // Ended cleanly: replaced or left, never while its session is live (the
                        // model keeps one stream per user, so nothing takes it over).
                        let trailers = s.trailers().await.ok().flatten();
                        let reason = trailers.and_then(|t| t.get("x-bridge-end-reason").cloned());
                        assert!(reason.is_some(), "a clean end names its reason");
                        assert!(
                            !owner_live,
                            "the stream of a live session ended: {reason:?}"
                        );
                        user.stream = None;
                    }
                    Some(Err(status)) => {
                        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                        user.stream = None;
                    }
                }
            }
            Op::Send(u, n) => {
                let u = u % USERS;
                let user = users.entry(u).or_default();
                if let Some((tx, _, _)) = &user.stream {
                    let chunk = AudioChunk {
                        pcm_data: vec![n; 2 * usize::from(n % 64)],
                        ..Default::default()
                    };
                    let _ = tx.send(chunk).await;
                }
            }
            Op::Leave(u) => {
                let u = u % USERS;
                let req = LeaveRoomRequest {
                    user_id: name(u),
                    reason: "fuzz".into(),
                };
                let r = client
                    .leave_room(req)
                    .await
                    .expect("LeaveRoom status")
                    .into_inner();
                let user = users.entry(u).or_default();
                match user.session.take() {
                    Some((s, _)) => {
                        assert!(r.success, "{r:?}");
                        assert!(s.ended().is_some());
                        close(&mut closed, s);
                    }
                    None => assert_eq!(r.error, "session not found"),
                }
            }
            Op::Status(u) => {
                let u = u % USERS;
                let req = BridgeStatusRequest { user_id: name(u) };
                let r = client
                    .get_status(req)
                    .await
                    .expect("GetStatus status")
                    .into_inner();
                let user = users.entry(u).or_default();
                match &user.session {
                    None => assert!(!r.connected),
                    Some((_, Room::Drop)) => {} // the server drops it whenever it likes
                    Some((s, _)) => assert!(r.connected || s.ended().is_some(), "{r:?}"),
                }
            }
            Op::CloseStream(u) => {
                let u = u % USERS;
                let user = users.entry(u).or_default();
                let Some((_, _, generation)) = user.stream.take() else {
                    continue;
                };
                // Cancelling closes the session the stream was opened on, if it is still open.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if let Some((s, room)) = user.session.take() {
                    if s.generation() == generation && room != Room::Drop {
                        assert!(
                            s.ended().is_some(),
                            "a cancelled stream left its session open"
                        );
                    }
                    if s.ended().is_some() && s.generation() == generation {
                        close(&mut closed, s);
                        if room == Room::Drop {
                            // A lost room stays registered for GetStatus until it is swept.
                            user.session = h.state.registry.get(&name(u)).map(|s| (s, room));
                        }
                    } else {
                        user.session = Some((s, room));
                    }
                }
            }
        }
        // After every step: the registry agrees with the model, and closed rings stay closed.
        for (u, user) in &users {
            let registered = h.state.registry.get(&name(*u));
            match (&user.session, registered) {
                (Some((s, _)), Some(r)) => assert_eq!(s.generation(), r.generation()),
                (None, None) => {}
                (Some((s, _)), None) => {
                    assert!(s.ended().is_some(), "an open session is unregistered")
                }
                (None, Some(r)) => {
                    panic!("session {} registered but not in the model", r.generation())
                }
            }
        }
        for Closed(s, delivered) in &closed {
            let stats = s.ring_stats();
            assert_eq!(
                stats.delivered, *delivered,
                "a closed session's ring delivered a frame"
            );
            assert!(
                stats.skipped + stats.delivered + stats.dropped_full + stats.dropped_closed
                    <= stats.received
            );
        }
    }
    for u in 0..USERS {
        let req = LeaveRoomRequest {
            user_id: name(u),
            reason: "end of input".into(),
        };
        let _ = client.leave_room(req).await;
    }
}

fuzz_target!(|ops: Vec<Op>| {
    harness().rt.block_on(run(&ops));
});

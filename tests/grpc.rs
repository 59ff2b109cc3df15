//! Every RPC of the contract, over a real socket, against the simulated room.

mod common;

use std::time::Duration;

use common::*;
use livekit_bridge::proto::{self, AudioChunk};
use livekit_bridge::service::ServiceSettings;
use tonic::Code;

const TONE: &str = "sim://tone?hz=1000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_stream_status_leave() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;

    let joined = join_ok(&mut c, "alice", TONE).await;
    assert!(joined.participant_id.starts_with("PA_"));
    assert_eq!(joined.participant_count, 2);

    let mut stream = open(&mut c, "alice").await;
    let before = livekit_bridge::session::unix_ms();
    for _ in 0..20 {
        let f = stream.frame().await;
        assert_eq!(
            (f.sample_rate, f.channels, f.pcm_data.len()),
            (16_000, 1, 320)
        );
        assert!((before - 1000..=livekit_bridge::session::unix_ms()).contains(&f.timestamp_ms));
        let hz = zero_crossing_hz(&f.pcm_data);
        assert!((900.0..=1100.0).contains(&hz), "tone measured {hz} Hz");
    }

    let s = status(&mut c, "alice").await;
    assert!(s.connected);
    assert_eq!(
        (s.participant_id, s.participant_count),
        (joined.participant_id, 2)
    );
    assert_eq!(s.last_disconnect_at, 0);
    assert!(!s.server_version.is_empty());

    assert!(leave(&mut c, "alice").await.success);
    assert_eq!(
        stream.end().await,
        (Code::Ok, String::new(), Some("left".into()))
    );
    assert!(!status(&mut c, "alice").await.connected);
    let again = leave(&mut c, "alice").await;
    assert_eq!(
        (again.success, again.error.as_str()),
        (false, "session not found")
    );
    eventually("the room's threads to exit", || {
        bridge.state.backends.sim.live_callbacks() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_answer_and_other_sessions_carry_on() {
    let settings = ServiceSettings {
        connect_timeout: Duration::from_millis(200),
        first_chunk_timeout: Duration::from_millis(300),
        // No LiveKit library here: a real URL must fail cleanly, and nothing may leave the
        // machine.
        livekit_ffi_lib: "/nonexistent/liblivekit_ffi.so".into(),
        ..Default::default()
    };
    let bridge = Bridge::with(settings).await;
    let mut c = bridge.client().await;
    join_ok(&mut c, "bystander", TONE).await;
    let mut bystander = open(&mut c, "bystander").await;

    // JoinRoom: caller mistakes are INVALID_ARGUMENT; connect failures travel in the body.
    for (user, url, needle) in [
        ("", TONE, "user_id"),
        ("u", "", "livekit_url"),
        ("u", "http://example", "must start with"),
        ("u", "sim://noise", "unknown mode"),
        ("u", "sim://tone?colour=red", "unknown parameter"),
    ] {
        let err = c.join_room(join_request(user, url)).await.expect_err(url);
        assert_eq!(err.code(), Code::InvalidArgument, "{url}: {err:?}");
        assert!(err.message().contains(needle), "{url}: {}", err.message());
    }
    for (url, needle) in [
        ("sim://tone?fail=room%20is%20full", "room is full"),
        ("sim://tone?connect_delay_ms=5000", "timed out"),
        ("wss://livekit.invalid", "LIVEKIT_FFI_LIB"),
        ("ws://livekit.invalid", "scripts/fetch-livekit-ffi"),
    ] {
        let r = join(&mut c, "u", url).await;
        assert!(!r.success && r.error.contains(needle), "{url}: {r:?}");
    }
    assert!(
        !status(&mut c, "u").await.connected,
        "a failed join leaves nothing behind"
    );

    // StreamAudio: the first chunk names the session.
    let err = open_with(&mut c, first_chunk(""))
        .await
        .err()
        .expect("empty user");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = open_with(&mut c, first_chunk("nobody"))
        .await
        .err()
        .expect("unknown user");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("JoinRoom"));
    let (tx, rx) = tokio::sync::mpsc::channel::<AudioChunk>(1);
    drop(tx);
    let err = c
        .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("no first chunk");
    assert_eq!(err.code(), Code::InvalidArgument);
    let (tx, rx) = tokio::sync::mpsc::channel::<AudioChunk>(1);
    let err = c
        .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("silent client");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("first chunk"));
    drop(tx);

    // Bad client audio ends the stream with INVALID_ARGUMENT; the session stays.
    join_ok(&mut c, "u", "sim://echo").await;
    for (chunk, needle) in [
        (
            AudioChunk {
                pcm_data: vec![1, 2, 3],
                ..first_chunk("u")
            },
            "whole 16-bit samples",
        ),
        (
            AudioChunk {
                pcm_data: vec![1, 2],
                sample_rate: 48_000,
                ..first_chunk("u")
            },
            "sample_rate",
        ),
        (
            AudioChunk {
                pcm_data: vec![1, 2],
                channels: 2,
                ..first_chunk("u")
            },
            "channels",
        ),
    ] {
        let mut s = open(&mut c, "u").await;
        s.send(chunk).await;
        let (code, message, _) = s.end().await;
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains(needle), "{message}");
        assert!(status(&mut c, "u").await.connected);
    }

    // Oversized messages are refused by size, not by crashing anything.
    let big = AudioChunk {
        pcm_data: vec![0; 11 << 20],
        ..first_chunk("u")
    };
    let err = match open_with(&mut c, big).await {
        Err(e) => e,
        Ok(mut s) => {
            let (code, message, _) = s.end().await;
            tonic::Status::new(code, message)
        }
    };
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");
    let mut huge = join_request("u2", TONE);
    huge.token = "x".repeat(11 << 20);
    let err = c.join_room(huge).await.expect_err("oversized JoinRoom");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");

    // GetStatus and LeaveRoom for unknown and empty users.
    let s = status(&mut c, "ghost").await;
    assert!(!s.connected && s.participant_id.is_empty());
    let err = c
        .get_status(proto::BridgeStatusRequest::default())
        .await
        .expect_err("empty");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .leave_room(proto::LeaveRoomRequest::default())
        .await
        .expect_err("empty");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Through all of it, the bystander's audio kept flowing.
    for _ in 0..5 {
        assert_eq!(bystander.frame().await.pcm_data.len(), 320);
    }
    assert!(status(&mut c, "bystander").await.connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_audio_is_published_and_echoes_back_byte_exact() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    join_ok(&mut c, "echo", "sim://echo?frame_ms=10").await;
    let mut stream = open(&mut c, "echo").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        bridge
            .state
            .backends
            .sim
            .published_tracks("echo")
            .is_empty(),
        "the empty first chunk creates no track"
    );

    let sent: Vec<u8> = (0..3200u32).map(|i| (i * 7 % 251) as u8).collect();
    stream
        .send(AudioChunk {
            pcm_data: sent.clone(),
            track_id: 1,
            ..first_chunk("echo")
        })
        .await;
    let mut got = Vec::new();
    while got.len() < sent.len() {
        got.extend(stream.frame().await.pcm_data);
    }
    assert_eq!(got, sent, "published audio came back byte for byte");
    assert_eq!(
        bridge.state.backends.sim.published_tracks("echo"),
        ["app_audio"]
    );

    stream
        .send(AudioChunk {
            pcm_data: vec![0; 640],
            track_id: 9,
            ..first_chunk("echo")
        })
        .await;
    let _ = stream.frame().await;
    assert_eq!(
        bridge.state.backends.sim.published_tracks("echo"),
        ["app_audio", "track_9"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_and_empty_payloads_follow_the_contract_rule() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    // 1 ms packets are a sequence byte and 16 samples: 33 bytes, odd, so they lose their first
    // byte and arrive as 32. (Empty and 1-byte packets are covered by the payload unit tests.)
    join_ok(&mut c, "odd", "sim://tone?frame_ms=1&pace=max&frames=100").await;
    let mut s = open(&mut c, "odd").await;
    for _ in 0..100 {
        assert_eq!(s.frame().await.pcm_data.len(), 32);
    }
    let stats = bridge
        .state
        .registry
        .get("odd")
        .expect("session")
        .ring_stats();
    assert_eq!(stats.skipped, 0);
    assert_eq!(stats.delivered, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_target_identity_means_the_user_id() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    let mut req = join_request("ivy", "sim://tone?identity=ivy");
    req.target_identity.clear();
    assert!(c.join_room(req).await.expect("join").into_inner().success);
    open(&mut c, "ivy").await.frame().await;
}

/// The README's first join names no room and no token, where LiveKit's token would name both:
/// independent users joined that way each get a room of their own and never kick each other,
/// two of them or a hundred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_who_name_no_room_or_token_never_collide() {
    for users in [2, 100] {
        let bridge = Bridge::start().await;
        let mut c = bridge.client().await;
        let names: Vec<String> = (0..users).map(|n| format!("hand-{n}")).collect();
        let mut streams = Vec::new();
        for user in &names {
            let req = proto::JoinRoomRequest {
                user_id: user.clone(),
                livekit_url: "sim://tone?hz=440".into(),
                target_identity: user.clone(),
                ..Default::default()
            };
            let joined = c.join_room(req).await.expect("join").into_inner();
            assert!(joined.success, "{user}: {}", joined.error);
            streams.push(open(&mut c, user).await);
        }
        // Every stream still carries its tone once all have joined: nobody was kicked.
        for (user, stream) in names.iter().zip(&mut streams) {
            let hz = zero_crossing_hz(&stream.frame().await.pcm_data);
            assert!(
                (400.0..=480.0).contains(&hz),
                "{user}: tone measured {hz} Hz"
            );
            let s = status(&mut c, user).await;
            assert!(s.connected, "{user} of {users} lost its room");
            assert_eq!(s.last_disconnect_at, 0, "{user} of {users} was kicked");
        }
        assert_eq!(bridge.state.live_sessions(), users);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_count_follows_room_events() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    let joined = join_ok(
        &mut c,
        "pat",
        "sim://silent?participants=3&join_after_ms=50",
    )
    .await;
    assert_eq!(joined.participant_count, 3);
    for _ in 0..100 {
        if status(&mut c, "pat").await.participant_count == 4 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("GetStatus never saw the participant who joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stream_takes_over_and_the_first_ends_cleanly() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    join_ok(&mut c, "bob", TONE).await;
    let mut first = open(&mut c, "bob").await;
    first.frame().await;
    let mut second = open(&mut c, "bob").await;
    assert_eq!(first.end().await.2.as_deref(), Some("stream_taken_over"));
    for _ in 0..10 {
        second.frame().await;
    }
    assert!(status(&mut c, "bob").await.connected);
    let stats = bridge
        .state
        .registry
        .get("bob")
        .expect("session")
        .ring_stats();
    assert_eq!(stats.dropped_closed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_session_ends_its_stream_cleanly_and_the_new_one_works() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    join_ok(&mut c, "carol", "sim://tone?hz=1000").await;
    let mut old = open(&mut c, "carol").await;
    old.frame().await;
    join_ok(&mut c, "carol", "sim://tone?hz=3000").await;
    assert_eq!(
        old.end().await,
        (Code::Ok, String::new(), Some("replaced".into()))
    );
    let mut new = open(&mut c, "carol").await;
    for _ in 0..10 {
        let hz = zero_crossing_hz(&new.frame().await.pcm_data);
        assert!(
            (2700.0..=3300.0).contains(&hz),
            "only the new room's audio: {hz} Hz"
        );
    }
}

/// LiveKit kicks the older participant of an identity when a newer one joins. A replacement
/// here ends the old stream OK `replaced` whichever comes first: the kick (it lands before the
/// newer join answers) or the local close (the kick is delayed past it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_here_ends_ok_replaced_whether_the_kick_or_the_close_comes_first() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    for delay_ms in [0, 300] {
        let user = format!("kicked-{delay_ms}");
        join_ok(&mut c, &user, "sim://tone").await;
        let mut old = open(&mut c, &user).await;
        old.frame().await;
        let newer = format!("sim://tone?hz=3000&kick_delay_ms={delay_ms}");
        join_ok(&mut c, &user, &newer).await;
        let (code, _, reason) = old.end().await;
        assert_eq!(
            (code, reason.as_deref()),
            (Code::Ok, Some("replaced")),
            "kick {delay_ms} ms after the newer join"
        );
        let mut new = open(&mut c, &user).await;
        let until = std::time::Instant::now() + Duration::from_millis(500);
        while std::time::Instant::now() < until {
            let hz = zero_crossing_hz(&new.frame().await.pcm_data);
            assert!(
                (2700.0..=3300.0).contains(&hz),
                "the new room plays on: {hz} Hz"
            );
        }
    }
}

/// Two bridges joined as the same identity: the newer takes the room, the older's stream ends
/// OK `replaced_elsewhere` (so its backend does not rejoin), and nothing kicks back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_bridge_taking_the_identity_ends_this_stream_ok_and_nothing_fights_back() {
    let (a, b) = (Bridge::start().await, Bridge::start().await);
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let url = "sim://tone?server=two-bridges";
    join_ok(&mut ca, "frank", url).await;
    let mut on_a = open(&mut ca, "frank").await;
    on_a.frame().await;
    join_ok(&mut cb, "frank", url).await;
    let (code, _, reason) = on_a.end().await;
    assert_eq!(
        (code, reason.as_deref()),
        (Code::Ok, Some("replaced_elsewhere"))
    );
    let st = status(&mut ca, "frank").await;
    assert!(!st.connected, "{st:?}");
    assert!(
        st.last_disconnect_reason.contains("DUPLICATE_IDENTITY"),
        "{st:?}"
    );
    // A client that opens the stream again is told the same, OK: no reason to rejoin.
    let mut again = open(&mut ca, "frank").await;
    let (code, _, reason) = again.end().await;
    assert_eq!(
        (code, reason.as_deref()),
        (Code::Ok, Some("replaced_elsewhere"))
    );
    let mut on_b = open(&mut cb, "frank").await;
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < until {
        on_b.frame().await;
    }
    assert!(status(&mut cb, "frank").await.connected);
}

/// What the server says when it closes the room decides the ending: an operator's removal or
/// deletion and another bridge's identity end OK; anything a rejoin can fix ends UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_disconnects_end_ok_when_a_rejoin_would_fight_and_unavailable_when_it_can_work() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    for (cause, code, reason) in [
        ("removed", Code::Ok, "removed"),
        ("deleted", Code::Ok, "room_deleted"),
        ("duplicate_identity", Code::Ok, "replaced_elsewhere"),
        ("lost", Code::Unavailable, "room_lost"),
    ] {
        let user = format!("closed-{cause}");
        let url = format!("sim://tone?drop_after_ms=100&drop_reason={cause}");
        join_ok(&mut c, &user, &url).await;
        let mut s = open(&mut c, &user).await;
        let (got, _, why) = s.end().await;
        assert_eq!((got, why.as_deref()), (code, Some(reason)), "{cause}");
        assert!(!status(&mut c, &user).await.connected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_joins_leave_exactly_one_live_room() {
    let bridge = Bridge::start().await;
    let c = bridge.client().await;
    let joins = (0..100).map(|_| {
        let mut c = c.clone();
        tokio::spawn(async move { join(&mut c, "dave", "sim://silent?linger_ms=0").await })
    });
    let mut won = 0;
    for j in joins {
        let r = j.await.expect("join task");
        won += usize::from(r.success);
        assert!(r.success || r.error.contains("superseded"), "{r:?}");
    }
    assert!(won >= 1);
    let counts = bridge.state.registry.counts();
    assert_eq!((counts.registered, counts.connected), (1, 1));
    // A silent room has one callback source (its reliable path); every other room has closed
    // and its sources have finished.
    eventually("99 rooms to close", || {
        bridge.state.backends.sim.live_callbacks() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_lost_by_the_server_ends_the_stream_unavailable() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    join_ok(&mut c, "erin", "sim://tone?drop_after_ms=150").await;
    let mut s = open(&mut c, "erin").await;
    let (code, message, reason) = s.end().await;
    assert_eq!(
        (code, reason.as_deref()),
        (Code::Unavailable, Some("room_lost"))
    );
    assert!(message.contains("server closed the room"), "{message}");
    let st = status(&mut c, "erin").await;
    assert!(!st.connected);
    assert!(st.last_disconnect_at > 0);
    assert!(st.last_disconnect_reason.contains("server closed the room"));
    let err = open_with(&mut c, first_chunk("erin"))
        .await
        .err()
        .expect("room is gone");
    assert_eq!(err.code(), Code::Unavailable);
    join_ok(&mut c, "erin", TONE).await;
    open(&mut c, "erin").await.frame().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cancels_closes_its_session_and_only_that_one() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    join_ok(&mut c, "frank", TONE).await;
    join_ok(&mut c, "grace", TONE).await;
    let mut frank = open(&mut c, "frank").await;
    let mut grace = open(&mut c, "grace").await;
    frank.frame().await;
    drop(frank);
    eventually("frank's session to close", || {
        bridge.state.registry.get("frank").is_none()
    })
    .await;
    for _ in 0..10 {
        grace.frame().await;
    }
    assert!(status(&mut c, "grace").await.connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_real_numbers_and_not_serving_while_draining() {
    let mut bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    join_ok(&mut c, "hank", TONE).await;
    let mut s = open(&mut c, "hank").await;
    s.frame().await;
    let h = c
        .health_check(proto::HealthCheckRequest::default())
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        h.status,
        proto::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!((h.active_sessions, h.active_streams), (1, 1));
    let unknown = c
        .health_check(proto::HealthCheckRequest {
            service: "other".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        unknown.status,
        proto::health_check_response::ServingStatus::ServiceUnknown as i32
    );

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", bridge.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut std_health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = |service: &str| tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    };
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let r = std_health
        .check(check(proto::SERVICE_NAME))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(r.status, serving);
    let mut watch = std_health
        .watch(check(proto::SERVICE_NAME))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        watch.message().await.expect("watch").map(|r| r.status),
        Some(serving)
    );

    bridge.shutdown();
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    assert_eq!(
        watch.message().await.expect("watch").map(|r| r.status),
        Some(not_serving)
    );
    let (code, _, reason) = s.end().await;
    assert_eq!(
        (code, reason.as_deref()),
        (Code::Unavailable, Some("shutdown"))
    );
    // Once clients let go of their last streams the server stops at once, not at the deadline.
    drop((watch, std_health, s, c));
    let served = tokio::time::timeout(Duration::from_secs(2), &mut bridge.served).await;
    assert!(
        matches!(served, Ok(Ok(Ok(())))),
        "server stopped promptly: {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_contract_and_health_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let bridge = Bridge::start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", bridge.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = tokio_stream::iter([
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            proto::SERVICE_NAME.into(),
        )),
    ]);
    let mut replies = client
        .server_reflection_info(requests)
        .await
        .expect("reflection")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = replies
        .message()
        .await
        .expect("reply")
        .and_then(|r| r.message_response)
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&proto::SERVICE_NAME), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) = replies
        .message()
        .await
        .expect("reply")
        .and_then(|r| r.message_response)
    else {
        panic!("expected the contract's descriptor");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ended_session_is_freed() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    let mut ended = Vec::new();
    for i in 0..200 {
        // A connection per 20 sessions: a client's h2 counts each DATA frame that arrives for
        // a stream it dropped and already forgot as an error, and closes its connection after
        // 1,024 of them (GOAWAY too_many_internal_resets, hyperium/h2#856); dropping streams of
        // a room that pushes as fast as it can reaches that on a loaded machine.
        if i % 20 == 0 {
            c = bridge.client().await;
        }
        let user = format!("churn-{}", i % 4);
        join_ok(&mut c, &user, "sim://tone?pace=max&linger_ms=5").await;
        let session = bridge.state.registry.get(&user).expect("session");
        ended.push(std::sync::Arc::downgrade(&session));
        drop(session);
        let mut s = open(&mut c, &user).await;
        s.frame().await;
        match i % 3 {
            0 => assert!(leave(&mut c, &user).await.success),
            1 => drop(s),
            _ => {} // replaced by the next join for this user
        }
    }
    for u in 0..4 {
        leave(&mut c, &format!("churn-{u}")).await;
    }
    eventually("every session, ring and room to be freed", || {
        ended.iter().all(|w| w.strong_count() == 0)
    })
    .await;
    assert!(bridge.state.registry.is_empty());
    eventually("every room thread to exit", || {
        bridge.state.backends.sim.live_callbacks() == 0
    })
    .await;
}

/// An operator can see which side is silent: GetStatus's response metadata says how long ago
/// the target's audio last arrived and how long ago audio last went to the stream; HealthCheck
/// counts live sessions whose target has been silent for over 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_is_visible_per_session_and_in_health() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    join_ok(&mut c, "talking", TONE).await;
    join_ok(&mut c, "quiet", "sim://silent").await;
    let mut s = open(&mut c, "talking").await;
    s.frame().await;
    let headers = |user: &str| {
        let mut c = c.clone();
        let req = proto::BridgeStatusRequest {
            user_id: user.into(),
        };
        async move {
            let r = c.get_status(req).await.expect("GetStatus");
            let get = |k: &str| {
                r.metadata()
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
                    .unwrap_or_else(|| panic!("no {k}"))
            };
            (
                get("x-bridge-session-state"),
                get("x-bridge-target-audio-age-s"),
                get("x-bridge-delivered-audio-age-s"),
            )
        }
    };
    let (state, target, delivered) = headers("talking").await;
    assert_eq!(state, "connected");
    let age = |s: &str| s.parse::<f64>().expect("seconds");
    assert!(
        age(&target) < 1.0 && age(&delivered) < 1.0,
        "{target} {delivered}"
    );
    let (_, _, delivered) = headers("quiet").await;
    assert_eq!(delivered, "never");
    tokio::time::sleep(Duration::from_millis(5300)).await;
    let (_, target, _) = headers("quiet").await;
    assert!(age(&target) > 5.0, "{target}");
    let health = c
        .health_check(proto::HealthCheckRequest::default())
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.metadata["sessions_without_audio_5s"], "1");
    assert_eq!(health.metadata["sessions_reconnecting"], "0");
}

/// A JoinRoom stuck connecting loses at once to a newer JoinRoom or a LeaveRoom: the newer one
/// does not wait out its connect, and the stuck one answers `superseded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_stuck_connecting_is_voided_at_once_by_a_newer_join_or_a_leave() {
    let bridge = Bridge::start().await;
    let mut c = bridge.client().await;
    let stuck = |c: &Client| {
        let mut c = c.clone();
        tokio::spawn(async move { join(&mut c, "gina", "sim://tone?connect_delay_ms=8000").await })
    };
    let first = stuck(&c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    join_ok(&mut c, "gina", TONE).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the newer join waited {:?}",
        started.elapsed()
    );
    let first = first.await.expect("join task");
    assert!(
        !first.success && first.error.contains("superseded"),
        "{first:?}"
    );
    let mut stream = open(&mut c, "gina").await;
    stream.frame().await;

    let second = stuck(&c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(leave(&mut c, "gina").await.success);
    let second = tokio::time::timeout(Duration::from_secs(1), second)
        .await
        .expect("the stuck join answers at once")
        .expect("join task");
    assert!(
        !second.success && second.error.contains("superseded"),
        "{second:?}"
    );
    assert_eq!(stream.end().await.2.as_deref(), Some("left"));
    assert!(bridge.state.registry.is_empty());
}

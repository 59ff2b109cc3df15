//! LiveKit's real SDK library, loaded in process, without a server: a join to a server that is
//! not there is answered `success: false` within the connect timeout (the library loaded,
//! took the Connect request and called back with its failure), and a simulated session beside
//! it carries on. (A wrong or missing library is covered in tests/grpc.rs; rooms on LiveKit's
//! own server by the end-to-end tests.) Only loopback is contacted.

mod common;

use std::time::{Duration, Instant};

use common::process::{Launch, scratch};
use common::*;
use livekit_bridge::proto::live_kit_bridge_client::LiveKitBridgeClient;
use livekit_bridge::service::ServiceSettings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_the_join_and_nothing_else() {
    let bridge = Bridge::with(ServiceSettings {
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let mut c = bridge.client().await;
    join_ok(&mut c, "bystander", "sim://tone").await;
    let mut bystander = open(&mut c, "bystander").await;

    // Nothing listens on port 1 of loopback: the library's connect must fail, not hang.
    let asked = Instant::now();
    let r = join(&mut c, "u", "ws://127.0.0.1:1").await;
    assert!(!r.success, "{r:?}");
    assert!(r.error.contains("could not connect"), "{}", r.error);
    assert!(
        asked.elapsed() < Duration::from_secs(6),
        "took {:?}",
        asked.elapsed()
    );
    eprintln!(
        "JoinRoom ws://127.0.0.1:1 -> {:?} after {:?}",
        r.error,
        asked.elapsed()
    );
    assert!(!status(&mut c, "u").await.connected);

    // The bystander never noticed.
    for _ in 0..20 {
        bystander.frame().await;
    }
    assert!(status(&mut c, "bystander").await.connected);
}

/// Joins wait their turn in the front (`BRIDGE_JOINS_AT_ONCE` is one budget for the whole
/// bridge, whichever worker a join goes to). A join voided while it waits (its user left)
/// never reaches a worker, answers at once, and holds no room slot in the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_voided_while_it_waits_its_turn_holds_nothing() {
    // A server that accepts and never answers: the first join holds the only turn until the
    // connect timeout. Loopback only.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}", silent.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let bridge = Bridge::with(ServiceSettings {
        connect_timeout: Duration::from_secs(4),
        joins_at_once: 1,
        room_workers: 1,
        ..Default::default()
    })
    .await;
    let rooms = || bridge.state.backends.worker_counts().sessions;
    let c = bridge.client().await;
    let holder = tokio::spawn({
        let (mut c, url) = (c.clone(), url.clone());
        async move { join(&mut c, "holder", &url).await }
    });
    eventually("the holder's join is in its worker", || rooms() == [1]).await;
    let waiter = tokio::spawn({
        let (mut c, url) = (c.clone(), url.clone());
        async move { join(&mut c, "waiter", &url).await }
    });
    eventually("the waiter has a slot", || rooms() == [2]).await;
    let asked = Instant::now();
    leave(&mut c.clone(), "waiter").await;
    let waited = waiter.await.expect("waiter");
    assert!(!waited.success, "{waited:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "the voided join answered after {:?}, with the holder still connecting",
        asked.elapsed()
    );
    // The waiter's slot is free while the holder still holds the turn.
    eventually("the waiter's slot let go", || rooms() == [1]).await;
    let held = holder.await.expect("holder");
    assert!(!held.success, "{held:?}");
    eventually("every slot let go", || rooms() == [0]).await;
}

/// `BRIDGE_LIVEKIT_LOGS`: captured, the library's records are in the bridge's log under
/// `livekit_ffi`; off, the library writes nothing at all (neither through the bridge nor by
/// its own logger, which would read the bridge's `RUST_LOG`), and a join's failure still says
/// why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_librarys_logs_are_captured_or_off() {
    for mode in ["captured", "off"] {
        let dir = scratch(&format!("library-logs-{mode}"));
        let bridge = Launch::on_socket(&dir.join("bridge.sock"))
            .env("RUST_LOG", "debug")
            .env("BRIDGE_LIVEKIT_LOGS", mode)
            .env("BRIDGE_CONNECT_TIMEOUT_MS", "5000")
            .log_to(&dir.join("stderr.log"))
            .start();
        let mut c = LiveKitBridgeClient::new(unix::unix_channel(bridge.socket()).await);
        let r = join(&mut c, "u", "ws://127.0.0.1:1").await;
        assert!(
            !r.success && r.error.contains("could not connect"),
            "{mode}: {r:?}"
        );
        bridge.stop();
        let log = std::fs::read_to_string(dir.join("stderr.log")).expect("the log");
        let library =
            |line: &&str| line.contains("livekit_ffi") || line.contains("signal connection failed");
        match mode {
            "captured" => assert!(
                log.lines()
                    .any(|l| l.contains("livekit_ffi") && l.contains("127.0.0.1:1")),
                "no record of the library's in the log:\n{log}"
            ),
            _ => assert!(
                !log.lines().any(|l| library(&l)),
                "the library wrote to the log:\n{log}"
            ),
        }
    }
}

//! LiveKit's real SDK library, loaded in process, without a server: a join to a server that is
//! not there is answered `success: false` within the connect timeout (the library loaded,
//! took the Connect request and called back with its failure), and a simulated session beside
//! it carries on. (A wrong or missing library is covered in tests/grpc.rs; rooms on LiveKit's
//! own server by the end-to-end tests.) Only loopback is contacted.

mod common;

use std::time::{Duration, Instant};

use common::*;
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

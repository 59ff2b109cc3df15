//! What the tests and benchmarks share: an in-process bridge served over a real TCP socket on
//! loopback, the release binary as a process ([`process`]), clients, fixtures and `/proc`.
//! Every test binary uses a different subset, hence the one `dead_code` allowance here.
#![allow(dead_code)]

pub mod client;
pub mod files;
pub mod http;
pub mod play;
pub mod process;
pub mod procfs;
pub mod unix;

pub use client::*;

use std::sync::Arc;
use std::time::Duration;

use livekit_bridge::proto::live_kit_bridge_client::LiveKitBridgeClient;
use livekit_bridge::server;
use livekit_bridge::service::{BridgeState, ServiceSettings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub struct Bridge {
    pub state: Arc<BridgeState>,
    pub addr: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub served: JoinHandle<Result<(), server::ServeError>>,
}

impl Bridge {
    pub async fn start() -> Self {
        Self::with(ServiceSettings::default()).await
    }

    pub async fn with(mut settings: ServiceSettings) -> Self {
        // Real rooms run in room workers, which are the bridge's binary, not this test's.
        settings
            .room_worker_exe
            .get_or_insert_with(|| env!("CARGO_BIN_EXE_livekit-bridge").into());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = BridgeState::new(settings).expect("valid settings");
        let (tx, rx) = oneshot::channel::<()>();
        let served = tokio::spawn(server::run(
            state.clone(),
            server::tcp_incoming(listener),
            async {
                let _ = rx.await;
            },
            Duration::from_secs(5),
        ));
        Self {
            state,
            addr,
            shutdown: Some(tx),
            served,
        }
    }

    pub async fn client(&self) -> Client {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        LiveKitBridgeClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls `cond` every 10 ms for up to 5 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Dominant frequency of 16 kHz PCM16 LE, from zero crossings.
pub fn zero_crossing_hz(pcm: &[u8]) -> f64 {
    let samples: Vec<i16> = pcm
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    crossings as f64 / 2.0 / (samples.len() as f64 / 16_000.0)
}

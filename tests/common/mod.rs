//! An in-process bridge served over a real TCP socket on loopback, and helpers to drive it.
#![allow(dead_code)]

pub mod http;

use std::sync::Arc;
use std::time::Duration;

use livekit_bridge::proto::live_kit_bridge_client::LiveKitBridgeClient;
use livekit_bridge::proto::{self, AudioChunk};
use livekit_bridge::server;
use livekit_bridge::service::{BridgeState, ServiceSettings};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

pub type Client = LiveKitBridgeClient<Channel>;

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

    pub async fn with(settings: ServiceSettings) -> Self {
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

pub fn join_request(user: &str, url: &str) -> proto::JoinRoomRequest {
    proto::JoinRoomRequest {
        user_id: user.into(),
        room_name: user.into(),
        token: "test-token".into(),
        livekit_url: url.into(),
        target_identity: user.into(),
    }
}

pub async fn join(client: &mut Client, user: &str, url: &str) -> proto::JoinRoomResponse {
    client
        .join_room(join_request(user, url))
        .await
        .expect("JoinRoom status")
        .into_inner()
}

pub async fn join_ok(client: &mut Client, user: &str, url: &str) -> proto::JoinRoomResponse {
    let r = join(client, user, url).await;
    assert!(r.success, "JoinRoom({user}, {url}) failed: {}", r.error);
    r
}

pub async fn leave(client: &mut Client, user: &str) -> proto::LeaveRoomResponse {
    let req = proto::LeaveRoomRequest {
        user_id: user.into(),
        reason: "test".into(),
    };
    client
        .leave_room(req)
        .await
        .expect("LeaveRoom status")
        .into_inner()
}

pub async fn status(client: &mut Client, user: &str) -> proto::BridgeStatusResponse {
    let req = proto::BridgeStatusRequest {
        user_id: user.into(),
    };
    client
        .get_status(req)
        .await
        .expect("GetStatus status")
        .into_inner()
}

/// An open StreamAudio: a sender for client chunks and the response stream.
pub struct Stream {
    pub tx: mpsc::Sender<AudioChunk>,
    pub rx: Streaming<AudioChunk>,
}

pub fn first_chunk(user: &str) -> AudioChunk {
    AudioChunk {
        user_id: user.into(),
        sample_rate: 16_000,
        channels: 1,
        ..Default::default()
    }
}

/// Opens StreamAudio with `first` as the first chunk.
pub async fn open_with(client: &mut Client, first: AudioChunk) -> Result<Stream, Status> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(first).await.expect("queue first chunk");
    let response = client.stream_audio(ReceiverStream::new(rx)).await?;
    Ok(Stream {
        tx,
        rx: response.into_inner(),
    })
}

pub async fn open(client: &mut Client, user: &str) -> Stream {
    open_with(client, first_chunk(user))
        .await
        .expect("StreamAudio")
}

impl Stream {
    /// The next room audio chunk, failing the test after 5 s.
    pub async fn next(&mut self) -> Result<Option<AudioChunk>, Status> {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("no stream message within 5 s")
    }

    pub async fn frame(&mut self) -> AudioChunk {
        self.next()
            .await
            .expect("stream status")
            .expect("a frame, not the end")
    }

    /// Reads until the stream ends; the end status (OK included) and the end-reason trailer.
    pub async fn end(&mut self) -> (Code, String, Option<String>) {
        loop {
            match self.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => {
                    let trailers = self.rx.trailers().await.ok().flatten();
                    let reason = trailers.and_then(|t| {
                        t.get("x-bridge-end-reason")
                            .and_then(|v| v.to_str().ok().map(String::from))
                    });
                    return (Code::Ok, String::new(), reason);
                }
                Err(s) => {
                    let reason = s
                        .metadata()
                        .get("x-bridge-end-reason")
                        .and_then(|v| v.to_str().ok().map(String::from));
                    return (s.code(), s.message().to_string(), reason);
                }
            }
        }
    }

    pub async fn send(&self, chunk: AudioChunk) {
        self.tx.send(chunk).await.expect("send chunk");
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

//! The calls every driver of the bridge makes (tests and benchmarks): join a room, open its
//! StreamAudio, read it to its end.

use std::time::Duration;

use livekit_bridge::proto::live_kit_bridge_client::LiveKitBridgeClient;
use livekit_bridge::proto::{self, AudioChunk};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

pub type Client = LiveKitBridgeClient<Channel>;

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

//! The gRPC service of the wire contract (`mentra.livekit.bridge.LiveKitBridge`), one file per
//! RPC family: `join` (JoinRoom, LeaveRoom), `stream` (StreamAudio), `play` (PlayAudio,
//! StopAudio), `status` (HealthCheck, GetStatus), over the state they share (`state`).
//!
//! Connect failures travel in JoinRoom's response body (`success: false`), as the backend
//! expects; a request the caller got wrong gets INVALID_ARGUMENT with what to fix; a session
//! that does not exist gets NOT_FOUND (LeaveRoom and GetStatus answer in the body, as the
//! contract says).

pub mod admission;
pub mod checks;
mod join;
mod play;
mod state;
mod status;
mod stream;

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::{self, live_kit_bridge_server::LiveKitBridge};
use state::OpenStream;
pub use state::{BridgeState, ServiceSettings, StateError, TlsPem};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub(super) fn clamp_i32(n: impl TryInto<i32>) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

/// The gRPC face of [`BridgeState`].
#[derive(Clone)]
pub struct Bridge {
    state: Arc<BridgeState>,
}

impl Bridge {
    pub fn new(state: Arc<BridgeState>) -> Self {
        Self { state }
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl LiveKitBridge for Bridge {
    type StreamAudioStream = EventStream<proto::AudioChunk>;
    type PlayAudioStream = EventStream<proto::PlayAudioEvent>;

    async fn stream_audio(
        &self,
        request: Request<Streaming<proto::AudioChunk>>,
    ) -> Result<Response<Self::StreamAudioStream>, Status> {
        let stream = stream::open(self.state.clone(), request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn join_room(
        &self,
        request: Request<proto::JoinRoomRequest>,
    ) -> Result<Response<proto::JoinRoomResponse>, Status> {
        join::join_room(&self.state, request).await
    }

    async fn leave_room(
        &self,
        request: Request<proto::LeaveRoomRequest>,
    ) -> Result<Response<proto::LeaveRoomResponse>, Status> {
        join::leave_room(&self.state, request).await
    }

    async fn play_audio(
        &self,
        request: Request<proto::PlayAudioRequest>,
    ) -> Result<Response<Self::PlayAudioStream>, Status> {
        let events = play::play(&self.state, request.into_inner())?;
        Ok(Response::new(events))
    }

    async fn stop_audio(
        &self,
        request: Request<proto::StopAudioRequest>,
    ) -> Result<Response<proto::StopAudioResponse>, Status> {
        let response = play::stop(&self.state, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn health_check(
        &self,
        request: Request<proto::HealthCheckRequest>,
    ) -> Result<Response<proto::HealthCheckResponse>, Status> {
        status::health_check(&self.state, request)
    }

    async fn get_status(
        &self,
        request: Request<proto::BridgeStatusRequest>,
    ) -> Result<Response<proto::BridgeStatusResponse>, Status> {
        status::get_status(&self.state, request)
    }
}

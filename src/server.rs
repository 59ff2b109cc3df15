//! Serving the bridge: the contract's service, `grpc.health.v1.Health`, server reflection, and
//! a graceful drain with a deadline.
//!
//! [`run`] serves until `shutdown` resolves. Then, in order: health says NOT_SERVING, new joins
//! and streams are refused, every session is closed (each stream ends UNAVAILABLE with reason
//! `shutdown`, so the backend rejoins on another bridge), the server stops accepting and waits
//! for connections to finish. If that takes longer than the grace period, counted from the
//! signal, `run` returns anyway.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic_health::ServingStatus;

use crate::auth::RequireToken;
use crate::listener::{self, Conn, ConnectionLimits};
use crate::proto::{self, live_kit_bridge_server::LiveKitBridgeServer};
use crate::service::checks::MAX_MESSAGE_BYTES;
use crate::service::{Bridge, BridgeState};

/// HTTP/2 pings to every client connection, so a backend that vanished without closing its
/// connection (a partition, a frozen host) is noticed and its sessions closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Accepted TCP connections (Nagle off) within the default [`ConnectionLimits`].
pub fn tcp_incoming(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<Conn<tokio::net::TcpStream>>> + Send + 'static {
    listener::incoming(listener, ConnectionLimits::default())
}

/// Serves `state` on `incoming` until `shutdown` resolves, then drains within `grace`.
pub async fn run<I, IO, IE>(
    state: Arc<BridgeState>,
    incoming: I,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServeError>
where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<LiveKitBridgeServer<Bridge>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let bridge = LiveKitBridgeServer::new(Bridge::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let signalled = CancellationToken::new();
    let drained = CancellationToken::new();
    let sweeper = tokio::spawn(state.clone().housekeeping(signalled.clone()));
    tokio::spawn({
        let (state, signalled, drained) = (state.clone(), signalled.clone(), drained.clone());
        async move {
            shutdown.await;
            signalled.cancel();
            tracing::info!("shutting down: draining sessions");
            health
                .set_not_serving::<LiveKitBridgeServer<Bridge>>()
                .await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            state.drain().await;
            drained.cancel();
        }
    });

    let auth = state.settings.auth_token.as_deref().map(RequireToken::new);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &state.settings.tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert, &tls.key);
        builder =
            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let serve = builder
        .layer(tower::util::option_layer(auth))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(bridge)
        .serve_with_incoming_shutdown(incoming, drained.clone().cancelled_owned());
    let deadline = async {
        signalled.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        r = serve => r.map_err(ServeError::from),
        () = deadline => {
            tracing::warn!(?grace, "shutdown deadline passed; dropping remaining connections");
            Ok(())
        }
    };
    sweeper.abort();
    result
}

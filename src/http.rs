//! The operators' HTTP listener (`BRIDGE_HTTP_ADDR`), in the convention of LiveKit's own media
//! services:
//! - `/metrics`: Prometheus text exposition (src/metrics.rs);
//! - `/livez`: 200 while the process serves;
//! - `/readyz`: 200 when it can take new sessions; 503 while draining, or when a ws:// session
//!   is impossible (LiveKit's library missing), with the reason in the body;
//! - `/availability`: 200 with headroom, 429 at capacity (BRIDGE_MAX_SESSIONS or
//!   BRIDGE_MAX_CPU), 503 while draining; the body says which.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::service::BridgeState;

/// The listener's routes over `state`.
pub fn router(state: Arc<BridgeState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/availability", get(availability))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<BridgeState>) {
    if let Err(e) = axum::serve(listener, router(state)).await {
        tracing::error!(error = %e, "the operators' HTTP listener stopped");
    }
}

async fn metrics(State(state): State<Arc<BridgeState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.render_metrics(),
    )
}

async fn readyz(State(state): State<Arc<BridgeState>>) -> (StatusCode, String) {
    if state.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    match state.backends.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn availability(State(state): State<Arc<BridgeState>>) -> (StatusCode, String) {
    if state.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    let live = state.live_sessions();
    match state.admission.admit(live) {
        Ok(()) => {
            let left = state
                .admission
                .sessions_left(live)
                .map_or_else(|| "unlimited".into(), |n| n.to_string());
            (
                StatusCode::OK,
                format!("available: {live} sessions, {left} left\n"),
            )
        }
        Err(refusal) => (StatusCode::TOO_MANY_REQUESTS, format!("{refusal}\n")),
    }
}

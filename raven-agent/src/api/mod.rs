//! HTTP surface of the agent. For now: `GET /metrics` (Prometheus text
//! format) and `GET /healthz`; the REST API grows here.
//!
//! Invariants: read-only endpoints only; binding failure is reported to the
//! caller, never retried silently.

use std::net::SocketAddr;

use axum::{Router, http::header, response::IntoResponse, routing::get};
use tokio_util::sync::CancellationToken;

use crate::metrics;

async fn metrics_text() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
}

pub fn router() -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Binds `listen` now (so a bad address fails start-up) and serves until
/// `cancel` fires.
pub async fn serve(
    listen: SocketAddr,
    cancel: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "serving /metrics");
    Ok(tokio::spawn(async move {
        axum::serve(listener, router())
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
    }))
}

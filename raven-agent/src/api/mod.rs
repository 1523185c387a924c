//! The agent's HTTP surface: REST API (JSON), `GET /metrics`, health checks,
//! and the OpenAPI document generated from the same router.
//!
//! Invariants:
//! - The router and the OpenAPI document are built together (utoipa-axum),
//!   so a route cannot exist undocumented; `docs/openapi.json` is the
//!   committed copy and a test fails when it drifts.
//! - Every path needs a bearer token except `api.open_paths`; mutating
//!   endpoints always need one (config validation refuses opening them).
//! - The API never owns pipeline state: it reads snapshots the pipeline
//!   publishes and sends it requests ([`Control`]), so a slow client cannot
//!   stall capture.
//! - A configuration posted here is validated in full first; a bad one is
//!   refused with every key and reason and the running one stays.
//! - Secrets in the configuration (SNMP USM passphrases) are never shown:
//!   `GET /api/buffer/config` has `(redacted)` in their place, and a posted
//!   `(redacted)` keeps the running value.

pub mod auth;
mod buffer;
pub mod client;
mod routes;
pub mod status;
mod vpn;
pub mod windows;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::{
    capture::{ActiveMode, ExporterRow, KernelCounters},
    config::{Config, Problem},
};

/// Requests the API makes of the pipeline, which owns the stages.
pub enum Control {
    /// Apply a validated configuration; the reply says whether it took.
    ApplyConfig { config: Box<Config>, reply: oneshot::Sender<Result<(), Vec<Problem>>> },
    /// Let every sink taking `stream` send its backlog now.
    Flush { stream: crate::record::Stream, reply: oneshot::Sender<Vec<buffer::SinkBacklog>> },
}

pub use buffer::SinkBacklog;

/// What capture looks like now; published by the pipeline every second.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaptureStatus {
    pub mode: ActiveMode,
    pub kernel: Option<KernelCounters>,
    pub exporters: Vec<ExporterRow>,
}

#[derive(Clone)]
pub struct ApiState {
    pub config: watch::Receiver<Config>,
    pub config_path: Option<PathBuf>,
    pub control: mpsc::Sender<Control>,
    pub capture: watch::Receiver<Option<CaptureStatus>>,
    pub history: watch::Receiver<status::RateHistory>,
    pub tokens: Arc<RwLock<auth::Tokens>>,
    pub store: crate::store::Store,
    /// Per-exporter tallies of the decoders.
    pub exporters: Arc<crate::decode::exporters::ExporterBook>,
    /// The VPN supervisor's status (None when `vpn.enabled` is off).
    pub vpn: Option<watch::Receiver<crate::vpn::VpnStatus>>,
}

/// An error answer: status plus a JSON body `{"error": ..., "problems": [...]}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub problems: Vec<Problem>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), problems: Vec::new() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "problems": self.problems });
        (self.status, Json(body)).into_response()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Raven agent API", description = "Control and observability of a Raven appliance."),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The router and its OpenAPI document, built together.
pub fn router_and_doc() -> (axum::Router<ApiState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::routes())
        .merge(buffer::routes())
        .merge(vpn::routes())
        .split_for_parts()
}

/// The OpenAPI document as committed in `docs/openapi.json`.
pub fn openapi_json() -> String {
    let (_, doc) = router_and_doc();
    doc.to_pretty_json().expect("the OpenAPI document serialises")
}

pub fn app(state: ApiState) -> axum::Router {
    let (router, doc) = router_and_doc();
    let doc = Arc::new(doc);
    router
        .route(
            "/api/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token))
        .with_state(state)
}

/// Binds `listen` now (so a bad address fails start-up) and serves until
/// `cancel` fires.
pub async fn serve(
    listen: SocketAddr,
    state: ApiState,
    cancel: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "serving the API, /metrics and the status page");
    let app = app(state);
    Ok(tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_openapi_document_matches_the_router() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let generated = super::openapi_json();
        if std::env::var_os("RAVEN_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is out of date with the router; \
             regenerate it with RAVEN_BLESS=1 cargo test -p raven-agent --lib api"
        );
    }
}

//! The VPN's endpoints: profiles (list, import with validation, remove,
//! activate) and bounded diagnostics (TCP connect, ping). Status is in
//! `routes.rs` beside the others.
//!
//! Invariants: an import is validated in full (allow-list, certificates)
//! before anything is written, and a refused one leaves nothing behind and
//! the running tunnel untouched; diagnostics are clamped in count and time
//! by `vpn::diagnostics`.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::StatusCode,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiError, ApiState};
use crate::vpn::{
    diagnostics::{self, PingReport, TcpReport},
    profile::{ProfileMeta, ProfilePolicy, ProfileStore, ValidationReport},
};

fn profiles(state: &ApiState) -> Result<(ProfileStore, ProfilePolicy), ApiError> {
    let config = state.config.borrow().vpn.clone();
    let store = ProfileStore::open(state.store.data_dir())
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let policy = ProfilePolicy {
        allow_scripts: config.allow_scripts,
        expiry_warning_days: config.expiry_warning_days,
    };
    Ok((store, policy))
}

fn refused(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
}

/// A query string that does not fit is a JSON 400 like every other refusal.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| refused(e.body_text()))
}

/// The imported profiles, preferred (lowest priority number) first.
#[utoipa::path(
    get,
    path = "/api/vpn/profiles",
    responses((status = 200, body = Vec<ProfileMeta>), (status = 401, body = Object))
)]
async fn list(State(state): State<ApiState>) -> Result<Json<Vec<ProfileMeta>>, ApiError> {
    let (store, _) = profiles(&state)?;
    store
        .list()
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

#[derive(Deserialize, IntoParams)]
struct ImportQuery {
    /// Lower is preferred (default 100).
    priority: Option<u32>,
}

/// Imports an `.ovpn` profile (the request body, inline certificates and
/// keys) under `name`. Refused with the line and reason when a directive is
/// not allowed or a certificate does not check out.
#[utoipa::path(
    post,
    path = "/api/vpn/profiles/{name}",
    params(("name" = String, Path), ImportQuery),
    request_body(content = String, content_type = "text/plain"),
    responses((status = 201, body = ValidationReport), (status = 400, body = Object), (status = 401, body = Object))
)]
async fn import(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    import_query: Result<Query<ImportQuery>, QueryRejection>,
    body: String,
) -> Result<(StatusCode, Json<ValidationReport>), ApiError> {
    let query = query(import_query)?;
    let (store, policy) = profiles(&state)?;
    let (_, report) =
        store.import(&name, &body, query.priority.unwrap_or(100), &policy).map_err(refused)?;
    Ok((StatusCode::CREATED, Json(report)))
}

/// Removes a profile.
#[utoipa::path(
    delete,
    path = "/api/vpn/profiles/{name}",
    params(("name" = String, Path)),
    responses((status = 204), (status = 401, body = Object), (status = 404, body = Object))
)]
async fn remove(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (store, _) = profiles(&state)?;
    store.remove(&name).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes a profile the preferred one; a running supervisor switches to it.
#[utoipa::path(
    post,
    path = "/api/vpn/profiles/{name}/activate",
    params(("name" = String, Path)),
    responses((status = 204), (status = 401, body = Object), (status = 404, body = Object))
)]
async fn activate(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (store, _) = profiles(&state)?;
    store.activate(&name).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
struct TcpQuery {
    /// `ADDRESS:PORT`.
    target: String,
    /// At most 10000.
    timeout_ms: Option<u64>,
}

/// One TCP connect (through the tunnel when the route goes there).
#[utoipa::path(
    get,
    path = "/api/vpn/diagnostics/tcp",
    params(TcpQuery),
    responses((status = 200, body = TcpReport), (status = 400, body = Object), (status = 401, body = Object))
)]
async fn tcp(q: Result<Query<TcpQuery>, QueryRejection>) -> Result<Json<TcpReport>, ApiError> {
    let query = query(q)?;
    let target = query.target.parse().map_err(|e| refused(format!("target: {e}")))?;
    let timeout = Duration::from_millis(query.timeout_ms.unwrap_or(2000));
    Ok(Json(diagnostics::tcp_connect(target, timeout).await))
}

#[derive(Deserialize, IntoParams)]
struct PingQuery {
    /// An IP address.
    target: String,
    /// 1..=20 (default 3).
    count: Option<u32>,
}

/// ICMP echo (clamped in count, size and time).
#[utoipa::path(
    get,
    path = "/api/vpn/diagnostics/ping",
    params(PingQuery),
    responses((status = 200, body = PingReport), (status = 400, body = Object), (status = 401, body = Object))
)]
async fn ping(q: Result<Query<PingQuery>, QueryRejection>) -> Result<Json<PingReport>, ApiError> {
    let query = query(q)?;
    let target = query.target.parse().map_err(|e| refused(format!("target: {e}")))?;
    let report = diagnostics::ping(
        target,
        query.count.unwrap_or(3),
        Duration::from_millis(200),
        56,
        Duration::from_secs(2),
    )
    .await;
    Ok(Json(report))
}

pub fn routes() -> utoipa_axum::router::OpenApiRouter<ApiState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(import, remove))
        .routes(routes!(activate))
        .routes(routes!(tcp))
        .routes(routes!(ping))
}

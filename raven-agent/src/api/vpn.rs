//! The VPN's endpoints: profiles (list, validate, import, remove, priority,
//! activate), the 24-hour health history, and bounded diagnostics (TCP
//! connect, ping, traceroute, DNS, HTTP throughput). Status is in
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
    diagnostics::{
        self, DnsReport, HttpReport, PingReport, RecordType, TcpReport, TracerouteReport,
    },
    health::{HealthHistory, Sample},
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

/// Checks an `.ovpn` (the body) as an import would, without storing it.
#[utoipa::path(
    post,
    path = "/api/vpn/validate",
    request_body(content = String, content_type = "text/plain"),
    responses((status = 200, body = ValidationReport), (status = 400, body = Object), (status = 401, body = Object))
)]
async fn validate(
    State(state): State<ApiState>,
    body: String,
) -> Result<Json<ValidationReport>, ApiError> {
    let (_, policy) = profiles(&state)?;
    let (_, report) = crate::vpn::profile::validate_text(&body, &policy).map_err(refused)?;
    Ok(Json(report))
}

#[derive(Deserialize, IntoParams)]
struct PriorityQuery {
    /// Lower is preferred.
    value: u32,
}

/// Sets a profile's priority (the failover order).
#[utoipa::path(
    post,
    path = "/api/vpn/profiles/{name}/priority",
    params(("name" = String, Path), PriorityQuery),
    responses((status = 200, body = ProfileMeta), (status = 400, body = Object), (status = 401, body = Object), (status = 404, body = Object))
)]
async fn priority(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    q: Result<Query<PriorityQuery>, QueryRejection>,
) -> Result<Json<ProfileMeta>, ApiError> {
    let value = query(q)?.value;
    let (store, _) = profiles(&state)?;
    let meta = store
        .set_priority(&name, value)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(Json(meta))
}

#[derive(Deserialize, IntoParams)]
struct HistoryQuery {
    /// Seconds since the Unix epoch (default: the last 24 hours).
    since: Option<String>,
    /// At most this many samples, 1..=10000 (default 10000).
    limit: Option<String>,
}

/// The last 24 hours of VPN samples: state changes, probe latency, loss, bytes.
#[utoipa::path(
    get,
    path = "/api/vpn/history",
    params(HistoryQuery),
    responses((status = 200, body = Vec<Sample>), (status = 400, body = Object), (status = 401, body = Object))
)]
async fn history(
    State(state): State<ApiState>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<Sample>>, ApiError> {
    let q = query(q)?;
    let path = state.store.data_dir().join("vpn").join("health.db");
    if !path.exists() {
        return Ok(Json(Vec::new()));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let since = match q.since.as_deref().map(str::parse::<f64>) {
        None => now - 86_400.0,
        Some(Ok(s)) if s.is_finite() => s,
        Some(_) => return Err(refused("since must be seconds since the Unix epoch")),
    };
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => 10_000,
        Some(Ok(n)) if (1..=10_000).contains(&n) => n,
        Some(_) => return Err(refused("limit must be a number from 1 to 10000")),
    };
    let samples =
        tokio::task::spawn_blocking(move || HealthHistory::open(&path)?.samples(since, limit))
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(samples))
}

#[derive(Deserialize, IntoParams)]
struct TracerouteQuery {
    /// An IPv4 address.
    target: String,
    /// 1..=30 (default 16).
    max_hops: Option<u8>,
}

/// UDP traceroute (IPv4), bounded in hops and time.
#[utoipa::path(
    get,
    path = "/api/vpn/diagnostics/traceroute",
    params(TracerouteQuery),
    responses((status = 200, body = TracerouteReport), (status = 400, body = Object), (status = 401, body = Object))
)]
async fn traceroute(
    q: Result<Query<TracerouteQuery>, QueryRejection>,
) -> Result<Json<TracerouteReport>, ApiError> {
    let q = query(q)?;
    let target = q.target.parse().map_err(|e| refused(format!("target: {e}")))?;
    let report = diagnostics::traceroute(target, q.max_hops.unwrap_or(16), Duration::from_secs(1))
        .await
        .map_err(refused)?;
    Ok(Json(report))
}

#[derive(Deserialize, IntoParams)]
struct DnsQuery {
    /// The resolver, `ADDRESS:PORT`.
    server: String,
    name: String,
    /// A, AAAA, MX or CNAME (default A).
    #[serde(rename = "type")]
    record_type: Option<String>,
}

/// One DNS query, with its timing.
#[utoipa::path(
    get,
    path = "/api/vpn/diagnostics/dns",
    params(DnsQuery),
    responses((status = 200, body = DnsReport), (status = 400, body = Object), (status = 401, body = Object))
)]
async fn dns(q: Result<Query<DnsQuery>, QueryRejection>) -> Result<Json<DnsReport>, ApiError> {
    let q = query(q)?;
    let server = q.server.parse().map_err(|e| refused(format!("server: {e}")))?;
    let record_type = match q.record_type.as_deref().unwrap_or("A").to_ascii_uppercase().as_str() {
        "A" => RecordType::A,
        "AAAA" => RecordType::Aaaa,
        "MX" => RecordType::Mx,
        "CNAME" => RecordType::Cname,
        other => return Err(refused(format!("type {other:?}: expected A, AAAA, MX or CNAME"))),
    };
    let report = diagnostics::dns_lookup(server, &q.name, record_type, Duration::from_secs(3))
        .await
        .map_err(refused)?;
    Ok(Json(report))
}

#[derive(Deserialize, IntoParams)]
struct HttpQuery {
    /// `http://IP:PORT/path`.
    url: String,
}

/// Download throughput over HTTP, bounded in bytes and time.
#[utoipa::path(
    get,
    path = "/api/vpn/diagnostics/http",
    params(HttpQuery),
    responses((status = 200, body = HttpReport), (status = 400, body = Object), (status = 401, body = Object))
)]
async fn http(q: Result<Query<HttpQuery>, QueryRejection>) -> Result<Json<HttpReport>, ApiError> {
    let q = query(q)?;
    let report = diagnostics::http_download(&q.url, u64::MAX, Duration::from_secs(10))
        .await
        .map_err(refused)?;
    Ok(Json(report))
}

pub fn routes() -> utoipa_axum::router::OpenApiRouter<ApiState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(import, remove))
        .routes(routes!(activate))
        .routes(routes!(priority))
        .routes(routes!(validate))
        .routes(routes!(history))
        .routes(routes!(traceroute))
        .routes(routes!(dns))
        .routes(routes!(http))
        .routes(routes!(tcp))
        .routes(routes!(ping))
}

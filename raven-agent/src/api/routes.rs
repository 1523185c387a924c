//! The endpoints. Each handler carries its OpenAPI description; the router
//! is built from the same list (`routes!`), so the two cannot drift.

use std::time::Duration;

use axum::{Json, body::Bytes, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiState, Control};
use crate::{
    config::{Config, ConfigError, Problem},
    metrics,
};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(prometheus_metrics))
        .routes(routes!(get_config, post_config))
        .routes(routes!(capture_status))
        .routes(routes!(exporters))
        .routes(routes!(relay_domains))
        .routes(routes!(status_page))
        .routes(routes!(status_data))
        .routes(routes!(vpn_status))
}

/// The status page (HTML; its data comes from `/api/status`).
#[utoipa::path(get, path = "/", security(()), responses((status = 200, body = String, content_type = "text/html")))]
async fn status_page() -> axum::response::Html<&'static str> {
    axum::response::Html(super::status::PAGE)
}

/// What the status page shows: capture, per-stream totals, the last hour.
#[utoipa::path(
    get,
    path = "/api/status",
    responses((status = 200, body = Object), (status = 401, body = Object))
)]
async fn status_data(State(state): State<ApiState>) -> Json<Value> {
    let store = state.store.clone();
    let stored =
        tokio::task::spawn_blocking(move || store.status()).await.ok().and_then(Result::ok);
    let streams: Vec<Value> = metrics::captured_per_stream()
        .iter()
        .map(|(stream, totals)| {
            let kept =
                stored.as_ref().and_then(|s| s.streams.iter().find(|k| k.stream == stream.name()));
            json!({
                "stream": stream,
                "records": totals.records,
                "stored": kept.map(|k| k.records),
                "fill_ratio": kept.map(|k| k.fill_ratio),
                "oldest": kept.and_then(|k| k.oldest.clone()),
            })
        })
        .collect();
    let capture = state.capture.borrow().clone();
    let history = state.history.borrow().clone();
    Json(json!({
        "capture": capture,
        "streams": streams,
        "history": history,
        "store": stored.map(|s| json!({ "state": s.state, "reasons": s.reasons,
            "disk_free_bytes": s.disk_free_bytes, "disk_total_bytes": s.disk_total_bytes })),
        "sinks": sinks(&state),
        "vpn": state.vpn.as_ref().map(|v| v.borrow().clone()),
        "vpn_history": vpn_last_hour(&state).await,
    }))
}

/// The last hour of VPN probe results (time, ok, latency) for the page's
/// chart; empty when the supervisor is off.
async fn vpn_last_hour(state: &ApiState) -> Vec<Value> {
    if state.vpn.is_none() {
        return Vec::new();
    }
    let path = state.store.data_dir().join("vpn").join("health.db");
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() - 3600.0);
    let samples = tokio::task::spawn_blocking(move || {
        crate::vpn::health::HealthHistory::open(&path).and_then(|h| h.samples(since, 2000))
    })
    .await;
    match samples {
        Ok(Ok(samples)) => samples
            .into_iter()
            .filter(|s| s.kind == "probe")
            .map(|s| json!({ "at": s.at, "ok": s.ok, "latency_ms": s.latency_ms }))
            .collect(),
        _ => Vec::new(),
    }
}

/// Each configured sink's link state, backlog and lag, from the metrics the
/// forwarders publish.
fn sinks(state: &ApiState) -> Vec<Value> {
    let snapshot = metrics::snapshot();
    let value = |name: &str| snapshot.get(name).copied();
    state
        .config
        .borrow()
        .forward
        .sinks
        .iter()
        .map(|sink| {
            let link = value(&format!("raven_forward_link_state{{sink=\"{}\"}}", sink.name));
            let per_stream = |metric: &str| -> Vec<f64> {
                sink.effective_streams()
                    .iter()
                    .filter_map(|s| {
                        value(&format!("{metric}{{sink=\"{}\",stream=\"{}\"}}", sink.name, s))
                    })
                    .collect()
            };
            // Backlogs add up across streams; the lag is the worst stream's.
            let backlog: f64 = per_stream("raven_forward_backlog_records").iter().sum();
            let lag = per_stream("raven_forward_lag_seconds").into_iter().fold(0.0, f64::max);
            json!({
                "sink": sink.name,
                "protocol": sink.protocol,
                "endpoint": sink.endpoint,
                "state": match link { Some(2.0) => "up", Some(1.0) => "degraded", _ => "down" },
                "backlog_records": backlog,
                "lag_seconds": lag,
            })
        })
        .collect()
}

/// The VPN supervisor: state, profile, tunnel address, bytes, health with
/// reasons, the last probes. 404 when `vpn.enabled` is off.
#[utoipa::path(
    get,
    path = "/api/vpn/status",
    responses((status = 200, body = crate::vpn::VpnStatus), (status = 401, body = Object), (status = 404, body = Object))
)]
async fn vpn_status(
    State(state): State<ApiState>,
) -> Result<Json<crate::vpn::VpnStatus>, ApiError> {
    match &state.vpn {
        Some(status) => Ok(Json(status.borrow().clone())),
        None => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "the VPN supervisor is off (vpn.enabled)"))
        }
    }
}

/// The process is alive and serving.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Capture is running (the pipeline has published its state).
#[utoipa::path(
    get,
    path = "/readyz",
    security(()),
    responses((status = 200, body = Object), (status = 503, body = Object))
)]
async fn readyz(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    match state.capture.borrow().as_ref() {
        Some(status) => Ok(Json(json!({ "ready": true, "capture": status.mode }))),
        None => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "capture is starting")),
    }
}

/// Every metric, in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    security(()),
    responses((status = 200, body = String, content_type = "text/plain; version=0.0.4"))
)]
async fn prometheus_metrics() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render())
}

/// The running configuration, in the schema of the TOML file.
#[utoipa::path(
    get,
    path = "/api/buffer/config",
    responses((status = 200, body = Object), (status = 401, body = Object))
)]
async fn get_config(State(state): State<ApiState>) -> Json<Config> {
    // Secrets (SNMP USM passphrases) are shown as "(redacted)"; posting
    // that back keeps the running value.
    Json(state.config.borrow().redacted())
}

fn problems(error: ConfigError) -> Vec<Problem> {
    match error {
        ConfigError::Invalid(problems) => problems,
        other => vec![Problem { key: String::new(), reason: other.to_string() }],
    }
}

/// Validates a whole configuration and applies it live. A bad one is
/// refused with every key and reason; the running one stays.
#[utoipa::path(
    post,
    path = "/api/buffer/config",
    request_body(content = Object, content_type = "application/json"),
    responses(
        (status = 200, body = Object, description = "applied"),
        (status = 400, body = Object, description = "refused, with each key and reason"),
        (status = 401, body = Object)
    )
)]
async fn post_config(State(state): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let refuse = |problems: Vec<Problem>| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: "configuration refused; the running one stays".into(),
        problems,
    };
    let mut json = serde_json::Deserializer::from_slice(&body);
    let mut config: Config = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        refuse(vec![Problem { key: e.path().to_string(), reason: e.inner().to_string() }])
    })?;
    config.keep_secrets_from(&state.config.borrow());
    config.validate().map_err(|e| refuse(problems(e)))?;

    let (reply, answer) = oneshot::channel();
    state
        .control
        .send(Control::ApplyConfig { config: Box::new(config.clone()), reply })
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the pipeline is stopping"))?;
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(problems))) => return Err(refuse(problems)),
        _ => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the pipeline did not answer",
            ));
        }
    }
    let persisted = match &state.config_path {
        Some(path) => persist(path, &config).map_err(|e| e.to_string()),
        None => Err("no configuration file".to_string()),
    };
    Ok(Json(json!({
        "applied": true,
        "persisted": persisted.is_ok(),
        "persist_error": persisted.err(),
    })))
}

/// Writes the configuration atomically (temp file, fsync, rename), so a
/// crash leaves the old file or the new one, never half of one.
fn persist(path: &std::path::Path, config: &Config) -> std::io::Result<()> {
    use std::io::Write;
    let text = toml::to_string_pretty(config).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("toml.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    // The file may hold secrets (SNMP USM passphrases): the new one gets
    // the old one's permissions, not the umask's.
    if let Ok(meta) = std::fs::metadata(path) {
        file.set_permissions(meta.permissions())?;
    }
    file.write_all(b"# Written by Raven's API (POST /api/buffer/config).\n")?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Capture mode, the kernel's counters, and the per-exporter rows.
#[utoipa::path(
    get,
    path = "/api/capture/status",
    responses((status = 200, body = Object), (status = 401, body = Object), (status = 503, body = Object))
)]
async fn capture_status(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let status = state.capture.borrow().clone();
    let status = status
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "capture is starting"))?;
    Ok(Json(serde_json::to_value(status).expect("status serialises")))
}

/// The domain ids each UDP relay sink gives its exporters at the
/// collector (persisted, so they stay the same across restarts).
#[utoipa::path(
    get,
    path = "/api/forward/relays",
    responses((status = 200, body = Object), (status = 401, body = Object), (status = 503, body = Object))
)]
async fn relay_domains(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.relay_states())
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let sinks: Vec<Value> = rows
        .into_iter()
        .filter_map(|(sink, json)| {
            let relay: crate::forward::udp_relay::RelayState = serde_json::from_str(&json).ok()?;
            let domains: Vec<Value> = relay
                .domains
                .iter()
                .map(|(exporter, original, relayed)| {
                    json!({ "exporter": exporter, "original": original, "relayed": relayed })
                })
                .collect();
            Some(json!({ "sink": sink, "domains": domains }))
        })
        .collect();
    Ok(Json(json!({ "sinks": sinks })))
}

/// Exporters seen by the XDP program: datagrams, bytes and ring-full per
/// source address and stream.
#[utoipa::path(
    get,
    path = "/api/exporters",
    responses((status = 200, body = Object), (status = 401, body = Object))
)]
async fn exporters(State(state): State<ApiState>) -> Json<Value> {
    let rows = state.capture.borrow().as_ref().map(|s| s.exporters.clone()).unwrap_or_default();
    Json(json!({ "exporters": rows }))
}

//! Windows events over HTTP: `POST /api/data/windows` on its own listener
//! (`windows.listen`, default port 8084), for Windows Event Forwarding
//! relays, NXLog, Winlogbeat's HTTP output and the like.
//!
//! Invariants:
//! - 2xx only after every event of the request is durable in the store; a
//!   sender that got 200 can be killed, and so can Raven, without losing
//!   them. Anything else (400, 401, 413, 429, 503) means nothing of the
//!   request was stored: the sender retries the whole request.
//! - A bearer token is always required (the API's tokens).
//! - Bounded: the body (`windows.max_body_bytes`, after gzip too), the
//!   events per request, and the requests in flight (429 beyond).
//!
//! Format: a JSON array of objects, or NDJSON (one object per line);
//! `Content-Encoding: gzip` accepted. Each event becomes one record of the
//! `windows` stream: its payload is the event's JSON exactly as posted, its
//! decoded fields `{ "event": { … } }`.

use std::{
    io::Read,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode, header},
    routing::post,
};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{ApiError, auth::Tokens};
use crate::{
    config::WindowsConfig,
    metrics,
    record::{Record, Stream, Via},
    store::{NewRecord, Store, StoreError},
};

#[derive(Clone)]
struct Ingest {
    store: Store,
    tokens: Arc<RwLock<Tokens>>,
    in_flight: Arc<Semaphore>,
    max_body: usize,
    max_events: usize,
    port: u16,
}

fn refuse(status: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
    metrics::emit(metrics::WindowsRefused { reason });
    ApiError::new(status, message)
}

/// The events of a body: a JSON array, or NDJSON.
fn events(body: &[u8], max_events: usize) -> Result<Vec<Bytes>, ApiError> {
    let bad = |m: String| refuse(StatusCode::BAD_REQUEST, "bad_json", m);
    let trimmed =
        body.iter().position(|b| !b.is_ascii_whitespace()).map_or(&[][..], |i| &body[i..]);
    let out: Vec<Bytes> = if trimmed.first() == Some(&b'[') {
        let values: Vec<Box<serde_json::value::RawValue>> =
            serde_json::from_slice(trimmed).map_err(|e| bad(format!("not a JSON array: {e}")))?;
        values.into_iter().map(|v| Bytes::from(v.get().to_string())).collect()
    } else {
        let mut out = Vec::new();
        for (n, line) in trimmed.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            serde_json::from_slice::<&serde_json::value::RawValue>(line)
                .map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
            out.push(Bytes::copy_from_slice(line));
        }
        out
    };
    for (i, event) in out.iter().enumerate() {
        if !event.starts_with(b"{") {
            return Err(bad(format!("event {i} is not a JSON object")));
        }
    }
    if out.len() > max_events {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("{} events; at most {max_events} per request", out.len()),
        ));
    }
    Ok(out)
}

async fn post_events(
    State(ingest): State<Ingest>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let accepted = token.is_some_and(|t| ingest.tokens.read().expect("token lock").accepts(t));
    if !accepted {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        ));
    }
    let Ok(_slot) = ingest.in_flight.clone().try_acquire_owned() else {
        return Err(refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many requests in flight; retry shortly",
        ));
    };
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let body = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .take(ingest.max_body as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad_gzip", format!("gzip: {e}")))?;
        if out.len() > ingest.max_body {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("more than {} bytes once decompressed", ingest.max_body),
            ));
        }
        Bytes::from(out)
    } else {
        body
    };
    let events = events(&body, ingest.max_events)?;
    if events.is_empty() {
        return Ok(Json(json!({ "accepted": 0 })));
    }
    let now = SystemTime::now();
    let records: Vec<NewRecord> = events
        .into_iter()
        .map(|payload| {
            let decoded = crate::decode::windows_event(&payload);
            NewRecord {
                decoded: Some(decoded.fields.into()),
                parse_error: decoded.parse_error.map(|e| e.stored_form()),
                record: Record {
                    captured_at: now,
                    stream: Stream::Windows,
                    src: crate::capture::socket::unmap_v4(peer),
                    dst_port: ingest.port,
                    ifindex: 0,
                    wire_len: payload.len() as u32,
                    truncated: false,
                    via: Via::Tcp,
                    payload,
                },
            }
        })
        .collect();
    let count = records.len() as u64;
    let mut captured = metrics::CapturedBatch::new(Via::Tcp);
    for r in &records {
        captured.add(Stream::Windows, r.record.wire_len, false);
    }
    metrics::emit(captured);
    let store = ingest.store.clone();
    let stored = tokio::task::spawn_blocking(move || store.append(Stream::Windows, records))
        .await
        .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, "store", e.to_string()))?;
    match stored {
        Ok(appended) => Ok(Json(json!({
            "accepted": count,
            "first_seq": appended.first_seq,
            "last_seq": appended.last_seq,
        }))),
        Err(e) => {
            let reason = if matches!(e, StoreError::DiskFull) { "disk_full" } else { "io" };
            metrics::emit(metrics::StoreDropped {
                stream: Stream::Windows,
                reason,
                records: count,
            });
            Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "store", format!("not stored: {e}")))
        }
    }
}

/// Binds `config.listen` now (a bad address fails start-up) and serves
/// until `cancel` fires. `None` when the listener is disabled.
pub async fn serve(
    config: &WindowsConfig,
    store: Store,
    tokens: Arc<RwLock<Tokens>>,
    cancel: CancellationToken,
) -> std::io::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    if config.listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let port = listener.local_addr()?.port();
    tracing::info!(listen = %config.listen, "accepting Windows events on POST /api/data/windows");
    let ingest = Ingest {
        store,
        tokens,
        in_flight: Arc::new(Semaphore::new(config.max_requests_in_flight)),
        max_body: config.max_body_bytes,
        max_events: config.max_events_per_request,
        port,
    };
    let app = Router::new()
        .route("/api/data/windows", post(post_events))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(ingest);
    Ok(Some(tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_ndjson_split_into_events_and_bad_input_is_refused() {
        let array = br#" [{"EventID": 4624, "Computer": "dc1"}, {"EventID": 4625}] "#;
        let got = events(array, 10).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0][..], br#"{"EventID": 4624, "Computer": "dc1"}"#);
        let ndjson = b"{\"EventID\":1}\r\n\n{\"EventID\":2}\n";
        assert_eq!(events(ndjson, 10).unwrap().len(), 2);
        assert_eq!(events(b"[1, 2]", 10).unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(events(b"{\"a\":1}\n{oops", 10).unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(events(b"[{}, {}, {}]", 2).unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(events(b"  ", 10).unwrap().is_empty());
    }
}

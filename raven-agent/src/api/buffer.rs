//! The store's endpoints: buffer status and per-stream stats, segments,
//! retention on demand, and flushing a stream's backlog to the sinks.
//!
//! Invariants: reads go to the store on a blocking thread (they touch the
//! index and the disk), never on the runtime's workers; mutations go
//! through the pipeline ([`Control`]), which owns the forwarders.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ApiState, Control};
use crate::{
    decode::exporters::ExporterTally,
    record::{Stream, rfc3339},
    store::{Evicted, StoreStatus, StreamStatus, index::SegmentRow, segment::from_nanos},
};

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

fn stream_or_404(name: &str) -> Result<Stream, ApiError> {
    name.parse().map_err(|e: crate::record::UnknownStream| {
        ApiError::new(StatusCode::NOT_FOUND, e.to_string())
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(unavailable)?.map_err(unavailable)
}

/// Per stream: records, bytes, fill against its quota, oldest and newest
/// record; the disk; and whether the store is ok or degraded (with why).
#[utoipa::path(
    get,
    path = "/api/buffer/status",
    responses((status = 200, body = StoreStatus), (status = 401, body = Object))
)]
async fn buffer_status(State(state): State<ApiState>) -> Result<Json<StoreStatus>, ApiError> {
    let store = state.store.clone();
    let mut status = blocking(move || store.status()).await?;
    with_rates(&state, &mut status);
    Ok(Json(status))
}

fn with_rates(state: &ApiState, status: &mut StoreStatus) {
    let rates = state.history.borrow().rates();
    for (stream, rate) in Stream::ALL.iter().zip(rates) {
        if let Some(s) = status.streams.iter_mut().find(|s| s.stream == stream.name()) {
            s.rate = rate;
        }
    }
}

/// One exporter of a stream: what reached the kernel program, what was
/// decoded, and what the store holds.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct ExporterStats {
    pub exporter: String,
    /// Datagrams and UDP payload bytes the XDP program saw (null in
    /// socket-only capture, which has no per-exporter kernel counters).
    pub xdp_packets: Option<u64>,
    pub xdp_bytes: Option<u64>,
    /// Datagrams that found the ring buffer full and took the socket path.
    pub ring_full: Option<u64>,
    /// Decoded since the agent started: records, their bytes, parse errors
    /// by reason, records lost upstream (sequence gaps) and restarts.
    #[serde(flatten)]
    pub decoded: ExporterTally,
    /// Records of this exporter in the store now, and their time span.
    pub stored_records: u64,
    pub oldest: Option<String>,
    pub newest: Option<String>,
}

/// One stream's buffer status plus its exporters.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StreamStats {
    pub stream: StreamStatus,
    pub segments: usize,
    /// Busiest first.
    pub exporters: Vec<ExporterStats>,
    /// The store's overall state and why.
    pub state: String,
    pub reasons: Vec<String>,
}

/// One stream: its buffer status, segments, and the exporters sending it.
#[utoipa::path(
    get,
    path = "/api/buffer/stats/{stream}",
    params(("stream" = String, Path, description = "syslog, netflow, ipfix, sflow, snmp or windows")),
    responses((status = 200, body = StreamStats), (status = 401, body = Object), (status = 404, body = Object))
)]
async fn buffer_stats(
    State(state): State<ApiState>,
    Path(stream): Path<String>,
) -> Result<Json<StreamStats>, ApiError> {
    let stream = stream_or_404(&stream)?;
    let store = state.store.clone();
    let (mut status, segments, stored) = blocking(move || {
        Ok((store.status()?, store.segments(Some(stream))?, store.exporters(stream)?))
    })
    .await?;
    with_rates(&state, &mut status);
    let this = status
        .streams
        .into_iter()
        .find(|s| s.stream == stream.name())
        .expect("status lists every stream");
    let mut rows: BTreeMap<IpAddr, ExporterStats> = BTreeMap::new();
    fn row(rows: &mut BTreeMap<IpAddr, ExporterStats>, ip: IpAddr) -> &mut ExporterStats {
        rows.entry(ip)
            .or_insert_with(|| ExporterStats { exporter: ip.to_string(), ..Default::default() })
    }
    for (ip, tally) in state.exporters.rows(stream) {
        row(&mut rows, ip).decoded = tally;
    }
    if let Some(capture) = state.capture.borrow().as_ref() {
        for e in capture.exporters.iter().filter(|e| e.stream == stream) {
            let r = row(&mut rows, e.exporter);
            r.xdp_packets = Some(e.packets);
            r.xdp_bytes = Some(e.bytes);
            r.ring_full = Some(e.ring_full);
        }
    }
    for e in stored {
        let r = row(&mut rows, e.exporter);
        r.stored_records = e.records;
        r.oldest = Some(rfc3339(from_nanos(e.first_ts)));
        r.newest = Some(rfc3339(from_nanos(e.last_ts)));
    }
    let mut exporters: Vec<ExporterStats> = rows.into_values().collect();
    exporters.sort_by(|a, b| {
        (b.decoded.records, b.stored_records).cmp(&(a.decoded.records, a.stored_records))
    });
    Ok(Json(StreamStats {
        stream: this,
        segments: segments.len(),
        exporters,
        state: status.state,
        reasons: status.reasons,
    }))
}

#[derive(Deserialize, IntoParams)]
struct SegmentQuery {
    /// Only this stream.
    stream: Option<String>,
    /// RFC 3339: segments whose records end at or after this.
    from: Option<String>,
    /// RFC 3339: segments whose records start at or before this.
    to: Option<String>,
}

fn parse_time(key: &str, text: &str) -> Result<u64, ApiError> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{key}: {e}")))?;
    Ok(t.unix_timestamp_nanos().max(0) as u64)
}

/// Segments of the store, oldest first, optionally by stream and time.
#[utoipa::path(
    get,
    path = "/api/segments",
    params(SegmentQuery),
    responses((status = 200, body = Vec<SegmentRow>), (status = 400, body = Object), (status = 401, body = Object), (status = 404, body = Object))
)]
async fn segments(
    State(state): State<ApiState>,
    Query(query): Query<SegmentQuery>,
) -> Result<Json<Vec<SegmentRow>>, ApiError> {
    let stream = query.stream.as_deref().map(stream_or_404).transpose()?;
    let from = query.from.as_deref().map(|t| parse_time("from", t)).transpose()?.unwrap_or(0);
    let to = query.to.as_deref().map(|t| parse_time("to", t)).transpose()?.unwrap_or(u64::MAX);
    let store = state.store.clone();
    let rows = blocking(move || store.segments(stream)).await?;
    Ok(Json(
        rows.into_iter()
            .filter(|r| r.last_ts.is_none_or(|t| t >= from) && r.first_ts.is_none_or(|t| t <= to))
            .collect(),
    ))
}

/// Runs retention now; returns what it evicted.
#[utoipa::path(
    post,
    path = "/api/buffer/cleanup",
    responses((status = 200, body = Evicted), (status = 401, body = Object), (status = 503, body = Object))
)]
async fn cleanup(State(state): State<ApiState>) -> Result<Json<Evicted>, ApiError> {
    let store = state.store.clone();
    Ok(Json(blocking(move || store.cleanup(SystemTime::now())).await?))
}

/// What a flush scheduled, per sink taking the stream.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FlushScheduled {
    pub stream: String,
    pub sinks: Vec<SinkBacklog>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SinkBacklog {
    pub sink: String,
    /// Records after the sink's cursor, to be sent now.
    pub backlog_records: u64,
}

/// Forwards the stream's backlog now: every sink taking the stream tries
/// at once, skipping its backoff wait once.
#[utoipa::path(
    post,
    path = "/api/buffer/flush/{stream}",
    params(("stream" = String, Path, description = "syslog, netflow, ipfix, sflow or snmp")),
    responses((status = 200, body = FlushScheduled), (status = 401, body = Object), (status = 404, body = Object), (status = 503, body = Object))
)]
async fn flush(
    State(state): State<ApiState>,
    Path(stream): Path<String>,
) -> Result<Json<FlushScheduled>, ApiError> {
    let stream = stream_or_404(&stream)?;
    let (reply, answer) = oneshot::channel();
    state.control.send(Control::Flush { stream, reply }).await.map_err(unavailable)?;
    let sinks = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    Ok(Json(FlushScheduled { stream: stream.name().to_string(), sinks }))
}

/// A range of stored records to send to a sink again.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// A configured sink's name.
    pub sink: String,
    /// Only this stream (default: every stream the sink takes).
    pub stream: Option<String>,
    /// RFC 3339, inclusive.
    pub from: String,
    /// RFC 3339, inclusive.
    pub to: String,
    /// Only records from this source address.
    #[schema(value_type = Option<String>)]
    pub exporter: Option<std::net::IpAddr>,
}

/// What a replay scheduled; it runs in the background (its outcome is
/// logged and counted in `raven_forward_replayed_records_total`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ReplayScheduled {
    pub sink: String,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

/// Re-sends a range of stored records to a sink without moving its cursor.
#[utoipa::path(
    post,
    path = "/api/replay",
    request_body(content = ReplayRequest, content_type = "application/json"),
    responses((status = 202, body = ReplayScheduled), (status = 400, body = Object), (status = 401, body = Object), (status = 404, body = Object))
)]
async fn replay(
    State(state): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ReplayScheduled>), ApiError> {
    // Parsed here, not by an extractor, so every refusal is a JSON 400.
    let request: ReplayRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad replay request: {e}")))?;
    let config = state.config.borrow().clone();
    let sink_config =
        config.forward.sinks.iter().find(|s| s.name == request.sink).cloned().ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, format!("no sink named {:?}", request.sink))
        })?;
    let stream = request.stream.as_deref().map(stream_or_404).transpose()?;
    let (from, to) = (parse_time("from", &request.from)?, parse_time("to", &request.to)?);
    if from > to {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "from is after to"));
    }
    let sink = crate::forward::ManagedSink::new(&sink_config, &config.forward)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let takes = sink_config.effective_streams();
    let (exporter, appliance) = (request.exporter, config.forward.appliance_id.clone());
    let (from, to) =
        (crate::store::segment::from_nanos(from), crate::store::segment::from_nanos(to));
    // A range may hold hours of every exporter: it is read a segment at a
    // time, once to count what is scheduled, then again as it is sent (at
    // most a segment read ahead), never all in memory.
    let store = state.store.clone();
    // The sending pass stops where the counting one did, per stream:
    // records stored since (a range that ends later) are not scheduled.
    let (scheduled, last_counted) = blocking(move || {
        let mut scheduled =
            ReplayScheduled { sink: request.sink, records: 0, first_seq: None, last_seq: None };
        let mut last_counted = std::collections::HashMap::new();
        let mut range = store.range(stream, from, to, exporter)?;
        while let Some(segment) = range.next_segment()? {
            for r in segment.iter().filter(|r| takes.contains(&r.record.stream)) {
                scheduled.records += 1;
                scheduled.first_seq.get_or_insert(r.seq);
                scheduled.last_seq = Some(r.seq);
                last_counted.insert(r.record.stream, r.seq);
            }
        }
        Ok((scheduled, last_counted))
    })
    .await?;
    tracing::info!(sink = %scheduled.sink, records = scheduled.records, "replay scheduled");
    let (batches, receiver) = tokio::sync::mpsc::channel(1);
    let (store, sink_name) = (state.store.clone(), scheduled.sink.clone());
    tokio::task::spawn_blocking(move || {
        let read = store.range(stream, from, to, exporter).and_then(|mut range| {
            while let Some(segment) = range.next_segment()? {
                let records: Vec<_> = segment
                    .into_iter()
                    .filter(|r| last_counted.get(&r.record.stream).is_some_and(|&l| r.seq <= l))
                    .map(|r| crate::forward::replay::outgoing(&appliance, r))
                    .collect();
                if !records.is_empty() && batches.blocking_send(records).is_err() {
                    break; // the sink gave up
                }
            }
            Ok(())
        });
        if let Err(e) = read {
            tracing::error!(sink = %sink_name, error = %e, "replay stopped: reading the range failed");
        }
    });
    tokio::spawn(crate::forward::replay::run(
        sink,
        receiver,
        scheduled.records,
        config.forward.breaker_failures.max(1),
    ));
    Ok((StatusCode::ACCEPTED, Json(scheduled)))
}

pub fn routes() -> utoipa_axum::router::OpenApiRouter<ApiState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(buffer_status))
        .routes(routes!(buffer_stats))
        .routes(routes!(segments))
        .routes(routes!(cleanup))
        .routes(routes!(flush))
        .routes(routes!(replay))
}

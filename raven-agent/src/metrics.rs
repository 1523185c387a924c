//! The one place that owns Raven's metrics.
//!
//! Invariants:
//! - Every metric is registered once, in the [`Registry`] returned by
//!   [`registry`]; nothing else creates Prometheus collectors.
//! - Stages never touch collectors directly: they emit a typed event per
//!   situation ([`InternalEvent`]), once per batch, not per record (the
//!   pattern of Vector's `internal_events`). The event decides which counters
//!   move, so a situation is counted the same way wherever it happens.
//! - Names follow Prometheus conventions: `raven_` prefix, unit in the name,
//!   `_total` for counters. Every drop has a `reason` label.

use std::{collections::BTreeMap, sync::LazyLock};

use prometheus::{CounterVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::record::{Stream, Via};

pub struct Metrics {
    pub registry: Registry,
    capture_records: IntCounterVec,
    capture_bytes: IntCounterVec,
    capture_truncated: IntCounterVec,
    capture_dropped: IntCounterVec,
    socket_errors: IntCounterVec,
    socket_overflow: IntCounterVec,
    tcp_refused: IntCounterVec,
    xdp_frames: IntCounterVec,
    xdp_matched: IntCounterVec,
    exporter_packets: IntCounterVec,
    exporter_bytes: IntCounterVec,
    exporter_ring_full: IntCounterVec,
    xdp_attached: IntGaugeVec,
    windows_refused: IntCounterVec,
    decode_records: IntCounterVec,
    decode_errors: IntCounterVec,
    decode_lost: IntCounterVec,
    decode_restarts: IntCounterVec,
    flow_pending: IntCounterVec,
    flow_pending_now: IntGaugeVec,
    flow_templates_restored: IntCounterVec,
    flow_journal_errors: IntCounterVec,
    store: StoreMetrics,
    // --- forward (issue 5) ---
    forward: ForwardMetrics,
    // --- vpn (issue 7) ---
    vpn: VpnMetrics,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry.register(Box::new(vec.clone())).expect("metric registered once");
    vec
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let xdp_attached = IntGaugeVec::new(
            Opts::new("raven_xdp_attached", "1 while the XDP program is attached, by mode"),
            &["interface", "mode"],
        )
        .expect("valid metric definition");
        r.register(Box::new(xdp_attached.clone())).expect("metric registered once");
        Metrics {
            capture_records: counter(
                &r,
                "raven_capture_records_total",
                "Datagrams captured and handed to the pipeline",
                &["stream", "via"],
            ),
            capture_bytes: counter(
                &r,
                "raven_capture_wire_bytes_total",
                "UDP payload bytes of captured datagrams, as on the wire",
                &["stream", "via"],
            ),
            capture_truncated: counter(
                &r,
                "raven_capture_truncated_total",
                "Captured datagrams whose payload was cut at the snap length",
                &["stream", "via"],
            ),
            capture_dropped: counter(
                &r,
                "raven_capture_dropped_total",
                "Captured datagrams that could not be handed on, by reason",
                &["stream", "reason"],
            ),
            socket_errors: counter(
                &r,
                "raven_capture_socket_errors_total",
                "Errors on the UDP listeners, by port and reason",
                &["port", "reason"],
            ),
            socket_overflow: counter(
                &r,
                "raven_capture_socket_overflow_total",
                "Datagrams the kernel dropped because a listener's receive buffer was full",
                &["port"],
            ),
            tcp_refused: counter(
                &r,
                "raven_capture_tcp_refused_total",
                "Syslog TCP/TLS connections closed at once, by port and reason",
                &["port", "reason"],
            ),
            xdp_frames: counter(
                &r,
                "raven_xdp_frames_total",
                "Frames the XDP program saw, by outcome (kernel counters)",
                &["outcome"],
            ),
            xdp_matched: counter(
                &r,
                "raven_xdp_matched_total",
                "Datagrams the XDP program copied into the ring, per stream",
                &["stream"],
            ),
            exporter_packets: counter(
                &r,
                "raven_exporter_packets_total",
                "Datagrams the XDP program matched, per exporter",
                &["exporter", "stream"],
            ),
            exporter_bytes: counter(
                &r,
                "raven_exporter_wire_bytes_total",
                "Payload bytes the XDP program matched, per exporter",
                &["exporter", "stream"],
            ),
            exporter_ring_full: counter(
                &r,
                "raven_exporter_ring_full_total",
                "Datagrams of this exporter that found the ring full (socket path took them)",
                &["exporter", "stream"],
            ),
            xdp_attached,
            windows_refused: counter(
                &r,
                "raven_windows_refused_total",
                "POST /api/data/windows requests refused (nothing of them stored), by reason",
                &["reason"],
            ),
            decode_records: counter(
                &r,
                "raven_decode_records_total",
                "Records through the decoders, by outcome (decoded, parse_error, raw_only)",
                &["stream", "outcome"],
            ),
            decode_errors: counter(
                &r,
                "raven_decode_parse_errors_total",
                "Records kept raw because they did not fully parse, by reason",
                &["stream", "reason"],
            ),
            decode_lost: counter(
                &r,
                "raven_decode_sequence_lost_total",
                "Records missing from exporters' sequence numbers: lost before reaching Raven",
                &["stream"],
            ),
            decode_restarts: counter(
                &r,
                "raven_decode_exporter_restarts_total",
                "Exporter sequence numbers that restarted (not counted as loss)",
                &["stream"],
            ),
            flow_pending: counter(
                &r,
                "raven_decode_flow_pending_total",
                "NetFlow v9/IPFIX data sets that arrived before their template: held, \
                 released (decoded when the template came) or dropped (expired or over the bound)",
                &["outcome"],
            ),
            flow_pending_now: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "raven_decode_flow_pending_data_sets",
                        "NetFlow v9/IPFIX data sets held now, waiting for their template",
                    ),
                    &[],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            flow_templates_restored: counter(
                &r,
                "raven_decode_flow_templates_restored_total",
                "Templates read back from the template journal (after a restart)",
                &[],
            ),
            flow_journal_errors: counter(
                &r,
                "raven_decode_template_journal_errors_total",
                "Template journal reads or writes that failed (decoding goes on in memory)",
                &[],
            ),
            store: StoreMetrics::new(&r),
            forward: ForwardMetrics::new(&r),
            vpn: VpnMetrics::new(&r),
            registry: r,
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub fn metrics() -> &'static Metrics {
    &METRICS
}

pub fn registry() -> &'static Registry {
    &METRICS.registry
}

/// Records captured so far per stream (both paths), for rate history.
/// What capture has handed on per stream since the agent started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamTotals {
    pub records: u64,
    pub wire_bytes: u64,
}

/// One stream's capture rate, averaged over the last minute
/// (`api::status::RateHistory::rates`).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Rate {
    pub records_per_second: f64,
    pub wire_bytes_per_second: f64,
}

pub fn captured_per_stream() -> [(Stream, StreamTotals); Stream::ALL.len()] {
    let m = metrics();
    let vias = [Via::Xdp, Via::Socket, Via::Tcp, Via::Tls];
    Stream::ALL.map(|stream| {
        let mut totals = StreamTotals::default();
        for via in vias {
            let labels = [stream.name(), via.name()];
            totals.records += m.capture_records.with_label_values(&labels).get();
            totals.wire_bytes += m.capture_bytes.with_label_values(&labels).get();
        }
        (stream, totals)
    })
}

/// Prometheus text exposition of every registered metric.
pub fn render() -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry().gather())
        .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}

/// A situation worth counting. Emitted once per batch.
pub trait InternalEvent {
    fn emit(self);
}

pub fn emit(event: impl InternalEvent) {
    event.emit();
}

/// Per-stream totals of one captured batch.
#[derive(Default)]
pub struct CapturedBatch {
    /// records, wire bytes, truncated — indexed by stream, for one path.
    pub per_stream: [(u64, u64, u64); Stream::ALL.len()],
    pub via: Option<Via>,
}

impl CapturedBatch {
    pub fn new(via: Via) -> Self {
        CapturedBatch { via: Some(via), ..Default::default() }
    }

    pub fn add(&mut self, stream: Stream, wire_len: u32, truncated: bool) {
        let slot = &mut self.per_stream[stream_index(stream)];
        slot.0 += 1;
        slot.1 += u64::from(wire_len);
        slot.2 += u64::from(truncated);
    }
}

fn stream_index(stream: Stream) -> usize {
    Stream::ALL.iter().position(|s| *s == stream).expect("ALL lists every stream")
}

impl InternalEvent for CapturedBatch {
    fn emit(self) {
        let m = metrics();
        let via = self.via.map_or("unknown", Via::name);
        for (stream, (records, bytes, truncated)) in Stream::ALL.iter().zip(self.per_stream) {
            if records == 0 {
                continue;
            }
            let labels = [stream.name(), via];
            m.capture_records.with_label_values(&labels).inc_by(records);
            m.capture_bytes.with_label_values(&labels).inc_by(bytes);
            if truncated > 0 {
                m.capture_truncated.with_label_values(&labels).inc_by(truncated);
            }
        }
    }
}

/// Records that were captured but could not be handed to the next stage.
pub struct CaptureDropped<'a> {
    pub stream: Stream,
    pub reason: &'a str,
    pub count: u64,
}

impl InternalEvent for CaptureDropped<'_> {
    fn emit(self) {
        tracing::error!(stream = %self.stream, reason = self.reason, count = self.count,
            "captured records dropped");
        metrics()
            .capture_dropped
            .with_label_values(&[self.stream.name(), self.reason])
            .inc_by(self.count);
    }
}

/// A UDP listener failed to receive (the socket stays open).
pub struct SocketReceiveFailed<'a> {
    pub port: u16,
    pub reason: &'a str,
}

impl InternalEvent for SocketReceiveFailed<'_> {
    fn emit(self) {
        tracing::warn!(port = self.port, reason = self.reason, "UDP listener receive failed");
        metrics().socket_errors.with_label_values(&[&self.port.to_string(), self.reason]).inc();
    }
}

/// The kernel dropped datagrams for a full listener receive buffer: loss
/// Raven could not prevent, made visible.
pub struct SocketOverflowed {
    pub port: u16,
    pub count: u64,
}

impl InternalEvent for SocketOverflowed {
    fn emit(self) {
        tracing::error!(
            port = self.port,
            count = self.count,
            "receive buffer full: the kernel dropped datagrams before Raven read them"
        );
        metrics().socket_overflow.with_label_values(&[&self.port.to_string()]).inc_by(self.count);
    }
}

/// A syslog TCP/TLS connection was refused (limit reached, handshake failed).
pub struct TcpConnectionRefused {
    pub port: u16,
    /// The device that tried to connect (logged, not a label).
    pub exporter: std::net::SocketAddr,
    pub reason: &'static str,
}

impl InternalEvent for TcpConnectionRefused {
    fn emit(self) {
        tracing::warn!(port = self.port, exporter = %self.exporter, stream = "syslog",
            reason = self.reason, "syslog connection refused");
        metrics().tcp_refused.with_label_values(&[&self.port.to_string(), self.reason]).inc();
    }
}

/// Growth of the kernel's cumulative counters since the last sample.
pub struct KernelCountersSampled<'a> {
    /// (outcome, increase)
    pub frames: &'a [(&'static str, u64)],
    /// (stream, increase)
    pub matched: &'a [(Stream, u64)],
}

impl InternalEvent for KernelCountersSampled<'_> {
    fn emit(self) {
        let m = metrics();
        for &(outcome, n) in self.frames {
            if n > 0 {
                m.xdp_frames.with_label_values(&[outcome]).inc_by(n);
            }
        }
        for &(stream, n) in self.matched {
            if n > 0 {
                m.xdp_matched.with_label_values(&[stream.name()]).inc_by(n);
            }
        }
    }
}

/// Growth of one exporter's kernel counters since the last sample.
pub struct ExporterSampled<'a> {
    pub exporter: &'a str,
    pub stream: Stream,
    pub packets: u64,
    pub bytes: u64,
    pub ring_full: u64,
}

impl InternalEvent for ExporterSampled<'_> {
    fn emit(self) {
        let m = metrics();
        let labels = [self.exporter, self.stream.name()];
        m.exporter_packets.with_label_values(&labels).inc_by(self.packets);
        m.exporter_bytes.with_label_values(&labels).inc_by(self.bytes);
        if self.ring_full > 0 {
            tracing::warn!(exporter = self.exporter, stream = %self.stream,
                count = self.ring_full, "ring full: datagrams went to the socket path");
            m.exporter_ring_full.with_label_values(&labels).inc_by(self.ring_full);
        }
    }
}

/// The XDP program was attached to (or detached from) an interface.
pub struct XdpAttachChanged<'a> {
    pub interface: &'a str,
    pub mode: &'a str,
    pub attached: bool,
}

impl InternalEvent for XdpAttachChanged<'_> {
    fn emit(self) {
        metrics()
            .xdp_attached
            .with_label_values(&[self.interface, self.mode])
            .set(i64::from(self.attached));
    }
}

/// Every counter and gauge as `name{labels}` → value, for `tap --stats`.
pub fn snapshot() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for family in registry().gather() {
        for metric in family.get_metric() {
            let labels: Vec<String> = metric
                .get_label()
                .iter()
                .map(|l| format!("{}=\"{}\"", l.name(), l.value()))
                .collect();
            let value = match family.get_field_type() {
                prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
                _ => metric.get_gauge().get_value(),
            };
            out.insert(format!("{}{{{}}}", family.name(), labels.join(",")), value);
        }
    }
    out
}

/// A Windows ingest request refused (nothing of it was stored).
pub struct WindowsRefused {
    pub reason: &'static str,
}

impl InternalEvent for WindowsRefused {
    fn emit(self) {
        tracing::warn!(stream = "windows", reason = self.reason, "Windows events refused");
        metrics().windows_refused.with_label_values(&[self.reason]).inc();
    }
}

// --- decode ---

/// Outcomes of decoding one batch.
#[derive(Default)]
pub struct DecodedBatch {
    /// (stream, outcome) → records
    outcomes: BTreeMap<(Stream, &'static str), u64>,
    /// (stream, reason) → records
    errors: BTreeMap<(Stream, &'static str), u64>,
    /// stream → (records lost upstream, exporter restarts), and one
    /// exporter that lost some (named in the log line).
    sequence: BTreeMap<Stream, (u64, u64, Option<std::net::IpAddr>)>,
}

impl DecodedBatch {
    /// `None`: no decoder for the stream; `Some(None)`: decoded;
    /// `Some(Some(reason))`: kept with a parse error.
    pub fn add(&mut self, stream: Stream, outcome: Option<Option<&'static str>>) {
        let label = match outcome {
            None => "raw_only",
            Some(None) => "decoded",
            Some(Some(reason)) => {
                *self.errors.entry((stream, reason)).or_default() += 1;
                "parse_error"
            }
        };
        *self.outcomes.entry((stream, label)).or_default() += 1;
    }

    pub fn sequence(
        &mut self,
        stream: Stream,
        exporter: std::net::IpAddr,
        lost: u64,
        restarted: bool,
    ) {
        if lost == 0 && !restarted {
            return;
        }
        let entry = self.sequence.entry(stream).or_default();
        entry.0 += lost;
        entry.1 += u64::from(restarted);
        if lost > 0 {
            entry.2 = Some(exporter);
        }
    }
}

impl InternalEvent for DecodedBatch {
    fn emit(self) {
        let m = metrics();
        for ((stream, outcome), n) in self.outcomes {
            m.decode_records.with_label_values(&[stream.name(), outcome]).inc_by(n);
        }
        for ((stream, reason), n) in self.errors {
            tracing::debug!(%stream, reason, records = n, "records kept raw with a parse error");
            m.decode_errors.with_label_values(&[stream.name(), reason]).inc_by(n);
        }
        for (stream, (lost, restarts, exporter)) in self.sequence {
            if lost > 0 {
                tracing::warn!(%stream, exporter = ?exporter, records = lost,
                    reason = "sequence_gap", "the exporter's sequence numbers skipped: loss before Raven");
            }
            m.decode_lost.with_label_values(&[stream.name()]).inc_by(lost);
            m.decode_restarts.with_label_values(&[stream.name()]).inc_by(restarts);
        }
    }
}

// --- store ---

struct StoreMetrics {
    appended_records: IntCounterVec,
    appended_raw_bytes: IntCounterVec,
    appended_stored_bytes: IntCounterVec,
    durable_latency: prometheus::Histogram,
    write_failures: IntCounterVec,
    repairs: IntCounterVec,
    evicted: IntCounterVec,
    evicted_unforwarded: IntCounterVec,
    dropped: IntCounterVec,
    bytes: IntGaugeVec,
    records: IntGaugeVec,
    oldest: prometheus::GaugeVec,
    fill: prometheus::GaugeVec,
    retention: prometheus::IntGauge,
    disk_free: prometheus::IntGauge,
    disk_total: prometheus::IntGauge,
    repacked: IntCounterVec,
    repack_bytes_before: IntCounterVec,
    repack_bytes_after: IntCounterVec,
    repack_failures: IntCounterVec,
}

impl StoreMetrics {
    fn new(r: &Registry) -> StoreMetrics {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let int_gauge = |name: &str, help: &str| {
            let g = prometheus::IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let durable_latency = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "raven_store_durable_latency_seconds",
                "From capture to durable on disk (fdatasynced and indexed), per record",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric");
        r.register(Box::new(durable_latency.clone())).expect("metric registered once");
        let oldest = prometheus::GaugeVec::new(
            Opts::new(
                "raven_store_oldest_record_timestamp_seconds",
                "Capture time of the oldest stored record of a stream (Unix seconds)",
            ),
            &["stream"],
        )
        .expect("valid metric");
        r.register(Box::new(oldest.clone())).expect("metric registered once");
        let fill = prometheus::GaugeVec::new(
            Opts::new(
                "raven_store_fill_ratio",
                "Bytes of a stream against its quota (stream quota, else total quota, else the disk less min_free)",
            ),
            &["stream"],
        )
        .expect("valid metric");
        r.register(Box::new(fill.clone())).expect("metric registered once");
        StoreMetrics {
            fill,
            retention: int_gauge(
                "raven_store_retention_seconds",
                "store.max_age_days in seconds: records older than this should be gone",
            ),
            appended_records: counter(
                r,
                "raven_store_appended_records_total",
                "Records made durable",
                &["stream"],
            ),
            appended_raw_bytes: counter(
                r,
                "raven_store_appended_raw_bytes_total",
                "Uncompressed bytes of the records made durable",
                &["stream"],
            ),
            appended_stored_bytes: counter(
                r,
                "raven_store_appended_stored_bytes_total",
                "Bytes written to segment files (compressed blocks)",
                &["stream"],
            ),
            durable_latency,
            write_failures: counter(
                r,
                "raven_store_write_failures_total",
                "Block writes or fdatasyncs that failed (the append is not acknowledged)",
                &["stream", "reason"],
            ),
            repairs: counter(
                r,
                "raven_store_repairs_total",
                "Damage found and repaired: torn tails, quarantined segments, rebuilt index",
                &["what"],
            ),
            evicted: counter(
                r,
                "raven_store_evicted_records_total",
                "Records removed by retention",
                &["stream", "reason"],
            ),
            evicted_unforwarded: counter(
                r,
                "raven_store_evicted_unforwarded_records_total",
                "Records removed by retention before every sink acknowledged them",
                &["stream"],
            ),
            dropped: counter(
                r,
                "raven_store_dropped_records_total",
                "Records that could not be stored (disk full with nothing to evict, I/O errors)",
                &["stream", "reason"],
            ),
            bytes: gauge("raven_store_bytes", "Bytes of segment files per stream", &["stream"]),
            records: gauge("raven_store_records", "Records stored per stream", &["stream"]),
            oldest,
            disk_free: int_gauge(
                "raven_store_disk_free_bytes",
                "Free bytes on the data directory's filesystem",
            ),
            disk_total: int_gauge(
                "raven_store_disk_total_bytes",
                "Size of the data directory's filesystem",
            ),
            repacked: counter(
                r,
                "raven_store_repacked_segments_total",
                "Sealed segments of small blocks rewritten into large blocks",
                &["stream"],
            ),
            repack_bytes_before: counter(
                r,
                "raven_store_repack_bytes_before_total",
                "Bytes of the segment files re-packing replaced",
                &["stream"],
            ),
            repack_bytes_after: counter(
                r,
                "raven_store_repack_bytes_after_total",
                "Bytes of the segment files re-packing wrote in their place",
                &["stream"],
            ),
            repack_failures: counter(
                r,
                "raven_store_repack_failures_total",
                "Re-packs given up (the segment stays as it was)",
                &["stream", "reason"],
            ),
        }
    }
}

/// A durable append.
pub struct StoreAppended<I> {
    pub stream: Stream,
    pub records: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// Capture→durable latency of each record.
    pub latencies: I,
}

impl<I: Iterator<Item = std::time::Duration>> InternalEvent for StoreAppended<I> {
    fn emit(self) {
        let m = &metrics().store;
        let stream = [self.stream.name()];
        m.appended_records.with_label_values(&stream).inc_by(self.records);
        m.appended_raw_bytes.with_label_values(&stream).inc_by(self.raw_bytes);
        m.appended_stored_bytes.with_label_values(&stream).inc_by(self.stored_bytes);
        for latency in self.latencies {
            m.durable_latency.observe(latency.as_secs_f64());
        }
    }
}

/// A block write or fsync failed.
pub struct StoreWriteFailed {
    pub stream: Stream,
    pub reason: &'static str,
}

impl InternalEvent for StoreWriteFailed {
    fn emit(self) {
        tracing::error!(stream = %self.stream, reason = self.reason, "store write failed");
        metrics().store.write_failures.with_label_values(&[self.stream.name(), self.reason]).inc();
    }
}

fn total(counter: &IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    counter
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// The flow decoder's template cache, sampled (growth since the last sample).
pub struct FlowTemplatesSampled(pub crate::decode::flow::TemplateCacheTotals);

impl InternalEvent for FlowTemplatesSampled {
    fn emit(self) {
        let (m, t) = (metrics(), self.0);
        m.flow_pending.with_label_values(&["held"]).inc_by(t.pending_cached);
        m.flow_pending.with_label_values(&["released"]).inc_by(t.pending_replayed);
        if t.pending_dropped > 0 {
            tracing::warn!(
                stream = "netflow",
                data_sets = t.pending_dropped,
                reason = "template_missing",
                "data held for a template that never came was dropped (its raw datagrams are stored)"
            );
        }
        m.flow_pending.with_label_values(&["dropped"]).inc_by(t.pending_dropped);
        m.flow_pending_now.with_label_values(&[] as &[&str]).set(t.pending_now as i64);
        m.flow_templates_restored.with_label_values(&[] as &[&str]).inc_by(t.restored);
        m.flow_journal_errors.with_label_values(&[] as &[&str]).inc_by(t.journal_errors);
    }
}

/// Block writes and syncs that failed so far (every attempt, all streams).
pub fn store_write_failures() -> u64 {
    total(&metrics().store.write_failures)
}

/// Records evicted so far (every reason, all streams).
pub fn store_evicted_records() -> u64 {
    total(&metrics().store.evicted)
}

/// Damage found and dealt with (the log line names the segment).
pub struct StoreRepaired {
    pub what: &'static str,
    pub count: u64,
}

impl InternalEvent for StoreRepaired {
    fn emit(self) {
        metrics().store.repairs.with_label_values(&[self.what]).inc_by(self.count);
    }
}

/// A sealed segment re-packed into large blocks (`store::repack`).
pub struct StoreRepacked {
    pub stream: Stream,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl InternalEvent for StoreRepacked {
    fn emit(self) {
        let m = &metrics().store;
        let stream = [self.stream.name()];
        m.repacked.with_label_values(&stream).inc();
        m.repack_bytes_before.with_label_values(&stream).inc_by(self.bytes_before);
        m.repack_bytes_after.with_label_values(&stream).inc_by(self.bytes_after);
    }
}

/// A re-pack given up; the segment stays as it was (the caller logs why).
pub struct StoreRepackFailed {
    pub stream: Stream,
    pub reason: &'static str,
}

impl InternalEvent for StoreRepackFailed {
    fn emit(self) {
        metrics().store.repack_failures.with_label_values(&[self.stream.name(), self.reason]).inc();
    }
}

/// Records the store could not keep.
pub struct StoreDropped {
    pub stream: Stream,
    pub reason: &'static str,
    pub records: u64,
}

impl InternalEvent for StoreDropped {
    fn emit(self) {
        tracing::error!(stream = %self.stream, reason = self.reason, records = self.records,
            "records could not be stored");
        metrics()
            .store
            .dropped
            .with_label_values(&[self.stream.name(), self.reason])
            .inc_by(self.records);
    }
}

/// A segment evicted by retention.
pub struct StoreEvicted {
    pub stream: Stream,
    pub reason: &'static str,
    pub records: u64,
    pub unforwarded: u64,
}

impl InternalEvent for StoreEvicted {
    fn emit(self) {
        let m = &metrics().store;
        if self.unforwarded > 0 {
            tracing::warn!(stream = %self.stream, reason = self.reason,
                records = self.records, unforwarded = self.unforwarded,
                "retention evicted records no sink had acknowledged");
            m.evicted_unforwarded.with_label_values(&[self.stream.name()]).inc_by(self.unforwarded);
        }
        m.evicted.with_label_values(&[self.stream.name(), self.reason]).inc_by(self.records);
    }
}

/// Sizes of the store and its disk.
pub struct StoreSampled<'a> {
    pub disk_total: u64,
    pub disk_free: u64,
    pub segments: &'a [crate::store::index::SegmentRow],
    /// (stream, fill ratio)
    pub fill: &'a [(Stream, f64)],
    pub retention_seconds: u64,
}

impl InternalEvent for StoreSampled<'_> {
    fn emit(self) {
        let m = &metrics().store;
        m.disk_total.set(self.disk_total as i64);
        m.disk_free.set(self.disk_free as i64);
        m.retention.set(self.retention_seconds as i64);
        for (stream, ratio) in self.fill {
            m.fill.with_label_values(&[stream.name()]).set(*ratio);
        }
        for stream in Stream::ALL {
            let rows = self.segments.iter().filter(|r| r.stream == stream);
            let (bytes, records, oldest) = rows.fold((0, 0, None::<u64>), |(b, n, o), r| {
                let first = r.first_ts.filter(|_| r.records > 0);
                (
                    b + r.stored_bytes,
                    n + r.records,
                    match (o, first) {
                        (Some(o), Some(f)) => Some(o.min(f)),
                        (o, f) => o.or(f),
                    },
                )
            });
            m.bytes.with_label_values(&[stream.name()]).set(bytes as i64);
            m.records.with_label_values(&[stream.name()]).set(records as i64);
            m.oldest
                .with_label_values(&[stream.name()])
                .set(oldest.map_or(0.0, |ns| ns as f64 / 1e9));
        }
    }
}

// --- forward (issue 5) ---

struct ForwardMetrics {
    sent_records: IntCounterVec,
    sent_bytes: IntCounterVec,
    acknowledged: IntCounterVec,
    skipped: IntCounterVec,
    retries: IntCounterVec,
    failures: IntCounterVec,
    state: IntGaugeVec,
    state_seconds: CounterVec,
    backlog_records: IntGaugeVec,
    lag_seconds: prometheus::GaugeVec,
    replayed: IntCounterVec,
}

impl ForwardMetrics {
    fn new(r: &Registry) -> ForwardMetrics {
        let state = IntGaugeVec::new(
            Opts::new("raven_forward_link_state", "Link state of a sink: 0 down, 1 degraded, 2 up"),
            &["sink"],
        )
        .expect("valid metric definition");
        r.register(Box::new(state.clone())).expect("metric registered once");
        let state_seconds = CounterVec::new(
            Opts::new(
                "raven_forward_link_state_seconds_total",
                "Time a sink spent in each link state",
            ),
            &["sink", "state"],
        )
        .expect("valid metric definition");
        r.register(Box::new(state_seconds.clone())).expect("metric registered once");
        let backlog_records = IntGaugeVec::new(
            Opts::new(
                "raven_forward_backlog_records",
                "Durable records a sink has not acknowledged yet",
            ),
            &["sink", "stream"],
        )
        .expect("valid metric definition");
        r.register(Box::new(backlog_records.clone())).expect("metric registered once");
        let lag_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "raven_forward_lag_seconds",
                "Age of the oldest record a sink has not acknowledged (0 when caught up)",
            ),
            &["sink", "stream"],
        )
        .expect("valid metric definition");
        r.register(Box::new(lag_seconds.clone())).expect("metric registered once");
        ForwardMetrics {
            replayed: counter(
                r,
                "raven_forward_replayed_records_total",
                "Records re-sent by on-demand replays (POST /api/replay), by outcome",
                &["sink", "outcome"],
            ),
            backlog_records,
            lag_seconds,
            sent_records: counter(
                r,
                "raven_forward_sent_records_total",
                "Records handed to a sink (attempts, retries included)",
                &["sink"],
            ),
            sent_bytes: counter(
                r,
                "raven_forward_sent_bytes_total",
                "Bytes a sink put on the wire for acknowledged batches",
                &["sink"],
            ),
            acknowledged: counter(
                r,
                "raven_forward_acknowledged_records_total",
                "Records the upstream acknowledged (the cursor may move over them)",
                &["sink"],
            ),
            skipped: counter(
                r,
                "raven_forward_skipped_records_total",
                "Acknowledged records not sent because the protocol cannot carry them",
                &["sink"],
            ),
            retries: counter(
                r,
                "raven_forward_retried_records_total",
                "Records sent again after a failed attempt",
                &["sink"],
            ),
            failures: counter(
                r,
                "raven_forward_failures_total",
                "Failed sends and probes of a sink, by reason",
                &["sink", "reason"],
            ),
            state,
            state_seconds,
        }
    }
}

/// One batch (or probe) handed to a sink, and its outcome.
pub struct ForwardBatchSent<'a> {
    pub sink: &'a str,
    pub sent: u64,
    pub bytes: u64,
    pub acknowledged: u64,
    pub skipped: u64,
    pub retried: u64,
    /// The failure reason, if the attempt failed.
    pub failure: Option<&'static str>,
}

impl InternalEvent for ForwardBatchSent<'_> {
    fn emit(self) {
        let m = &metrics().forward;
        let sink = [self.sink];
        m.sent_records.with_label_values(&sink).inc_by(self.sent);
        m.sent_bytes.with_label_values(&sink).inc_by(self.bytes);
        m.acknowledged.with_label_values(&sink).inc_by(self.acknowledged);
        if self.skipped > 0 {
            m.skipped.with_label_values(&sink).inc_by(self.skipped);
        }
        if self.retried > 0 {
            m.retries.with_label_values(&sink).inc_by(self.retried);
        }
        if let Some(reason) = self.failure {
            tracing::warn!(
                sink = self.sink,
                reason,
                records = self.sent,
                acknowledged = self.acknowledged,
                "forwarding attempt failed"
            );
            m.failures.with_label_values(&[self.sink, reason]).inc();
        }
    }
}

/// A sink's current link state and the time it spent in each state since
/// the last report.
pub struct ForwardLinkState<'a> {
    pub sink: &'a str,
    pub state: crate::forward::LinkState,
    pub seconds_added: [(crate::forward::LinkState, f64); 3],
}

impl InternalEvent for ForwardLinkState<'_> {
    fn emit(self) {
        let m = &metrics().forward;
        m.state.with_label_values(&[self.sink]).set(self.state.value());
        for (state, seconds) in self.seconds_added {
            let counter = m.state_seconds.with_label_values(&[self.sink, state.name()]);
            if seconds > 0.0 {
                counter.inc_by(seconds);
            }
        }
    }
}

/// An on-demand replay finished.
pub struct ReplayFinished<'a> {
    pub sink: &'a str,
    pub records: u64,
    pub acknowledged: u64,
    /// Why what was not acknowledged was not: `sink_gave_up`, or
    /// `not_read` (the range's records could not all be read again).
    pub shortfall: &'static str,
}

impl InternalEvent for ReplayFinished<'_> {
    fn emit(self) {
        let m = &metrics().forward;
        m.replayed.with_label_values(&[self.sink, "acknowledged"]).inc_by(self.acknowledged);
        let failed = self.records - self.acknowledged.min(self.records);
        if failed > 0 {
            tracing::warn!(
                sink = self.sink,
                records = failed,
                reason = self.shortfall,
                "replay ended with records not acknowledged"
            );
            m.replayed.with_label_values(&[self.sink, "not_acknowledged"]).inc_by(failed);
        }
    }
}

/// A sink's backlog for one stream, sampled by the forwarder.
pub struct ForwardBacklogSampled<'a> {
    pub sink: &'a str,
    pub stream: Stream,
    pub records: u64,
    pub lag_seconds: f64,
}

impl InternalEvent for ForwardBacklogSampled<'_> {
    fn emit(self) {
        let m = &metrics().forward;
        let labels = [self.sink, self.stream.name()];
        m.backlog_records.with_label_values(&labels).set(self.records as i64);
        m.lag_seconds.with_label_values(&labels).set(self.lag_seconds);
    }
}

// --- vpn (issue 7) ---

struct VpnMetrics {
    state: IntGaugeVec,
    healthy: prometheus::IntGauge,
    probe_latency: prometheus::HistogramVec,
    probe_failures: IntCounterVec,
    reconnects: prometheus::IntCounter,
    failovers: prometheus::IntCounter,
    bytes: IntCounterVec,
}

impl VpnMetrics {
    fn new(r: &Registry) -> VpnMetrics {
        let state = IntGaugeVec::new(
            Opts::new(
                "raven_vpn_state",
                "1 for the OpenVPN tunnel's current state, 0 for the others",
            ),
            &["state"],
        )
        .expect("valid metric definition");
        r.register(Box::new(state.clone())).expect("metric registered once");
        let healthy = prometheus::IntGauge::new(
            "raven_vpn_healthy",
            "1 while the VPN is CONNECTED and its probes pass (the forwarder's gate)",
        )
        .expect("valid metric definition");
        r.register(Box::new(healthy.clone())).expect("metric registered once");
        let probe_latency = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "raven_vpn_probe_latency_seconds",
                "Latency of successful VPN probes (TCP connect, ICMP echo) through the tunnel",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["kind"],
        )
        .expect("valid metric definition");
        r.register(Box::new(probe_latency.clone())).expect("metric registered once");
        let reconnects = prometheus::IntCounter::new(
            "raven_vpn_reconnects_total",
            "Times the OpenVPN tunnel entered RECONNECTING",
        )
        .expect("valid metric definition");
        r.register(Box::new(reconnects.clone())).expect("metric registered once");
        let failovers = prometheus::IntCounter::new(
            "raven_vpn_failovers_total",
            "Switches from one VPN profile to another (failover and fail-back)",
        )
        .expect("valid metric definition");
        r.register(Box::new(failovers.clone())).expect("metric registered once");
        VpnMetrics {
            state,
            healthy,
            probe_latency,
            probe_failures: counter(
                r,
                "raven_vpn_probe_failures_total",
                "Failed VPN probes, per target",
                &["target"],
            ),
            reconnects,
            failovers,
            bytes: counter(
                r,
                "raven_vpn_bytes_total",
                "Bytes through the tunnel as OpenVPN counts them",
                &["direction"],
            ),
        }
    }
}

/// The supervisor published a status.
pub struct VpnStatusReported {
    pub state: crate::vpn::management::TunnelState,
    pub healthy: bool,
}

impl InternalEvent for VpnStatusReported {
    fn emit(self) {
        let m = &metrics().vpn;
        for state in crate::vpn::management::TunnelState::ALL {
            m.state.with_label_values(&[state.name()]).set(i64::from(state == self.state));
        }
        m.healthy.set(i64::from(self.healthy));
    }
}

/// One round of VPN probes.
pub struct VpnProbeRound<'a> {
    pub results: &'a [crate::vpn::health::ProbeResult],
}

impl InternalEvent for VpnProbeRound<'_> {
    fn emit(self) {
        let m = &metrics().vpn;
        for result in self.results {
            let kind = match result.kind {
                crate::vpn::health::ProbeKind::Tcp => "tcp",
                crate::vpn::health::ProbeKind::Icmp => "icmp",
            };
            match result.latency_ms {
                Some(ms) if result.ok => {
                    m.probe_latency.with_label_values(&[kind]).observe(ms / 1000.0)
                }
                _ => m.probe_failures.with_label_values(&[result.target.as_str()]).inc(),
            }
        }
    }
}

/// The tunnel entered RECONNECTING.
pub struct VpnReconnected;

impl InternalEvent for VpnReconnected {
    fn emit(self) {
        metrics().vpn.reconnects.inc();
    }
}

/// The supervisor switched profiles.
pub struct VpnFailedOver;

impl InternalEvent for VpnFailedOver {
    fn emit(self) {
        metrics().vpn.failovers.inc();
    }
}

/// Bytes OpenVPN counted since the last report.
pub struct VpnBytes {
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl InternalEvent for VpnBytes {
    fn emit(self) {
        let m = &metrics().vpn;
        m.bytes.with_label_values(&["in"]).inc_by(self.bytes_in);
        m.bytes.with_label_values(&["out"]).inc_by(self.bytes_out);
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, process::Command};

    fn metric_names() -> Vec<&'static str> {
        include_str!("metrics.rs")
            .split('"')
            .filter(|s| {
                s.len() > "raven_".len()
                    && s.starts_with("raven_")
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
            .collect()
    }

    /// The alert rules parse, their unit tests pass (promtool, Debian
    /// package `prometheus`), and every Raven metric they use exists.
    #[test]
    fn alert_rules_pass_promtool_and_use_real_metrics() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/prometheus");
        for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]] {
            let out = Command::new("promtool")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("promtool (Debian package prometheus)");
            assert!(
                out.status.success(),
                "promtool {args:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let known = metric_names();
        let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
        for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("raven_") {
                assert!(known.contains(&word), "alerts.yml uses unknown metric {word}");
            }
        }
    }

    /// The Grafana dashboard is valid JSON, every query is valid PromQL
    /// (promtool checks them as recording rules, Grafana's variables filled
    /// in) and uses only metrics Raven exports.
    #[test]
    fn grafana_dashboard_queries_are_valid_and_use_real_metrics() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/grafana/raven.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let exprs: Vec<String> = dashboard["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .map(|t| t["expr"].as_str().expect("every target has an expr").to_string())
            .collect();
        assert!(exprs.len() >= 10, "{exprs:?}");
        let known = metric_names();
        let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
        for (i, expr) in exprs.iter().enumerate() {
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("raven_") {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| word.strip_suffix(suffix))
                        .filter(|base| known.contains(base))
                        .unwrap_or(word);
                    assert!(known.contains(&base), "the dashboard uses unknown metric {word}");
                }
            }
            let promql = expr.replace("$__rate_interval", "5m").replace("$instance", ".*");
            rules.push_str(&format!(
                "      - record: dashboard:query{i}\n        expr: {}\n",
                serde_json::to_string(&promql).unwrap()
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
        let out = Command::new("promtool")
            .args(["check", "rules", "dashboard.yml"])
            .current_dir(dir.path())
            .output()
            .expect("promtool (Debian package prometheus)");
        assert!(
            out.status.success(),
            "promtool:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn every_metric_is_documented() {
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(manifest.join("../docs/metrics.md")).unwrap();
        let names = metric_names();
        assert!(names.len() >= 10, "found {names:?}");
        let missing: Vec<_> =
            names.iter().filter(|n| !doc.contains(&format!("| `{n}` |"))).collect();
        assert!(missing.is_empty(), "metrics without a row in docs/metrics.md: {missing:?}");
    }
}

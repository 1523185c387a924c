//! Forwarding: the sending side of Raven. A sink is one upstream destination
//! (a NOC syslog server, flow collector, trap receiver or HTTP endpoint);
//! the forwarder reads records from the store and hands them to the sink in
//! batches, moving its cursor only over what the sink acknowledged.
//!
//! Invariants:
//! - [`Sink::send`] always reports an acknowledged *prefix* of the batch it
//!   was given ([`Delivered::acknowledged`], or
//!   [`SinkFailure::acknowledged`] on error). Records after that prefix were
//!   not acknowledged; the caller re-sends them from its cursor. What
//!   "acknowledged" means per protocol, and what can therefore arrive twice,
//!   is in `docs/forwarding.md` and on each sink type.
//! - A sink never panics on a record: a payload it cannot rewrite is sent
//!   unchanged (and counted), a record its protocol cannot carry is skipped
//!   as acknowledged with a reason (counted), never silently.
//! - Every record has a stable id `<appliance>:<stream>:<seq>`
//!   ([`RecordId`]); protocols with room for it carry it (syslog structured
//!   data when enabled, HTTP `raven_id`), so the NOC can de-duplicate.
//! - Sinks hold no cursor and touch no store: [`ManagedSink`] adds link
//!   health ([`health`]), pacing ([`pacing`]) and metrics around a [`Sink`];
//!   the forwarder owns cursors.
//!
//! Protocols (one module each): [`syslog`] (TCP with RFC 6587 framing, TLS,
//! UDP), [`udp_relay`] (NetFlow v5/v9, IPFIX, sFlow datagrams with source-id
//! rewriting and template re-sending), [`snmp`] (trap re-send, informs as
//! traps), [`http`] (gzip JSON lines).

pub mod forwarder;
pub mod health;
pub mod http;
pub mod pacing;
pub mod replay;
pub mod snmp;
pub mod syslog;
pub mod udp_relay;

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

use bytes::Bytes;
use tokio::time::Instant;

use crate::{
    config::{ForwardConfig, SinkConfig, SinkProtocol},
    metrics,
    record::Stream,
};

pub use health::{LinkHealth, LinkState};

/// The stable identity of a stored record: `<appliance>:<stream>:<seq>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    pub appliance: String,
    pub stream: Stream,
    pub seq: u64,
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.appliance, self.stream, self.seq)
    }
}

/// One record on its way upstream, as the forwarder reads it from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub id: RecordId,
    pub captured_at: SystemTime,
    /// The device that sent it to Raven.
    pub src: SocketAddr,
    /// The port it was sent to.
    pub dst_port: u16,
    /// Exactly the bytes Raven received.
    pub payload: Bytes,
    /// The decoded fields as one JSON object, when the decoder produced any.
    pub decoded: Option<Bytes>,
}

/// What a sink acknowledged of one batch: always a prefix of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// The first `acknowledged` records of the batch are acknowledged; the
    /// forwarder may move its cursor to the last of them.
    pub acknowledged: usize,
    /// Bytes put on the wire for the batch (framing and rewriting included).
    pub bytes: u64,
    /// Of the acknowledged records, how many were not sent because the
    /// protocol cannot carry them (e.g. an SNMP Response PDU to a trap
    /// receiver); counted as skipped.
    pub skipped: usize,
}

/// A failed send: what was acknowledged before the failure, and why it failed.
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {acknowledged} acknowledged records)")]
pub struct SinkFailure {
    pub acknowledged: usize,
    pub error: SinkError,
}

impl SinkFailure {
    pub fn none_acknowledged(error: SinkError) -> SinkFailure {
        SinkFailure { acknowledged: 0, error }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot resolve {endpoint}: {reason}")]
    Resolve { endpoint: String, reason: String },
    #[error("connect to {endpoint}: {source}")]
    Connect { endpoint: String, source: std::io::Error },
    #[error("connect to {endpoint} timed out")]
    ConnectTimeout { endpoint: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("write: {0}")]
    Write(std::io::Error),
    #[error("the peer closed or reset the connection before acknowledging")]
    ConnectionLost,
    #[error("the peer did not acknowledge {unacknowledged_bytes} bytes in time")]
    AckTimeout { unacknowledged_bytes: u64 },
    #[error("HTTP status {0}")]
    HttpStatus(u16),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("sink configuration: {0}")]
    Config(String),
}

impl SinkError {
    /// The `reason` label of the failure counter.
    pub fn reason(&self) -> &'static str {
        match self {
            SinkError::Resolve { .. } => "resolve",
            SinkError::Connect { .. } => "connect",
            SinkError::ConnectTimeout { .. } => "connect_timeout",
            SinkError::Tls(_) => "tls",
            SinkError::Write(_) => "write",
            SinkError::ConnectionLost => "connection_lost",
            SinkError::AckTimeout { .. } => "ack_timeout",
            SinkError::HttpStatus(_) => "http_status",
            SinkError::Http(_) => "http",
            SinkError::Config(_) => "config",
        }
    }
}

/// Resolves `host:port` (names too) to the first address.
pub(crate) async fn resolve(endpoint: &str) -> Result<SocketAddr, SinkError> {
    let resolve_error =
        |reason: String| SinkError::Resolve { endpoint: endpoint.to_string(), reason };
    tokio::net::lookup_host(endpoint)
        .await
        .map_err(|e| resolve_error(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_error("no address".to_string()))
}

/// The connected UDP socket a datagram sink sends from, made on first use.
/// A pending ICMP error from an earlier send (port unreachable) fails the
/// next use, which is how a UDP sink notices an absent receiver.
pub(crate) async fn connected_udp<'a>(
    slot: &'a mut Option<tokio::net::UdpSocket>,
    endpoint: &str,
) -> Result<&'a tokio::net::UdpSocket, SinkError> {
    if slot.is_none() {
        let addr = resolve(endpoint).await?;
        let local: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let connect_error = |source| SinkError::Connect { endpoint: endpoint.to_string(), source };
        let socket = tokio::net::UdpSocket::bind(local).await.map_err(connect_error)?;
        socket.connect(addr).await.map_err(connect_error)?;
        *slot = Some(socket);
    }
    let socket = slot.as_ref().expect("just set");
    if let Ok(Some(e)) = socket.take_error() {
        return Err(SinkError::Write(e));
    }
    Ok(socket)
}

/// An upstream destination speaking one protocol.
#[allow(clippy::large_enum_variant)] // one per configured sink
pub enum Sink {
    Syslog(syslog::SyslogSink),
    UdpRelay(udp_relay::UdpRelaySink),
    Snmp(snmp::SnmpSink),
    Http(http::HttpSink),
}

impl Sink {
    /// Builds the sink a configuration entry describes (no I/O yet: the
    /// first send or probe connects).
    pub fn from_config(sink: &SinkConfig, forward: &ForwardConfig) -> Result<Sink, SinkError> {
        Ok(match sink.protocol {
            SinkProtocol::SyslogTcp | SinkProtocol::SyslogTls | SinkProtocol::SyslogUdp => {
                Sink::Syslog(syslog::SyslogSink::from_config(sink)?)
            }
            SinkProtocol::UdpRelay => Sink::UdpRelay(udp_relay::UdpRelaySink::from_config(sink)),
            SinkProtocol::Snmp => Sink::Snmp(snmp::SnmpSink::from_config(sink)),
            SinkProtocol::Http => Sink::Http(http::HttpSink::from_config(sink, forward)?),
        })
    }

    /// Sends a batch (in order) and reports the acknowledged prefix.
    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<Delivered, SinkFailure> {
        match self {
            Sink::Syslog(s) => s.send(batch).await,
            Sink::UdpRelay(s) => s.send(batch).await,
            Sink::Snmp(s) => s.send(batch).await,
            Sink::Http(s) => s.send(batch).await,
        }
    }

    /// Checks the link without sending records (connects if needed).
    pub async fn probe(&mut self) -> Result<(), SinkError> {
        match self {
            Sink::Syslog(s) => s.probe().await,
            Sink::UdpRelay(s) => s.probe().await,
            Sink::Snmp(s) => s.probe().await,
            Sink::Http(s) => s.probe().await,
        }
    }

    /// Drops any connection; the next send reconnects (and the UDP relay
    /// re-sends its templates first).
    pub fn reset(&mut self) {
        match self {
            Sink::Syslog(s) => s.reset(),
            Sink::UdpRelay(s) => s.reset(),
            Sink::Snmp(s) => s.reset(),
            Sink::Http(s) => s.reset(),
        }
    }

    /// The UDP relay's (exporter, original domain) → relayed domain map.
    pub fn relay_mapping(&self) -> Option<&BTreeMap<(IpAddr, u32), u32>> {
        match self {
            Sink::UdpRelay(s) => Some(s.mapping()),
            _ => None,
        }
    }

    /// The UDP relay itself, to restore its state (`restore`) or prime
    /// its templates (`learn`) after a restart.
    pub fn relay_mut(&mut self) -> Option<&mut udp_relay::UdpRelaySink> {
        match self {
            Sink::UdpRelay(s) => Some(s),
            _ => None,
        }
    }
}

/// A sink with its link health, pacing and metrics: what the forwarder
/// drives. The forwarder loop is
/// `read from cursor → send (waits out backoff, paces) → move cursor by
/// acknowledged`, plus `probe` whenever `probe_due()` (idle sink, or a
/// half-open breaker with nothing to send).
pub struct ManagedSink {
    name: String,
    streams: Vec<Stream>,
    requires_vpn: bool,
    batch_max_records: usize,
    batch_max_bytes: u64,
    sink: Sink,
    health: LinkHealth,
    pacer: pacing::Pacer,
    /// The last attempt failed: the next records sent are retries.
    retrying: bool,
    last_attempt: Instant,
    probe_interval: std::time::Duration,
    /// Seconds per state already added to the time-in-state counter.
    reported_seconds: [f64; 3],
}

impl ManagedSink {
    pub fn new(config: &SinkConfig, forward: &ForwardConfig) -> Result<ManagedSink, SinkError> {
        let sink = Sink::from_config(config, forward)?;
        Ok(ManagedSink::with_sink(config, forward, sink))
    }

    /// Wraps an already built sink (tests, or a sink restored with state).
    pub fn with_sink(config: &SinkConfig, forward: &ForwardConfig, sink: Sink) -> ManagedSink {
        let health = LinkHealth::new(health::HealthPolicy::from_config(forward), Instant::now());
        let mut managed = ManagedSink {
            name: config.name.clone(),
            streams: config.effective_streams(),
            requires_vpn: config.requires_vpn,
            // A paced sink sends at most one second of its rate at once: a
            // drain after an outage must not arrive as one burst bigger than
            // the collector was sized for (a UDP receiver's socket buffer
            // overflows and drops what UDP cannot re-send).
            batch_max_records: match config.max_records_per_second {
                0 => config.batch_max_records,
                rate => config.batch_max_records.min(rate as usize),
            }
            .max(1),
            batch_max_bytes: config.batch_max_bytes,
            sink,
            health,
            pacer: pacing::Pacer::new(
                config.max_records_per_second,
                config.max_bytes_per_second,
                Instant::now(),
            ),
            retrying: false,
            last_attempt: Instant::now(),
            probe_interval: std::time::Duration::from_millis(forward.probe_interval_ms),
            reported_seconds: [0.0; 3],
        };
        managed.publish_state();
        managed
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The streams this sink takes.
    pub fn streams(&self) -> &[Stream] {
        &self.streams
    }

    /// Whether the forwarder must pause this sink while the VPN is down.
    pub fn requires_vpn(&self) -> bool {
        self.requires_vpn
    }

    /// How much one send takes: `batch_max_records` (no more than one
    /// second of `max_records_per_second` when that is set) and
    /// `batch_max_bytes` of payload, but always one record, so an
    /// oversize record still goes.
    pub fn batch_limit(&self) -> crate::store::ReadLimit {
        crate::store::ReadLimit {
            records: self.batch_max_records,
            payload_bytes: self.batch_max_bytes,
        }
    }

    pub fn state(&self) -> LinkState {
        self.health.state()
    }

    pub fn health(&self) -> &LinkHealth {
        &self.health
    }

    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut Sink {
        &mut self.sink
    }

    /// The UDP relay's domain mapping (None for other protocols).
    pub fn relay_mapping(&self) -> Option<&BTreeMap<(IpAddr, u32), u32>> {
        self.sink.relay_mapping()
    }

    /// The next attempt may go now (operator flush).
    pub fn skip_backoff(&mut self) {
        self.health.skip_backoff(Instant::now());
    }

    /// The UDP relay (None for other protocols): `prepare`, `restore`, `learn`.
    pub fn relay_mut(&mut self) -> Option<&mut udp_relay::UdpRelaySink> {
        self.sink.relay_mut()
    }

    /// Waits until backoff and the circuit breaker allow the next attempt.
    pub async fn wait_ready(&mut self) {
        tokio::time::sleep_until(self.health.ready_at()).await;
    }

    /// Waits out backoff / an open breaker (the send after it is the
    /// half-open trial), paces, sends, and records the outcome in link
    /// health and metrics. Cancel-safe until the first byte is sent (the
    /// waits come first), so a forwarder may `select!` it against shutdown.
    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<Delivered, SinkFailure> {
        if batch.is_empty() {
            return Ok(Delivered::default());
        }
        self.wait_ready().await;
        let wire_estimate: u64 = batch.iter().map(|r| r.payload.len() as u64).sum();
        self.pacer.acquire(batch.len() as u64, wire_estimate).await;
        let retry = self.retrying;
        self.last_attempt = Instant::now();
        let result = self.sink.send(batch).await;
        let now = Instant::now();
        let (acknowledged, bytes, skipped, failure) = match &result {
            Ok(d) => (d.acknowledged, d.bytes, d.skipped, None),
            Err(f) => (f.acknowledged, 0, 0, Some(f.error.reason())),
        };
        match failure {
            None => {
                self.health.record_success(now);
                self.retrying = false;
            }
            Some(_) => {
                self.health.record_failure(now);
                self.retrying = true;
                self.sink.reset();
            }
        }
        metrics::emit(metrics::ForwardBatchSent {
            sink: &self.name,
            sent: batch.len() as u64,
            bytes,
            acknowledged: acknowledged as u64,
            skipped: skipped as u64,
            retried: if retry { batch.len() as u64 } else { 0 },
            failure,
        });
        self.publish_state();
        result
    }

    /// Whether the link should be probed now: nothing was attempted for
    /// `forward.probe_interval_ms` (an idle sink), or the breaker is
    /// half-open and no records are waiting to serve as the trial.
    pub fn probe_due(&self) -> bool {
        let now = Instant::now();
        self.health.may_attempt(now)
            && now.saturating_duration_since(self.last_attempt) >= self.probe_interval
            || self.health.breaker(now) == health::Breaker::HalfOpen
    }

    /// The periodic link check; updates health like a send does.
    pub async fn probe(&mut self) -> Result<(), SinkError> {
        self.last_attempt = Instant::now();
        let result = self.sink.probe().await;
        let now = Instant::now();
        match &result {
            Ok(()) => self.health.record_success(now),
            Err(e) => {
                self.health.record_failure(now);
                self.sink.reset();
                metrics::emit(metrics::ForwardBatchSent {
                    sink: &self.name,
                    sent: 0,
                    bytes: 0,
                    acknowledged: 0,
                    skipped: 0,
                    retried: 0,
                    failure: Some(e.reason()),
                });
            }
        }
        self.publish_state();
        result
    }

    /// Publishes the state gauge and the time spent in each state since
    /// the last publication (call it periodically while idle, too).
    pub fn publish_state(&mut self) {
        let totals = self.health.seconds_in_states(Instant::now());
        let mut added = totals;
        for ((_, seconds), reported) in added.iter_mut().zip(&mut self.reported_seconds) {
            let total = *seconds;
            *seconds = (total - *reported).max(0.0);
            *reported = total;
        }
        metrics::emit(metrics::ForwardLinkState {
            sink: &self.name,
            state: self.health.state(),
            seconds_added: added,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SinkConfig;

    #[test]
    fn record_ids_read_appliance_stream_seq() {
        let id = RecordId { appliance: "venue-7".into(), stream: Stream::Ipfix, seq: 42 };
        assert_eq!(id.to_string(), "venue-7:ipfix:42");
    }

    #[tokio::test]
    async fn a_paced_sink_sends_at_most_one_second_of_its_rate_per_batch() {
        let forward = ForwardConfig::default();
        let mut config = SinkConfig::new("traps", SinkProtocol::Snmp, "192.0.2.1:162");
        assert_eq!(ManagedSink::new(&config, &forward).unwrap().batch_limit().records, 4096);
        config.max_records_per_second = 200;
        assert_eq!(ManagedSink::new(&config, &forward).unwrap().batch_limit().records, 200);
        config.batch_max_records = 50;
        assert_eq!(ManagedSink::new(&config, &forward).unwrap().batch_limit().records, 50);
    }

    #[tokio::test]
    async fn a_sink_reads_at_most_its_batch_bytes_of_payload() {
        let forward = ForwardConfig::default();
        let mut config = SinkConfig::new("noc", SinkProtocol::SyslogUdp, "192.0.2.1:514");
        let limit = ManagedSink::new(&config, &forward).unwrap().batch_limit();
        assert_eq!(limit.payload_bytes, 1 << 20);
        config.batch_max_bytes = 17;
        let limit = ManagedSink::new(&config, &forward).unwrap().batch_limit();
        assert_eq!(
            limit.fitting([8, 8, 8]),
            2,
            "two 8-byte payloads fit in 17 bytes, three do not"
        );
        assert_eq!(limit.fitting([40, 8]), 1, "an oversize record still goes, alone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_is_due_when_idle_or_half_open() {
        let forward = ForwardConfig { probe_interval_ms: 1000, ..ForwardConfig::default() };
        let config = SinkConfig::new("p", SinkProtocol::UdpRelay, "192.0.2.1:2055");
        let mut sink = ManagedSink::new(&config, &forward).unwrap();
        assert!(!sink.probe_due(), "just created");
        tokio::time::advance(std::time::Duration::from_millis(1000)).await;
        assert!(sink.probe_due(), "idle for the probe interval");
        // Open the breaker by hand: it is due (half-open) once the backoff ends.
        let now = Instant::now();
        for _ in 0..forward.breaker_failures {
            sink.health.record_failure(now);
        }
        sink.last_attempt = now;
        assert_eq!(sink.state(), LinkState::Down);
        tokio::time::sleep_until(sink.health.ready_at()).await;
        assert!(sink.probe_due());
    }
}

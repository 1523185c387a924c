//! Link health: application probes through the tunnel, the up / degraded / down
//! verdict, and 24 hours of samples in SQLite.
//!
//! # Invariants
//! - Tunnel state alone is not proof of a working link: a one-way cut takes
//!   OpenVPN's `ping-restart` (often 25 s or more) to notice. The verdict combines
//!   the tunnel state with TCP-connect and ICMP-echo probes, each bounded by the
//!   probe deadline, so a cut is seen within one probe interval plus one deadline.
//! - `up`: CONNECTED and every probe succeeded (or no probes are configured).
//!   `degraded`: CONNECTED and some probes failed, or all failed for fewer than
//!   `down_after_probes` rounds. `down`: not CONNECTED, or all probes failed for
//!   `down_after_probes` rounds in a row.
//! - The history keeps at most 24 hours: older rows are deleted on insert.
//!
//! # Format
//! `<data_dir>/vpn/health.db`, table `samples(at REAL, kind TEXT, profile TEXT,
//! state TEXT, target TEXT, ok INTEGER, latency_ms REAL, bytes_in INTEGER,
//! bytes_out INTEGER, detail TEXT)`; `kind` is `state`, `probe` or `bytes`.
//!
//! # Operations
//! [`probe_tcp`], [`probe_icmp`], [`run_probes`], [`HealthEvaluator::evaluate`],
//! [`HealthHistory`].

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use super::{VpnError, management::TunnelState, now_secs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Up,
    Degraded,
    Down,
}

impl HealthState {
    /// Whether traffic that needs the VPN may flow (the forwarder's gate).
    pub fn passes_traffic(self) -> bool {
        matches!(self, HealthState::Up | HealthState::Degraded)
    }

    pub fn name(self) -> &'static str {
        match self {
            HealthState::Up => "up",
            HealthState::Degraded => "degraded",
            HealthState::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Health {
    pub state: HealthState,
    /// Why the state is not `up` (empty when up).
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    Tcp,
    Icmp,
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ProbeResult {
    pub kind: ProbeKind,
    pub target: String,
    pub ok: bool,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
    /// Seconds since the Unix epoch.
    pub at: f64,
}

fn result(
    kind: ProbeKind,
    target: String,
    started: Instant,
    outcome: Result<(), String>,
) -> ProbeResult {
    let latency = started.elapsed().as_secs_f64() * 1000.0;
    ProbeResult {
        kind,
        target,
        ok: outcome.is_ok(),
        latency_ms: outcome.is_ok().then_some(latency),
        error: outcome.err(),
        at: now_secs(),
    }
}

/// TCP connect to `target` within `deadline`.
pub async fn probe_tcp(target: SocketAddr, deadline: Duration) -> ProbeResult {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(deadline, tokio::net::TcpStream::connect(target)).await
    {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err(format!("no answer within {} ms", deadline.as_millis())),
    };
    result(ProbeKind::Tcp, target.to_string(), started, outcome)
}

fn icmp_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One ICMP echo over a raw socket (needs CAP_NET_RAW), blocking up to `deadline`.
/// One datagram from a raw socket within `left`; `None` when none came.
pub(crate) fn recv_raw(
    socket: &Socket,
    buf: &mut [std::mem::MaybeUninit<u8>],
    left: Duration,
) -> Result<Option<(Vec<u8>, socket2::SockAddr)>, String> {
    socket.set_read_timeout(Some(left)).map_err(|e| format!("set timeout: {e}"))?;
    match socket.recv_from(buf) {
        // SAFETY: recv_from initialised the first `len` bytes.
        Ok((len, from)) => {
            Ok(Some((buf[..len].iter().map(|b| unsafe { b.assume_init() }).collect(), from)))
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(format!("receive: {e}")),
    }
}

pub(crate) fn icmp_echo_blocking(
    target: IpAddr,
    deadline: Duration,
    ident: u16,
    seq: u16,
    payload_len: usize,
) -> Result<(), String> {
    let (domain, protocol, request_type, reply_type) = match target {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8),
    };
    let socket = Socket::new(domain, Type::RAW, Some(protocol))
        .map_err(|e| format!("raw ICMP socket: {e}"))?;
    let mut packet = vec![request_type, 0, 0, 0];
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend(b"raven-vpn-probe.".iter().cycle().take(payload_len));
    if target.is_ipv4() {
        // The kernel computes ICMPv6 checksums itself; ICMPv4 is ours to fill in.
        let sum = icmp_checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    let started = Instant::now();
    socket
        .send_to(&packet, &SocketAddr::new(target, 0).into())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    loop {
        let left = deadline.checked_sub(started.elapsed()).filter(|d| !d.is_zero());
        let Some(left) = left else {
            return Err(format!("no echo reply within {} ms", deadline.as_millis()));
        };
        let Some((bytes, from)) = recv_raw(&socket, &mut buf, left)? else { continue };
        if from.as_socket().map(|a| a.ip()) != Some(target) {
            continue;
        }
        // IPv4 raw sockets deliver the IP header; IPv6 ones do not.
        let icmp = if target.is_ipv4() {
            let header = usize::from(bytes.first().map(|b| b & 0x0f).unwrap_or(5)) * 4;
            bytes.get(header..).unwrap_or(&[])
        } else {
            &bytes[..]
        };
        if icmp.len() >= 8
            && icmp[0] == reply_type
            && icmp[4..6] == ident.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok(());
        }
    }
}

/// ICMP echo to `target` within `deadline`.
pub async fn probe_icmp(target: IpAddr, deadline: Duration, seq: u16) -> ProbeResult {
    let started = Instant::now();
    let ident = fastrand::u16(..);
    let outcome =
        tokio::task::spawn_blocking(move || icmp_echo_blocking(target, deadline, ident, seq, 16))
            .await
            .unwrap_or_else(|e| Err(format!("probe task failed: {e}")));
    result(ProbeKind::Icmp, target.to_string(), started, outcome)
}

/// Runs every configured probe concurrently.
pub async fn run_probes(
    tcp_targets: &[SocketAddr],
    ping_target: Option<IpAddr>,
    deadline: Duration,
    seq: u16,
) -> Vec<ProbeResult> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, target) in tcp_targets.iter().copied().enumerate() {
        tasks.spawn(async move { (index, probe_tcp(target, deadline).await) });
    }
    if let Some(target) = ping_target {
        tasks.spawn(async move { (usize::MAX, probe_icmp(target, deadline, seq).await) });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(done) = joined {
            results.push(done);
        }
    }
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Turns the tunnel state and probe rounds into a verdict.
#[derive(Debug, Clone)]
pub struct HealthEvaluator {
    down_after_probes: u32,
    all_failed_rounds: u32,
}

impl HealthEvaluator {
    pub fn new(down_after_probes: u32) -> HealthEvaluator {
        HealthEvaluator { down_after_probes: down_after_probes.max(1), all_failed_rounds: 0 }
    }

    /// The tunnel state changed without a new probe round.
    pub fn on_state(&mut self, state: TunnelState, last_probes: &[ProbeResult]) -> Health {
        if state != TunnelState::Connected {
            self.all_failed_rounds = 0;
            return Health {
                state: HealthState::Down,
                reasons: vec![format!("tunnel is {}", state.name())],
            };
        }
        self.verdict(last_probes)
    }

    /// A probe round finished.
    pub fn evaluate(&mut self, state: TunnelState, probes: &[ProbeResult]) -> Health {
        if state != TunnelState::Connected {
            return self.on_state(state, probes);
        }
        if !probes.is_empty() && probes.iter().all(|p| !p.ok) {
            self.all_failed_rounds += 1;
        } else {
            self.all_failed_rounds = 0;
        }
        self.verdict(probes)
    }

    fn verdict(&self, probes: &[ProbeResult]) -> Health {
        let reasons: Vec<String> = probes
            .iter()
            .filter(|p| !p.ok)
            .map(|p| {
                let kind = match p.kind {
                    ProbeKind::Tcp => "tcp",
                    ProbeKind::Icmp => "ping",
                };
                format!(
                    "{kind} probe {} failed: {}",
                    p.target,
                    p.error.as_deref().unwrap_or("unknown")
                )
            })
            .collect();
        let state = if reasons.is_empty() {
            HealthState::Up
        } else if reasons.len() == probes.len() && self.all_failed_rounds >= self.down_after_probes
        {
            HealthState::Down
        } else {
            HealthState::Degraded
        };
        Health { state, reasons }
    }
}

/// One row of the history.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Sample {
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// `state`, `probe` or `bytes`.
    pub kind: String,
    pub profile: Option<String>,
    pub state: Option<String>,
    pub target: Option<String>,
    pub ok: Option<bool>,
    pub latency_ms: Option<f64>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub detail: Option<String>,
}

/// 24 hours of link samples in SQLite.
pub struct HealthHistory {
    conn: Mutex<rusqlite::Connection>,
}

/// How long samples are kept.
pub const HISTORY_SECONDS: f64 = 24.0 * 3600.0;

fn db_error(e: rusqlite::Error) -> VpnError {
    VpnError::History(e.to_string())
}

impl HealthHistory {
    pub fn open(path: &Path) -> Result<HealthHistory, VpnError> {
        let conn = rusqlite::Connection::open(path).map_err(db_error)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS samples (
                at REAL NOT NULL, kind TEXT NOT NULL, profile TEXT, state TEXT, target TEXT,
                ok INTEGER, latency_ms REAL, bytes_in INTEGER, bytes_out INTEGER, detail TEXT);
             CREATE INDEX IF NOT EXISTS samples_at ON samples(at);",
        )
        .map_err(db_error)?;
        Ok(HealthHistory { conn: Mutex::new(conn) })
    }

    pub fn record(&self, sample: &Sample) -> Result<(), VpnError> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.execute(
            "INSERT INTO samples (at, kind, profile, state, target, ok, latency_ms, bytes_in, bytes_out, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            rusqlite::params![
                sample.at,
                sample.kind,
                sample.profile,
                sample.state,
                sample.target,
                sample.ok,
                sample.latency_ms,
                sample.bytes_in.map(|b| b as i64),
                sample.bytes_out.map(|b| b as i64),
                sample.detail,
            ],
        )
        .map_err(db_error)?;
        conn.execute("DELETE FROM samples WHERE at < ?1", [sample.at - HISTORY_SECONDS])
            .map_err(db_error)?;
        Ok(())
    }

    /// Samples at or after `since` (seconds since the epoch), oldest first, at most `limit`.
    pub fn samples(&self, since: f64, limit: usize) -> Result<Vec<Sample>, VpnError> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut statement = conn
            .prepare(
                "SELECT at, kind, profile, state, target, ok, latency_ms, bytes_in, bytes_out, detail
                 FROM samples WHERE at >= ?1 ORDER BY at LIMIT ?2",
            )
            .map_err(db_error)?;
        let rows = statement
            .query_map(rusqlite::params![since, limit as i64], |row| {
                Ok(Sample {
                    at: row.get(0)?,
                    kind: row.get(1)?,
                    profile: row.get(2)?,
                    state: row.get(3)?,
                    target: row.get(4)?,
                    ok: row.get(5)?,
                    latency_ms: row.get(6)?,
                    bytes_in: row.get::<_, Option<i64>>(7)?.map(|b| b as u64),
                    bytes_out: row.get::<_, Option<i64>>(8)?.map(|b| b as u64),
                    detail: row.get(9)?,
                })
            })
            .map_err(db_error)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(ok: bool) -> ProbeResult {
        ProbeResult {
            kind: ProbeKind::Tcp,
            target: "198.19.0.1:80".into(),
            ok,
            latency_ms: ok.then_some(1.0),
            error: (!ok).then(|| "refused".into()),
            at: 0.0,
        }
    }

    #[test]
    fn verdicts() {
        let mut evaluator = HealthEvaluator::new(2);
        assert_eq!(evaluator.evaluate(TunnelState::Connected, &[]).state, HealthState::Up);
        assert_eq!(
            evaluator.evaluate(TunnelState::Connected, &[probe(true), probe(true)]).state,
            HealthState::Up
        );
        let degraded = evaluator.evaluate(TunnelState::Connected, &[probe(true), probe(false)]);
        assert_eq!(degraded.state, HealthState::Degraded);
        assert!(degraded.reasons[0].contains("refused"));
        assert_eq!(
            evaluator.evaluate(TunnelState::Connected, &[probe(false)]).state,
            HealthState::Degraded
        );
        assert_eq!(
            evaluator.evaluate(TunnelState::Connected, &[probe(false)]).state,
            HealthState::Down
        );
        assert_eq!(
            evaluator.evaluate(TunnelState::Connected, &[probe(true)]).state,
            HealthState::Up
        );
        let down = evaluator.on_state(TunnelState::Reconnecting, &[probe(true)]);
        assert_eq!(down.state, HealthState::Down);
        assert_eq!(down.reasons, vec!["tunnel is RECONNECTING"]);
        assert!(!HealthState::Down.passes_traffic());
        assert!(HealthState::Degraded.passes_traffic());
    }

    #[test]
    fn icmp_checksum_matches_rfc1071_example() {
        // An echo request with zero checksum field; the checksum of the filled packet is 0.
        let mut packet = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'a', b'b', b'c'];
        let sum = icmp_checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(icmp_checksum(&packet), 0);
    }

    #[tokio::test]
    async fn tcp_probe_succeeds_and_fails() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let ok = probe_tcp(open, Duration::from_secs(1)).await;
        assert!(ok.ok, "{ok:?}");
        drop(listener);
        let refused = probe_tcp(open, Duration::from_secs(1)).await;
        assert!(!refused.ok);
        assert!(refused.error.unwrap().contains("connect"));
    }

    #[test]
    fn history_keeps_24_hours() {
        let dir = tempfile::tempdir().unwrap();
        let history = HealthHistory::open(&dir.path().join("health.db")).unwrap();
        let now = now_secs();
        let sample = |at: f64, kind: &str| Sample {
            at,
            kind: kind.into(),
            profile: Some("primary".into()),
            state: Some("CONNECTED".into()),
            target: None,
            ok: None,
            latency_ms: None,
            bytes_in: Some(10),
            bytes_out: Some(20),
            detail: None,
        };
        history.record(&sample(now - HISTORY_SECONDS - 10.0, "state")).unwrap();
        history.record(&sample(now - 5.0, "bytes")).unwrap();
        history.record(&sample(now, "state")).unwrap();
        let all = history.samples(0.0, 100).unwrap();
        assert_eq!(all.len(), 2, "the sample older than 24 h was deleted");
        assert_eq!(all[0].kind, "bytes");
        assert_eq!(all[0].bytes_out, Some(20));
    }
}

//! VPN supervision: OpenVPN profiles, the management-interface protocol, the
//! supervised `openvpn` child and the link health it reports.
//!
//! # Invariants
//! - A profile is stored only after it parsed against the directive allow-list
//!   and its certificates validated; the stored `profile.ovpn` holds private key
//!   material and is written with mode 0600 inside a 0700 directory.
//! - The management socket lives in a 0700 directory owned by the agent; only the
//!   agent talks to OpenVPN's management interface.
//! - Every `>HOLD:` from OpenVPN is answered with `hold release` (OpenVPN holds again
//!   after its own SIGUSR1 restarts).
//! - "Healthy" (the forwarder's gate) is true only while the tunnel is CONNECTED
//!   and the application probes through it succeed.
//!
//! # Protocol
//! OpenVPN's management interface is a line protocol over a unix socket:
//! real-time notifications start with `>` (`>STATE:`, `>HOLD:`, `>BYTECOUNT:`,
//! `>INFO:`, `>LOG:`), command replies start with `SUCCESS:` or `ERROR:`.
//! See [`management`].
//!
//! # Operations
//! - [`profile`]: import / validate / list / remove / set priority / activate.
//! - [`supervisor`]: [`Supervisor::start`] runs openvpn and publishes
//!   [`VpnStatus`] and the forwarder's "VPN healthy" gate (`watch::Receiver<bool>`).
//! - [`health`]: probes, the up / degraded / down verdict, 24 h SQLite history.
//! - [`diagnostics`]: ping, traceroute, TCP connect, DNS lookup, HTTP throughput.
//! - [`cli`]: `raven-agent vpn profiles ...`, `vpn diag ...`, `vpn run`.

pub mod cli;
pub mod diagnostics;
pub mod health;
pub mod management;
pub mod profile;
pub mod supervisor;

pub use supervisor::{Supervisor, SupervisorHandle};

/// The test PKI shared with `tests/vpn.rs`.
#[cfg(test)]
#[path = "../../../tests/common/pki.rs"]
mod test_pki;

use std::path::PathBuf;

use serde::Serialize;

use self::{
    health::{Health, HealthState, ProbeResult},
    management::TunnelState,
};

/// What the supervisor reports (API `GET /api/vpn/status`, status page, CLI).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VpnStatus {
    pub state: TunnelState,
    /// OpenVPN's reason for the state (e.g. `SUCCESS`, `ping-restart`).
    pub description: String,
    /// The profile in use.
    pub profile: Option<String>,
    /// The appliance's address inside the tunnel, while it has one.
    pub tunnel_address: Option<String>,
    /// When `state` was entered, seconds since the Unix epoch.
    pub since: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub health: Health,
    /// The last probe round.
    pub probes: Vec<ProbeResult>,
    /// The openvpn child's process id, while it runs.
    pub pid: Option<u32>,
    pub reconnects: u64,
    pub failovers: u64,
}

impl VpnStatus {
    pub fn stopped() -> VpnStatus {
        VpnStatus {
            state: TunnelState::Stopped,
            description: String::new(),
            profile: None,
            tunnel_address: None,
            since: now_secs(),
            bytes_in: 0,
            bytes_out: 0,
            health: Health {
                state: HealthState::Down,
                reasons: vec!["openvpn is not running".into()],
            },
            probes: Vec::new(),
            pid: None,
            reconnects: 0,
            failovers: 0,
        }
    }
}

/// Everything that can go wrong in VPN supervision.
#[derive(Debug, thiserror::Error)]
pub enum VpnError {
    #[error("profile line {line}: {reason}")]
    Directive { line: usize, reason: String },
    #[error("profile certificate problem: {0}")]
    Certificate(String),
    #[error("profile {0:?} does not exist")]
    NoSuchProfile(String),
    #[error("profile {0:?} already exists")]
    ProfileExists(String),
    #[error("invalid profile name {0:?}: use letters, digits, '-', '_' and '.' (1-64 characters)")]
    BadName(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("management interface: {0}")]
    Management(String),
    #[error("health history: {0}")]
    History(String),
    #[error("starting {binary}: {source}")]
    Spawn { binary: String, source: std::io::Error },
}

/// Seconds since the Unix epoch, with fractions.
pub(crate) fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl VpnError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> VpnError {
        let path = path.into();
        move |source| VpnError::Io { path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::{health::ProbeKind, *};
    use crate::metrics;

    #[test]
    fn status_serialises_and_metrics_follow_events() {
        let mut status = VpnStatus::stopped();
        status.state = TunnelState::Connected;
        status.tunnel_address = Some("198.19.0.2".into());
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["state"], "CONNECTED");
        assert_eq!(json["health"]["state"], "down");

        metrics::emit(metrics::VpnStatusReported { state: TunnelState::Connected, healthy: true });
        metrics::emit(metrics::VpnProbeRound {
            results: &[ProbeResult {
                kind: ProbeKind::Tcp,
                target: "192.0.2.1:7000".into(),
                ok: false,
                latency_ms: None,
                error: Some("refused".into()),
                at: 0.0,
            }],
        });
        metrics::emit(metrics::VpnBytes { bytes_in: 10, bytes_out: 20 });
        let text = metrics::render();
        assert!(text.contains("raven_vpn_state{state=\"CONNECTED\"} 1"), "{text}");
        assert!(text.contains("raven_vpn_state{state=\"RECONNECTING\"} 0"), "{text}");
        assert!(text.contains("raven_vpn_healthy 1"), "{text}");
        assert!(
            text.contains("raven_vpn_probe_failures_total{target=\"192.0.2.1:7000\"}"),
            "{text}"
        );
        assert!(text.contains("raven_vpn_bytes_total{direction=\"out\"}"), "{text}");
    }
}

//! The supervised `openvpn` child: start, management session, restarts with
//! backoff, failover between profiles and fail-back with hysteresis.
//!
//! # Invariants
//! - At most one `openvpn` child runs per supervisor; it is started with
//!   `--management <data_dir>/vpn/run/mgmt.sock unix --management-hold` (the
//!   directory is 0700) and killed when the supervisor is dropped (`kill_on_drop`).
//! - Every `>HOLD:` is answered with `hold release`.
//! - Failover (to the next profile by priority) happens after
//!   `failover_after_failures` failed attempts (RECONNECTING or an exit before
//!   CONNECTED) or after being `down` for `failover_after_ms`. Fail-back to the
//!   preferred profile is tried after `failback_after_ms` of continuous `up` on a
//!   lower one (`failback_after_ms >= failover_after_ms`: hysteresis).
//! - `raven-agent vpn profiles activate NAME` (the `active` file) switches the
//!   running supervisor to NAME within one probe interval; NAME is then preferred.
//! - `<data_dir>/vpn/state.json` holds the last profile that was healthy; after an
//!   agent restart the supervisor starts with it.
//! - [`SupervisorHandle::stop`] sends SIGTERM and kills after 5 s.
//!
//! # Operations
//! [`Supervisor::start`], [`SupervisorHandle::status`], [`SupervisorHandle::healthy`],
//! [`SupervisorHandle::stop`].

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
    process::{Child, Command},
    sync::{mpsc, watch},
};

use super::{
    VpnError, VpnStatus,
    health::{
        Health, HealthEvaluator, HealthHistory, HealthState, ProbeResult, Sample, run_probes,
    },
    management::{Action, TunnelState, TunnelTracker, parse_line},
    now_secs,
    profile::ProfileStore,
};
use crate::{config::VpnConfig, metrics};

/// How long a stopping child gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long openvpn gets to create its management socket.
const MANAGEMENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What survives an agent restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PersistedState {
    pub last_good_profile: Option<String>,
    pub state: Option<String>,
    pub since: f64,
}

pub struct Supervisor;

/// A running supervisor.
pub struct SupervisorHandle {
    status: watch::Receiver<VpnStatus>,
    healthy: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    history: Arc<HealthHistory>,
}

impl SupervisorHandle {
    pub fn status(&self) -> watch::Receiver<VpnStatus> {
        self.status.clone()
    }

    /// The forwarder's gate: true while the tunnel is CONNECTED and the probes pass
    /// (health `up` or `degraded`).
    pub fn healthy(&self) -> watch::Receiver<bool> {
        self.healthy.clone()
    }

    /// The 24-hour sample history.
    pub fn history(&self) -> Arc<HealthHistory> {
        self.history.clone()
    }

    /// Stops the openvpn child (SIGTERM, then SIGKILL after 5 s) and the supervisor.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SupervisorHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Supervisor {
    /// Starts supervising: picks a profile, runs openvpn, probes the link.
    pub fn start(config: VpnConfig, data_dir: &Path) -> Result<SupervisorHandle, VpnError> {
        let store = ProfileStore::open(data_dir)?;
        let vpn_dir = data_dir.join("vpn");
        let run_dir = vpn_dir.join("run");
        std::fs::create_dir_all(&run_dir).map_err(VpnError::io(&run_dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(VpnError::io(&run_dir))?;
        }
        let history = Arc::new(HealthHistory::open(&vpn_dir.join("health.db"))?);
        let (status_tx, status) = watch::channel(VpnStatus::stopped());
        let (healthy_tx, healthy) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let runner = Runner {
            tcp_targets: config.probe_targets.iter().filter_map(|t| t.parse().ok()).collect(),
            ping_target: config.ping_target.parse().ok(),
            config,
            store,
            socket: run_dir.join("mgmt.sock"),
            state_path: vpn_dir.join("state.json"),
            status_tx,
            healthy_tx,
            history: history.clone(),
            stop_rx,
            status: VpnStatus::stopped(),
            failovers: 0,
            reconnects: 0,
            bytes_seen: (0, 0),
            seen_active: None,
        };
        let task = tokio::spawn(runner.run());
        Ok(SupervisorHandle { status, healthy, stop, task: Some(task), history })
    }
}

/// Why one profile's run ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Stop,
    Failover,
    Failback,
    /// The operator activated another profile.
    Activated(String),
}

/// The wait before restarting openvpn after `failures` failures in a row:
/// `backoff_min_ms · 2^(failures-1)`, capped at `backoff_max_ms`.
fn restart_backoff_ms(config: &VpnConfig, failures: u32) -> u64 {
    let exponent = failures.saturating_sub(1).min(20);
    config.backoff_min_ms.saturating_mul(1 << exponent).min(config.backoff_max_ms)
}

/// Whether to leave the current profile: failover after too many failures or too
/// long down (only when there is another profile), fail-back after a long enough
/// healthy run on a lower-priority profile.
fn decide(config: &VpnConfig, attempt: &Attempt) -> Option<ChildEnd> {
    if attempt.profiles > 1 {
        if attempt.failures >= config.failover_after_failures {
            return Some(ChildEnd::Failover);
        }
        if attempt
            .down_since
            .is_some_and(|t| t.elapsed() >= Duration::from_millis(config.failover_after_ms))
        {
            return Some(ChildEnd::Failover);
        }
    }
    if attempt.position > 0
        && attempt
            .up_since
            .is_some_and(|t| t.elapsed() >= Duration::from_millis(config.failback_after_ms))
    {
        return Some(ChildEnd::Failback);
    }
    None
}

/// Why one child's run ended.
#[derive(Debug, PartialEq, Eq)]
enum ChildEnd {
    Stop,
    Failover,
    Failback,
    Activated(String),
    Exited,
}

/// Bookkeeping for one profile across child restarts.
struct Attempt {
    name: String,
    position: usize,
    profiles: usize,
    failures: u32,
    down_since: Option<Instant>,
    up_since: Option<Instant>,
}

struct Runner {
    config: VpnConfig,
    store: ProfileStore,
    socket: PathBuf,
    state_path: PathBuf,
    status_tx: watch::Sender<VpnStatus>,
    healthy_tx: watch::Sender<bool>,
    history: Arc<HealthHistory>,
    stop_rx: watch::Receiver<bool>,
    tcp_targets: Vec<SocketAddr>,
    ping_target: Option<IpAddr>,
    status: VpnStatus,
    failovers: u64,
    reconnects: u64,
    bytes_seen: (u64, u64),
    /// The activated profile as last seen, to notice `profiles activate`.
    seen_active: Option<String>,
}

impl Runner {
    fn stopping(&self) -> bool {
        *self.stop_rx.borrow()
    }

    /// Sleeps unless stopped first; returns false when stopped.
    async fn sleep_or_stop(&mut self, duration: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => !self.stopping(),
            _ = self.stop_rx.changed() => false,
        }
    }

    fn load_state(&self) -> PersistedState {
        std::fs::read(&self.state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_state(&self, state: &PersistedState) {
        let Ok(json) = serde_json::to_vec_pretty(state) else { return };
        let tmp = self.state_path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &self.state_path));
        if let Err(e) = written {
            tracing::warn!(path = %self.state_path.display(), error = %e, "cannot persist the VPN state");
        }
    }

    fn publish(&mut self) {
        self.status.failovers = self.failovers;
        self.status.reconnects = self.reconnects;
        let healthy = self.status.health.state.passes_traffic()
            && self.status.state == TunnelState::Connected;
        self.status_tx.send_replace(self.status.clone());
        self.healthy_tx.send_if_modified(|current| {
            let changed = *current != healthy;
            *current = healthy;
            changed
        });
        metrics::emit(metrics::VpnStatusReported { state: self.status.state, healthy });
    }

    fn record(&self, sample: Sample) {
        if let Err(e) = self.history.record(&sample) {
            tracing::warn!(error = %e, "cannot record a VPN health sample");
        }
    }

    fn set_health(&mut self, health: Health, attempt: &mut Attempt) {
        let now = Instant::now();
        match health.state {
            HealthState::Down => {
                attempt.up_since = None;
                attempt.down_since.get_or_insert(now);
            }
            HealthState::Degraded => {
                attempt.up_since = None;
                attempt.down_since = None;
            }
            HealthState::Up => {
                attempt.down_since = None;
                attempt.up_since.get_or_insert(now);
            }
        }
        if health.state != self.status.health.state {
            tracing::info!(profile = %attempt.name, health = health.state.name(), reasons = ?health.reasons, "VPN health changed");
            self.record(Sample {
                at: now_secs(),
                kind: "health".into(),
                profile: Some(attempt.name.clone()),
                state: Some(health.state.name().into()),
                target: None,
                ok: None,
                latency_ms: None,
                bytes_in: None,
                bytes_out: None,
                detail: Some(health.reasons.join("; ")),
            });
            if health.state == HealthState::Up {
                self.save_state(&PersistedState {
                    last_good_profile: Some(attempt.name.clone()),
                    state: Some(TunnelState::Connected.name().into()),
                    since: now_secs(),
                });
            }
        }
        self.status.health = health;
    }

    /// A profile the operator activated since we last looked, if it is not the
    /// one running.
    fn newly_activated(&mut self, current: &str) -> Option<String> {
        let active = self.store.active().ok().flatten();
        if active == self.seen_active {
            return None;
        }
        self.seen_active = active.clone();
        active.filter(|name| name != current)
    }

    async fn run(mut self) {
        self.seen_active = self.store.active().ok().flatten();
        let mut next: Option<String> = self.load_state().last_good_profile;
        while !self.stopping() {
            let order = match self.store.failover_order() {
                Ok(order) => order,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list VPN profiles");
                    Vec::new()
                }
            };
            if order.is_empty() {
                self.status = VpnStatus::stopped();
                self.status.health.reasons = vec!["no VPN profile is imported".into()];
                self.publish();
                if !self.sleep_or_stop(self.config.probe_interval()).await {
                    break;
                }
                continue;
            }
            let position =
                next.as_ref().and_then(|n| order.iter().position(|m| &m.name == n)).unwrap_or(0);
            let mut attempt = Attempt {
                name: order[position].name.clone(),
                position,
                profiles: order.len(),
                failures: 0,
                down_since: Some(Instant::now()),
                up_since: None,
            };
            let outcome = self.run_profile(&mut attempt).await;
            next = match outcome {
                Outcome::Stop => break,
                Outcome::Failover => {
                    self.failovers += 1;
                    let to = order[(position + 1) % order.len()].name.clone();
                    tracing::warn!(from = %attempt.name, to = %to, failures = attempt.failures, "VPN failover");
                    metrics::emit(metrics::VpnFailedOver);
                    Some(to)
                }
                Outcome::Activated(name) => {
                    tracing::info!(from = %attempt.name, to = %name, "VPN profile activated by the operator");
                    Some(name)
                }
                Outcome::Failback => {
                    tracing::info!(from = %attempt.name, to = %order[0].name, "VPN fail-back to the preferred profile");
                    metrics::emit(metrics::VpnFailedOver);
                    self.failovers += 1;
                    Some(order[0].name.clone())
                }
            };
        }
        self.status.state = TunnelState::Stopped;
        self.status.tunnel_address = None;
        self.status.pid = None;
        self.status.health =
            Health { state: HealthState::Down, reasons: vec!["supervisor stopped".into()] };
        self.publish();
    }

    async fn run_profile(&mut self, attempt: &mut Attempt) -> Outcome {
        loop {
            let end = self.run_child(attempt).await;
            match end {
                ChildEnd::Stop => return Outcome::Stop,
                ChildEnd::Failover => return Outcome::Failover,
                ChildEnd::Failback => return Outcome::Failback,
                ChildEnd::Activated(name) => return Outcome::Activated(name),
                ChildEnd::Exited => {
                    attempt.failures += 1;
                    if attempt.profiles > 1
                        && attempt.failures >= self.config.failover_after_failures
                    {
                        return Outcome::Failover;
                    }
                    let backoff = restart_backoff_ms(&self.config, attempt.failures);
                    tracing::info!(profile = %attempt.name, backoff_ms = backoff, "openvpn exited; restarting after backoff");
                    if !self.sleep_or_stop(Duration::from_millis(backoff)).await {
                        return Outcome::Stop;
                    }
                }
            }
        }
    }

    fn spawn(&self, profile: &str) -> Result<Child, VpnError> {
        let config_path = self.store.config_path(profile)?;
        let _ = std::fs::remove_file(&self.socket);
        let mut command = Command::new(&self.config.openvpn_binary);
        // openvpn speaks sd_notify too; systemd must hear only Raven.
        for name in crate::service_manager::CHILD_ENV_REMOVED {
            command.env_remove(name);
        }
        command
            .arg("--config")
            .arg(&config_path)
            .arg("--management")
            .arg(&self.socket)
            .arg("unix")
            .arg("--management-hold")
            .args(["--verb", "3"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| VpnError::Spawn {
            binary: self.config.openvpn_binary.clone(),
            source,
        })?;
        for stream in [child.stdout.take().map(boxed_reader), child.stderr.take().map(boxed_reader)]
            .into_iter()
            .flatten()
        {
            let profile = profile.to_string();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "openvpn", profile = %profile, "{line}");
                }
            });
        }
        Ok(child)
    }

    async fn connect_management(&self, child: &mut Child) -> Result<UnixStream, VpnError> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(VpnError::Management(format!(
                    "openvpn exited before opening its management socket ({status})"
                )));
            }
            if let Ok(stream) = UnixStream::connect(&self.socket).await {
                return Ok(stream);
            }
            if started.elapsed() > MANAGEMENT_CONNECT_TIMEOUT {
                return Err(VpnError::Management(format!(
                    "no management socket at {} after {:?}",
                    self.socket.display(),
                    MANAGEMENT_CONNECT_TIMEOUT
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop_child(&self, child: &mut Child) {
        if let Some(pid) = child.id() {
            // SAFETY: plain kill(2) on our own child's pid, which we have not reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
            tracing::warn!("openvpn ignored SIGTERM for {STOP_GRACE:?}; killing it");
            let _ = child.kill().await;
        }
    }

    fn set_tunnel(&mut self, tracker: &TunnelTracker) {
        self.status.state = tracker.state;
        self.status.description = tracker.description.clone();
        self.status.tunnel_address = tracker.tunnel_address.map(|a| a.to_string());
        self.status.bytes_in = tracker.bytes_in;
        self.status.bytes_out = tracker.bytes_out;
        self.status.since = now_secs();
    }

    async fn run_child(&mut self, attempt: &mut Attempt) -> ChildEnd {
        let mut child = match self.spawn(&attempt.name) {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(profile = %attempt.name, error = %e, "cannot start openvpn");
                self.status.description = e.to_string();
                self.publish();
                return ChildEnd::Exited;
            }
        };
        self.status = VpnStatus::stopped();
        self.status.profile = Some(attempt.name.clone());
        self.status.pid = child.id();
        self.status.state = TunnelState::Connecting;
        self.status.since = now_secs();
        self.set_health(
            Health { state: HealthState::Down, reasons: vec!["tunnel is CONNECTING".into()] },
            attempt,
        );
        self.publish();

        let stream = match self.connect_management(&mut child).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::error!(profile = %attempt.name, error = %e, "openvpn management interface unavailable");
                self.stop_child(&mut child).await;
                return ChildEnd::Exited;
            }
        };
        let (read_half, mut write_half) = stream.into_split();
        let mut lines = BufReader::new(read_half).lines();
        if let Err(e) = write_half.write_all(b"state on\nbytecount 2\n").await {
            tracing::warn!(error = %e, "management write failed");
        }

        let mut tracker = TunnelTracker::default();
        let mut evaluator = HealthEvaluator::new(self.config.down_after_probes);
        let mut last_probes: Vec<ProbeResult> = Vec::new();
        let (probe_tx, mut probe_rx) = mpsc::channel::<Vec<ProbeResult>>(1);
        let mut probing = false;
        let mut probe_seq: u16 = 0;
        let mut ticker = tokio::time::interval(self.config.probe_interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let has_probes = !self.tcp_targets.is_empty() || self.ping_target.is_some();
        self.bytes_seen = (0, 0);

        let end = loop {
            let mut start_probe = false;
            tokio::select! {
                _ = self.stop_rx.changed() => break ChildEnd::Stop,
                status = child.wait() => {
                    tracing::warn!(profile = %attempt.name, status = ?status, "openvpn exited");
                    tracker.stopped();
                    self.set_tunnel(&tracker);
                    self.status.pid = None;
                    let health = evaluator.on_state(tracker.state, &last_probes);
                    self.set_health(health, attempt);
                    self.publish();
                    return ChildEnd::Exited;
                }
                line = lines.next_line() => {
                    let line = match line {
                        Ok(Some(line)) => line,
                        Ok(None) | Err(_) => {
                            tracing::warn!(profile = %attempt.name, "openvpn closed its management interface");
                            self.stop_child(&mut child).await;
                            tracker.stopped();
                            self.set_tunnel(&tracker);
                            self.status.pid = None;
                            let health = evaluator.on_state(tracker.state, &last_probes);
                            self.set_health(health, attempt);
                            self.publish();
                            return ChildEnd::Exited;
                        }
                    };
                    let message = parse_line(&line);
                    tracing::debug!(profile = %attempt.name, ?message, "management");
                    match tracker.apply(&message) {
                        Action::ReleaseHold => {
                            tracing::info!(profile = %attempt.name, "releasing openvpn's hold");
                            if let Err(e) = write_half.write_all(b"hold release\n").await {
                                tracing::warn!(error = %e, "management write failed");
                            }
                        }
                        Action::StateChanged(state) => {
                            tracing::info!(profile = %attempt.name, state = state.name(), description = %tracker.description, address = ?tracker.tunnel_address, "VPN state");
                            match state {
                                TunnelState::Connected => {
                                    attempt.failures = 0;
                                    last_probes.clear();
                                    start_probe = has_probes;
                                }
                                TunnelState::Reconnecting => {
                                    attempt.failures += 1;
                                    self.reconnects += 1;
                                    metrics::emit(metrics::VpnReconnected);
                                }
                                _ => {}
                            }
                            self.set_tunnel(&tracker);
                            let health = if state == TunnelState::Connected && has_probes {
                                Health { state: HealthState::Down, reasons: vec!["waiting for the first probe round".into()] }
                            } else {
                                evaluator.on_state(state, &last_probes)
                            };
                            self.set_health(health, attempt);
                            self.record(Sample {
                                at: now_secs(),
                                kind: "state".into(),
                                profile: Some(attempt.name.clone()),
                                state: Some(state.name().into()),
                                target: None,
                                ok: None,
                                latency_ms: None,
                                bytes_in: Some(tracker.bytes_in),
                                bytes_out: Some(tracker.bytes_out),
                                detail: Some(tracker.description.clone()),
                            });
                            self.publish();
                        }
                        Action::Bytes => {
                            let (old_in, old_out) = self.bytes_seen;
                            let delta = |new: u64, old: u64| if new >= old { new - old } else { new };
                            metrics::emit(metrics::VpnBytes {
                                bytes_in: delta(tracker.bytes_in, old_in),
                                bytes_out: delta(tracker.bytes_out, old_out),
                            });
                            self.bytes_seen = (tracker.bytes_in, tracker.bytes_out);
                            self.status.bytes_in = tracker.bytes_in;
                            self.status.bytes_out = tracker.bytes_out;
                            self.publish();
                        }
                        Action::None => {
                            if let super::management::Message::Error(e) = &message {
                                tracing::warn!(profile = %attempt.name, error = %e, "management command refused");
                            }
                        }
                    }
                }
                _ = ticker.tick() => {
                    if let Some(name) = self.newly_activated(&attempt.name) {
                        break ChildEnd::Activated(name);
                    }
                    if tracker.state == TunnelState::Connected {
                        start_probe = has_probes;
                        if !has_probes {
                            let health = evaluator.evaluate(tracker.state, &[]);
                            self.set_health(health, attempt);
                            self.publish();
                        }
                    }
                    self.record(Sample {
                        at: now_secs(),
                        kind: "bytes".into(),
                        profile: Some(attempt.name.clone()),
                        state: Some(tracker.state.name().into()),
                        target: None,
                        ok: None,
                        latency_ms: None,
                        bytes_in: Some(tracker.bytes_in),
                        bytes_out: Some(tracker.bytes_out),
                        detail: None,
                    });
                    if let Some(end) = decide(&self.config, attempt) {
                        break end;
                    }
                }
                Some(results) = probe_rx.recv() => {
                    probing = false;
                    metrics::emit(metrics::VpnProbeRound { results: &results });
                    for result in &results {
                        self.record(Sample {
                            at: result.at,
                            kind: "probe".into(),
                            profile: Some(attempt.name.clone()),
                            state: Some(tracker.state.name().into()),
                            target: Some(result.target.clone()),
                            ok: Some(result.ok),
                            latency_ms: result.latency_ms,
                            bytes_in: None,
                            bytes_out: None,
                            detail: result.error.clone(),
                        });
                    }
                    let health = evaluator.evaluate(tracker.state, &results);
                    self.status.probes = results.clone();
                    last_probes = results;
                    self.set_health(health, attempt);
                    self.publish();
                    if let Some(end) = decide(&self.config, attempt) {
                        break end;
                    }
                }
            }
            if start_probe && !probing {
                probing = true;
                probe_seq = probe_seq.wrapping_add(1);
                let (targets, ping, deadline, tx) = (
                    self.tcp_targets.clone(),
                    self.ping_target,
                    self.config.probe_deadline(),
                    probe_tx.clone(),
                );
                let seq = probe_seq;
                tokio::spawn(async move {
                    let results = run_probes(&targets, ping, deadline, seq).await;
                    let _ = tx.send(results).await;
                });
            }
        };
        let _ = write_half.write_all(b"signal SIGTERM\n").await;
        self.stop_child(&mut child).await;
        tracker.stopped();
        self.set_tunnel(&tracker);
        self.status.pid = None;
        let health = evaluator.on_state(tracker.state, &last_probes);
        self.set_health(health, attempt);
        self.publish();
        end
    }
}

fn boxed_reader<R: tokio::io::AsyncRead + Send + Unpin + 'static>(
    reader: R,
) -> Box<dyn tokio::io::AsyncRead + Send + Unpin> {
    Box::new(reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(position: usize, profiles: usize) -> Attempt {
        Attempt {
            name: "p".into(),
            position,
            profiles,
            failures: 0,
            down_since: None,
            up_since: None,
        }
    }

    fn config() -> VpnConfig {
        VpnConfig {
            failover_after_failures: 3,
            failover_after_ms: 1000,
            failback_after_ms: 5000,
            backoff_min_ms: 100,
            backoff_max_ms: 1000,
            ..VpnConfig::default()
        }
    }

    #[test]
    fn fails_over_after_failures_or_down_time() {
        let config = config();
        let mut a = attempt(0, 2);
        a.failures = 2;
        assert_eq!(decide(&config, &a), None);
        a.failures = 3;
        assert_eq!(decide(&config, &a), Some(ChildEnd::Failover));
        a.failures = 0;
        a.down_since = Some(Instant::now());
        assert_eq!(decide(&config, &a), None, "down, but not for long");
        a.down_since = Instant::now().checked_sub(Duration::from_millis(1500));
        assert_eq!(decide(&config, &a), Some(ChildEnd::Failover));
        let mut alone = attempt(0, 1);
        alone.failures = 10;
        alone.down_since = Instant::now().checked_sub(Duration::from_secs(60));
        assert_eq!(decide(&config, &alone), None, "nowhere to fail over to");
    }

    #[test]
    fn fails_back_only_after_a_long_healthy_run() {
        let config = config();
        let mut a = attempt(1, 2);
        a.up_since = Instant::now().checked_sub(Duration::from_millis(4000));
        assert_eq!(decide(&config, &a), None);
        a.up_since = Instant::now().checked_sub(Duration::from_millis(5001));
        assert_eq!(decide(&config, &a), Some(ChildEnd::Failback));
        let mut preferred = attempt(0, 2);
        preferred.up_since = Instant::now().checked_sub(Duration::from_secs(60));
        assert_eq!(decide(&config, &preferred), None, "already on the preferred profile");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = config();
        let waits: Vec<u64> = (1..=6).map(|n| restart_backoff_ms(&config, n)).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(restart_backoff_ms(&config, 1000), 1000);
    }
}

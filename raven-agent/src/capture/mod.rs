//! Capture: takes telemetry datagrams off the wire and hands the pipeline
//! batches of [`Record`](crate::record::Record)s.
//!
//! Invariants:
//! - Every datagram to a captured port that reaches the host is captured
//!   once: by the XDP ring, or by the UDP listener when the XDP program
//!   passed it on purpose (fragments, ring full), or by the listener alone in
//!   socket-only mode. Tee ports under XDP are the one documented exception:
//!   their fragments and ring overflow go to the host's own collector, and
//!   are counted (`raven_xdp_frames_total{outcome="fragment"|"ring_full"}`).
//! - A configuration change is applied whole or not at all: new sockets are
//!   bound before anything else changes, and a failure leaves the running
//!   capture untouched.
//! - When XDP cannot be used the engine says why in one log line and runs
//!   socket-only; it never half-attaches silently.
//!
//! Operations: [`CaptureEngine::start`], [`CaptureEngine::apply`] (live port,
//! stream, snap-length and interface changes), [`CaptureEngine::sample_metrics`],
//! [`CaptureEngine::shutdown`].

pub mod ring;
pub mod socket;
pub mod tcp;
pub mod xdp;

use std::{collections::BTreeMap, sync::Arc};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

pub use self::xdp::{ExporterRow, KernelCounters, XdpProgram};
use crate::{
    config::{CaptureConfig, CaptureMode, PortAction},
    metrics::{self, ExporterSampled, KernelCountersSampled, SocketOverflowed, XdpAttachChanged},
    record::{Batch, Stream, Via},
};
use socket::ListenerSpec;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("loading the XDP program failed: {0}")]
    Load(String),
    #[error("XDP map {what}: {source}")]
    Map { what: &'static str, source: aya::maps::MapError },
    #[error("attaching XDP to {interface} failed: {reason}")]
    Attach { interface: String, reason: String },
    #[error("cannot listen on UDP port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("no interface to attach to: none configured and no default route")]
    NoInterface,
    #[error("{key} cannot change while running (restart Raven to apply it)")]
    NeedsRestart { key: &'static str },
    #[error("cannot listen on {key} = {listen}: {reason}")]
    TcpInput { key: &'static str, listen: String, reason: String },
}

struct Listener {
    inode: u64,
    /// Receive-buffer drops already counted.
    drops_counted: u64,
    spec: watch::Sender<ListenerSpec>,
    cancel: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

struct XdpCapture {
    program: XdpProgram,
    ring_task: JoinHandle<std::io::Result<()>>,
    ring_cancel: CancellationToken,
    /// Interface → attach mode that took.
    attached: BTreeMap<String, &'static str>,
    last_counters: KernelCounters,
    last_exporters: BTreeMap<(std::net::IpAddr, Stream), (u64, u64, u64)>,
}

/// Which path is capturing, for logs and `tap --stats`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ActiveMode {
    /// XDP on these interfaces (name → "driver" or "skb").
    Xdp(BTreeMap<String, &'static str>),
    /// Sockets only, with the reason.
    Socket(String),
}

pub struct CaptureEngine {
    config: CaptureConfig,
    xdp: Option<XdpCapture>,
    socket_only_reason: String,
    listeners: BTreeMap<u16, Listener>,
    /// Syslog TCP/TLS accept loops, stopped together.
    tcp_inputs: Vec<JoinHandle<std::io::Result<()>>>,
    tcp_cancel: CancellationToken,
    tx: mpsc::Sender<Batch>,
    replies: ReplySockets,
}

/// The listeners' sockets, by port, for answers that must come from the
/// port the request went to (SNMP inform responses).
#[derive(Clone, Default)]
pub struct ReplySockets(Arc<std::sync::RwLock<BTreeMap<u16, Arc<std::net::UdpSocket>>>>);

impl ReplySockets {
    /// Sends `datagram` to `to` from the listener on `port`.
    pub fn send(
        &self,
        port: u16,
        to: std::net::SocketAddr,
        datagram: &[u8],
    ) -> std::io::Result<()> {
        let sockets = self.0.read().unwrap_or_else(|p| p.into_inner());
        let socket = sockets.get(&port).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("no listener on port {port}"))
        })?;
        socket.send_to(datagram, to).map(|_| ())
    }

    fn set(&self, port: u16, socket: Option<Arc<std::net::UdpSocket>>) {
        let mut sockets = self.0.write().unwrap_or_else(|p| p.into_inner());
        match socket {
            Some(socket) => sockets.insert(port, socket),
            None => sockets.remove(&port),
        };
    }
}

impl CaptureEngine {
    /// Where answers to captured requests are sent from.
    pub fn replies(&self) -> ReplySockets {
        self.replies.clone()
    }

    /// Starts capturing as `config` says, handing batches to `tx`.
    pub async fn start(
        config: &CaptureConfig,
        tx: mpsc::Sender<Batch>,
    ) -> Result<CaptureEngine, CaptureError> {
        let mut engine = CaptureEngine {
            config: CaptureConfig { ports: Vec::new(), ..config.clone() },
            xdp: None,
            socket_only_reason: "capture.mode = \"socket\"".to_string(),
            listeners: BTreeMap::new(),
            tcp_inputs: Vec::new(),
            tcp_cancel: CancellationToken::new(),
            tx,
            replies: ReplySockets::default(),
        };
        if config.mode == CaptureMode::Xdp {
            match engine.start_xdp(config) {
                Ok(xdp) => engine.xdp = Some(xdp),
                Err(e) => {
                    tracing::warn!("XDP capture unavailable, capturing with UDP sockets only: {e}");
                    engine.socket_only_reason = e.to_string();
                }
            }
        }
        engine.apply_ports(config)?;
        engine.start_tcp_inputs(config).await?;
        engine.config = config.clone();
        match engine.mode() {
            ActiveMode::Xdp(interfaces) => tracing::info!(?interfaces, "capturing with XDP"),
            ActiveMode::Socket(reason) => tracing::info!(%reason, "capturing with sockets only"),
        }
        Ok(engine)
    }

    async fn start_tcp_inputs(&mut self, config: &CaptureConfig) -> Result<(), CaptureError> {
        for (key, input, via) in [
            ("capture.syslog_tcp", &config.syslog_tcp, Via::Tcp),
            ("capture.syslog_tls", &config.syslog_tls, Via::Tls),
        ] {
            if input.listen.is_empty() {
                continue;
            }
            let failed = |reason: String| CaptureError::TcpInput {
                key,
                listen: input.listen.clone(),
                reason,
            };
            let tls = match via {
                Via::Tls => Some(
                    tcp::tls_acceptor(
                        input.cert_file.as_ref(),
                        input.key_file.as_ref(),
                        (!input.client_ca_file.is_empty()).then_some(input.client_ca_file.as_ref()),
                    )
                    .map_err(failed)?,
                ),
                _ => None,
            };
            let listener = tokio::net::TcpListener::bind(&input.listen)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let port = listener.local_addr().map_err(|e| failed(e.to_string()))?.port();
            let spec = tcp::TcpInputSpec {
                port,
                via,
                max_connections: input.max_connections,
                max_message_bytes: input.max_message_bytes,
                batch_max: config.batch_max_records,
            };
            tracing::info!(listen = %input.listen, via = via.name(), "syslog stream input listening");
            self.tcp_inputs.push(tokio::spawn(tcp::run(
                listener,
                spec,
                tls,
                self.tx.clone(),
                self.tcp_cancel.clone(),
            )));
        }
        Ok(())
    }

    fn start_xdp(&self, config: &CaptureConfig) -> Result<XdpCapture, CaptureError> {
        let interfaces = if config.interfaces.is_empty() {
            default_route_interfaces()
        } else {
            config.interfaces.clone()
        };
        if interfaces.is_empty() {
            return Err(CaptureError::NoInterface);
        }
        let (mut program, ring) = XdpProgram::load(config.ring_bytes)?;
        program.set_snap_length(config.snap_length)?;
        program.set_wakeup_every(config.wakeup_every)?;
        program.set_ports(&config.ports)?;
        let mut attached = BTreeMap::new();
        for interface in &interfaces {
            let mode = program.attach(interface, config.xdp_mode)?;
            metrics::emit(XdpAttachChanged { interface, mode, attached: true });
            attached.insert(interface.clone(), mode);
        }
        let ring_cancel = CancellationToken::new();
        let ring_task = tokio::spawn(ring::run(
            ring,
            self.tx.clone(),
            config.poll_interval(),
            config.batch_max_records,
            ring_cancel.clone(),
        ));
        Ok(XdpCapture {
            program,
            ring_task,
            ring_cancel,
            attached,
            last_counters: KernelCounters::default(),
            last_exporters: BTreeMap::new(),
        })
    }

    pub fn mode(&self) -> ActiveMode {
        match &self.xdp {
            Some(xdp) => ActiveMode::Xdp(xdp.attached.clone()),
            None => ActiveMode::Socket(self.socket_only_reason.clone()),
        }
    }

    pub fn config(&self) -> &CaptureConfig {
        &self.config
    }

    /// Ports that need a listener of ours under the current mode.
    fn listened_ports(&self, config: &CaptureConfig) -> BTreeMap<u16, ListenerSpec> {
        config
            .ports
            .iter()
            .filter(|p| self.xdp.is_none() || p.action == PortAction::Steal)
            .map(|p| {
                let spec = ListenerSpec {
                    port: p.port,
                    stream: p.stream,
                    snap_length: config.snap_length,
                    batch_max: config.batch_max_records,
                };
                (p.port, spec)
            })
            .collect()
    }

    /// Applies a new configuration while running. Either all of it takes
    /// effect or none of it does.
    /// Keys whose change `config` makes that only a restart can apply.
    pub fn restart_needed(&self, config: &CaptureConfig) -> Vec<&'static str> {
        let old = &self.config;
        [
            ("capture.mode", config.mode != old.mode),
            ("capture.ring_bytes", config.ring_bytes != old.ring_bytes),
            ("capture.xdp_mode", config.xdp_mode != old.xdp_mode),
            ("capture.poll_interval_ms", config.poll_interval_ms != old.poll_interval_ms),
            ("capture.interfaces", self.xdp.is_some() && config.interfaces != old.interfaces),
            ("capture.syslog_tcp", config.syslog_tcp != old.syslog_tcp),
            ("capture.syslog_tls", config.syslog_tls != old.syslog_tls),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    pub fn apply(&mut self, config: &CaptureConfig) -> Result<(), CaptureError> {
        if let Some(&key) = self.restart_needed(config).first() {
            return Err(CaptureError::NeedsRestart { key });
        }
        self.apply_ports(config)?;
        if let Some(xdp) = &mut self.xdp {
            xdp.program.set_snap_length(config.snap_length)?;
            xdp.program.set_wakeup_every(config.wakeup_every)?;
        }
        self.config = config.clone();
        Ok(())
    }

    fn apply_ports(&mut self, config: &CaptureConfig) -> Result<(), CaptureError> {
        let wanted = self.listened_ports(config);
        // Bind everything new first: a port we cannot bind refuses the change.
        let mut bound = Vec::new();
        for (&port, spec) in &wanted {
            if self.listeners.contains_key(&port) {
                continue;
            }
            match socket::bind(port, config.socket_receive_buffer_bytes) {
                Ok(socket) => bound.push((*spec, socket)),
                Err(source) if self.xdp.is_some() => {
                    // XDP still captures this port; only its fragments and
                    // ring overflow go to whoever holds the port.
                    tracing::warn!(port, error = %source,
                        "cannot listen on a stolen port; its fragments and ring overflow \
                         will reach the process that holds it");
                }
                Err(source) => return Err(CaptureError::Bind { port, source }),
            }
        }
        if let Some(xdp) = &mut self.xdp {
            xdp.program.set_ports(&config.ports)?;
        }
        let drops_now = socket::receive_buffer_drops();
        for (spec, socket) in bound {
            let inode = socket::inode(&socket);
            let drops_counted = drops_now.get(&inode).copied().unwrap_or(0);
            // A second handle on the same socket, for sending replies.
            match socket.try_clone() {
                Ok(sender) => self.replies.set(spec.port, Some(Arc::new(sender))),
                Err(e) => tracing::warn!(port = spec.port, error = %e,
                    "no reply socket: SNMP informs on this port will not be answered"),
            }
            let (spec_tx, spec_rx) = watch::channel(spec);
            let cancel = CancellationToken::new();
            let task = tokio::spawn(socket::run(socket, spec_rx, self.tx.clone(), cancel.clone()));
            let listener = Listener { inode, drops_counted, spec: spec_tx, cancel, task };
            self.listeners.insert(spec.port, listener);
        }
        let removed: Vec<u16> =
            self.listeners.keys().copied().filter(|p| !wanted.contains_key(p)).collect();
        for port in removed {
            if let Some(listener) = self.listeners.remove(&port) {
                // The listener takes what is queued, then closes.
                listener.cancel.cancel();
                self.replies.set(port, None);
            }
        }
        for (port, spec) in &wanted {
            if let Some(listener) = self.listeners.get(port) {
                listener.spec.send_if_modified(|current| {
                    let changed = current != spec;
                    *current = *spec;
                    changed
                });
            }
        }
        Ok(())
    }

    pub fn kernel_counters(&self) -> Option<KernelCounters> {
        self.xdp.as_ref().and_then(|xdp| xdp.program.counters().ok())
    }

    pub fn exporters(&self) -> Vec<ExporterRow> {
        self.xdp.as_ref().map(|xdp| xdp.program.exporters()).unwrap_or_default()
    }

    pub fn xdp_program(&self) -> Option<&XdpProgram> {
        self.xdp.as_ref().map(|xdp| &xdp.program)
    }

    /// Moves the kernel's cumulative counters into the metrics registry.
    pub fn sample_metrics(&mut self) {
        let drops = socket::receive_buffer_drops();
        for (&port, listener) in &mut self.listeners {
            let now = drops.get(&listener.inode).copied().unwrap_or(listener.drops_counted);
            if now > listener.drops_counted {
                metrics::emit(SocketOverflowed { port, count: now - listener.drops_counted });
                listener.drops_counted = now;
            }
        }
        let Some(xdp) = &mut self.xdp else { return };
        let Ok(now) = xdp.program.counters() else {
            return;
        };
        let before = &xdp.last_counters;
        // A reloaded program starts from zero: never count backwards.
        let grew = |now: u64, before: u64| now.saturating_sub(before);
        let mut frames: Vec<(&'static str, u64)> = now
            .passed()
            .iter()
            .zip(before.passed())
            .map(|(&(name, n), (_, b))| (name, grew(n, b)))
            .collect();
        frames.push(("seen", grew(now.frames_seen, before.frames_seen)));
        frames.push(("truncated", grew(now.truncated, before.truncated)));
        let matched: Vec<(Stream, u64)> = now
            .matched
            .iter()
            .map(|(&s, &n)| (s, grew(n, before.matched.get(&s).copied().unwrap_or(0))))
            .collect();
        metrics::emit(KernelCountersSampled { frames: &frames, matched: &matched });
        xdp.last_counters = now;

        for row in xdp.program.exporters() {
            let key = (row.exporter, row.stream);
            let (p, b, r) = xdp.last_exporters.get(&key).copied().unwrap_or_default();
            metrics::emit(ExporterSampled {
                exporter: &row.exporter.to_string(),
                stream: row.stream,
                packets: grew(row.packets, p),
                bytes: grew(row.bytes, b),
                ring_full: grew(row.ring_full, r),
            });
            xdp.last_exporters.insert(key, (row.packets, row.bytes, row.ring_full));
        }
    }

    /// Stops capturing: detaches XDP first (new datagrams go to the kernel and
    /// the listeners), then drains the ring and the sockets into the pipeline.
    /// Returns the kernel's final counters (after the last drain).
    pub async fn shutdown(mut self) -> Option<(KernelCounters, Vec<ExporterRow>)> {
        let mut last = None;
        if let Some(mut xdp) = self.xdp.take() {
            xdp.program.detach_all();
            for (interface, mode) in &xdp.attached {
                metrics::emit(XdpAttachChanged { interface, mode, attached: false });
            }
            xdp.ring_cancel.cancel();
            log_task_end("ring reader", (&mut xdp.ring_task).await);
            last = Some(xdp);
        }
        for (port, listener) in std::mem::take(&mut self.listeners) {
            listener.cancel.cancel();
            log_task_end(&format!("UDP listener {port}"), listener.task.await);
        }
        self.tcp_cancel.cancel();
        for task in std::mem::take(&mut self.tcp_inputs) {
            log_task_end("syslog stream input", task.await);
        }
        let xdp = last?;
        Some((xdp.program.counters().ok()?, xdp.program.exporters()))
    }
}

fn log_task_end(what: &str, result: Result<std::io::Result<()>, tokio::task::JoinError>) {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(task = what, error = %e, "capture task failed"),
        Err(e) => tracing::error!(task = what, error = %e, "capture task panicked"),
    }
}

/// Interfaces that carry an IPv4 or IPv6 default route.
pub fn default_route_interfaces() -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(table) = std::fs::read_to_string("/proc/net/route") {
        // Iface Destination Gateway ... ; destination 00000000 is the default.
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 1 && cols[1] == "00000000" && cols[0] != "lo" {
                found.push(cols[0].to_string());
            }
        }
    }
    if let Ok(table) = std::fs::read_to_string("/proc/net/ipv6_route") {
        // dest(32 hex) dest_len ... iface last; ::/0 is the default.
        for line in table.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() == 10 && cols[0].chars().all(|c| c == '0') && cols[1] == "00" {
                let iface = cols[9];
                if iface != "lo" && !found.iter().any(|f| f == iface) {
                    found.push(iface.to_string());
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

//! `raven-agent run`: wires the stages together and owns the process's
//! lifecycle (signals, live reconfiguration, the API's requests).
//!
//! Invariants:
//! - A new configuration (SIGHUP re-reading the file, or a POST to the API)
//!   is validated in full, then applied whole or not at all; when refused,
//!   each key and reason is reported and the running configuration stays.
//! - SIGTERM/SIGINT detach XDP first, then drain the ring and the sockets
//!   into the pipeline, then exit.
//! - Every captured record is appended to the store; what the store cannot
//!   take is counted as dropped with its reason. Sinks read only from the
//!   store, so capture never waits for the network.
//! - SIGTERM order: detach XDP, drain capture into the store, then stop the
//!   forwarders (what they had not sent stays in the store for next time).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::Context;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, ApiState, CaptureStatus, Control, SinkBacklog, auth::Tokens, status::RateHistory},
    capture::{ActiveMode, CaptureEngine, CaptureError, ReplySockets},
    config::{Config, ConfigError, ForwardConfig, Problem},
    decode::Decoder,
    forward::{
        ManagedSink,
        forwarder::{self, Backlog, SinkControl, StoreBacklog},
    },
    metrics, privilege,
    record::{Batch, Stream},
    service_manager::ServiceManager,
    store::{NewRecord, Store, StoreError},
};

fn load(path: &Path, overrides: &impl Fn(&mut Config)) -> Result<Config, ConfigError> {
    let mut config = Config::load(path)?;
    overrides(&mut config);
    config.validate()?;
    Ok(config)
}

/// A captured group decoded for the store: per stream, the records in
/// arrival order with their stored form, and the datagrams that answer
/// some of them (SNMP inform responses) once they are durable.
pub struct DecodedGroup {
    pub records: BTreeMap<Stream, Vec<NewRecord>>,
    pub replies: BTreeMap<Stream, Vec<Reply>>,
}

/// A datagram to send from `port` to `to` once its record is durable.
pub struct Reply {
    pub port: u16,
    pub to: std::net::SocketAddr,
    pub datagram: bytes::Bytes,
}

/// One block made durable by [`ingest`], for observers that measure the
/// path (`raven-agent store load`).
pub struct Durable {
    pub stream: Stream,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Capture time of each record of the block.
    pub captured: Vec<SystemTime>,
    /// When the append returned.
    pub at: SystemTime,
}

/// Decodes a group (one metrics event) and splits it by stream.
pub fn decode_for_store(decoder: &Decoder, batch: Batch) -> DecodedGroup {
    let decoded = decoder.decode_batch(&batch);
    let mut group = DecodedGroup { records: BTreeMap::new(), replies: BTreeMap::new() };
    for (record, decoded) in batch.into_iter().zip(decoded) {
        let (fields, parse_error) = match decoded {
            Some(d) => {
                if let Some(datagram) = d.reply {
                    group.replies.entry(record.stream).or_default().push(Reply {
                        port: record.dst_port,
                        to: record.src,
                        datagram,
                    });
                }
                (Some(d.fields), d.parse_error.map(|e| e.stored_form()))
            }
            None => (None, None),
        };
        group.records.entry(record.stream).or_default().push(NewRecord {
            record,
            decoded: fields,
            parse_error,
        });
    }
    group
}

/// The stage after capture: decode, store each group durably per stream
/// in arrival order, then answer what waits for durability (SNMP informs:
/// the sender hears back only once its trap cannot be lost). Decoding the
/// next group overlaps storing the last (compress, write, `fdatasync`),
/// so the two use both cores. Returns once `rx` closes and everything
/// received is stored. `report` hears of every durable block.
pub async fn ingest(
    mut rx: mpsc::Receiver<Batch>,
    store: Store,
    decoder: Arc<Decoder>,
    replies: ReplySockets,
    report: Option<std::sync::mpsc::Sender<Durable>>,
) {
    // One group decoded ahead: memory stays bounded and back-pressure
    // reaches the capture channel.
    let (decoded_tx, decoded_rx) = mpsc::channel(1);
    let storing = tokio::spawn(store_groups(decoded_rx, store.clone(), replies, report));
    while let Some(mut batch) = rx.recv().await {
        // Group commit: one block (one write, one fdatasync) per stream for
        // what arrives within the flush interval, bounded in records.
        // Batches keep queueing while a group is being stored, so under
        // load the blocks grow by themselves.
        let flush = store.flush_policy();
        let deadline = tokio::time::Instant::now() + flush.interval;
        while batch.len() < flush.max_records {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) | Err(_) => break,
            }
        }
        let decoder = decoder.clone();
        match tokio::task::spawn_blocking(move || decode_for_store(&decoder, batch)).await {
            Ok(group) => {
                if decoded_tx.send(group).await.is_err() {
                    break;
                }
            }
            Err(e) => tracing::error!(error = %e, "the decode task failed"),
        }
    }
    drop(decoded_tx);
    if let Err(e) = storing.await {
        tracing::error!(error = %e, "the store task failed");
    }
}

/// Appends decoded groups in order. A group the store cannot take is
/// counted as dropped with the store's reason.
async fn store_groups(
    mut rx: mpsc::Receiver<DecodedGroup>,
    store: Store,
    replies: ReplySockets,
    report: Option<std::sync::mpsc::Sender<Durable>>,
) {
    while let Some(group) = rx.recv().await {
        let (store, replies, report) = (store.clone(), replies.clone(), report.clone());
        let stored = tokio::task::spawn_blocking(move || {
            let DecodedGroup { records, replies: mut waiting } = group;
            for (stream, records) in records {
                let count = records.len() as u64;
                let captured: Vec<SystemTime> = match &report {
                    Some(_) => records.iter().map(|r| r.record.captured_at).collect(),
                    None => Vec::new(),
                };
                match store.append(stream, records) {
                    Ok(appended) => {
                        if let Some(report) = &report {
                            let _ = report.send(Durable {
                                stream,
                                first_seq: appended.first_seq,
                                last_seq: appended.last_seq,
                                captured,
                                at: SystemTime::now(),
                            });
                        }
                        for reply in waiting.remove(&stream).unwrap_or_default() {
                            if let Err(e) = replies.send(reply.port, reply.to, &reply.datagram) {
                                tracing::warn!(%stream, exporter = %reply.to, port = reply.port,
                                    error = %e, reason = "reply_failed", "cannot answer an inform");
                            }
                        }
                    }
                    Err(e) => {
                        let reason = match e {
                            StoreError::DiskFull => "disk_full",
                            _ => "io",
                        };
                        tracing::error!(%stream, records = count, reason, error = %e,
                            "records could not be stored; informs among them stay unanswered");
                        metrics::emit(metrics::StoreDropped { stream, reason, records: count });
                    }
                }
            }
        })
        .await;
        if let Err(e) = stored {
            tracing::error!(error = %e, "the store task failed");
        }
    }
}

/// The sinks' forwarder tasks; replaced whole when `forward` changes.
struct Forwarders {
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    controls: Vec<SinkControl>,
    config: ForwardConfig,
}

impl Forwarders {
    fn start(
        config: &ForwardConfig,
        store: &Store,
        vpn: &watch::Receiver<bool>,
    ) -> Result<Forwarders, Vec<Problem>> {
        let backlog: Arc<dyn Backlog> =
            Arc::new(StoreBacklog { store: store.clone(), appliance: config.appliance_id.clone() });
        let mut sinks = Vec::new();
        for (i, sink) in config.sinks.iter().enumerate() {
            let managed = ManagedSink::new(sink, config)
                .map_err(|e| problem(&format!("forward.sinks[{i}]"), e))?;
            sinks.push(managed);
        }
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut controls = Vec::new();
        for sink in sinks {
            let flush = Arc::new(tokio::sync::Notify::new());
            controls.push(SinkControl { name: sink.name().to_string(), flush: flush.clone() });
            tasks.push(tokio::spawn(forwarder::run(
                sink,
                Duration::from_millis(config.probe_interval_ms),
                backlog.clone(),
                vpn.clone(),
                flush,
                cancel.clone(),
            )));
        }
        Ok(Forwarders { cancel, tasks, controls, config: config.clone() })
    }

    /// Wakes every sink that takes `stream` and lets it skip its backoff
    /// once; returns each one's backlog.
    fn flush(&self, stream: Stream, store: &Store) -> Vec<SinkBacklog> {
        let durable = store.durable_seq(stream).map_or(0, |d| d + 1);
        self.config
            .sinks
            .iter()
            .zip(&self.controls)
            .filter(|(sink, _)| sink.effective_streams().contains(&stream))
            .map(|(sink, control)| {
                control.flush.notify_one();
                let next = store.cursor(&sink.name, stream).ok().flatten().map_or(0, |c| c + 1);
                SinkBacklog {
                    sink: sink.name.clone(),
                    backlog_records: durable.saturating_sub(next),
                }
            })
            .collect()
    }

    async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn problem(key: &str, reason: impl ToString) -> Vec<Problem> {
    vec![Problem { key: key.to_string(), reason: reason.to_string() }]
}

/// Owns the running configuration and applies new ones.
struct Running {
    engine: CaptureEngine,
    config: watch::Sender<Config>,
    tokens: Arc<RwLock<Tokens>>,
    store: Store,
    forwarders: Option<Forwarders>,
    vpn: watch::Receiver<bool>,
}

impl Running {
    async fn apply(&mut self, new: Config) -> Result<(), Vec<Problem>> {
        let current = self.config.borrow().clone();
        let mut restart: Vec<&str> = self.engine.restart_needed(&new.capture);
        restart.extend(
            [
                ("api.listen", new.api.listen != current.api.listen),
                ("service.user", new.service.user != current.service.user),
                ("store.data_dir", new.store.data_dir != current.store.data_dir),
                ("decode", new.decode != current.decode),
                ("windows", new.windows != current.windows),
                ("vpn", new.vpn != current.vpn),
            ]
            .into_iter()
            .filter_map(|(key, changed)| changed.then_some(key)),
        );
        if !restart.is_empty() {
            let reason = "cannot change while running (restart Raven to apply it)";
            return Err(restart.into_iter().flat_map(|key| problem(key, reason)).collect());
        }
        let tokens = Tokens::load(&new.api).map_err(|e| problem("api.tokens_file", e))?;
        // Every sink must build before anything changes (all or nothing).
        for (i, sink) in new.forward.sinks.iter().enumerate() {
            ManagedSink::new(sink, &new.forward)
                .map_err(|e| problem(&format!("forward.sinks[{i}]"), e))?;
        }
        self.engine.apply(&new.capture).map_err(|e| match e {
            CaptureError::NeedsRestart { key } => problem(key, e),
            CaptureError::Bind { .. } => problem("capture.ports", e),
            other => problem("capture", other),
        })?;
        *self.tokens.write().expect("token lock") = tokens;
        self.store.reconfigure(&new.store);
        if self.forwarders.as_ref().is_none_or(|f| f.config != new.forward) {
            if let Some(old) = self.forwarders.take() {
                old.stop().await;
            }
            self.forwarders = Some(
                Forwarders::start(&new.forward, &self.store, &self.vpn)
                    .expect("sinks were built above"),
            );
        }
        if let Ok(json) = serde_json::to_string(&new.redacted())
            && let Err(e) = self.store.record_config(&json)
        {
            tracing::warn!(error = %e, "cannot record the configuration in the history");
        }
        self.config.send_replace(new);
        Ok(())
    }

    /// One line for `systemctl status`: how capture runs, what it listens
    /// to and where it forwards.
    fn summary(&self) -> String {
        let config = self.config.borrow();
        let capture = match self.engine.mode() {
            ActiveMode::Xdp(interfaces) => format!(
                "XDP on {}",
                interfaces
                    .iter()
                    .map(|(name, how)| format!("{name} ({how})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ActiveMode::Socket(reason) => format!("sockets ({reason})"),
        };
        format!(
            "capturing with {capture}; {} UDP ports; forwarding to {} sinks",
            config.capture.ports.len(),
            config.forward.sinks.len()
        )
    }

    fn publish_status(&self, status: &watch::Sender<Option<CaptureStatus>>) {
        status.send_replace(Some(CaptureStatus {
            mode: self.engine.mode(),
            kernel: self.engine.kernel_counters(),
            exporters: self.engine.exporters(),
        }));
    }
}

fn log_refusal(source: &str, problems: &[Problem]) {
    for p in problems {
        tracing::error!(key = %p.key, reason = %p.reason, source,
            "configuration refused, running one kept");
    }
}

pub async fn run(path: PathBuf, overrides: impl Fn(&mut Config)) -> anyhow::Result<()> {
    let config = load(&path, &overrides)
        .with_context(|| format!("refusing to start with {}", path.display()))?;
    privilege::check(&config)?;
    let tokens = Tokens::load(&config.api)?;
    if tokens.is_empty() {
        tracing::warn!("no API token configured: protected endpoints answer 401 to everyone");
    }
    let tokens = Arc::new(RwLock::new(tokens));
    let store = Store::open(&config.store)
        .with_context(|| format!("store.data_dir = {:?}", config.store.data_dir))?;
    if let Ok(json) = serde_json::to_string(&config.redacted()) {
        store.record_config(&json)?;
    }

    let (config_tx, config_rx) = watch::channel(config.clone());
    let (status_tx, status_rx) = watch::channel(None);
    let (history_tx, history_rx) = watch::channel(RateHistory::default());
    // Raven's SNMP engine: boots persisted before anything is answered.
    let snmp_engine =
        crate::decode::usm::LocalEngine::load(store.data_dir(), &config.decode.snmp_engine_id)
            .context("decode: Raven's SNMP engine state (snmp-engine in store.data_dir)")?;
    tracing::info!(
        engine_id = %crate::decode::usm::hex(snmp_engine.id()),
        boots = snmp_engine.boots(),
        users = config.decode.snmp_users.len(),
        "SNMP engine (the engine ID informs go to)"
    );
    let journal =
        crate::decode::templates::TemplateJournal::open(&store.data_dir().join("raven.db"))
            .context("opening the template journal in the store index")?;
    let decoder = Arc::new(
        Decoder::new(&config.decode)
            .with_snmp_engine(snmp_engine)
            .with_template_journal(Arc::new(journal)),
    );
    let (control_tx, mut control_rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    // Sinks marked `requires_vpn` send only while the VPN is healthy; with
    // the supervisor off, the gate stays open.
    let (vpn_handle, vpn, vpn_status) = if config.vpn.enabled {
        let handle =
            crate::vpn::supervisor::Supervisor::start(config.vpn.clone(), store.data_dir())
                .context("vpn: starting the OpenVPN supervisor")?;
        let (healthy, status) = (handle.healthy(), handle.status());
        (Some(handle), healthy, Some(status))
    } else {
        (None, watch::channel(true).1, None)
    };
    let api_task = match config.api.listen.parse() {
        Ok(listen) => {
            let state = ApiState {
                config: config_rx,
                config_path: Some(path.clone()),
                control: control_tx,
                capture: status_rx,
                history: history_rx,
                tokens: tokens.clone(),
                store: store.clone(),
                exporters: decoder.exporters(),
                vpn: vpn_status.clone(),
            };
            let task = api::serve(listen, state, cancel.clone())
                .await
                .with_context(|| format!("api.listen = {:?}", config.api.listen))?;
            Some(task)
        }
        Err(_) => None,
    };

    let windows_task =
        api::windows::serve(&config.windows, store.clone(), tokens.clone(), cancel.clone())
            .await
            .with_context(|| format!("windows.listen = {:?}", config.windows.listen))?;
    let forwarders = Forwarders::start(&config.forward, &store, &vpn).map_err(|problems| {
        anyhow::anyhow!(
            "{}",
            problems
                .iter()
                .map(|p| format!("{}: {}", p.key, p.reason))
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let (tx, rx) = mpsc::channel(256);
    let engine = CaptureEngine::start(&config.capture, tx).await?;
    let consumer = tokio::spawn(ingest(rx, store.clone(), decoder.clone(), engine.replies(), None));
    if !config.service.user.is_empty() {
        let kept = privilege::drop_to_user(&config.service.user, &[store.data_dir()])?;
        tracing::info!(user = %config.service.user, ?kept, "dropped privileges");
    }
    let mut running = Running {
        engine,
        config: config_tx,
        tokens,
        store: store.clone(),
        forwarders: Some(forwarders),
        vpn,
    };
    running.publish_status(&status_tx);
    // The service manager learns Raven is up once /readyz says so.
    let service = ServiceManager::from_env();
    service.ready(&running.summary());
    let mut keep_alive = service.keep_alive_every().map(tokio::time::interval);
    let cleanup_every = Duration::from_secs(config.store.cleanup_interval_s);
    let mut next_cleanup = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut ticks = 0u64;

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut sample = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => {
                service.reloading();
                let result = load(&path, &overrides)
                    .map_err(|e| match e {
                        ConfigError::Invalid(problems) => problems,
                        other => problem("", other),
                    })
                ;
                let result = match result {
                    Ok(new) => running.apply(new).await,
                    Err(problems) => Err(problems),
                };
                match result {
                    Ok(()) => tracing::info!(path = %path.display(), "configuration reloaded"),
                    Err(problems) => log_refusal("SIGHUP", &problems),
                }
                // Applied or refused, a configuration serves again.
                service.ready(&running.summary());
            }
            _ = async { keep_alive.as_mut().expect("guarded").tick().await },
                if keep_alive.is_some() => service.alive(),
            Some(request) = control_rx.recv() => match request {
                Control::ApplyConfig { config, reply } => {
                    let result = running.apply(*config).await;
                    match &result {
                        Ok(()) => tracing::info!("configuration applied from the API"),
                        Err(problems) => log_refusal("API", problems),
                    }
                    let _ = reply.send(result);
                }
                Control::Flush { stream, reply } => {
                    let scheduled = running
                        .forwarders
                        .as_ref()
                        .map(|f| f.flush(stream, &store))
                        .unwrap_or_default();
                    tracing::info!(%stream, sinks = scheduled.len(), "flush requested");
                    let _ = reply.send(scheduled);
                }
            },
            _ = sample.tick() => {
                ticks += 1;
                if tokio::time::Instant::now() >= next_cleanup {
                    next_cleanup = tokio::time::Instant::now() + cleanup_every;
                    let store = store.clone();
                    tokio::task::spawn_blocking(move || {
                        match store.cleanup(SystemTime::now()) {
                            Ok(evicted) if evicted.segments > 0 => {
                                tracing::info!(?evicted, "retention evicted segments");
                            }
                            Ok(_) => {}
                            Err(e) => tracing::error!(error = %e, "retention failed"),
                        }
                        // After retention, so that nothing about to be
                        // evicted is re-packed first; bounded per pass.
                        match store.repack() {
                            Ok(repacked) if repacked.segments + repacked.failed > 0 => {
                                tracing::info!(?repacked, "re-packed segments of small blocks");
                            }
                            Ok(_) => {}
                            Err(e) => tracing::error!(error = %e, "re-packing failed"),
                        }
                    });
                } else if ticks.is_multiple_of(10) {
                    let (store, decoder) = (store.clone(), decoder.clone());
                    tokio::task::spawn_blocking(move || {
                        store.sample_metrics();
                        decoder.sample_metrics();
                    });
                }
                running.engine.sample_metrics();
                running.publish_status(&status_tx);
                history_tx.send_modify(|h| {
                    h.sample(std::time::SystemTime::now(), metrics::captured_per_stream())
                });
            }
        }
    }
    tracing::info!("stopping: detaching XDP and draining");
    service.stopping();
    running.engine.sample_metrics();
    running.engine.shutdown().await;
    consumer.await?;
    if let Some(forwarders) = running.forwarders.take() {
        forwarders.stop().await;
    }
    if let Some(handle) = vpn_handle {
        handle.stop().await;
    }
    cancel.cancel();
    if let Some(task) = api_task {
        task.await??;
    }
    if let Some(task) = windows_task {
        task.await??;
    }
    Ok(())
}

//! `raven-agent run`: wires the stages together and owns the process's
//! lifecycle (signals, live reconfiguration, the API's requests).
//!
//! Invariants:
//! - A new configuration (SIGHUP re-reading the file, or a POST to the API)
//!   is validated in full, then applied whole or not at all; when refused,
//!   each key and reason is reported and the running configuration stays.
//! - SIGTERM/SIGINT detach XDP first, then drain the ring and the sockets
//!   into the pipeline, then exit.
//! - Until the store exists, the last stage counts every record it receives
//!   as dropped with reason `store_not_built`: visible, never silent.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, ApiState, CaptureStatus, Control, auth::Tokens, status::RateHistory},
    capture::{CaptureEngine, CaptureError, ring::count_lost},
    config::{Config, ConfigError, Problem},
    metrics, privilege,
    record::Batch,
};

fn load(path: &Path, overrides: &impl Fn(&mut Config)) -> Result<Config, ConfigError> {
    let mut config = Config::load(path)?;
    overrides(&mut config);
    config.validate()?;
    Ok(config)
}

/// The stage after capture until decode and store land.
async fn consume(mut rx: mpsc::Receiver<Batch>) {
    while let Some(batch) = rx.recv().await {
        count_lost(&batch, "store_not_built");
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
}

impl Running {
    fn apply(&mut self, new: Config) -> Result<(), Vec<Problem>> {
        let current = self.config.borrow().clone();
        let mut restart: Vec<&str> = self.engine.restart_needed(&new.capture);
        restart.extend(
            [
                ("api.listen", new.api.listen != current.api.listen),
                ("service.user", new.service.user != current.service.user),
            ]
            .into_iter()
            .filter_map(|(key, changed)| changed.then_some(key)),
        );
        if !restart.is_empty() {
            let reason = "cannot change while running (restart Raven to apply it)";
            return Err(restart.into_iter().flat_map(|key| problem(key, reason)).collect());
        }
        let tokens = Tokens::load(&new.api).map_err(|e| problem("api.tokens_file", e))?;
        self.engine.apply(&new.capture).map_err(|e| match e {
            CaptureError::NeedsRestart { key } => problem(key, e),
            CaptureError::Bind { .. } => problem("capture.ports", e),
            other => problem("capture", other),
        })?;
        *self.tokens.write().expect("token lock") = tokens;
        self.config.send_replace(new);
        Ok(())
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
    let (config_tx, config_rx) = watch::channel(config.clone());
    let (status_tx, status_rx) = watch::channel(None);
    let (history_tx, history_rx) = watch::channel(RateHistory::default());
    let (control_tx, mut control_rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let api_task = match config.api.listen.parse() {
        Ok(listen) => {
            let state = ApiState {
                config: config_rx,
                config_path: Some(path.clone()),
                control: control_tx,
                capture: status_rx,
                history: history_rx,
                tokens: tokens.clone(),
            };
            let task = api::serve(listen, state, cancel.clone())
                .await
                .with_context(|| format!("api.listen = {:?}", config.api.listen))?;
            Some(task)
        }
        Err(_) => None,
    };

    let (tx, rx) = mpsc::channel(256);
    let consumer = tokio::spawn(consume(rx));
    let engine = CaptureEngine::start(&config.capture, tx).await?;
    if !config.service.user.is_empty() {
        let kept = privilege::drop_to_user(&config.service.user)?;
        tracing::info!(user = %config.service.user, ?kept, "dropped privileges");
    }
    let mut running = Running { engine, config: config_tx, tokens };
    running.publish_status(&status_tx);

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut sample = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => {
                let result = load(&path, &overrides)
                    .map_err(|e| match e {
                        ConfigError::Invalid(problems) => problems,
                        other => problem("", other),
                    })
                    .and_then(|new| running.apply(new));
                match result {
                    Ok(()) => tracing::info!(path = %path.display(), "configuration reloaded"),
                    Err(problems) => log_refusal("SIGHUP", &problems),
                }
            }
            Some(request) = control_rx.recv() => match request {
                Control::ApplyConfig { config, reply } => {
                    let result = running.apply(*config);
                    match &result {
                        Ok(()) => tracing::info!("configuration applied from the API"),
                        Err(problems) => log_refusal("API", problems),
                    }
                    let _ = reply.send(result);
                }
            },
            _ = sample.tick() => {
                running.engine.sample_metrics();
                running.publish_status(&status_tx);
                history_tx.send_modify(|h| {
                    h.sample(std::time::SystemTime::now(), metrics::captured_per_stream())
                });
            }
        }
    }
    tracing::info!("stopping: detaching XDP and draining");
    running.engine.sample_metrics();
    running.engine.shutdown().await;
    consumer.await?;
    cancel.cancel();
    if let Some(task) = api_task {
        task.await??;
    }
    Ok(())
}

//! `raven-agent run`: wires the stages together and owns the process's
//! lifecycle (signals, live reconfiguration).
//!
//! Invariants:
//! - SIGHUP re-reads the configuration file; a file that does not parse or
//!   validate is refused with each key and reason, and the running
//!   configuration stays in force.
//! - SIGTERM/SIGINT detach XDP first, then drain the ring and the sockets
//!   into the pipeline, then exit.
//! - Until the store exists, the last stage counts every record it receives
//!   as dropped with reason `store_not_built`: visible, never silent.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use crate::{
    api,
    capture::{CaptureEngine, ring::count_lost},
    config::Config,
    privilege,
    record::Batch,
};

fn load(path: &Path, overrides: &impl Fn(&mut Config)) -> anyhow::Result<Config> {
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

pub async fn run(path: PathBuf, overrides: impl Fn(&mut Config)) -> anyhow::Result<()> {
    let mut config = load(&path, &overrides)
        .with_context(|| format!("refusing to start with {}", path.display()))?;
    privilege::check(&config)?;
    let cancel = CancellationToken::new();
    let metrics_task = match config.metrics.listen.parse() {
        Ok(listen) => Some(
            api::serve(listen, cancel.clone())
                .await
                .with_context(|| format!("metrics.listen = {:?}", config.metrics.listen))?,
        ),
        Err(_) => None,
    };
    let (tx, rx) = mpsc::channel(256);
    let consumer = tokio::spawn(consume(rx));
    let mut engine = CaptureEngine::start(&config.capture, tx).await?;
    if !config.service.user.is_empty() {
        let kept = privilege::drop_to_user(&config.service.user)?;
        tracing::info!(user = %config.service.user, ?kept, "dropped privileges");
    }

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut sample = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => match load(&path, &overrides) {
                Ok(new) => match engine.apply(&new.capture) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "configuration reloaded");
                        config = new;
                    }
                    Err(e) => tracing::error!("configuration refused, running one kept: {e}"),
                },
                Err(e) => tracing::error!("configuration refused, running one kept: {e:#}"),
            },
            _ = sample.tick() => engine.sample_metrics(),
        }
    }
    tracing::info!("stopping: detaching XDP and draining");
    engine.sample_metrics();
    engine.shutdown().await;
    consumer.await?;
    cancel.cancel();
    if let Some(task) = metrics_task {
        task.await??;
    }
    drop(config);
    Ok(())
}

//! `raven-agent tap`: tcpdump for Raven. Captures through the same engine as
//! the agent and prints one JSON object per record.
//!
//! Invariants:
//! - stdout carries only records, one JSON object per line, flushed per
//!   batch; diagnostics go to stderr (the `--stats` object too), so
//!   `tap | jq` always works.
//! - The default action is `tee`: a diagnostic must not take traffic away
//!   from collectors already on the host. `--action steal` captures the way
//!   the agent does (and lets fragments reach tap's own listeners).
//!
//! Format of a line: `ts` (RFC 3339, ns), `stream`, `src` (`ip:port`),
//! `dst_port`, `len` (wire), `caplen`, `truncated`, `via` (`xdp`|`socket`),
//! `ifindex`, `payload_b64`.

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use base64::Engine;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    capture::{ActiveMode, CaptureEngine},
    config::{CaptureMode, Config, PortAction, PortConfig, XdpAttachMode},
    metrics,
    record::{Record, Stream, rfc3339},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TapMode {
    /// XDP in native mode, falling back to generic.
    Auto,
    Driver,
    Skb,
    Socket,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TapAction {
    Tee,
    Steal,
}

#[derive(Debug, clap::Args)]
pub struct TapArgs {
    /// Interface to capture on (repeatable).
    #[arg(long = "interface", short = 'i', required = true)]
    pub interfaces: Vec<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: TapMode,
    /// Only print this stream.
    #[arg(long)]
    pub stream: Option<Stream>,
    /// Exit after this many records.
    #[arg(long, short = 'c')]
    pub count: Option<u64>,
    /// Capture STREAM on PORT (repeatable); default: the standard ports.
    #[arg(long = "port", value_parser = parse_port_spec)]
    pub ports: Vec<(Stream, u16)>,
    #[arg(long, value_enum, default_value = "tee")]
    pub action: TapAction,
    /// Payload bytes kept per datagram.
    #[arg(long)]
    pub snap_length: Option<u32>,
    /// Kernel ring size in bytes (a power of two ≥ 4096).
    #[arg(long)]
    pub ring_bytes: Option<u32>,
    /// Take ports and capture settings from this config file; SIGHUP
    /// re-reads it (ports change live).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the kernel and agent counters to stderr at exit.
    #[arg(long)]
    pub stats: bool,
}

pub fn parse_port_spec(text: &str) -> Result<(Stream, u16), String> {
    let (stream, port) =
        text.split_once('=').ok_or_else(|| format!("{text:?}: expected STREAM=PORT"))?;
    let stream: Stream = stream.parse().map_err(|e| format!("{e}"))?;
    let port: u16 = port.parse().map_err(|_| format!("{port:?} is not a UDP port"))?;
    if port == 0 {
        return Err("port 0 cannot be captured".into());
    }
    Ok((stream, port))
}

fn capture_config(args: &TapArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let capture = &mut config.capture;
    capture.interfaces = args.interfaces.clone();
    (capture.mode, capture.xdp_mode) = match args.mode {
        TapMode::Auto => (CaptureMode::Xdp, XdpAttachMode::Auto),
        TapMode::Driver => (CaptureMode::Xdp, XdpAttachMode::Driver),
        TapMode::Skb => (CaptureMode::Xdp, XdpAttachMode::Skb),
        TapMode::Socket => (CaptureMode::Socket, XdpAttachMode::Auto),
    };
    let action = match args.action {
        TapAction::Tee => PortAction::Tee,
        TapAction::Steal => PortAction::Steal,
    };
    if !args.ports.is_empty() {
        capture.ports =
            args.ports.iter().map(|&(stream, port)| PortConfig { port, stream, action }).collect();
    } else if args.config.is_none() {
        for port in &mut capture.ports {
            port.action = action;
        }
    }
    if let Some(snap) = args.snap_length {
        capture.snap_length = snap;
    }
    if let Some(ring) = args.ring_bytes {
        capture.ring_bytes = ring;
    }
    config.validate()?;
    Ok(config)
}

pub fn record_json(record: &Record) -> serde_json::Value {
    serde_json::json!({
        "ts": rfc3339(record.captured_at),
        "stream": record.stream,
        "src": record.src.to_string(),
        "dst_port": record.dst_port,
        "len": record.wire_len,
        "caplen": record.payload.len(),
        "truncated": record.truncated,
        "via": record.via,
        "ifindex": record.ifindex,
        "payload_b64": base64::engine::general_purpose::STANDARD.encode(&record.payload),
    })
}

pub async fn run(args: TapArgs) -> anyhow::Result<()> {
    let config = capture_config(&args)?;
    if matches!(args.mode, TapMode::Driver | TapMode::Skb) {
        crate::privilege::check(&config)?;
    }
    let (tx, mut rx) = mpsc::channel(64);
    let mut engine = CaptureEngine::start(&config.capture, tx).await?;
    if args.mode != TapMode::Socket
        && args.mode != TapMode::Auto
        && let ActiveMode::Socket(reason) = engine.mode()
    {
        bail!("XDP {:?} mode requested but unavailable: {reason}", args.mode);
    }
    eprintln!("{}", serde_json::json!({ "tap": "started", "mode": engine.mode() }));

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut printed = 0u64;
    let limit = args.count.unwrap_or(u64::MAX);
    let stdout = std::io::stdout();
    let print = |batch: Vec<Record>, printed: &mut u64| -> anyhow::Result<()> {
        let mut out = stdout.lock();
        for record in batch {
            if *printed >= limit {
                break;
            }
            if args.stream.is_some_and(|s| s != record.stream) {
                continue;
            }
            serde_json::to_writer(&mut out, &record_json(&record))?;
            out.write_all(b"\n")?;
            *printed += 1;
        }
        out.flush().context("writing to stdout")
    };

    let mut sample = tokio::time::interval(Duration::from_secs(1));
    while printed < limit {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => print(batch, &mut printed)?,
                None => break,
            },
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => match &args.config {
                Some(_) => match capture_config(&args) {
                    Ok(new) => match engine.apply(&new.capture) {
                        Ok(()) => eprintln!("{}", serde_json::json!({"tap": "reloaded"})),
                        Err(e) => eprintln!("{}", serde_json::json!({"tap": "reload refused", "error": e.to_string()})),
                    },
                    Err(e) => eprintln!("{}", serde_json::json!({"tap": "reload refused", "error": format!("{e:#}")})),
                },
                None => eprintln!("{}", serde_json::json!({"tap": "SIGHUP ignored: no --config"})),
            },
            _ = sample.tick() => engine.sample_metrics(),
        }
    }
    engine.sample_metrics();
    let mode = engine.mode();
    let drain = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Some(batch) = rx.recv().await {
            rest.extend(batch);
        }
        rest
    });
    let kernel = engine.shutdown().await;
    let rest = drain.await?;
    print(rest, &mut printed)?;
    if args.stats {
        let (counters, exporters) = kernel.unzip();
        eprintln!(
            "{}",
            serde_json::json!({
                "mode": mode,
                "printed": printed,
                "kernel": counters,
                "exporters": exporters,
                "agent": metrics::snapshot(),
            })
        );
    }
    Ok(())
}

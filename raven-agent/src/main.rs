//! The `raven-agent` command: `run` the appliance, `tap` the wire.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use raven_agent::{config::Config, pipeline, tap};

/// mimalloc rather than glibc malloc: decoded fields are many small maps
/// and strings per record, and glibc's allocator was about a fifth of
/// NetFlow and SNMP decode time in profiles (docs/benchmarks.md, decode).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "raven-agent", version, about = "Raven telemetry-capture appliance")]
struct Cli {
    /// Log format on stderr: human-readable text, or one JSON object a line
    /// (for journald/Loki/Elasticsearch shippers; also `RAVEN_LOG_FORMAT`).
    #[arg(long, value_enum, default_value = "text", global = true, env = "RAVEN_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance with a configuration file (SIGHUP re-reads it).
    Run(RunArgs),
    /// Print captured records as JSON lines (a diagnostic, like tcpdump).
    Tap(tap::TapArgs),
    /// Decode captures (pcap/pcapng) or raw payloads to JSON lines, offline.
    Decode(raven_agent::decode::cli::DecodeArgs),
    /// Look into the store: ls, cat, verify, stats.
    Segments(raven_agent::store::cli::SegmentsArgs),
    /// Store maintenance: rebuild-index, load.
    Store(raven_agent::store::cli::StoreArgs),
    /// Ask the running agent to re-send a stored range to a sink.
    Replay(raven_agent::api::client::ReplayArgs),
    /// (For `cargo xtask bench capture`: drop every frame on an interface in
    /// XDP until interrupted — the lab's ceiling.)
    #[command(hide = true)]
    XdpDrop {
        #[arg(long)]
        interface: String,
    },
    /// OpenVPN profiles and supervision.
    Vpn(raven_agent::vpn::cli::VpnArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, short = 'c', default_value = "/etc/raven/raven.toml")]
    config: PathBuf,
    /// Override capture.mode.
    #[arg(long, value_enum)]
    capture: Option<CaptureModeArg>,
    /// Override capture.interfaces (repeatable).
    #[arg(long = "interface", short = 'i')]
    interfaces: Vec<String>,
    /// Override store.data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum CaptureModeArg {
    Xdp,
    Socket,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAVEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => {
                let overrides = move |config: &mut Config| {
                    if let Some(mode) = args.capture {
                        config.capture.mode = match mode {
                            CaptureModeArg::Xdp => raven_agent::config::CaptureMode::Xdp,
                            CaptureModeArg::Socket => raven_agent::config::CaptureMode::Socket,
                        };
                    }
                    if !args.interfaces.is_empty() {
                        config.capture.interfaces = args.interfaces.clone();
                    }
                    if let Some(dir) = &args.data_dir {
                        config.store.data_dir = dir.to_string_lossy().into_owned();
                    }
                };
                pipeline::run(args.config, overrides).await
            }
            Command::Tap(args) => tap::run(args).await,
            Command::XdpDrop { interface } => {
                let _attached = raven_agent::capture::xdp::attach_drop(&interface)?;
                eprintln!("dropping every frame on {interface}");
                tokio::signal::ctrl_c().await?;
                Ok(())
            }
            Command::Decode(args) => raven_agent::decode::cli::run(args),
            Command::Segments(args) => raven_agent::store::cli::segments(args),
            Command::Store(args) => raven_agent::store::cli::store(args),
            Command::Replay(args) => raven_agent::api::client::replay(args),
            Command::Vpn(args) => raven_agent::vpn::cli::run(&args, &mut std::io::stdout())
                .await
                .map_err(anyhow::Error::from),
        }
    })
}

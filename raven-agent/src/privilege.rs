//! Least privilege: check the capabilities the configuration needs before
//! doing anything, and after the XDP program is attached and the sockets are
//! bound, drop to an unprivileged user keeping only what running still
//! needs.
//!
//! Invariants:
//! - A capability the configuration needs and the process lacks refuses the
//!   start, naming the capability and what needs it. (A driver that cannot
//!   do XDP is different: capture falls back to sockets and says so.)
//! - After [`drop_to_user`], the process has exactly [`KEPT_WHILE_RUNNING`]
//!   in its permitted, effective and ambient sets (ambient so a supervised
//!   `openvpn` child can configure its tun device) and nothing else.
//!
//! What needs what:
//!
//! | capability | needed for | when |
//! |---|---|---|
//! | CAP_BPF | load the XDP program, create its maps | start (xdp mode) |
//! | CAP_PERFMON | the verifier allows the program's pointer arithmetic | start (xdp mode) |
//! | CAP_NET_ADMIN | attach XDP; `SO_RCVBUFFORCE`; openvpn's tun device | start and running |
//! | CAP_NET_BIND_SERVICE | UDP ports below 1024 (514, 162) | start and running (ports change live) |
//! | CAP_NET_RAW | ICMP probes and diagnostics | running |

use std::{ffi::CString, fmt, path::Path};

use caps::{CapSet, Capability};

use crate::config::{CaptureMode, Config};

/// Kept after dropping to the service user.
pub const KEPT_WHILE_RUNNING: [Capability; 3] =
    [Capability::CAP_NET_ADMIN, Capability::CAP_NET_BIND_SERVICE, Capability::CAP_NET_RAW];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "missing capability {capability} (needed to {why}); run as root, or grant it \
         (docker --cap-add {short}, systemd AmbientCapabilities={capability})"
    )]
    Missing { capability: Capability, short: String, why: &'static str },
    #[error("service.user {0:?} does not exist")]
    UnknownUser(String),
    #[error("dropping privileges failed at {step}: {source}")]
    Drop { step: &'static str, source: std::io::Error },
    #[error("capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
}

/// A capability the configuration needs at start, with the reason.
pub struct Need {
    pub capability: Capability,
    pub why: &'static str,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.capability, self.why)
    }
}

/// What `config` needs to start.
pub fn needs(config: &Config) -> Vec<Need> {
    let mut needs = Vec::new();
    if config.capture.mode == CaptureMode::Xdp {
        needs.push(Need { capability: Capability::CAP_BPF, why: "load the XDP program" });
        needs.push(Need {
            capability: Capability::CAP_PERFMON,
            why: "pass the verifier's pointer-arithmetic checks",
        });
        needs.push(Need { capability: Capability::CAP_NET_ADMIN, why: "attach XDP" });
    }
    if config.capture.ports.iter().any(|p| p.port < 1024) {
        needs.push(Need {
            capability: Capability::CAP_NET_BIND_SERVICE,
            why: "listen on UDP ports below 1024",
        });
    }
    needs
}

fn short_name(capability: Capability) -> String {
    capability.to_string().trim_start_matches("CAP_").to_string()
}

/// Refuses when the process lacks a capability `config` needs.
pub fn check(config: &Config) -> Result<(), PrivilegeError> {
    for need in needs(config) {
        if !caps::has_cap(None, CapSet::Effective, need.capability)? {
            return Err(PrivilegeError::Missing {
                capability: need.capability,
                short: short_name(need.capability),
                why: need.why,
            });
        }
    }
    Ok(())
}

fn os_step(step: &'static str, rc: libc::c_int) -> Result<(), PrivilegeError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(PrivilegeError::Drop { step, source: std::io::Error::last_os_error() })
    }
}

/// Becomes `user` (and its primary group), keeping [`KEPT_WHILE_RUNNING`]
/// where the process had them. Returns the capabilities kept.
pub fn drop_to_user(user: &str, owned: &[&Path]) -> Result<Vec<Capability>, PrivilegeError> {
    let name = CString::new(user).map_err(|_| PrivilegeError::UnknownUser(user.to_string()))?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy
    // the two ids out at once, before any other call could overwrite it.
    let (uid, gid) = unsafe {
        let entry = libc::getpwnam(name.as_ptr());
        if entry.is_null() {
            return Err(PrivilegeError::UnknownUser(user.to_string()));
        }
        ((*entry).pw_uid, (*entry).pw_gid)
    };
    // The store keeps writing after the drop: its tree must be the user's.
    for root in owned {
        chown_tree(root, uid, gid)
            .map_err(|e| PrivilegeError::Drop { step: "chown data directory", source: e })?;
    }
    let had = caps::read(None, CapSet::Permitted)?;
    let keep: Vec<Capability> =
        KEPT_WHILE_RUNNING.into_iter().filter(|c| had.contains(c)).collect();
    // SAFETY: plain syscalls with valid arguments; order matters: keep
    // capabilities across the uid change, groups and gid before the uid.
    unsafe {
        os_step("prctl(PR_SET_KEEPCAPS)", libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
        os_step("setgroups", libc::setgroups(0, std::ptr::null()))?;
        os_step("setresgid", libc::setresgid(gid, gid, gid))?;
        os_step("setresuid", libc::setresuid(uid, uid, uid))?;
    }
    let set: caps::CapsHashSet = keep.iter().copied().collect();
    caps::set(None, CapSet::Permitted, &set)?;
    caps::set(None, CapSet::Effective, &set)?;
    caps::set(None, CapSet::Inheritable, &set)?;
    for &capability in &keep {
        caps::raise(None, CapSet::Ambient, capability)?;
    }
    Ok(keep)
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_mode_on_high_ports_needs_nothing() {
        let mut config = Config::default();
        config.capture.mode = CaptureMode::Socket;
        for p in &mut config.capture.ports {
            p.port += 10_000;
        }
        assert!(needs(&config).is_empty());
    }

    #[test]
    fn the_default_config_needs_the_xdp_set_and_low_ports() {
        let names: Vec<String> =
            needs(&Config::default()).iter().map(|n| n.capability.to_string()).collect();
        assert_eq!(names, ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"]);
    }
}

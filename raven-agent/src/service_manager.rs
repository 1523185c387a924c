//! Telling the service manager how Raven is doing: systemd's `Type=notify`
//! protocol (sd_notify(3)), through the `sd-notify` crate.
//!
//! Invariants:
//! - `READY=1` is sent only once capture runs and its state is published —
//!   the moment `/readyz` starts answering 200 — so `systemctl start raven`
//!   returns when Raven captures, and fails when it cannot.
//! - `WATCHDOG=1` is sent only from the agent's main loop, at half the
//!   interval systemd asked for (`WatchdogSec=`): a main loop that stops
//!   turning (a hung reload, a wedged runtime) gets Raven restarted
//!   instead of leaving a process that looks alive and captures nothing.
//! - Without `NOTIFY_SOCKET` (not run by systemd: Docker, a shell, tests)
//!   every call does nothing. A failed send is logged once and never stops
//!   Raven: the service manager is told, not obeyed.
//! - Child processes (the supervised `openvpn`) do not inherit the
//!   variables: systemd would take their notifications for Raven's
//!   ([`CHILD_ENV_REMOVED`]).
//!
//! Protocol: newline-separated `KEY=VALUE` assignments in one datagram to
//! the `AF_UNIX` socket named by `NOTIFY_SOCKET`: `READY=1` with
//! `STATUS=…` once started; `RELOADING=1` with `MONOTONIC_USEC=…` when a
//! SIGHUP reload begins and `READY=1` when it is done (applied or
//! refused: either way the running configuration serves); `STOPPING=1`
//! when shutdown begins; `WATCHDOG=1` as the keep-alive.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use sd_notify::NotifyState;

/// The variables a child process must not inherit.
pub const CHILD_ENV_REMOVED: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// The agent's link to its service manager.
pub struct ServiceManager {
    /// How often to send `WATCHDOG=1`, when the manager asked for it.
    keep_alive_every: Option<Duration>,
    send_failed: AtomicBool,
}

impl ServiceManager {
    /// From the environment systemd sets (`NOTIFY_SOCKET`, `WATCHDOG_USEC`,
    /// `WATCHDOG_PID`).
    pub fn from_env() -> Self {
        // Half the watchdog's timeout, as sd_watchdog_enabled(3) advises,
        // so that one late tick does not kill a healthy agent.
        let keep_alive_every = sd_notify::watchdog_enabled()
            .filter(|timeout| !timeout.is_zero())
            .map(|timeout| timeout / 2);
        if let Some(every) = keep_alive_every {
            tracing::info!(every = ?every, "the service manager's watchdog is on");
        }
        ServiceManager { keep_alive_every, send_failed: false.into() }
    }

    /// How often the main loop calls [`ServiceManager::alive`], when the
    /// watchdog is on.
    pub fn keep_alive_every(&self) -> Option<Duration> {
        self.keep_alive_every
    }

    /// Startup (or a reload) is finished; `status` is what `systemctl
    /// status` shows.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A SIGHUP reload begins.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading the configuration"),
            ]),
            Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock for RELOADING"),
        }
    }

    /// Shutdown begins (XDP detaches, the ring and sockets drain).
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping: draining capture")]);
    }

    /// The main loop turned: feeds the watchdog.
    pub fn alive(&self) {
        if self.keep_alive_every.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    fn send(&self, states: &[NotifyState]) {
        match sd_notify::notify(states) {
            Ok(()) => {
                self.send_failed.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                if !self.send_failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
                }
            }
        }
    }
}

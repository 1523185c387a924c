//! systemd's notify protocol, spoken to a real `AF_UNIX` datagram socket
//! the way systemd listens (`NOTIFY_SOCKET`, `WATCHDOG_USEC`): `READY=1`
//! only once `/readyz` answers 200, a status line for `systemctl status`,
//! the watchdog fed at half its timeout, `RELOADING=1` … `READY=1` around
//! a SIGHUP, `STOPPING=1` on SIGTERM — and no `READY=1` from a start that
//! fails, so `systemctl start` reports the failure.

mod common;

use std::{
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use common::{Agent, Lab, METRICS_LISTEN};

fn config(lab: &Lab) -> String {
    format!(
        "[capture]\nmode = \"xdp\"\ninterfaces = [\"{}\"]\n\
         ports = [{{port = 514, stream = \"syslog\"}}, {{port = 2055, stream = \"netflow\"}}]\n\
         [api]\nlisten = \"{METRICS_LISTEN}\"\n",
        lab.appliance_if
    )
}

/// The socket systemd would listen on, and the agent's environment for it.
struct Manager {
    socket: UnixDatagram,
    env: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Manager {
    fn new(watchdog_usec: Option<u64>) -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let mut env = vec!["env".to_string(), format!("NOTIFY_SOCKET={}", path.display())];
        env.extend(watchdog_usec.map(|usec| format!("WATCHDOG_USEC={usec}")));
        Manager { socket, env, _dir: dir }
    }

    fn wrapper(&self) -> Vec<&str> {
        self.env.iter().map(String::as_str).collect()
    }

    /// The next datagram within `timeout`, as text.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Datagrams until one holds `assignment` (bounded); returns that one.
    fn until(&self, assignment: &str, agent: &Agent) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(message) = self.next(Duration::from_millis(500)) {
                if message.lines().any(|l| l == assignment) {
                    return message;
                }
                seen.push(message);
            }
        }
        panic!("no {assignment} within 20 s; got {seen:?}\n{}", agent.stderr());
    }
}

#[test]
fn ready_watchdog_reload_and_stop_reach_the_service_manager() {
    let lab = Lab::new();
    let manager = Manager::new(Some(1_000_000));
    let agent = Agent::run(&lab, &config(&lab), &manager.wrapper());

    let ready = manager.until("READY=1", &agent);
    // READY=1 follows the published capture state: no polling here.
    let (status, body) = agent.http("GET", "/readyz", None, None).expect("API up at READY=1");
    assert_eq!(status, 200, "READY=1 sent before /readyz is 200: {body}");
    let expected =
        format!("STATUS=capturing with XDP on {} (driver); 2 UDP ports", lab.appliance_if);
    assert!(ready.lines().any(|l| l.starts_with(&expected)), "{ready}");

    // WATCHDOG_USEC = 1 s: fed every 0.5 s.
    let started = Instant::now();
    let mut feeds = 0;
    while started.elapsed() < Duration::from_secs(3) {
        if manager.next(Duration::from_millis(600)).is_some_and(|m| m == "WATCHDOG=1\n") {
            feeds += 1;
        }
    }
    assert!((3..=8).contains(&feeds), "{feeds} watchdog feeds in 3 s at one per 0.5 s");

    agent.signal(libc::SIGHUP);
    let reloading = manager.until("RELOADING=1", &agent);
    assert!(reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading}");
    manager.until("READY=1", &agent);

    agent.signal(libc::SIGTERM);
    manager.until("STOPPING=1", &agent);
    let mut agent = agent;
    assert!(agent.wait_exit().success(), "{}", agent.stderr());
}

#[test]
fn a_start_that_fails_never_says_ready() {
    let lab = Lab::new();
    let manager = Manager::new(None);
    // Port 514 twice: refused at start, naming the key.
    let bad =
        config(&lab).replace("port = 2055, stream = \"netflow\"", "port = 514, stream = \"snmp\"");
    let mut agent = Agent::run(&lab, &bad, &manager.wrapper());
    let status = agent.wait_exit();
    assert!(!status.success(), "a refused configuration must fail the start");
    assert!(agent.stderr().contains("capture.ports[1].port"), "{}", agent.stderr());
    let mut messages = Vec::new();
    while let Some(message) = manager.next(Duration::from_millis(200)) {
        messages.push(message);
    }
    assert!(!messages.iter().any(|m| m.lines().any(|l| l == "READY=1")), "{messages:?}");
}

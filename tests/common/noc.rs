//! The NOC side of a test: a namespace joined to the appliance's by a veth
//! pair, real receivers in it, and processes that die with the test.
//!
//! Invariants: addresses are 192.0.2.0/24 (documentation range, inside
//! namespaces the test made); every process is killed and reaped on drop;
//! every wait is bounded.

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::{Netns, ip, unique};

pub const APPLIANCE: &str = "192.0.2.1";
pub const NOC: &str = "192.0.2.2";

/// Appliance and NOC namespaces joined by a veth pair.
pub struct Link {
    pub appliance: Netns,
    pub noc: Netns,
}

impl Link {
    pub fn new() -> Link {
        let appliance = Netns::new("rfa");
        let noc = connect_noc(&appliance);
        Link { appliance, noc }
    }
}

/// A new NOC namespace joined to `appliance` by a veth pair: the appliance
/// end is 192.0.2.1, the NOC end 192.0.2.2.
pub fn connect_noc(appliance: &Netns) -> Netns {
    let noc = Netns::new("rfn");
    let (a_if, n_if) = (unique("fa"), unique("fn"));
    ip(&[
        "link",
        "add",
        &a_if,
        "netns",
        &appliance.name,
        "type",
        "veth",
        "peer",
        "name",
        &n_if,
        "netns",
        &noc.name,
    ]);
    for (ns, ifname, addr) in [(appliance, &a_if, APPLIANCE), (&noc, &n_if, NOC)] {
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname]);
        ns.ip(&["link", "set", ifname, "up"]);
    }
    noc
}

/// A child process killed (and reaped) on drop.
pub struct Process {
    child: Child,
    what: String,
}

impl Process {
    pub fn spawn(mut cmd: Command, what: &str, log: &Path) -> Process {
        let log = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Process { child, what: what.to_string() }
    }

    /// SIGTERM and wait (bounded) for the exit.
    pub fn terminate(self) {
        self.stop(libc::SIGTERM);
    }

    /// `signal` and wait (bounded) for the exit.
    pub fn stop(mut self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{} did not exit on SIGTERM", self.what);
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn tcp_listening(ns: &Netns, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.enter(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
}

/// rsyslogd with `input_module` (the imtcp module line, with its TLS
/// settings when wanted), writing each raw message as a line.
pub fn rsyslog_with(noc: &Netns, dir: &Path, port: u16, input_module: &str) -> Process {
    rsyslog_at(noc, dir, NOC, port, input_module)
}

/// `rsyslogd` listening on `address:port` in `noc`, writing each raw
/// message as a line to `dir/received.log`.
pub fn rsyslog_at(
    noc: &Netns,
    dir: &Path,
    address: &str,
    port: u16,
    input_module: &str,
) -> Process {
    let udp = input_module.contains("imudp");
    let conf = dir.join("rsyslog.conf");
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{work}\")\n\
             {input_module}\
             input(type=\"{input}\" port=\"{port}\" address=\"{address}\")\n\
             template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
             action(type=\"omfile\" file=\"{out}\" template=\"raw\")\n",
            work = work.display(),
            out = dir.join("received.log").display(),
            input = if udp { "imudp" } else { "imtcp" },
        ),
    )
    .unwrap();
    let mut cmd = noc.command("rsyslogd");
    cmd.arg("-n").arg("-f").arg(&conf).arg("-i").arg(dir.join("rsyslogd.pid"));
    let process =
        Process::spawn(cmd, "rsyslogd", &dir.join(format!("rsyslogd-{}.log", unique("r"))));
    wait_until("rsyslogd to listen", Duration::from_secs(15), || {
        if udp {
            let out = noc.run("ss", &["-ulnH"]);
            String::from_utf8_lossy(&out.stdout).contains(&format!("{address}:{port}"))
        } else {
            tcp_listening(noc, &format!("{address}:{port}"))
        }
    });
    process
}

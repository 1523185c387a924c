//! The NOC side of a test: a namespace joined to the appliance's by a veth
//! pair, real receivers in it, and processes that die with the test.
//!
//! Invariants: addresses are 192.0.2.0/24 (documentation range, inside
//! namespaces the test made); every process is killed and reaped on drop;
//! every wait is bounded.
//!
//! Receivers: `rsyslogd` (imtcp/imudp, each raw message a line in
//! `received.log`), `nfcapd` (read back with `nfdump`), `snmptrapd` (its log
//! file), and a small HTTP receiver (Python's `http.server`: gunzips each
//! POST body, appends its JSON lines to a file, then answers 204), plus
//! `nft` to cut links.

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::{Netns, ip, sh, unique};

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

/// `nfcapd` (nfdump 1.7) listening on `NOC:port`, writing to `dir`; its
/// files are complete once it has been stopped.
pub fn nfcapd(noc: &Netns, dir: &Path, port: u16) -> Process {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = noc.command("nfcapd");
    cmd.arg("-w").arg(dir).args(["-b", NOC, "-p", &port.to_string(), "-t", "3600"]);
    // A drained backlog arrives faster than live traffic: a larger socket
    // buffer (capped by net.core.rmem_max) keeps the collector from dropping.
    cmd.args(["-B", "4194304"]);
    let process = Process::spawn(cmd, "nfcapd", &dir.with_extension("log"));
    // Bound: datagrams sent before would be lost.
    wait_until("nfcapd to bind", Duration::from_secs(10), || {
        let out = noc.run("ss", &["-ulnH"]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("{NOC}:{port}"))
    });
    process
}

/// The flow records nfcapd wrote to `dir`, one line each in file (receive)
/// order, printed with `nfdump -o fmt:FORMAT` (after nfcapd stopped).
pub fn nfdump_lines(dir: &Path, format: &str) -> Vec<String> {
    let out =
        sh(Command::new("nfdump").arg("-R").arg(dir).args(["-q", "-o", &format!("fmt:{format}")]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// Flows nfcapd wrote, counted by nfdump, after it was stopped.
pub fn nfdump_flows(dir: &Path) -> usize {
    let out = sh(Command::new("nfdump").arg("-R").arg(dir).args(["-q", "-o", "csv"]));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| !l.trim().is_empty() && l.contains(',') && !l.starts_with("ts,"))
        .count()
}

/// The exporters nfcapd recorded (`nfdump -E`), as their printed lines
/// (`SysID: 1, IP: …, version: 9, ID: 1, …`).
pub fn nfdump_exporters(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("nfcapd.") {
            continue;
        }
        let out = sh(Command::new("nfdump").arg("-E").arg(&path));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        eprintln!("nfdump -E {}:\n{text}", path.display());
        lines.extend(text.lines().filter(|l| l.starts_with("SysID:")).map(String::from));
    }
    lines
}

/// `snmptrapd` on `udp:NOC:port`, accepting every community, logging each
/// trap (numeric OIDs) to `dir/traps.log`. `-n`: no reverse DNS lookup of
/// each sender — the namespace has no resolver, and a lookup per trap
/// stalls snmptrapd long enough for a replayed burst to overflow its
/// socket buffer (seen as runs of missing traps).
pub fn snmptrapd(noc: &Netns, dir: &Path, port: u16) -> Process {
    let log = dir.join("traps.log");
    let conf = dir.join("snmptrapd.conf");
    std::fs::write(&conf, "disableAuthorization yes\n").unwrap();
    let mut cmd = noc.command("snmptrapd");
    cmd.args(["-f", "-n", "-C", "-On", "-c"])
        .arg(&conf)
        .arg("-Lf")
        .arg(&log)
        .arg("-p")
        .arg(dir.join("snmptrapd.pid"));
    cmd.arg(format!("udp:{NOC}:{port}"));
    let process = Process::spawn(cmd, "snmptrapd", &dir.join("snmptrapd.out"));
    // Started (its banner) and bound: traps sent before would be lost.
    wait_until("snmptrapd to start", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("NET-SNMP version")
            && String::from_utf8_lossy(&noc.run("ss", &["-ulnH"]).stdout)
                .contains(&format!("{NOC}:{port}"))
    });
    process
}

/// The HTTP receiver: one thread per connection (a connection cut without
/// a FIN must not block the next one), HTTP/1.1 keep-alive, each POST body
/// gunzipped and appended to the output file before the 204 goes out.
const HTTP_RECEIVER: &str = r#"
import gzip, http.server, sys, threading
out = open(sys.argv[3], "ab")
lock = threading.Lock()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status = 204
        try:
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            with lock:
                out.write(body)
                out.flush()
        except Exception:
            status = 400
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler)
server.daemon_threads = True
server.serve_forever()
"#;

/// The HTTP receiver on `http://NOC:port/`, appending the JSON lines it
/// gets to `dir/http.jsonl`.
pub fn http_receiver(noc: &Netns, dir: &Path, port: u16) -> Process {
    let script = dir.join("http_receiver.py");
    std::fs::write(&script, HTTP_RECEIVER).unwrap();
    let mut cmd = noc.command("python3");
    cmd.arg(&script).args([NOC, &port.to_string()]).arg(dir.join("http.jsonl"));
    let process = Process::spawn(cmd, "http receiver (python3)", &dir.join("http_receiver.log"));
    wait_until("the HTTP receiver to listen", Duration::from_secs(15), || {
        tcp_listening(noc, &format!("{NOC}:{port}"))
    });
    process
}

/// Loads an nftables script in `ns` (`nft -f -`).
pub fn nft(ns: &Netns, script: &str) {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft (Debian package nftables)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft failed: {script}");
}

//! Test harness for tests that need a kernel: network namespaces, veth
//! pairs, processes inside them, and `raven-agent tap` as the observer.
//!
//! Invariants:
//! - Tests run as root (CI is root). Without root they fail loudly; they
//!   never skip.
//! - Every namespace, and every process started in it, is removed when its
//!   guard drops, on failure too (Drop runs during unwinding).
//! - Addresses are only ones inside namespaces the test made
//!   (198.18.0.0/15, 2001:db8::/32). Every wait is bounded in time.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod frame;
pub mod noc;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use base64::Engine;
use serde_json::Value;

pub const AGENT: &str = env!("CARGO_BIN_EXE_raven-agent");

pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test drives XDP and network namespaces and must run as root (CI does); \
         run `sudo -E cargo xtask test`"
    );
}

/// A short name unique to this process and call (interface names are ≤ 15 bytes).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

pub fn sh(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args));
}

/// How often [`poll`] looks again.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// Waits, bounded in time and in attempts, until `probe` answers `Ok`, and
/// returns what it answered. `probe` answers `Err(state)` while the
/// condition does not hold: on timeout the panic names `what` and the last
/// state seen, so a failure says where things stood.
pub fn poll<T, S: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, S>,
) -> T {
    let started = Instant::now();
    let attempts = (timeout.as_millis() / POLL_EVERY.as_millis()) as u64 + 1;
    let mut last = None;
    for _ in 0..attempts {
        match probe() {
            Ok(value) => return value,
            Err(state) => last = Some(state),
        }
        if started.elapsed() >= timeout {
            break;
        }
        thread::sleep(POLL_EVERY);
    }
    panic!(
        "timed out after {:.1?} waiting for {what}; last seen: {:#?}",
        started.elapsed(),
        last.expect("probed at least once")
    );
}

/// UDP datagrams a namespace sent, and took in: read by a socket (the
/// kernel counts `InDatagrams` when a process reads one, not when it is
/// queued), or dropped (no socket on the port, a full buffer, a bad
/// checksum). IPv4 and IPv6 together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpCounts {
    pub sent: u64,
    pub taken: u64,
    /// Of `taken`: no socket on the port.
    pub no_port: u64,
}

/// Waits (bounded) until the namespace `to` has taken in (read, or
/// dropped) at least as many UDP datagrams since its baseline as `from` has
/// sent since its own: nothing `from` sent is still on its way or waiting
/// in a socket buffer. For where `to` takes UDP from `from` alone. Returns
/// the counts (`from`'s, `to`'s) it ended on.
pub fn wait_udp_taken(
    what: &str,
    (from, from_base): (&Netns, UdpCounts),
    (to, to_base): (&Netns, UdpCounts),
    timeout: Duration,
) -> (UdpCounts, UdpCounts) {
    poll(what, timeout, || {
        let (sent, taken) = (from.udp_counts(), to.udp_counts());
        if taken.taken - to_base.taken >= sent.sent - from_base.sent {
            Ok((sent, taken))
        } else {
            Err(format!(
                "{} sent {} datagrams, {} took in {}",
                from.name,
                sent.sent - from_base.sent,
                to.name,
                taken.taken - to_base.taken
            ))
        }
    })
}

/// A network namespace, deleted (with every process in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        require_root();
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        sh(self.command(program).args(args))
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets made
    /// there stay in this namespace wherever they are used afterwards.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).expect("open netns");
                    // SAFETY: valid fd; CLONE_NEWNET affects only this thread.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("thread in netns panicked")
        })
    }

    pub fn udp_socket(&self, addr: &str) -> UdpSocket {
        let addr: SocketAddr = addr.parse().unwrap();
        self.enter(|| UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")))
    }

    /// This namespace's protocol counters (`/proc/net/snmp` and
    /// `/proc/net/snmp6`), as `"Udp.InDatagrams"`, `"Icmp.InDestUnreachs"`,
    /// `"Udp6.InDatagrams"`, ...
    pub fn counters(&self) -> BTreeMap<String, u64> {
        // /proc/thread-self/net is the calling thread's namespace (/proc/self/net
        // would be the main thread's).
        let (v4, v6) = self.enter(|| {
            let read = |file: &str| {
                std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
                    .unwrap_or_else(|e| panic!("/proc/net/{file}: {e}"))
            };
            (read("snmp"), read("snmp6"))
        });
        let mut out = BTreeMap::new();
        // Pairs of lines: "Udp: InDatagrams NoPorts ..." then "Udp: 12 0 ...".
        let lines: Vec<&str> = v4.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (Some((proto, names)), Some((_, values))) =
                (names.split_once(':'), values.split_once(':'))
            else {
                continue;
            };
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                if let Ok(value) = value.parse() {
                    out.insert(format!("{proto}.{name}"), value);
                }
            }
        }
        // "Udp6InDatagrams   12"
        for line in v6.lines() {
            if let Some((name, value)) = line.split_once(char::is_whitespace)
                && let Some(field) = name.strip_prefix("Udp6")
                && let Ok(value) = value.trim().parse()
            {
                out.insert(format!("Udp6.{field}"), value);
            }
        }
        out
    }

    /// UDP datagrams this namespace has sent and taken in so far.
    pub fn udp_counts(&self) -> UdpCounts {
        let c = self.counters();
        let sum = |field: &str| {
            ["Udp", "Udp6"]
                .iter()
                .map(|p| c.get(&format!("{p}.{field}")).copied().unwrap_or(0))
                .sum()
        };
        let no_port: u64 = sum("NoPorts");
        UdpCounts {
            sent: sum("OutDatagrams"),
            taken: sum("InDatagrams") + sum("InErrors") + no_port,
            no_port,
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Two namespaces joined by a veth pair, with addresses on both ends:
/// venue 198.18.0.2/24 + 2001:db8::2/64, appliance 198.18.0.1/24 + 2001:db8::1/64.
pub struct Lab {
    pub venue: Netns,
    pub appliance: Netns,
    pub venue_if: String,
    pub appliance_if: String,
}

pub const APPLIANCE_V4: &str = "198.18.0.1";
pub const VENUE_V4: &str = "198.18.0.2";
pub const APPLIANCE_V6: &str = "2001:db8::1";
pub const VENUE_V6: &str = "2001:db8::2";

impl Lab {
    pub fn new() -> Lab {
        let venue = Netns::new("rvv");
        let appliance = Netns::new("rva");
        let venue_if = unique("vv");
        let appliance_if = unique("va");
        ip(&[
            "link",
            "add",
            &venue_if,
            "netns",
            &venue.name,
            "type",
            "veth",
            "peer",
            "name",
            &appliance_if,
            "netns",
            &appliance.name,
        ]);
        for (ns, ifname, v4, v6) in [
            (&venue, &venue_if, VENUE_V4, VENUE_V6),
            (&appliance, &appliance_if, APPLIANCE_V4, APPLIANCE_V6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", ifname]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"]);
            ns.ip(&["link", "set", ifname, "up"]);
        }
        Lab { venue, appliance, venue_if, appliance_if }
    }

    /// A UDP socket in the venue namespace to send from.
    pub fn sender(&self, v6: bool) -> UdpSocket {
        self.venue.udp_socket(if v6 { "[2001:db8::2]:0" } else { "198.18.0.2:0" })
    }
}

/// One line of `raven-agent tap` output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapRecord {
    pub stream: String,
    pub src: String,
    pub dst_port: u16,
    pub len: u32,
    pub caplen: usize,
    pub truncated: bool,
    pub via: String,
    pub ts: String,
    pub payload: Vec<u8>,
}

impl TapRecord {
    fn parse(line: &str) -> TapRecord {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let text =
            |k: &str| v[k].as_str().unwrap_or_else(|| panic!("no {k} in {line}")).to_string();
        TapRecord {
            stream: text("stream"),
            src: text("src"),
            dst_port: v["dst_port"].as_u64().unwrap() as u16,
            len: v["len"].as_u64().unwrap() as u32,
            caplen: v["caplen"].as_u64().unwrap() as usize,
            truncated: v["truncated"].as_bool().unwrap(),
            via: text("via"),
            ts: text("ts"),
            payload: base64::engine::general_purpose::STANDARD.decode(text("payload_b64")).unwrap(),
        }
    }
}

/// A running `raven-agent tap` in a namespace.
pub struct Tap {
    child: Child,
    records: mpsc::Receiver<TapRecord>,
    stdout_done: Option<thread::JoinHandle<()>>,
    stderr: std::sync::Arc<Mutex<Vec<String>>>,
    stderr_done: Option<thread::JoinHandle<()>>,
}

impl Tap {
    /// Starts tap with `args` and waits until it captures.
    pub fn start(ns: &Netns, args: &[&str]) -> Tap {
        let mut child = ns
            .command(AGENT)
            .arg("tap")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RAVEN_LOG", "info")
            .spawn()
            .expect("spawn raven-agent tap");
        let (tx, records) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stdout_done = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(TapRecord::parse(&line)).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (started_tx, started) = mpsc::channel();
        let lines = stderr.clone();
        let stderr_pipe = child.stderr.take().unwrap();
        let stderr_done = thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains("\"tap\":\"started\"") {
                    let _ = started_tx.send(line.clone());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut tap = Tap {
            child,
            records,
            stdout_done: Some(stdout_done),
            stderr,
            stderr_done: Some(stderr_done),
        };
        if started.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = tap.child.kill();
            panic!("tap did not start:\n{}", tap.stderr_text());
        }
        tap
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until a stderr line contains `needle` (bounded).
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Collects `n` records, or what came within `timeout`.
    pub fn take(&self, n: usize, timeout: Duration) -> Vec<TapRecord> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.records.recv_timeout(left) {
                Ok(r) => got.push(r),
                Err(_) => break,
            }
        }
        got
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// SIGINT, wait for exit; returns the records still unread and the
    /// `--stats` object (Null without --stats).
    pub fn stop(mut self) -> (Vec<TapRecord>, Value) {
        self.signal(libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "tap did not exit on SIGINT");
            thread::sleep(Duration::from_millis(20));
        }
        // Both pipes are read to their end (the process is gone) before
        // anything is taken: records still being parsed would be lost.
        for done in [self.stdout_done.take(), self.stderr_done.take()].into_iter().flatten() {
            let _ = done.join();
        }
        let rest: Vec<TapRecord> = self.records.try_iter().collect();
        let stats = self
            .stderr
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| l.contains("\"kernel\"") || l.contains("\"agent\""))
            .map(|l| serde_json::from_str(l).unwrap())
            .unwrap_or(Value::Null);
        (rest, stats)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the UDP datagrams on a socket until `n` arrived or `timeout` passed.
pub fn receive_all(socket: &UdpSocket, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while got.len() < n && Instant::now() < deadline {
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            got.push(buf[..len].to_vec());
        }
    }
    got
}

/// tshark's decode of every shared capture (`../shared/data/expected/*.json`).
pub fn shared_expected() -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/expected");
    let mut out = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "json")
                && !path.ends_with("_index.json")
            {
                out.push(serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap());
            }
        }
    }
    out
}

/// The UDP payloads of a pcap or pcapng file in `../shared/data`, with their
/// destination ports, in file order.
/// `raven-agent segments --data-dir DIR cat [--stream S]`: the stored
/// records as JSON objects, oldest first.
#[allow(dead_code)] // not every test binary reads the store back
pub fn segments_cat(data_dir: &Path, stream: Option<&str>) -> Vec<Value> {
    let mut cmd = Command::new(AGENT);
    cmd.args(["segments", "--data-dir"]).arg(data_dir).arg("cat");
    if let Some(stream) = stream {
        cmd.args(["--stream", stream]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `raven-agent segments --data-dir DIR verify` passes.
#[allow(dead_code)]
pub fn assert_store_verifies(data_dir: &Path) {
    let verify = Command::new(AGENT)
        .args(["segments", "--data-dir"])
        .arg(data_dir)
        .arg("verify")
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

pub fn shared_capture(relative: &str) -> Vec<(u16, Vec<u8>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data").join(relative);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    raven_agent::decode::capture_file::read(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .datagrams
        .into_iter()
        .map(|d| (d.dst.port(), d.payload.to_vec()))
        .collect()
}

/// Sends raw Ethernet frames out of `ifname` in `ns` (AF_PACKET), for frames
/// the namespace's own stack cannot make (this kernel has no 802.1Q
/// devices: CONFIG_VLAN_8021Q is off).
pub fn send_frames(ns: &Netns, ifname: &str, frames: &[Vec<u8>]) {
    let ifname = std::ffi::CString::new(ifname).unwrap();
    ns.enter(|| {
        // SAFETY: plain socket/bind/send calls with valid arguments.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(ifname.as_ptr()) as i32;
            assert!(addr.sll_ifindex > 0);
            let rc =
                libc::bind(fd, (&raw const addr).cast(), size_of::<libc::sockaddr_ll>() as u32);
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            for frame in frames {
                let n = libc::send(fd, frame.as_ptr().cast(), frame.len(), 0);
                assert_eq!(n, frame.len() as isize, "send: {}", std::io::Error::last_os_error());
            }
            libc::close(fd);
        }
    });
}

/// Where tests make `raven-agent run` serve its API: the appliance side.
pub const METRICS_LISTEN: &str = "198.18.0.1:9184";

/// A running `raven-agent run` in the lab's appliance namespace, killed on
/// drop; its config file lives in a temporary directory.
pub struct Agent<'a> {
    lab: &'a Lab,
    child: Child,
    pub dir: tempfile::TempDir,
    stderr: std::sync::Arc<Mutex<Vec<String>>>,
    /// The thread reading the running process's stderr.
    stderr_reader: Option<thread::JoinHandle<()>>,
    agent: std::path::PathBuf,
    wrapper: Vec<String>,
}

impl<'a> Agent<'a> {
    /// Starts `[wrapper...] raven-agent run --config <config>` (the wrapper
    /// is e.g. `setpriv ...`).
    pub fn run(lab: &'a Lab, config: &str, wrapper: &[&str]) -> Agent<'a> {
        Agent::with_files(lab, config, &[], wrapper)
    }

    /// Like `run`, with extra files written beside the config first; `@DIR@`
    /// in the config and the files stands for that directory.
    pub fn with_files(
        lab: &'a Lab,
        config: &str,
        files: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Agent<'a> {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().to_str().unwrap().to_string();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text.replace("@DIR@", &here)).unwrap();
        }
        let path = dir.path().join("raven.toml");
        std::fs::write(&path, config.replace("@DIR@", &here)).unwrap();
        // An unprivileged run must be able to read the config and execute the
        // binary, wherever the checkout is (it may sit under a 0700 home).
        let agent = if wrapper.is_empty() {
            std::path::PathBuf::from(AGENT)
        } else {
            let copy = dir.path().join("raven-agent");
            std::fs::copy(AGENT, &copy).unwrap();
            copy
        };
        sh(Command::new("chmod").args(["-R", "a+rX"]).arg(dir.path()));
        // The store's directory: writable whoever the agent runs as.
        std::fs::create_dir(dir.path().join("data")).unwrap();
        sh(Command::new("chmod").args(["1777"]).arg(dir.path().join("data")));
        let wrapper: Vec<String> = wrapper.iter().map(|w| w.to_string()).collect();
        let stderr = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (child, reader) = Agent::launch(lab, &agent, &wrapper, dir.path(), &stderr);
        Agent { lab, child, dir, stderr, stderr_reader: Some(reader), agent, wrapper }
    }

    fn launch(
        lab: &Lab,
        agent: &Path,
        wrapper: &[String],
        dir: &Path,
        stderr: &std::sync::Arc<Mutex<Vec<String>>>,
    ) -> (Child, thread::JoinHandle<()>) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.appliance.name]).args(wrapper);
        let mut child = cmd
            .arg(agent)
            .args(["run", "--config"])
            .arg(dir.join("raven.toml"))
            // Each agent its own store (tests run in parallel).
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn raven-agent run");
        let lines = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        let reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        (child, reader)
    }

    /// After the process exited: waits (bounded) until its stderr is read
    /// to the end, so that its last lines are in `stderr()` (and come
    /// before anything a restart adds).
    fn finish_stderr(&mut self) {
        let Some(reader) = self.stderr_reader.take() else { return };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !reader.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if reader.is_finished() {
            let _ = reader.join();
        }
    }

    /// SIGKILL, then start again with the same configuration and store.
    pub fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.finish_stderr();
        self.stderr.lock().unwrap().push("--- restarted ---".into());
        let (child, reader) =
            Agent::launch(self.lab, &self.agent, &self.wrapper, self.dir.path(), &self.stderr);
        (self.child, self.stderr_reader) = (child, Some(reader));
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn wait_stderr(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(self.dir.path().join("raven.toml"), config).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits (bounded) for the process to exit on its own.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.finish_stderr();
                return status;
            }
            assert!(Instant::now() < deadline, "agent did not exit:\n{}", self.stderr());
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// One HTTP/1.0 request to the agent's API; `None` while it is not up.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        let addr: SocketAddr = METRICS_LISTEN.parse().unwrap();
        let mut request = format!("{method} {path} HTTP/1.0\r\nHost: raven\r\n");
        if let Some(token) = token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            request.push_str("\r\n");
        }
        let response = self.lab.appliance.enter(|| {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
            stream.write_all(request.as_bytes()).ok()?;
            let mut text = String::new();
            stream.read_to_string(&mut text).ok()?;
            Some(text)
        })?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    /// The agent's /metrics as name{labels} → value; empty while it is not up.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let text = self.http("GET", "/metrics", None, None).map(|(_, body)| body);
        text.unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(' '))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    /// Polls /metrics (bounded) until `name` reaches `want`.
    pub fn wait_for_metric(&self, name: &str, want: f64) -> BTreeMap<String, f64> {
        for _ in 0..100 {
            let m = self.metrics();
            if m.get(name).copied().unwrap_or(0.0) >= want {
                return m;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("{name} never reached {want}: {:#?}\n{}", self.metrics(), self.stderr());
    }

    /// `raven-agent segments cat --stream STREAM` of this agent's store
    /// (read while it runs): every durable record, in sequence order.
    pub fn stored(&self, stream: &str) -> Vec<Value> {
        let out = Command::new(AGENT)
            .args(["segments", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["cat", "--stream", stream])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Waits until XDP is attached and the agent says it is ready: the
    /// attach metric is set as the program attaches, a little before the
    /// agent drops privileges and publishes its capture state (`/readyz`).
    pub fn wait_until_attached(&self) {
        let name = format!(
            "raven_xdp_attached{{interface=\"{}\",mode=\"driver\"}}",
            self.lab.appliance_if
        );
        self.wait_for_metric(&name, 1.0);
        self.wait_until_ready();
    }

    /// Polls `/readyz` (bounded) until it answers 200.
    pub fn wait_until_ready(&self) {
        for _ in 0..100 {
            if matches!(self.http("GET", "/readyz", None, None), Some((200, _))) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "/readyz never answered 200: {:?}\n{}",
            self.http("GET", "/readyz", None, None),
            self.stderr()
        );
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

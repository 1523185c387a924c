//! `cargo xtask bench forward`: forwarding to the NOC, measured against a
//! real peer.
//!
//! Invariants:
//! - Three namespaces it creates (198.18.0.0/24 venue↔appliance, 192.0.2.0/24
//!   appliance↔NOC), removed with every process in them when the benchmark
//!   ends, on failure too. Every wait is bounded.
//! - The peers run with their defaults except where the row says so:
//!   Raven's `syslog_tcp` sink (`batch_max_records` 4096, `ack_confirm_ms`
//!   100, backoff up to 15 s), the same with `ack_confirm_ms = 10` (with
//!   the batch size, the knob that bounds the drain: one batch per RTT +
//!   confirm delay at most), and `rsyslogd`
//!   relaying with a disk-assisted queue. Nothing else is tuned.
//!
//! Method, per peer (Raven twice, then the rsyslogd relay), one at a time in
//! the appliance namespace, with a fresh `rsyslogd` at the NOC (imtcp, each
//! message written with its receive time, `%timegenerated%` to the
//! microsecond):
//! 1. latency, link up: the venue sends RFC 3164 lines carrying a sequence
//!    number and the send time (CLOCK_REALTIME, ns) at the live rate;
//!    latency = NOC receive time − send time, per line (first arrival);
//! 2. outage: the appliance's traffic to and from the NOC is dropped
//!    (nftables in the appliance namespace) for `--outage-secs` while the
//!    venue keeps sending at the live rate; then the link is restored and
//!    sending goes on until the backlog has drained. Figures: the backlog
//!    (lines sent during the outage), the resume delay (restore → first
//!    line at the NOC), the drain rate (backlog ÷ time from the first to
//!    the last backlog line at the NOC), its ratio to the live rate (goal
//!    ≥ 5), and loss and duplicates over the whole run (every line sent
//!    must arrive: live capture stays lossless during the outage and the
//!    drain).
//!
//! The peer: `rsyslogd` with imudp on the appliance address and an `omfwd`
//! TCP action (octet-counted) to the NOC, its queue disk-assisted
//! (`queue.type="LinkedList" queue.filename=…`, retrying forever), the
//! usual way to make an rsyslog relay survive an uplink outage.

use std::{
    collections::{HashMap, hash_map::Entry},
    fs,
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};

use crate::{
    bench::{machine, today},
    run, workspace_root,
};

const VENUE: &str = "198.18.0.2";
const APPLIANCE: &str = "198.18.0.1";
const APPLIANCE_NOC: &str = "192.0.2.1";
const NOC: &str = "192.0.2.2";
const NOC_PORT: u16 = 10514;
const API: &str = "198.18.0.1:9184";

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<thread::JoinHandle<anyhow::Result<T>>> {
    let file = fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
    Ok(thread::spawn(move || {
        // SAFETY: a valid namespace fd; CLONE_NEWNET affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    }))
}

/// venue ↔ appliance ↔ noc, each pair joined by a veth.
struct Lab {
    venue: String,
    appliance: String,
    noc: String,
    appliance_if: String,
}

impl Lab {
    fn new() -> anyhow::Result<Lab> {
        let id = std::process::id();
        let lab = Lab {
            venue: format!("rfv{id}"),
            appliance: format!("rfa{id}"),
            noc: format!("rfn{id}"),
            appliance_if: format!("rfva{id}"),
        };
        for ns in [&lab.venue, &lab.appliance, &lab.noc] {
            run(Command::new("ip").args(["netns", "add", ns]))?;
            lab.ip(ns, &["link", "set", "lo", "up"])?;
        }
        let pairs = [
            (
                &lab.venue,
                format!("rfvv{id}"),
                VENUE,
                &lab.appliance,
                lab.appliance_if.clone(),
                APPLIANCE,
            ),
            (
                &lab.appliance,
                format!("rfan{id}"),
                APPLIANCE_NOC,
                &lab.noc,
                format!("rfnn{id}"),
                NOC,
            ),
        ];
        for (a, a_if, a_addr, b, b_if, b_addr) in pairs {
            run(Command::new("ip")
                .args(["link", "add", &a_if, "netns", a, "type", "veth"])
                .args(["peer", "name", &b_if, "netns", b]))?;
            for (ns, ifname, addr) in [(a, &a_if, a_addr), (b, &b_if, b_addr)] {
                lab.ip(ns, &["addr", "add", &format!("{addr}/24"), "dev", ifname])?;
                lab.ip(ns, &["link", "set", ifname, "up"])?;
            }
        }
        Ok(lab)
    }

    fn ip(&self, ns: &str, args: &[&str]) -> anyhow::Result<()> {
        run(Command::new("ip").args(["netns", "exec", ns, "ip"]).args(args))
    }

    fn spawn(&self, ns: &str, program: &Path, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
        let log = fs::File::create(log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Proc(child))
    }

    /// Drops (or, with `cut = false`, lets through again) everything
    /// between the appliance and the NOC, in the appliance's nftables.
    fn cut(&self, cut: bool) -> anyhow::Result<()> {
        let script = if cut {
            "table inet cut {\n chain out { type filter hook output priority 0; \
             ip daddr 192.0.2.0/24 drop; }\n chain in { type filter hook input priority 0; \
             ip saddr 192.0.2.0/24 drop; }\n}\n"
        } else {
            "delete table inet cut\n"
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.appliance, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("nft (Debian package nftables)")?;
        child.stdin.take().context("nft stdin")?.write_all(script.as_bytes())?;
        if !child.wait()?.success() {
            bail!("nft failed: {script}");
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.venue, &self.appliance, &self.noc] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A process killed (and reaped) on drop.
struct Proc(Child);

impl Proc {
    /// SIGTERM, then wait (bounded) for the exit.
    fn terminate(mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The NOC's rsyslogd: imtcp, every message written as
/// `UNIXTIME.MICROSECONDS RAWMSG`, the time being when it was received.
fn noc_rsyslogd(lab: &Lab, dir: &Path) -> anyhow::Result<(Proc, PathBuf)> {
    let work = dir.join("noc-work");
    fs::create_dir_all(&work)?;
    let out = dir.join("noc.log");
    let conf = dir.join("noc.conf");
    fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{}\")\nmodule(load=\"imtcp\")\n\
             input(type=\"imtcp\" address=\"{NOC}\" port=\"{NOC_PORT}\")\n\
             template(name=\"received\" type=\"string\" string=\"%timegenerated:::date-unixtimestamp%.%timegenerated:::date-subseconds% %rawmsg%\\n\")\n\
             action(type=\"omfile\" file=\"{}\" template=\"received\")\n",
            work.display(),
            out.display()
        ),
    )?;
    let pid = dir.join("noc.pid");
    let proc = lab.spawn(
        &lab.noc,
        Path::new("rsyslogd"),
        &["-n", "-f", conf.to_str().unwrap(), "-i", pid.to_str().unwrap()],
        &dir.join("noc.out"),
    )?;
    let addr: SocketAddr = format!("{NOC}:{NOC_PORT}").parse()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = in_netns(&lab.noc, move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
        if up {
            return Ok((proc, out));
        }
        if Instant::now() > deadline {
            bail!("the NOC's rsyslogd never listened");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// What the NOC received, read incrementally from its file.
struct NocLog {
    file: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// seq → (send time, first receive time), seconds since the epoch.
    first: HashMap<u64, (f64, f64)>,
    duplicates: u64,
}

impl NocLog {
    fn new(file: PathBuf) -> NocLog {
        NocLog { file, offset: 0, partial: Vec::new(), first: HashMap::new(), duplicates: 0 }
    }

    fn update(&mut self) -> anyhow::Result<()> {
        let Ok(mut f) = fs::File::open(&self.file) else { return Ok(()) };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else { return Ok(()) };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in BufReader::new(&complete[..]).lines() {
            let line = line?;
            let (Some(received), Some(seq), Some(sent)) = (
                line.split(' ').next().and_then(|t| t.parse::<f64>().ok()),
                field(&line, "seq="),
                field(&line, "t="),
            ) else {
                continue; // not a benchmark line (e.g. rsyslogd's own)
            };
            match self.first.entry(seq) {
                Entry::Occupied(_) => self.duplicates += 1,
                Entry::Vacant(v) => {
                    v.insert((sent as f64 / 1e9, received));
                }
            }
        }
        Ok(())
    }

    /// Waits (bounded) until every seq in `seqs` arrived.
    fn wait_all(&mut self, seqs: std::ops::Range<u64>, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            self.update()?;
            if seqs.clone().all(|s| self.first.contains_key(&s)) {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

fn field(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The venue's sender: RFC 3164 lines `seq=N t=NANOS` at `rate` per second
/// to the appliance, numbered on from `next`, until `stop`.
struct Sender {
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<anyhow::Result<anyhow::Result<()>>>>,
}

impl Sender {
    fn start(lab: &Lab, rate: u64, first: u64) -> anyhow::Result<Sender> {
        let next = Arc::new(AtomicU64::new(first));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (next.clone(), stop.clone());
        let handle = in_netns(&lab.venue, move || -> anyhow::Result<()> {
            // Not connected: an ICMP error (a relay not listening yet) must
            // not fail later sends; a line that is not received counts as lost.
            let socket = UdpSocket::bind((VENUE, 0))?;
            let start = Instant::now();
            let mut sent = 0u64;
            while !s.load(Ordering::SeqCst) {
                let seq = n.load(Ordering::SeqCst);
                let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
                let line = format!("<134>Nov 28 12:00:00 venue-sw1 bench: seq={seq} t={nanos}");
                let _ = socket.send_to(line.as_bytes(), (APPLIANCE, 514));
                n.store(seq + 1, Ordering::SeqCst);
                sent += 1;
                if sent.is_multiple_of(16) {
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        thread::sleep(wait);
                    }
                }
            }
            Ok(())
        })?;
        Ok(Sender { next, stop, handle: Some(handle) })
    }

    /// Stops; returns the next unsent seq.
    fn stop(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().map_err(|_| anyhow::anyhow!("sender panicked"))???;
        }
        Ok(self.next.load(Ordering::SeqCst))
    }

    fn sent(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One `GET /metrics` of the agent: the value of the first line starting
/// with `name`.
fn raven_metric(lab: &Lab, name: &'static str) -> anyhow::Result<Option<f64>> {
    let text = in_netns(&lab.appliance, || -> anyhow::Result<String> {
        let addr: SocketAddr = API.parse()?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: raven\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("metrics thread panicked"))??;
    let Ok(text) = text else { return Ok(None) };
    Ok(text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()))
}

/// A peer under test in the appliance namespace.
enum Peer {
    /// Raven's syslog_tcp sink; `Some(ms)`: with that `ack_confirm_ms`.
    Raven(Option<u64>),
    RsyslogRelay,
}

impl Peer {
    fn name(&self) -> String {
        match self {
            Peer::Raven(None) => "raven syslog_tcp (defaults)".into(),
            Peer::Raven(Some(ms)) => format!("raven syslog_tcp, ack_confirm_ms = {ms}"),
            Peer::RsyslogRelay => "rsyslogd relay (omfwd, disk-assisted queue)".into(),
        }
    }

    fn dir(&self) -> String {
        match self {
            Peer::Raven(None) => "raven".into(),
            Peer::Raven(Some(ms)) => format!("raven-confirm-{ms}"),
            Peer::RsyslogRelay => "relay".into(),
        }
    }

    fn start(&self, lab: &Lab, dir: &Path, agent: &Path) -> anyhow::Result<Proc> {
        match self {
            Peer::Raven(confirm) => {
                let config = dir.join("raven.toml");
                let confirm =
                    confirm.map_or(String::new(), |ms| format!("ack_confirm_ms = {ms}\n"));
                fs::write(
                    &config,
                    format!(
                        "[capture]\nmode = \"xdp\"\ninterfaces = [\"{}\"]\n\
                         ports = [{{port = 514, stream = \"syslog\"}}]\n\
                         [api]\nlisten = \"{API}\"\n\
                         [forward]\nappliance_id = \"bench\"\n\
                         [[forward.sinks]]\nname = \"noc\"\nprotocol = \"syslog_tcp\"\n\
                         endpoint = \"{NOC}:{NOC_PORT}\"\n{confirm}",
                        lab.appliance_if
                    ),
                )?;
                let data = dir.join("raven-data");
                fs::create_dir_all(&data)?;
                let args = [
                    "run",
                    "--config",
                    config.to_str().unwrap(),
                    "--data-dir",
                    data.to_str().unwrap(),
                ];
                let proc = lab.spawn(&lab.appliance, agent, &args, &dir.join("raven.log"))?;
                let deadline = Instant::now() + Duration::from_secs(30);
                while raven_metric(lab, "raven_xdp_attached{")?.unwrap_or(0.0) < 1.0 {
                    if Instant::now() > deadline {
                        bail!("Raven never attached; see {}", dir.join("raven.log").display());
                    }
                    thread::sleep(Duration::from_millis(200));
                }
                Ok(proc)
            }
            Peer::RsyslogRelay => {
                let work = dir.join("relay-work");
                fs::create_dir_all(&work)?;
                let conf = dir.join("relay.conf");
                fs::write(
                    &conf,
                    format!(
                        "global(workDirectory=\"{}\")\nmodule(load=\"imudp\")\n\
                         input(type=\"imudp\" address=\"{APPLIANCE}\" port=\"514\")\n\
                         action(type=\"omfwd\" target=\"{NOC}\" port=\"{NOC_PORT}\" \
                         protocol=\"tcp\" TCP_Framing=\"octet-counted\" \
                         queue.type=\"LinkedList\" queue.filename=\"relay\" \
                         queue.maxDiskSpace=\"2g\" queue.saveOnShutdown=\"on\" \
                         action.resumeRetryCount=\"-1\")\n",
                        work.display()
                    ),
                )?;
                let pid = dir.join("relay.pid");
                lab.spawn(
                    &lab.appliance,
                    Path::new("rsyslogd"),
                    &["-n", "-f", conf.to_str().unwrap(), "-i", pid.to_str().unwrap()],
                    &dir.join("relay.out"),
                )
            }
        }
    }
}

struct Row {
    peer: String,
    latency_ms: [f64; 3],
    backlog: u64,
    resume_secs: f64,
    drain_rate: f64,
    sent: u64,
    lost: u64,
    duplicated: u64,
    stored: Option<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn measure(
    peer: &Peer,
    lab: &Lab,
    dir: &Path,
    agent: &Path,
    rate: u64,
    outage_secs: u64,
    latency_secs: u64,
) -> anyhow::Result<Row> {
    let dir = dir.join(peer.dir());
    fs::create_dir_all(&dir)?;
    let (noc, noc_file) = noc_rsyslogd(lab, &dir)?;
    let mut log = NocLog::new(noc_file);
    let proc = peer.start(lab, &dir, agent)?;
    // Ready once a line goes through end to end (the relay's imudp may not
    // listen yet: these probe lines are not counted).
    let mut first = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sender = Sender::start(lab, 1000, first)?;
        thread::sleep(Duration::from_millis(5));
        first = sender.stop()?;
        thread::sleep(Duration::from_millis(500));
        log.update()?;
        if !log.first.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("{}: nothing reached the NOC", peer.name());
        }
    }
    thread::sleep(Duration::from_secs(2));
    log.update()?;

    // 1. Latency with the link up.
    let sender = Sender::start(lab, rate, first)?;
    thread::sleep(Duration::from_secs(latency_secs));
    let end = sender.stop()?;
    if !log.wait_all(first..end, Duration::from_secs(30))? {
        eprintln!("{}: not everything arrived during the latency phase", peer.name());
    }
    let mut latencies: Vec<f64> = (first..end)
        .filter_map(|s| log.first.get(&s).map(|(sent, got)| (got - sent) * 1000.0))
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let latency_ms = [
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
    ];

    // 2. Outage and drain, the venue sending all along.
    let sender = Sender::start(lab, rate, end)?;
    thread::sleep(Duration::from_secs(1));
    let cut_from = sender.sent();
    lab.cut(true)?;
    let cut_at = now();
    eprintln!("{}: link cut for {outage_secs} s", peer.name());
    thread::sleep(Duration::from_secs(outage_secs));
    let cut_to = sender.sent();
    lab.cut(false)?;
    let restored_at = now();
    eprintln!("{}: link restored; draining {} lines", peer.name(), cut_to - cut_from);
    // Up to a backoff cap (15 s by default), then the drain itself.
    let drain_bound = Duration::from_secs(120 + outage_secs * 2);
    let drained = log.wait_all(first..cut_to, drain_bound)?;
    thread::sleep(Duration::from_secs(2));
    let total = sender.stop()?;
    log.wait_all(first..total, Duration::from_secs(60))?;
    thread::sleep(Duration::from_secs(1));
    log.update()?;
    let stored = match peer {
        Peer::Raven(_) => {
            raven_metric(lab, "raven_store_appended_records_total{stream=\"syslog\"}")?
        }
        Peer::RsyslogRelay => None,
    };
    proc.terminate();
    noc.terminate();
    log.update()?;

    let backlog: Vec<f64> =
        (cut_from..cut_to).filter_map(|s| log.first.get(&s).map(|(_, got)| *got)).collect();
    let after: Vec<f64> =
        log.first.values().map(|(_, got)| *got).filter(|t| *t >= restored_at).collect();
    let first_after = after.iter().copied().fold(f64::INFINITY, f64::min);
    let last_backlog = backlog.iter().copied().fold(0.0, f64::max);
    let drained_after_restore = backlog.iter().filter(|t| **t >= restored_at).count() as f64;
    let drain_rate = if drained && last_backlog > first_after {
        drained_after_restore / (last_backlog - first_after)
    } else {
        f64::NAN
    };
    let lost = (first..total).filter(|s| !log.first.contains_key(s)).count() as u64;
    eprintln!(
        "{}: outage {:.1} s, {} lines in the backlog, {lost} lost",
        peer.name(),
        restored_at - cut_at,
        cut_to - cut_from
    );
    Ok(Row {
        peer: peer.name(),
        latency_ms,
        backlog: cut_to - cut_from,
        resume_secs: first_after - restored_at,
        drain_rate,
        sent: total - first,
        lost,
        duplicated: log.duplicates,
        stored,
    })
}

pub fn forward(
    outage_secs: u64,
    rate: u64,
    latency_secs: u64,
    raven_only: bool,
) -> anyhow::Result<()> {
    if rate == 0 {
        bail!("--rate must be above 0");
    }
    crate::build_ebpf()?;
    let agent = workspace_root().join("target/release/raven-agent");
    let dir = std::env::temp_dir().join(format!("raven-bench-forward-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let lab = Lab::new()?;
    let mut rows = Vec::new();
    let peers = if raven_only {
        vec![Peer::Raven(None)]
    } else {
        vec![Peer::Raven(None), Peer::Raven(Some(10)), Peer::RsyslogRelay]
    };
    for peer in &peers {
        rows.push(measure(peer, &lab, &dir, &agent, rate, outage_secs, latency_secs)?);
    }
    drop(lab);
    let _ = fs::remove_dir_all(&dir);

    println!("\n## forward — {} — {}", machine(), today());
    println!(
        "\nSyslog (RFC 3164, about 75 bytes) from the venue at {rate} lines/s; latency over \
         {latency_secs} s with the link up; then the appliance↔NOC link cut for {outage_secs} s \
         while sending goes on, restored, and drained while sending still goes on. NOC: \
         rsyslogd imtcp.\n"
    );
    println!(
        "| forwarder | latency p50 ms | p99 ms | max ms | backlog lines | resume after restore s | drain lines/s | drain ÷ live rate | drain vs rsyslogd | sent | lost | duplicated |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let peer_rate = rows.iter().find(|r| r.peer.starts_with("rsyslogd")).map(|r| r.drain_rate);
    for r in &rows {
        let versus = peer_rate.map_or(String::new(), |p| format!("{:.2}×", r.drain_rate / p));
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.0} | {:.1}× | {versus} | {} | {} | {} |",
            r.peer,
            r.latency_ms[0],
            r.latency_ms[1],
            r.latency_ms[2],
            r.backlog,
            r.resume_secs,
            r.drain_rate,
            r.drain_rate / rate as f64,
            r.sent,
            r.lost,
            r.duplicated,
        );
    }
    for r in &rows {
        if let Some(stored) = r.stored {
            println!(
                "\n{}: {stored:.0} records stored (`raven_store_appended_records_total`, probe lines included)",
                r.peer
            );
        }
    }
    Ok(())
}

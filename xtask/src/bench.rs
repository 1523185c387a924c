//! `cargo xtask bench`: measured figures, never timed tests.
//!
//! Invariants:
//! - Every benchmark compares Raven with a real peer on the same traffic and
//!   prints ratios, plus the machine and date, so a result can be pasted into
//!   `docs/benchmarks.md` as it is.
//! - Network benchmarks run in namespaces they create (198.18.0.0/15 only)
//!   and remove them and their processes even when they fail.
//!
//! `capture`: one sender in a `venue` namespace sends RFC 3164 syslog
//! datagrams over a veth to an `appliance` namespace at rising rates, then
//! as fast as it can. Receivers, one at a time: an XDP program that drops
//! everything (the lab's ceiling, counted by the veth's `xdp_drops`), Raven
//! with XDP (steal), Raven with sockets only, and rsyslogd's imudp writing
//! to a file. For each:
//! datagrams received, loss, and the receiver's CPU time per million
//! records (from `/proc/PID/stat`). XDP's own cost runs in the softirq of
//! the receiving CPU and is not in that figure; the flood phase shows it
//! indirectly, as the rate one sender core reaches.

use std::{
    fs,
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{run, workspace_root};

const APPLIANCE: &str = "198.18.0.1";
const API: &str = "198.18.0.1:9184";

/// The `bench-send` helper: runs inside the venue namespace.
pub fn send(target: &str, count: u64, size: usize, rate: u64) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(target).with_context(|| format!("connect {target}"))?;
    let mut line = b"<134>Nov 28 12:00:00 venue-sw1 bench: seq=0000000000 ".to_vec();
    let prefix = line.len() - 11;
    line.resize(size.max(line.len()), b'x');
    let start = Instant::now();
    let mut failed = 0u64;
    for seq in 0..count {
        line[prefix..prefix + 10].copy_from_slice(format!("{seq:010}").as_bytes());
        if socket.send(&line).is_err() {
            failed += 1;
        }
        if rate > 0 && seq % 256 == 255 {
            let due = Duration::from_secs_f64((seq + 1) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{} {failed} {secs}", count - failed);
    Ok(())
}

struct Lab {
    venue: String,
    appliance: String,
    appliance_if: String,
}

impl Lab {
    fn new() -> anyhow::Result<Lab> {
        let id = std::process::id();
        let lab = Lab {
            venue: format!("rbv{id}"),
            appliance: format!("rba{id}"),
            appliance_if: format!("rbva{id}"),
        };
        let venue_if = format!("rbvv{id}");
        for ns in [&lab.venue, &lab.appliance] {
            run(Command::new("ip").args(["netns", "add", ns]))?;
        }
        run(Command::new("ip")
            .args(["link", "add", &venue_if, "netns", &lab.venue, "type", "veth"])
            .args(["peer", "name", &lab.appliance_if, "netns", &lab.appliance]))?;
        for (ns, ifname, addr) in [
            (&lab.venue, &venue_if, "198.18.0.2/24"),
            (&lab.appliance, &lab.appliance_if, "198.18.0.1/24"),
        ] {
            lab.ip(ns, &["addr", "add", addr, "dev", ifname])?;
            lab.ip(ns, &["link", "set", ifname, "up"])?;
            lab.ip(ns, &["link", "set", "lo", "up"])?;
        }
        // A permanent neighbour entry: the XDP_DROP ceiling drops ARP too.
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.appliance, "cat"])
            .arg(format!("/sys/class/net/{}/address", lab.appliance_if))
            .output()?;
        let mac = String::from_utf8_lossy(&out.stdout).trim().to_string();
        lab.ip(
            &lab.venue,
            &["neigh", "replace", APPLIANCE, "lladdr", &mac, "dev", &venue_if, "nud", "permanent"],
        )?;
        Ok(lab)
    }

    fn ip(&self, ns: &str, args: &[&str]) -> anyhow::Result<()> {
        run(Command::new("ip").args(["netns", "exec", ns, "ip"]).args(args))
    }

    fn spawn(&self, ns: &str, program: &Path, args: &[&str]) -> anyhow::Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.venue, &self.appliance] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A receiver under test, killed on drop.
struct Receiver {
    child: Child,
    count: Box<dyn Fn() -> anyhow::Result<u64>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) start at ')'.
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn raven(lab: &Lab, dir: &Path, agent: &Path, mode: &str) -> anyhow::Result<Receiver> {
    let config = dir.join(format!("raven-{mode}.toml"));
    fs::write(
        &config,
        format!(
            "[capture]\nmode = \"{mode}\"\ninterfaces = [\"{}\"]\n\
             ports = [{{port = 514, stream = \"syslog\"}}]\nring_bytes = 67108864\n\
             [api]\nlisten = \"{API}\"\n",
            lab.appliance_if
        ),
    )?;
    let child = lab.spawn(&lab.appliance, agent, &["run", "--config", config.to_str().unwrap()])?;
    let ns = lab.appliance.clone();
    let count = move || -> anyhow::Result<u64> {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "curl", "-sf", &format!("http://{API}/metrics")])
            .output()?;
        if !out.status.success() {
            bail!("metrics not served yet");
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter(|l| l.starts_with("raven_capture_records_total{stream=\"syslog\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    };
    Ok(Receiver { child, count: Box::new(count) })
}

/// `raven-agent xdp-drop`: every frame dropped in XDP, counted by the
/// veth's own `xdp_drops` statistics — the lab's ceiling.
fn xdp_drop(lab: &Lab, agent: &Path) -> anyhow::Result<Receiver> {
    let child =
        lab.spawn(&lab.appliance, agent, &["xdp-drop", "--interface", &lab.appliance_if])?;
    let (ns, interface) = (lab.appliance.clone(), lab.appliance_if.clone());
    let count = move || -> anyhow::Result<u64> {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "ethtool", "-S", &interface])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter(|l| l.trim_start().starts_with("rx_queue_") && l.contains("_xdp_drops:"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    };
    Ok(Receiver { child, count: Box::new(count) })
}

fn rsyslogd(lab: &Lab, dir: &Path) -> anyhow::Result<Receiver> {
    let out = dir.join("rsyslog.out");
    let work = dir.join("rsyslog-work");
    fs::create_dir_all(&work)?;
    let config = dir.join("rsyslog.conf");
    fs::write(
        &config,
        format!(
            "global(workDirectory=\"{}\")\nmodule(load=\"imudp\")\n\
             input(type=\"imudp\" address=\"{APPLIANCE}\" port=\"514\" rcvbufSize=\"32m\")\n\
             *.* action(type=\"omfile\" file=\"{}\" asyncWriting=\"on\" flushOnTXEnd=\"off\")\n",
            work.display(),
            out.display()
        ),
    )?;
    let pid = dir.join("rsyslog.pid");
    let child = lab.spawn(
        &lab.appliance,
        Path::new("/usr/sbin/rsyslogd"),
        &["-n", "-f", config.to_str().unwrap(), "-i", pid.to_str().unwrap()],
    )?;
    let count = move || -> anyhow::Result<u64> {
        let text = fs::read(&out).unwrap_or_default();
        Ok(text.iter().filter(|&&b| b == b'\n').count() as u64)
    };
    Ok(Receiver { child, count: Box::new(count) })
}

struct Row {
    receiver: &'static str,
    /// Offered datagrams per second; 0: as fast as the sender goes.
    phase: u64,
    sent: u64,
    received: u64,
    send_secs: f64,
    cpu_secs: f64,
}

/// Waits until the count stops moving (or the deadline passes).
fn settle(receiver: &Receiver, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (receiver.count)().unwrap_or(0);
    let mut still = 0;
    while Instant::now() < deadline && last < want && still < 10 {
        thread::sleep(Duration::from_millis(200));
        let now = (receiver.count)().unwrap_or(last);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    last
}

fn ready(receiver: &Receiver, lab: &Lab, sender: &Path) -> anyhow::Result<u64> {
    // Probe datagrams until the receiver counts one: it is listening.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        send_from(lab, sender, 1, 0)?;
        thread::sleep(Duration::from_millis(300));
        // Then wait for the probes still in flight, so they are not counted later.
        if let Ok(n) = (receiver.count)()
            && n > 0
        {
            return Ok(settle(receiver, u64::MAX));
        }
        if Instant::now() > deadline {
            bail!("receiver never counted a datagram");
        }
    }
}

fn send_from(lab: &Lab, sender: &Path, count: u64, rate: u64) -> anyhow::Result<(u64, f64, f64)> {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.venue])
        .arg(sender)
        .args(["bench-send", "--target", &format!("{APPLIANCE}:514")])
        .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("sender failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let sent: u64 = parts.next().context("sender output")?.parse()?;
    let _failed: u64 = parts.next().context("sender output")?.parse()?;
    let secs: f64 = parts.next().context("sender output")?.parse()?;
    Ok((sent, secs, 0.0))
}

pub fn capture(count: u64, rate: u64) -> anyhow::Result<()> {
    crate::build_ebpf()?;
    let agent = workspace_root().join("target/release/raven-agent");
    let sender = std::env::current_exe()?;
    let dir = tempdir()?;
    let lab = Lab::new()?;
    let mut rows = Vec::new();
    type Start = fn(&Lab, &Path, &Path) -> anyhow::Result<Receiver>;
    let receivers: [(&str, Start); 4] = [
        ("XDP_DROP ceiling", |lab, _, agent| xdp_drop(lab, agent)),
        ("raven xdp", |lab, dir, agent| raven(lab, dir, agent, "xdp")),
        ("raven socket", |lab, dir, agent| raven(lab, dir, agent, "socket")),
        ("rsyslogd imudp", |lab, dir, _| rsyslogd(lab, dir)),
    ];
    for (name, start) in receivers {
        let receiver = start(&lab, &dir, &agent)?;
        let mut base = ready(&receiver, &lab, &sender)?;
        let phases = [rate / 4, rate / 2, rate, rate * 2, 0];
        for (phase, phase_rate) in phases.iter().map(|&r| (r, r)) {
            let cpu_before = cpu_seconds(receiver.child.id());
            let (sent, send_secs, _) = send_from(&lab, &sender, count, phase_rate)?;
            let total = settle(&receiver, base + sent);
            let cpu_secs = cpu_seconds(receiver.child.id()) - cpu_before;
            rows.push(Row {
                receiver: name,
                phase,
                sent,
                received: total - base,
                send_secs,
                cpu_secs,
            });
            base = total;
        }
    }
    drop(lab);
    let _ = fs::remove_dir_all(&dir);
    print_rows(&rows, count, rate);
    Ok(())
}

fn print_rows(rows: &[Row], count: u64, rate: u64) {
    println!("\n## capture — {} — {}", machine(), today());
    println!(
        "{count} RFC 3164 datagrams of 120 bytes per phase over a veth, offered at {}, {}, {}, {}/s \
         and then as fast as one sender core goes (flood)\n",
        rate / 4,
        rate / 2,
        rate,
        rate * 2
    );
    println!(
        "| receiver | offered | sent/s | received | loss | captured/s | receiver CPU s per M records | CPU vs rsyslogd |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let peer = |phase: u64| {
        rows.iter()
            .find(|r| r.receiver.starts_with("rsyslogd") && r.phase == phase)
            .map(|r| r.cpu_secs / r.received.max(1) as f64)
    };
    for r in rows {
        let per_m = r.cpu_secs * 1e6 / r.received.max(1) as f64;
        let ratio = peer(r.phase)
            .map(|p| format!("{:.2}×", (r.cpu_secs / r.received.max(1) as f64) / p))
            .unwrap_or_default();
        let offered = if r.phase == 0 { "flood".to_string() } else { format!("{}/s", r.phase) };
        let (cpu, ratio) = if r.receiver.starts_with("XDP_DROP") {
            ("–".to_string(), String::new()) // runs in softirq, not in a process
        } else {
            (format!("{per_m:.2}"), ratio)
        };
        println!(
            "| {} | {offered} | {:.0} | {} | {:.2} % | {:.0} | {cpu} | {ratio} |",
            r.receiver,
            r.sent as f64 / r.send_secs,
            r.received,
            100.0 * (r.sent.saturating_sub(r.received)) as f64 / r.sent as f64,
            r.received as f64 / r.send_secs,
        );
    }
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("raven-bench-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

pub fn today() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `store`, three parts, all through `raven-agent store load` (the real
/// decode → group commit → compress → fdatasync → index path):
/// 1. throughput: synthetic RFC 3164 lines (about 50 bytes, a counter the
///    only change) at several batch sizes, one block per batch;
/// 2. bytes per record per stream on the shared captures' real datagrams,
///    each stored once with its own capture time (no repetition to flatter
///    compression), for gzip and zstd at several levels, with the
///    records/s of the same mix looped; the peer is `gzip -6` / `zstd -3`
///    of the bare payloads of the same stream concatenated (what archiving
///    the raw datagrams alone costs); then the same for single senders of
///    syslog (see [`single_sources`]);
/// 3. capture→durable latency at a paced 100 k records/s with group commit,
///    also with a forwarder-like reader draining meanwhile;
/// 4. bytes per record at low rates, as written and after re-packing (see
///    [`low_rates`]; alone with `low_rate_only`).
pub fn store(records: u64, low_rate_only: bool) -> anyhow::Result<()> {
    crate::build_ebpf()?;
    let agent = workspace_root().join("target/release/raven-agent");
    println!("\n## store — {} — {}", machine(), today());
    if low_rate_only {
        return low_rates(&agent);
    }
    println!(
        "\n{records} synthetic syslog records per run, one block (compress + fdatasync) per batch. \
         store: records ÷ time in `Store::append` (encode, compress, write, fdatasync, index) on \
         one thread; with decode: the same plus the decoder, end to end\n"
    );
    println!(
        "| batch | store records/s | with decode records/s | stored bytes/record | compression ratio |"
    );
    println!("|---|---|---|---|---|");
    for batch in [10usize, 100, 1000, 10_000] {
        let dir = tempdir()?.join(format!("store-{batch}"));
        let summary = load(
            &agent,
            &dir,
            &["--records", &records.to_string(), "--batch", &batch.to_string(), "--summary"],
        )?;
        let v: serde_json::Value = serde_json::from_str(summary.trim())
            .with_context(|| format!("load summary: {summary}"))?;
        let stats = segment_stats(&agent, &dir)?;
        let (_, n, raw, stored) = stats.iter().find(|s| s.0 == "syslog").context("no syslog")?;
        println!(
            "| {batch} | {:.0} | {:.0} | {:.1} | {:.2} |",
            v["append_records_per_second"].as_f64().unwrap_or(0.0),
            v["records_per_second"].as_f64().unwrap_or(0.0),
            *stored as f64 / *n as f64,
            *raw as f64 / *stored as f64
        );
        let _ = fs::remove_dir_all(&dir);
    }

    let captures = shared_captures()?;
    let distinct = count_datagrams(&agent, &captures)?;
    println!(
        "\nReal datagrams: every UDP datagram of the {} shared pcap/pcapng captures ({distinct} \
         in all), each stored once in blocks of up to 1000 records; records/s from the same mix \
         looped 200 000 times; read back: those 200 000 read back from the start in a sink's \
         default batches (4096 records, 1 MiB of payload), as a forwarder drains a backlog\n",
        captures.len()
    );
    let payload_peer = peer_sizes(&agent, &captures, None, None)?;
    println!(
        "| codec | level | records/s (mix) | read back records/s (payload MB/s) | stream | records | payload bytes/record | stored bytes/record | raw payloads, gzip -6 / zstd -3 (bytes/record) | stored vs gzip'd payloads |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (codec, level) in
        [("gzip", 1), ("gzip", 6), ("gzip", 9), ("zstd", 3), ("zstd", 9), ("zstd", 19)]
    {
        let level = level.to_string();
        let dir = tempdir()?.join(format!("store-{codec}-{level}"));
        let distinct = distinct.to_string();
        let args = [
            "--records",
            &distinct,
            "--batch",
            "1000",
            "--codec",
            codec,
            "--level",
            &level,
            "--capture-times",
        ];
        load_captures(&agent, &dir, &args, &captures)?;
        let stats = segment_stats(&agent, &dir)?;
        let _ = fs::remove_dir_all(&dir);
        let looped = tempdir()?.join(format!("store-{codec}-{level}-loop"));
        let start = Instant::now();
        let loop_args =
            ["--records", "200000", "--batch", "1000", "--codec", codec, "--level", &level];
        load_captures(&agent, &looped, &loop_args, &captures)?;
        let rate = 200_000.0 / start.elapsed().as_secs_f64();
        let summary = load(&agent, &looped, &["--records", "0", "--read-back", "--summary"])?;
        let back: serde_json::Value = serde_json::from_str(summary.trim())
            .with_context(|| format!("load summary: {summary}"))?;
        let back = format!(
            "{:.0} ({:.0})",
            back["read_back"]["records_per_second"].as_f64().unwrap_or(0.0),
            back["read_back"]["payload_mb_per_second"].as_f64().unwrap_or(0.0)
        );
        let _ = fs::remove_dir_all(&looped);
        for (stream, n, _raw, stored) in stats.iter().filter(|s| s.1 > 0) {
            let peer = payload_peer.iter().find(|p| &p.0 == stream);
            let (payload, gz, zst) = peer.map_or((0.0, 0.0, 0.0), |p| (p.1, p.2, p.3));
            let per = *stored as f64 / *n as f64;
            println!(
                "| {codec} | {level} | {rate:.0} | {back} | {stream} | {n} | {payload:.0} | {per:.1} | {gz:.1} / {zst:.1} | {:.2}× |",
                per / gz.max(0.001)
            );
        }
    }

    single_sources(&agent)?;

    println!(
        "\nCapture→durable latency, synthetic syslog paced at 100 000 records/s for 10 s, group commit as configured by default (store.flush_interval_ms = 10)\n"
    );
    println!(
        "(readers: threads reading the stream meanwhile in batches of 4096, as forwarders \
         draining a backlog do)\n"
    );
    println!(
        "| codec | readers | records/s reached | blocks | p50 ms | p99 ms | max ms | records read |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (codec, readers) in [("gzip", "0"), ("gzip", "1"), ("zstd", "0")] {
        let dir = tempdir()?.join(format!("store-latency-{codec}-{readers}"));
        let level = if codec == "gzip" { "6" } else { "3" };
        let summary = load(
            &agent,
            &dir,
            &[
                "--records",
                "1000000",
                "--rate",
                "100000",
                "--readers",
                readers,
                "--codec",
                codec,
                "--level",
                level,
                "--summary",
            ],
        )?;
        let _ = fs::remove_dir_all(&dir);
        let v: serde_json::Value = serde_json::from_str(summary.trim())
            .with_context(|| format!("load summary: {summary}"))?;
        println!(
            "| {codec} {level} | {readers} | {:.0} | {} | {} | {} | {} | {} |",
            v["records_per_second"].as_f64().unwrap_or(0.0),
            v["blocks"],
            v["latency_ms"]["p50"],
            v["latency_ms"]["p99"],
            v["latency_ms"]["max"],
            v["read_records"]
        );
    }
    low_rates(&agent)
}

/// Bytes per record at low rates: records paced through the agent's own
/// ingest stage (group commit by `store.flush_interval_ms`, so the blocks
/// hold what arrives in 10 ms), then `raven-agent store repack` with its
/// defaults (sealed segments averaging under 100 records per block
/// rewritten in blocks of 1000). Sources: the storage array's syslog lines
/// of nDPI's syslog.pcap looped with fresh times, synthetic lines, and
/// every shared capture's datagrams looped (every stream; per stream).
fn low_rates(agent: &Path) -> anyhow::Result<()> {
    let syslog = workspace_root().join("../shared/data/nDPI/tests/cfgs/default/pcap/syslog.pcap");
    let syslog = syslog.display().to_string();
    let captures = shared_captures()?;
    let all: Vec<String> = captures.iter().map(|c| c.display().to_string()).collect();
    println!(
        "\nLow rates: records paced through the ingest stage (group commit, \
         store.flush_interval_ms = 10), then `raven-agent store repack` (defaults: \
         sealed segments under 100 records per block, rewritten in blocks of 1000)\n"
    );
    println!(
        "| source | records/s | seconds | stream | records | records/block as written | stored bytes/record as written | after re-pack | re-pack s | longest lock ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let array = ["--captures", &syslog, "--source", "172.20.51.54"];
    let every: Vec<&str> =
        std::iter::once("--captures").chain(all.iter().map(String::as_str)).collect();
    let once: Vec<&str> = every.iter().copied().chain(["--capture-times"]).collect();
    // Each real datagram once (no repeats to flatter compression: the
    // corpus's heterogeneous lines are the worst case).
    let distinct = count_datagrams(agent, &captures)?;
    let runs: [(&str, u64, u64, &[&str]); 6] = [
        ("storage array's syslog lines (15, looped)", 100, 6000, &array),
        ("storage array's syslog lines (15, looped)", 1000, 30_000, &array),
        ("synthetic syslog lines", 100, 6000, &[]),
        ("synthetic syslog lines", 10, 600, &[]),
        ("every shared datagram (looped)", 100, 6000, &every),
        ("every shared datagram, each once", 100, distinct, &once),
    ];
    for (what, rate, records, source) in runs {
        let dir = tempdir()?.join(format!("store-low-{rate}-{records}-{}", what.len()));
        let secs = records.div_ceil(rate);
        let (rate_s, records) = (rate.to_string(), records.to_string());
        let mut args = vec!["--records", &records, "--rate", &rate_s, "--summary"];
        args.extend_from_slice(source);
        load(agent, &dir, &args)?;
        let before = segment_stats(agent, &dir)?;
        let start = Instant::now();
        let out = Command::new(agent)
            .args(["store", "--data-dir"])
            .arg(&dir)
            .arg("repack")
            .env("RAVEN_LOG", "error")
            .output()?;
        let took = start.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("store repack failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let repacked: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("repack output: {}", String::from_utf8_lossy(&out.stdout)))?;
        let after = segment_stats(agent, &dir)?;
        let _ = fs::remove_dir_all(&dir);
        // Blocks as written: every segment was re-packed from them, so the
        // re-pack's own count says how many there were.
        let blocks_before = repacked["blocks_before"].as_u64().unwrap_or(0);
        let repacked_records = repacked["records"].as_u64().unwrap_or(0);
        // The longest the state lock (which appends wait for) was held.
        let lock_ms = repacked["longest_lock_us"].as_u64().unwrap_or(0) as f64 / 1000.0;
        for (stream, n, _, stored) in before.iter().filter(|s| s.1 > 0) {
            let (_, _, _, stored_after) =
                after.iter().find(|s| &s.0 == stream).context("a stream went missing")?;
            let per_block = if before.iter().filter(|s| s.1 > 0).count() == 1 && blocks_before > 0 {
                format!("{:.1}", repacked_records as f64 / blocks_before as f64)
            } else {
                "—".to_string()
            };
            println!(
                "| {what} | {rate} | {secs} | {stream} | {n} | {per_block} | {:.1} | {:.1} | {took:.2} | {lock_ms:.1} |",
                *stored as f64 / *n as f64,
                *stored_after as f64 / *n as f64,
            );
        }
    }
    Ok(())
}

/// Bytes per record of syslog from one sender: the two largest single
/// senders of nDPI's syslog.pcap (real traffic, each stored once with its
/// capture times), and the storage array's lines looped to a full block of
/// 1000 with fresh times (exact repeats: a best case, not a forecast).
fn single_sources(agent: &Path) -> anyhow::Result<()> {
    let capture = workspace_root().join("../shared/data/nDPI/tests/cfgs/default/pcap/syslog.pcap");
    let capture = [capture];
    println!(
        "\nSingle-sender syslog streams from nDPI's syslog.pcap (blocks of up to 1000 records)\n"
    );
    println!(
        "| sender | stored | codec | records | payload bytes/record | stored bytes/record | raw payloads, gzip -6 / zstd -3 (bytes/record) | stored vs gzip'd payloads |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let senders = [
        ("172.20.51.54", "a storage array (Compellent), 15 lines"),
        ("172.26.229.190", "a Linux host's snmpd, 20 lines"),
    ];
    for (ip, what) in senders {
        // Each datagram once, with its capture time; the storage array's
        // also looped to a full block.
        let runs: &[(&str, Option<u64>)] = if ip == "172.20.51.54" {
            &[("each once", None), ("looped, fresh times", Some(1000))]
        } else {
            &[("each once", None)]
        };
        for &(label, looped) in runs {
            for (codec, level) in [("gzip", "6"), ("zstd", "3")] {
                let dir = tempdir()?.join(format!("store-single-{ip}-{codec}-{label}"));
                let peer = peer_sizes(agent, &capture, Some(ip.parse()?), looped)?;
                let (_, payload, gz, zst) = peer
                    .into_iter()
                    .find(|p| p.0 == "syslog")
                    .context("no syslog from the sender")?;
                let count = match looped {
                    Some(n) => n,
                    None => count_from(agent, &capture, ip)?,
                }
                .to_string();
                let mut args = vec![
                    "--records",
                    &count,
                    "--batch",
                    "1000",
                    "--codec",
                    codec,
                    "--level",
                    level,
                    "--source",
                    ip,
                ];
                if looped.is_none() {
                    args.push("--capture-times");
                }
                load_captures(agent, &dir, &args, &capture)?;
                let stats = segment_stats(agent, &dir)?;
                let _ = fs::remove_dir_all(&dir);
                let (_, n, _, stored) =
                    stats.iter().find(|s| s.0 == "syslog").context("no syslog stored")?;
                let per = *stored as f64 / *n as f64;
                println!(
                    "| {ip}: {what} | {label} | {codec} {level} | {n} | {payload:.0} | {per:.1} | {gz:.1} / {zst:.1} | {:.2}× |",
                    per / gz.max(0.001)
                );
            }
        }
    }
    Ok(())
}

/// How many datagrams of `captures` come from `ip`.
fn count_from(agent: &Path, captures: &[PathBuf], ip: &str) -> anyhow::Result<u64> {
    let ip: std::net::IpAddr = ip.parse()?;
    let out = Command::new(agent).arg("decode").args(captures).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["src"].as_str().and_then(|s| s.parse::<std::net::SocketAddr>().ok()).map(|a| a.ip())
                == Some(ip)
        })
        .count() as u64)
}

/// `raven-agent store --data-dir DIR load ARGS`; returns its stdout.
fn load(agent: &Path, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(agent)
        .args(["store", "--data-dir"])
        .arg(dir)
        .arg("load")
        .args(["--segment-max-bytes", "67108864"])
        // Looped captures repeat sequence numbers: the gap warnings are noise here.
        .env("RAVEN_LOG", "error")
        .args(args)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("store load {args:?} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn load_captures(
    agent: &Path,
    dir: &Path,
    args: &[&str],
    captures: &[PathBuf],
) -> anyhow::Result<String> {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.push("--captures".into());
    all.extend(captures.iter().map(|c| c.display().to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    load(agent, dir, &all)
}

/// Every shared pcap/pcapng capture (../shared/data/catalog.tsv).
fn shared_captures() -> anyhow::Result<Vec<PathBuf>> {
    let data = workspace_root().join("../shared/data");
    let catalog = fs::read_to_string(data.join("catalog.tsv"))
        .with_context(|| format!("{}: the shared captures", data.display()))?;
    Ok(catalog
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.len() > 7 && (cols[7] == "pcap" || cols[7] == "pcapng"))
                .then(|| data.join(cols[0]))
        })
        .collect())
}

/// How many datagrams of known streams the captures hold: `raven-agent
/// decode` prints one line per datagram.
fn count_datagrams(agent: &Path, captures: &[PathBuf]) -> anyhow::Result<u64> {
    let out = Command::new(agent).arg("decode").args(captures).output()?;
    if !out.status.success() {
        bail!("decode failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().count() as u64)
}

/// Per stream: (stream, mean payload bytes, gzip -6 bytes/record, zstd -3
/// bytes/record) of the bare payloads concatenated — of one sender's only,
/// with `source`; cycled to `cycle_to` records as a looped load stores them.
fn peer_sizes(
    agent: &Path,
    captures: &[PathBuf],
    source: Option<std::net::IpAddr>,
    cycle_to: Option<u64>,
) -> anyhow::Result<Vec<(String, f64, f64, f64)>> {
    use base64::Engine;
    let out = Command::new(agent).arg("decode").args(captures).output()?;
    let mut per: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let stream = v["stream"].as_str().unwrap_or("?").to_string();
        let src: Option<std::net::SocketAddr> = v["src"].as_str().and_then(|s| s.parse().ok());
        if source.is_some_and(|ip| src.is_none_or(|src| src.ip() != ip)) {
            continue;
        }
        let payload = match (v["payload"].as_str(), v["payload_b64"].as_str()) {
            (Some(text), _) => [text.as_bytes(), b"\n"].concat(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64)?,
            _ => continue,
        };
        per.entry(stream).or_default().push(payload);
    }
    let mut rows = Vec::new();
    for (stream, payloads) in per {
        let n = cycle_to.unwrap_or(payloads.len() as u64);
        let bytes: Vec<u8> = payloads.iter().cycle().take(n as usize).flatten().copied().collect();
        let n = n as f64;
        let compressed = |cmd: &str, level: &str| -> anyhow::Result<f64> {
            let mut child = Command::new(cmd)
                .args([level, "-c"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("{cmd} (Debian package {cmd})"))?;
            std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), &bytes)?;
            drop(child.stdin.take());
            Ok(child.wait_with_output()?.stdout.len() as f64 / n)
        };
        rows.push((
            stream,
            bytes.len() as f64 / n,
            compressed("gzip", "-6")?,
            compressed("zstd", "-3")?,
        ));
    }
    Ok(rows)
}

/// `segments stats`: (stream, records, raw bytes, stored bytes).
fn segment_stats(agent: &Path, dir: &Path) -> anyhow::Result<Vec<(String, u64, u64, u64)>> {
    let out =
        Command::new(agent).args(["segments", "--data-dir"]).arg(dir).arg("stats").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            Some((
                c.first()?.to_string(),
                c.get(2)?.parse().ok()?,
                c.get(3)?.parse().ok()?,
                c.get(4)?.parse().ok()?,
            ))
        })
        .collect())
}

/// tshark fields that hold what Raven's decoder extracts for a stream; a
/// stream without an entry gets tshark's full tree (`-V`).
fn tshark_fields(stream: &str) -> Option<&'static [&'static str]> {
    Some(match stream {
        "syslog" => &[
            "syslog.facility",
            "syslog.level",
            "syslog.version",
            "syslog.timestamp",
            "syslog.timestamp_rfc3164",
            "syslog.hostname",
            "syslog.appname",
            "syslog.procid",
            "syslog.msgid",
            "syslog.msg",
        ],
        "netflow" | "ipfix" => &[
            "cflow.version",
            "cflow.count",
            "cflow.sequence",
            "cflow.source_id",
            "cflow.od_id",
            "cflow.srcaddr",
            "cflow.dstaddr",
            "cflow.srcport",
            "cflow.dstport",
            "cflow.protocol",
        ],
        "snmp" => &[
            "snmp.version",
            "snmp.community",
            "snmp.data",
            "snmp.request_id",
            "snmp.name",
            "snmp.value.oid",
        ],
        "sflow" => &["sflow_245.version", "sflow_245.agent", "sflow_245.numsamples"],
        _ => return None,
    })
}

/// CPU seconds (user + system) of the children waited for so far.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// tshark's CPU time per packet on `pcap`: a run over the whole file less
/// a run over its first packet (start-up, dissector registration).
fn tshark_ns_per_packet(pcap: &Path, stream: &str, packets: u64) -> anyhow::Result<f64> {
    let cpu = |limit: Option<u64>| -> anyhow::Result<f64> {
        let mut cmd = Command::new("tshark");
        cmd.arg("-n").arg("-r").arg(pcap);
        if let Some(n) = limit {
            cmd.args(["-c", &n.to_string()]);
        }
        match tshark_fields(stream) {
            Some(fields) => {
                cmd.args(["-T", "fields"]);
                for f in fields {
                    cmd.args(["-e", f]);
                }
            }
            None => {
                cmd.arg("-V");
            }
        }
        let before = children_cpu_seconds();
        let status = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        if !status.success() {
            bail!("tshark on {} failed: {status}", pcap.display());
        }
        Ok(children_cpu_seconds() - before)
    };
    let one = (0..3).map(|_| cpu(Some(1))).collect::<anyhow::Result<Vec<f64>>>()?;
    let one = one.into_iter().fold(f64::INFINITY, f64::min);
    let all = cpu(None)?;
    Ok((all - one).max(0.0) * 1e9 / (packets.saturating_sub(1).max(1)) as f64)
}

/// `decode`: `benches/decode.rs` (criterion, one thread, real payloads of
/// the shared captures looped) and tshark on the same payloads.
pub fn decode() -> anyhow::Result<()> {
    crate::setup::build_tools()?; // the agent's build script builds the XDP object
    let out = workspace_root().join("target/bench-decode");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    run(crate::cargo()
        .args(["bench", "--package", "raven-agent", "--bench", "decode"])
        .env("RAVEN_BENCH_DECODE_OUT", &out)
        .env("CRITERION_HOME", out.join("criterion")))?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&fs::read(out.join("rows.json"))?)?;
    println!("\n## decode — {} — {}", machine(), today());
    println!(
        "`Decoder::decode` on one thread over the shared captures' real payloads, looped \
         (criterion mean); tshark's CPU time per packet on the same payloads (`-T fields`, \
         start-up subtracted)\n"
    );
    println!(
        "| decoder | payloads (files) | records/s per core | ns per packet | flows/s | parse errors | goal | met | tshark ns per packet | tshark ÷ Raven |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let id = row["id"].as_str().context("rows.json id")?;
        let stream = row["stream"].as_str().unwrap_or(id);
        let payloads = row["payloads"].as_u64().unwrap_or(0).max(1);
        let estimates: serde_json::Value = serde_json::from_slice(
            &fs::read(out.join("criterion/decode").join(id).join("new/estimates.json"))
                .with_context(|| format!("criterion estimates of {id}"))?,
        )?;
        let iteration_ns =
            estimates["mean"]["point_estimate"].as_f64().context("criterion mean")?;
        let ns = iteration_ns / payloads as f64;
        let per_second = 1e9 / ns;
        let flows = row["flows"].as_u64().unwrap_or(0);
        let flows_per_second = if flows > 0 {
            format!("{:.0}", flows as f64 * 1e9 / iteration_ns)
        } else {
            "–".into()
        };
        let met = match (row["min_per_second"].as_f64(), row["max_nanos"].as_f64()) {
            (Some(min), _) => {
                if per_second >= min {
                    "met"
                } else {
                    "not met"
                }
            }
            (_, Some(max)) => {
                if ns <= max {
                    "met"
                } else {
                    "not met"
                }
            }
            _ => "",
        };
        // "68 (no_pri 40, unparsed 28)": how many, and why.
        let reasons: Vec<String> = row["reasons"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let errors = match row["errors"].as_u64().unwrap_or(0) {
            0 => "0".to_string(),
            n => format!("{n} ({})", reasons.join(", ")),
        };
        let peer = tshark_ns_per_packet(
            &out.join(format!("{id}.pcap")),
            stream,
            row["peer_packets"].as_u64().unwrap_or(1),
        );
        let (peer_ns, ratio) = match peer {
            Ok(p) => (format!("{p:.0}"), format!("{:.1}×", p / ns)),
            Err(e) => (format!("({e})"), String::new()),
        };
        println!(
            "| {id} | {} ({}) | {per_second:.0} | {ns:.0} | {flows_per_second} | {} | {} | {met} | {peer_ns} | {ratio} |",
            row["payloads"],
            row["files"],
            errors,
            row["goal"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

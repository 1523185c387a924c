//! Venue in a box: three namespaces — `venue` (real senders), `appliance`
//! (Raven, XDP on its venue-side veth), `noc` (real receivers: `rsyslogd`
//! with a TCP input writing every message to a file, `nfcapd`, `snmptrapd`
//! logging to a file, and an HTTP receiver writing the JSON lines it gets).
//!
//! The venue sends a known mix continuously: `logger` lines carrying
//! sequence numbers, NetFlow v9 and IPFIX from `softflowd` replaying shared
//! captures, and `snmptrap` v2c traps carrying a sequence number in a
//! varbind. Raven forwards each stream to its receiver (syslog_tcp →
//! rsyslogd, udp_relay → nfcapd, snmp → snmptrapd, http → the HTTP
//! receiver, which takes syslog too). Meanwhile: (1) the appliance↔NOC link
//! is cut, (2) Raven is SIGKILLed during the outage and started again, (3)
//! the link is restored. Afterwards, per stream:
//! - everything the venue sent was captured once (Raven's store, read with
//!   `segments cat`), and everything captured is at the NOC: every syslog
//!   line in rsyslog's file and the HTTP receiver's (matched by Raven's
//!   record id), every flow record in nfcapd's files (`nfdump`, compared as a
//!   multiset with the `flows` Raven decoded), every trap in snmptrapd's log
//!   (by its sequence varbind);
//! - duplicates stay within the documented in-flight window
//!   (docs/forwarding.md): one batch per broken connection for syslog_tcp
//!   and http (the cut, the kill), the batch in flight at the kill for the
//!   UDP sinks;
//! - first arrivals keep the store's order;
//! - nfcapd saw one exporter per flow version: the relayed domain ids and
//!   templates survived the restart.
//!
//! The cut drops the appliance's traffic to and from the NOC in the
//! appliance's own nftables (the uplink is gone). A UDP sink has no
//! acknowledgement, so it can only hold records back when sending fails at
//! the appliance; a silent blackhole further away loses what UDP sent into
//! it (docs/forwarding.md says so), which is not what this test is about.
//!
//! What this does not claim: datagrams still in the kernel ring or the
//! agent's memory at the instant of a SIGKILL are lost (UDP has no
//! retransmission). The senders therefore pause, Raven is killed once what
//! they sent is durable (`raven_store_appended_records_total`), and they go
//! on after the restart; that is the property the store guarantees.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use common::{
    APPLIANCE_V4, Agent, Lab, METRICS_LISTEN, VENUE_V4,
    noc::{
        NOC, connect_noc, http_receiver, nfcapd, nfdump_exporters, nfdump_lines, nft, rsyslog_with,
        snmptrapd, wait_until,
    },
};
use serde_json::Value;

const SYSLOG_PORT: u16 = 10514;
const NFCAPD_PORT: u16 = 9995;
const TRAPD_PORT: u16 = 1162;
const HTTP_PORT: u16 = 8080;
const TOKEN: &str = "venue-noc-token";
/// Records a sink sends per batch (`batch_max_records`, left at its
/// default here): the most one broken connection can duplicate
/// (docs/forwarding.md).
fn batch() -> usize {
    raven_agent::config::SinkConfig::new("any", raven_agent::config::SinkProtocol::SyslogTcp, "")
        .batch_max_records
}
/// The sinks and the streams each takes.
const SINKS: [(&str, &[&str]); 4] = [
    ("noc-syslog", &["syslog"]),
    ("noc-flows", &["netflow", "ipfix"]),
    ("noc-traps", &["snmp"]),
    ("noc-http", &["syslog"]),
];
const STREAMS: [&str; 4] = ["syslog", "netflow", "ipfix", "snmp"];
/// Ordinary traffic for softflowd to turn into flows (as in flow_senders.rs).
const CAPTURES: [&str; 2] =
    ["zeek/testing/btest/Traces/snmp/leak_test.pcapng", "nDPI/tests/cfgs/default/pcap/syslog.pcap"];
const TRAP_OID: &str = "1.3.6.1.4.1.8072.2.3.0.1";
/// NET-SNMP-EXAMPLES-MIB::netSnmpExampleHeartbeatName: carries `venue-trap-N`.
const SEQ_OID: &str = "1.3.6.1.4.1.8072.2.3.2.1";

fn config(lab: &Lab) -> String {
    let mut config = format!(
        "[capture]\nmode = \"xdp\"\ninterfaces = [\"{}\"]\n\
         ports = [{{port = 514, stream = \"syslog\"}}, {{port = 2055, stream = \"netflow\"}}, \
         {{port = 4739, stream = \"ipfix\"}}, {{port = 162, stream = \"snmp\"}}]\n\
         [api]\nlisten = \"{METRICS_LISTEN}\"\ntokens_file = \"@DIR@/tokens\"\n\
         [forward]\nappliance_id = \"venue-7\"\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\n\
         probe_interval_ms = 500\n",
        lab.appliance_if
    );
    let sinks = [
        format!(
            "name = \"noc-syslog\"\nprotocol = \"syslog_tcp\"\nendpoint = \"{NOC}:{SYSLOG_PORT}\"\n\
             streams = [\"syslog\"]\nadd_record_id = true\nconnect_timeout_ms = 1000\n\
             ack_timeout_ms = 2000\n"
        ),
        // Paced: a drained backlog must not overflow the collector's socket.
        format!(
            "name = \"noc-flows\"\nprotocol = \"udp_relay\"\nendpoint = \"{NOC}:{NFCAPD_PORT}\"\n\
             streams = [\"netflow\", \"ipfix\"]\nmax_records_per_second = 2000\n"
        ),
        // snmptrapd handles a few hundred traps a second; faster, a replayed
        // burst overflows its socket buffer and UDP has no receipt (runs of
        // traps went missing at 1000/s on a loaded 2-core box). Pacing per
        // sink is what the appliance offers for exactly this.
        format!(
            "name = \"noc-traps\"\nprotocol = \"snmp\"\nendpoint = \"{NOC}:{TRAPD_PORT}\"\n\
             streams = [\"snmp\"]\nmax_records_per_second = 200\n"
        ),
        format!(
            "name = \"noc-http\"\nprotocol = \"http\"\n\
             endpoint = \"http://{NOC}:{HTTP_PORT}/ingest\"\nstreams = [\"syslog\"]\n\
             connect_timeout_ms = 1000\nack_timeout_ms = 2000\n"
        ),
    ];
    for sink in sinks {
        config.push_str("[[forward.sinks]]\n");
        config.push_str(&sink);
    }
    config
}

fn shared(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data").join(relative)
}

// ------------------------------------------------------------- the venue

/// The senders' shared state: what each has sent, and pause / stop.
#[derive(Default)]
struct Venue {
    paused: AtomicBool,
    stop: AtomicBool,
    failed: AtomicBool,
    /// Per sender: it saw `paused` and sends nothing until resumed.
    idle: [AtomicBool; 3],
    /// Syslog lines written to logger (= the next sequence number).
    syslog: AtomicU64,
    /// Datagrams softflowd reports it sent, per version.
    netflow: AtomicU64,
    ipfix: AtomicU64,
    /// Traps snmptrap sent (= the next trap number).
    traps: AtomicU64,
}

impl Venue {
    /// Sender `i` checks in before each unit: true to send it, false to stop.
    fn go(&self, i: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                return false;
            }
            if !self.paused.load(Ordering::SeqCst) {
                self.idle[i].store(false, Ordering::SeqCst);
                return true;
            }
            self.idle[i].store(true, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn all_idle(&self, idle: bool) -> bool {
        assert!(!self.failed.load(Ordering::SeqCst), "a venue sender failed");
        self.idle.iter().all(|i| i.load(Ordering::SeqCst) == idle)
    }

    fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        wait_until("the senders to pause", Duration::from_secs(30), || self.all_idle(true));
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        wait_until("the senders to resume", Duration::from_secs(10), || self.all_idle(false));
    }

    /// What was sent on `stream` so far (datagrams).
    fn sent(&self, stream: &str) -> u64 {
        match stream {
            "syslog" => &self.syslog,
            "netflow" => &self.netflow,
            "ipfix" => &self.ipfix,
            "snmp" => &self.traps,
            _ => unreachable!("{stream}"),
        }
        .load(Ordering::SeqCst)
    }

    fn counts(&self) -> BTreeMap<&'static str, u64> {
        STREAMS.iter().map(|&s| (s, self.sent(s))).collect()
    }
}

/// Stops the senders when dropped (the test's end, or a panic: the scope
/// then joins them instead of waiting forever).
struct StopOnDrop<'a>(&'a Venue);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// Marks the venue failed when a sender panics, so waits end early.
struct FailOnPanic<'a>(&'a Venue);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.failed.store(true, Ordering::SeqCst);
            self.0.stop.store(true, Ordering::SeqCst);
        }
    }
}

/// util-linux `logger` reading lines from its stdin, each one an RFC 5424
/// datagram to the appliance: `venue line seq=N`, about 400 per second.
fn send_syslog(lab: &Lab, venue: &Venue) {
    let _guard = FailOnPanic(venue);
    let mut logger = lab
        .venue
        .command("logger")
        .args(["--server", APPLIANCE_V4, "--port", "514", "--udp", "--rfc5424"])
        .args(["--tag", "venue-app"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("logger (util-linux)");
    let mut stdin = logger.stdin.take().unwrap();
    let mut seq = 0u64;
    while venue.go(0) {
        let mut lines = String::new();
        for _ in 0..10 {
            lines.push_str(&format!("venue line seq={seq}\n"));
            seq += 1;
        }
        stdin.write_all(lines.as_bytes()).unwrap();
        stdin.flush().unwrap();
        venue.syslog.store(seq, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(25));
    }
    drop(stdin); // logger sends what it read, then exits at EOF
    let deadline = Instant::now() + Duration::from_secs(10);
    while logger.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = logger.kill();
            panic!("logger did not exit at the end of its input");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// softflowd's exit statistics: (datagrams, failures), from "Flows
/// exported: N (R records) in P packets (F failures)".
fn softflowd_sent(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Flows exported:"))
        .unwrap_or_else(|| panic!("no export statistics from softflowd:\n{stdout}"));
    let n: Vec<u64> =
        line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    (n[2], n[3])
}

/// softflowd replaying the shared captures over and over, in turn as
/// NetFlow v9 (to 2055) and IPFIX (to 4739): each run a new process (so a
/// new source port), the same exporter address and domain.
fn send_flows(lab: &Lab, venue: &Venue, work: &Path) {
    let _guard = FailOnPanic(venue);
    let mut round = 0usize;
    while venue.go(1) {
        let capture = CAPTURES[round % 2];
        let (version, port, counter) = if (round / 2).is_multiple_of(2) {
            ("9", 2055, &venue.netflow)
        } else {
            ("10", 4739, &venue.ipfix)
        };
        let out = lab
            .venue
            .command("timeout")
            .args(["20", "softflowd", "-d", "-r"])
            .arg(shared(capture))
            .args(["-v", version, "-n", &format!("{APPLIANCE_V4}:{port}")])
            // Its own pid file, and no control socket: with -r softflowd may
            // otherwise block in accept() forever (see flow_senders.rs).
            .arg("-p")
            .arg(work.join("softflowd.pid"))
            .args(["-c", "none"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "softflowd -v {version}: {}\n{text}", out.status);
        let (datagrams, failures) = softflowd_sent(&text);
        assert!(datagrams > 0 && failures == 0, "softflowd -v {version}:\n{text}");
        counter.fetch_add(datagrams, Ordering::SeqCst);
        round += 1;
        thread::sleep(Duration::from_millis(100));
    }
}

/// Net-SNMP `snmptrap` v2c traps, one process each, carrying
/// `venue-trap-N` in a varbind.
fn send_traps(lab: &Lab, venue: &Venue) {
    let _guard = FailOnPanic(venue);
    let to = format!("{APPLIANCE_V4}:162");
    let mut n = 0u64;
    while venue.go(2) {
        let label = format!("venue-trap-{n}");
        lab.venue.run(
            "snmptrap",
            &["-v", "2c", "-c", "public", &to, "", TRAP_OID, SEQ_OID, "s", &label],
        );
        n += 1;
        venue.traps.store(n, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------ the checks

fn metric_sum(m: &BTreeMap<String, f64>, prefix: &str, sink: &str) -> f64 {
    let label = format!("sink=\"{sink}\"");
    m.iter().filter(|(k, _)| k.starts_with(prefix) && k.contains(&label)).map(|(_, v)| v).sum()
}

/// Waits (bounded) until every sink has failed since this agent started,
/// is not up, and owes records: the outage is seen everywhere.
fn wait_outage(agent: &Agent, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = agent.metrics();
        let seen: Vec<bool> = SINKS
            .iter()
            .map(|(sink, streams)| {
                let state = m.get(&format!("raven_forward_link_state{{sink=\"{sink}\"}}"));
                let failures = metric_sum(&m, "raven_forward_failures_total{", sink);
                let owed: f64 = streams
                    .iter()
                    .filter_map(|s| {
                        m.get(&format!(
                            "raven_forward_backlog_records{{sink=\"{sink}\",stream=\"{s}\"}}"
                        ))
                    })
                    .sum();
                state.is_some_and(|s| *s < 2.0) && failures > 0.0 && owed > 0.0
            })
            .collect();
        if seen.iter().all(|s| *s) {
            let states: Vec<String> = SINKS
                .iter()
                .map(|(sink, _)| {
                    let state = m[&format!("raven_forward_link_state{{sink=\"{sink}\"}}")];
                    format!("{sink}={state}")
                })
                .collect();
            println!("outage seen {when}: link states {states:?} (0 down, 1 degraded)");
            return;
        }
        assert!(Instant::now() < deadline, "the outage never showed {when}: {seen:?}\n{m:#?}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// (sink, stream) for every stream each sink takes.
fn sink_streams() -> impl Iterator<Item = (&'static str, &'static str)> {
    SINKS.iter().flat_map(|(sink, streams)| streams.iter().map(move |s| (*sink, *s)))
}

/// The store's index, read while the agent runs (as `segments cat` does).
fn index(agent: &Agent) -> rusqlite::Connection {
    let path = agent.dir.path().join("data/raven.db");
    let db =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db
}

/// Each sink's cursor per stream: the last record it had acknowledged,
/// as the forwarder stored it (absent before its first acknowledgement).
fn cursors(agent: &Agent) -> BTreeMap<(String, String), u64> {
    let db = index(agent);
    let mut query = db.prepare("SELECT sink, stream, seq FROM cursors").unwrap();
    query
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The last durable record's sequence number per stream.
fn durable(agent: &Agent) -> BTreeMap<String, u64> {
    let db = index(agent);
    let mut query = db
        .prepare("SELECT stream, MAX(last_seq) FROM segments WHERE records > 0 GROUP BY stream")
        .unwrap();
    query.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

/// Per (sink, stream): records durable beyond the sink's cursor.
fn owed(agent: &Agent) -> BTreeMap<(String, String), u64> {
    let (durable, cursors) = (durable(agent), cursors(agent));
    sink_streams()
        .map(|(sink, stream)| {
            let key = (sink.to_string(), stream.to_string());
            let next = cursors.get(&key).map_or(0, |c| c + 1);
            let owed = durable.get(stream).map_or(0, |d| (d + 1).saturating_sub(next));
            (key, owed)
        })
        .collect()
}

/// Waits until everything sent since the agent started (`base`) is durable.
fn wait_durable(agent: &Agent, venue: &Venue, base: &BTreeMap<&str, u64>) {
    for stream in STREAMS {
        let want = venue.sent(stream) - base[stream];
        agent.wait_for_metric(
            &format!("raven_store_appended_records_total{{stream=\"{stream}\"}}"),
            want as f64,
        );
    }
}

/// What one stream's check found.
struct Tally {
    captured: usize,
    delivered: usize,
    duplicated: usize,
}

/// `captured`: distinct keys in store order; `delivered`: keys in arrival
/// order at the NOC. Every captured key arrived, nothing else did,
/// duplicates are within `window`, first arrivals keep the store's order.
fn check_once(what: &str, captured: &[u64], delivered: &[u64], window: usize) -> Tally {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    let mut first_order = Vec::new();
    for &key in delivered {
        let n = counts.entry(key).or_insert(0);
        if *n == 0 {
            first_order.push(key);
        }
        *n += 1;
    }
    let known: BTreeSet<u64> = captured.iter().copied().collect();
    assert_eq!(known.len(), captured.len(), "{what}: captured keys repeat");
    let missing: Vec<u64> = captured.iter().filter(|k| !counts.contains_key(k)).copied().collect();
    assert!(missing.is_empty(), "{what}: {} lost: {missing:?}", missing.len());
    let strange: Vec<u64> = counts.keys().filter(|k| !known.contains(k)).copied().collect();
    assert!(strange.is_empty(), "{what}: delivered but never captured: {strange:?}");
    let duplicated: usize = counts.values().map(|n| n - 1).sum();
    assert!(duplicated <= window, "{what}: {duplicated} duplicates, window {window}");
    assert!(first_order == captured, "{what}: first arrivals are not in the store's order");
    Tally { captured: captured.len(), delivered: counts.len(), duplicated }
}

/// The same for keys that repeat (flow records: the same flows come in
/// every replay of a capture): every captured record arrived as often as
/// it was captured, at most `window` extra, and the captured sequence is a
/// subsequence of the arrivals (the order kept).
fn check_multiset(what: &str, captured: &[String], delivered: &[String], window: usize) -> Tally {
    let mut want: BTreeMap<&String, usize> = BTreeMap::new();
    for k in captured {
        *want.entry(k).or_default() += 1;
    }
    let mut got: BTreeMap<&String, usize> = BTreeMap::new();
    for k in delivered {
        *got.entry(k).or_default() += 1;
    }
    let short: Vec<String> = want
        .iter()
        .filter(|(k, n)| got.get(*k).copied().unwrap_or(0) < **n)
        .map(|(k, n)| format!("{k} ({n} captured, {} delivered)", got.get(*k).unwrap_or(&0)))
        .collect();
    assert!(short.is_empty(), "{what}: records lost: {short:#?}");
    let strange: Vec<&&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(strange.is_empty(), "{what}: delivered but never captured: {strange:?}");
    let duplicated = delivered.len() - captured.len();
    assert!(duplicated <= window, "{what}: {duplicated} duplicates, window {window}");
    let mut next = 0;
    for k in delivered {
        if next < captured.len() && *k == captured[next] {
            next += 1;
        }
    }
    assert_eq!(
        next,
        captured.len(),
        "{what}: the arrivals do not hold the captured sequence in order (matched {next})"
    );
    Tally { captured: captured.len(), delivered: delivered.len(), duplicated }
}

fn number_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Every `"venue-trap-N"` in snmptrapd's log, in order.
fn traps_logged(log: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.split("\"venue-trap-")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            rest[digits.len()..].starts_with('"').then(|| digits.parse().ok()).flatten()
        })
        .collect()
}

/// (Raven seq, venue seq) of each syslog line in rsyslog's file, in order;
/// a line without the record id fails the test.
fn rsyslog_lines(log: &Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("venue line seq="))
        .map(|l| {
            let id = number_after(l, "[raven@32473 id=\"venue-7:syslog:")
                .unwrap_or_else(|| panic!("no record id in rsyslog's line: {l}"));
            (id, number_after(l, "venue line seq=").unwrap())
        })
        .collect()
}

/// (Raven seq, venue seq) of each record the HTTP receiver wrote.
fn http_lines(file: &Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let id = v["raven_id"].as_str().unwrap_or_else(|| panic!("no raven_id: {l}"));
            let seq = id
                .strip_prefix("venue-7:syslog:")
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("raven_id {id}"));
            assert_eq!(v["stream"], "syslog", "{l}");
            let message = v["message"].as_str().unwrap_or_else(|| panic!("no message: {l}"));
            (seq, number_after(message, "venue line seq=").unwrap_or_else(|| panic!("{l}")))
        })
        .collect()
}

/// nfdump's protocol names back to numbers (nfdump prints unknown ones as
/// numbers).
fn protocol_number(name: &str) -> u64 {
    match name {
        "ICMP" => 1,
        "TCP" => 6,
        "UDP" => 17,
        "IPv6" => 41,
        "GRE" => 47,
        "ESP" => 50,
        "ICMP6" => 58,
        other => other.parse().unwrap_or_else(|_| panic!("nfdump protocol {other}")),
    }
}

/// One flow record as a comparable key: addresses, ports, protocol.
fn flow_key(src: IpAddr, dst: IpAddr, sport: u64, dport: u64, protocol: u64) -> String {
    format!("{src} > {dst} {sport} > {dport} proto {protocol}")
}

/// Per stored datagram of a flow stream: its flow records (options data
/// records, every field null, left out).
fn captured_flows(records: &[Value]) -> Vec<Vec<String>> {
    records
        .iter()
        .map(|r| {
            assert!(r.get("pending").is_none(), "data held for a template: {r}");
            r["flows"]
                .as_array()
                .unwrap_or_else(|| panic!("no flows: {r}"))
                .iter()
                .filter(|f| !f["src_addr"].is_null())
                .map(|f| {
                    let ip = |k: &str| f[k].as_str().unwrap().parse::<IpAddr>().unwrap();
                    let n = |k: &str| f[k].as_u64().unwrap_or(0);
                    flow_key(
                        ip("src_addr"),
                        ip("dst_addr"),
                        n("src_port"),
                        n("dst_port"),
                        n("protocol"),
                    )
                })
                .collect()
        })
        .collect()
}

/// The flow records nfcapd stored, in arrival order, per exporter version
/// (9 or 10); also asserts one exporter per version.
fn delivered_flows(dir: &Path) -> BTreeMap<u64, Vec<String>> {
    let exporters = nfdump_exporters(dir);
    println!("exporters at nfcapd: {exporters:#?}");
    let mut version_of: BTreeMap<u64, u64> = BTreeMap::new();
    for line in &exporters {
        let sysid = number_after(line, "SysID: ").unwrap();
        let version = number_after(line, "version: ").unwrap();
        version_of.insert(sysid, version);
    }
    let versions: Vec<u64> = version_of.values().copied().collect();
    assert_eq!(
        versions,
        [9, 10],
        "one NetFlow v9 and one IPFIX exporter at the collector, before and after the \
         restart (the relayed domain ids must not change): {exporters:#?}"
    );
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for line in nfdump_lines(dir, "%exp|%sa|%da|%sp|%dp|%pr") {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        let sysid: u64 = f[0].parse().unwrap_or_else(|_| panic!("nfdump line {line}"));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|_| panic!("address in {line}"));
        let key = flow_key(
            ip(f[1]),
            ip(f[2]),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
            protocol_number(f[5]),
        );
        out.entry(version_of[&sysid]).or_default().push(key);
    }
    out
}

#[test]
fn venue_telemetry_survives_an_outage_and_a_sigkill_with_nothing_lost() {
    let started_at = Instant::now();
    let started = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let lab = Lab::new();
    let noc = connect_noc(&lab.appliance);
    let dir = tempfile::tempdir().unwrap();
    let sub = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let (rsyslog_dir, flows_dir, traps_dir, http_dir, work) =
        (sub("rsyslog"), sub("flows"), sub("traps"), sub("http"), sub("work"));
    let _rsyslog = rsyslog_with(&noc, &rsyslog_dir, SYSLOG_PORT, "module(load=\"imtcp\")\n");
    let collector = nfcapd(&noc, &flows_dir, NFCAPD_PORT);
    let trap_receiver = snmptrapd(&noc, &traps_dir, TRAPD_PORT);
    let _http = http_receiver(&noc, &http_dir, HTTP_PORT);
    let (rsyslog_log, traps_log, http_log) = (
        rsyslog_dir.join("received.log"),
        traps_dir.join("traps.log"),
        http_dir.join("http.jsonl"),
    );

    // Only the appliance sends UDP to the NOC (the flow and trap sinks).
    let udp_before = (lab.appliance.udp_counts(), noc.udp_counts());
    let mut agent = Agent::with_files(&lab, &config(&lab), &[("tokens", TOKEN)], &[]);
    agent.wait_until_attached();
    let venue = Venue::default();
    let mut base = venue.counts(); // sent before the running agent started
    let cut = "table inet cut {\n chain out { type filter hook output priority 0; \
               ip daddr 192.0.2.0/24 drop; }\n chain in { type filter hook input priority 0; \
               ip saddr 192.0.2.0/24 drop; }\n}\n";

    thread::scope(|scope| {
        let _stop = StopOnDrop(&venue);
        scope.spawn(|| send_syslog(&lab, &venue));
        scope.spawn(|| send_flows(&lab, &venue, &work));
        scope.spawn(|| send_traps(&lab, &venue));

        // Link up: live forwarding reaches every receiver, every sink has
        // sent records of every stream it takes (nfcapd has seen both flow
        // exporters before the cut, so their ids after it mean something).
        wait_until("live records at the NOC", Duration::from_secs(20), || {
            !rsyslog_lines(&rsyslog_log).is_empty()
                && !traps_logged(&traps_log).is_empty()
                && !http_lines(&http_log).is_empty()
                && venue.sent("ipfix") > 0
        });
        common::poll("every sink to forward every stream live", Duration::from_secs(30), || {
            let cursors = cursors(&agent);
            let all = sink_streams().all(|(sink, stream)| {
                cursors.contains_key(&(sink.to_string(), stream.to_string()))
            });
            if all { Ok(()) } else { Err(cursors) }
        });

        // (1) Cut the appliance↔NOC link; sending goes on, and every sink
        // holds back records of every stream it takes.
        nft(&lab.appliance, cut);
        wait_outage(&agent, "before the kill");
        common::poll("a backlog of every stream at every sink", Duration::from_secs(30), || {
            let owed = owed(&agent);
            if owed.values().all(|n| *n > 0) { Ok(()) } else { Err(owed) }
        });

        // (2) SIGKILL once what was sent is durable; start again on the
        // same store, still cut off.
        venue.pause();
        wait_durable(&agent, &venue, &base);
        let before = venue.counts();
        println!("sent before the kill: {before:?}");
        agent.kill_and_restart();
        agent.wait_until_attached();
        base = venue.counts();
        venue.resume();
        wait_outage(&agent, "after the restart");
        // The restarted agent captures every stream while still cut off.
        for stream in STREAMS {
            let appended = format!("raven_store_appended_records_total{{stream=\"{stream}\"}}");
            agent.wait_for_metric(&appended, 1.0);
        }

        // (3) Restore the link: the backlogs drain, oldest first, while the
        // venue keeps sending (it stops only once they have).
        let at_restore = durable(&agent);
        nft(&lab.appliance, "delete table inet cut\n");
        common::poll("every backlog to drain", Duration::from_secs(60), || {
            let cursors = cursors(&agent);
            let drained = sink_streams().all(|(sink, stream)| {
                cursors.get(&(sink.to_string(), stream.to_string())) >= at_restore.get(stream)
            });
            if drained { Ok(()) } else { Err((&at_restore, cursors)) }
        });
        venue.stop.store(true, Ordering::SeqCst);
    });
    assert!(!venue.failed.load(Ordering::SeqCst), "a venue sender failed");
    let sent = venue.counts();
    println!("sent: {sent:?}");

    wait_durable(&agent, &venue, &base);
    // Every sink's cursor at the last durable record (exact), then the
    // backlog metrics saying so.
    common::poll("every sink to catch up", Duration::from_secs(60), || {
        let owed = owed(&agent);
        if owed.values().all(|n| *n == 0) { Ok(()) } else { Err(owed) }
    });
    wait_until("every backlog metric at zero", Duration::from_secs(10), || {
        let m = agent.metrics();
        SINKS.iter().all(|(sink, streams)| {
            streams.iter().all(|s| {
                m.get(&format!("raven_forward_backlog_records{{sink=\"{sink}\",stream=\"{s}\"}}"))
                    == Some(&0.0)
            })
        })
    });
    let captured: BTreeMap<&str, Vec<Value>> =
        STREAMS.iter().map(|&s| (s, agent.stored(s))).collect();

    // Capture: everything sent is in the store, once.
    let syslog: Vec<(u64, u64)> = captured["syslog"]
        .iter()
        .map(|r| {
            let payload = r["payload"].as_str().unwrap_or_else(|| panic!("{r}"));
            (r["seq"].as_u64().unwrap(), number_after(payload, "venue line seq=").unwrap())
        })
        .collect();
    let mut venue_seqs: Vec<u64> = syslog.iter().map(|(_, s)| *s).collect();
    let in_send_order = venue_seqs.is_sorted();
    venue_seqs.sort_unstable();
    assert_eq!(venue_seqs, (0..sent["syslog"]).collect::<Vec<_>>(), "syslog lines captured once");
    let traps: Vec<u64> = captured["snmp"]
        .iter()
        .map(|r| {
            let label = r["varbinds"]
                .as_array()
                .and_then(|v| v.iter().find(|b| b["oid"] == SEQ_OID))
                .and_then(|b| b["value"].as_str())
                .unwrap_or_else(|| panic!("no sequence varbind: {r}"));
            number_after(label, "venue-trap-").unwrap()
        })
        .collect();
    let mut trap_numbers = traps.clone();
    trap_numbers.sort_unstable();
    assert_eq!(trap_numbers, (0..sent["snmp"]).collect::<Vec<_>>(), "traps captured once");
    for stream in ["netflow", "ipfix"] {
        assert_eq!(captured[stream].len() as u64, sent[stream], "{stream} datagrams captured");
    }
    println!("capture kept the sending order of syslog lines: {in_send_order}");

    // Delivery. Syslog over TCP: every line once, duplicates only from the
    // two broken connections (the cut, the kill).
    let by_raven: BTreeMap<u64, u64> = syslog.iter().copied().collect();
    let raven_seqs: Vec<u64> = syslog.iter().map(|(r, _)| *r).collect();
    wait_until("every syslog line at rsyslogd", Duration::from_secs(30), || {
        let got: BTreeSet<u64> = rsyslog_lines(&rsyslog_log).iter().map(|(r, _)| *r).collect();
        got.len() == raven_seqs.len()
    });
    wait_until("every syslog record at the HTTP receiver", Duration::from_secs(30), || {
        let got: BTreeSet<u64> = http_lines(&http_log).iter().map(|(r, _)| *r).collect();
        got.len() == raven_seqs.len()
    });
    let all_traps =
        || traps_logged(&traps_log).iter().collect::<BTreeSet<_>>().len() == traps.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_traps() {
        if Instant::now() > deadline {
            // What is missing, and what the sink says about it.
            let logged: BTreeSet<u64> = traps_logged(&traps_log).into_iter().collect();
            let missing: Vec<&u64> = traps.iter().filter(|t| !logged.contains(t)).collect();
            let sink: Vec<String> = agent
                .metrics()
                .into_iter()
                .filter(|(k, _)| k.contains("noc-traps") || k.contains("stream=\"snmp\""))
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let stderr = agent.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
            panic!(
                "timed out waiting for every trap at snmptrapd: {} of {} logged, missing {missing:?}\n\
                 {sink:#?}\nagent log (last lines, newest first):\n{}",
                logged.len(),
                traps.len(),
                tail.join("\n")
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    // Everything is there (above). Duplicates a receiver may still get (a
    // TCP retransmission from a connection the cut or the kill broke) are
    // given a moment to land before they are counted: a fixed window.
    thread::sleep(Duration::from_millis(1000));
    // Every datagram the UDP sinks sent has been read: nfcapd and
    // snmptrapd finish what they read before they exit.
    common::wait_udp_taken(
        "nfcapd and snmptrapd to read every datagram",
        (&lab.appliance, udp_before.0),
        (&noc, udp_before.1),
        Duration::from_secs(20),
    );
    collector.terminate(); // nfcapd writes its last block at exit
    trap_receiver.terminate();

    let mut report = Vec::new();
    let rsyslog = rsyslog_lines(&rsyslog_log);
    for (raven, seq) in &rsyslog {
        assert_eq!(by_raven.get(raven), Some(seq), "record id {raven} names another line");
    }
    let delivered: Vec<u64> = rsyslog.iter().map(|(r, _)| *r).collect();
    report.push(("syslog → rsyslogd", check_once("syslog", &raven_seqs, &delivered, 2 * batch())));
    let http = http_lines(&http_log);
    for (raven, seq) in &http {
        assert_eq!(by_raven.get(raven), Some(seq), "raven_id {raven} names another record");
    }
    let delivered: Vec<u64> = http.iter().map(|(r, _)| *r).collect();
    report.push(("syslog → http", check_once("http", &raven_seqs, &delivered, 2 * batch())));
    report.push((
        "snmp → snmptrapd",
        check_once("traps", &traps, &traps_logged(&traps_log), batch()),
    ));
    let delivered = delivered_flows(&flows_dir);
    for (stream, version) in [("netflow", 9), ("ipfix", 10)] {
        let per_datagram = captured_flows(&captured[stream]);
        let most = per_datagram.iter().map(Vec::len).max().unwrap_or(0);
        let flows: Vec<String> = per_datagram.concat();
        let got = delivered.get(&version).cloned().unwrap_or_default();
        let name = if version == 9 { "netflow → nfcapd" } else { "ipfix → nfcapd" };
        report.push((name, check_multiset(stream, &flows, &got, batch() * most)));
    }
    for (what, t) in &report {
        println!(
            "{what}: captured {}, delivered {}, duplicated {}",
            t.captured, t.delivered, t.duplicated
        );
    }
    let m = agent.metrics();
    for (sink, _) in SINKS {
        let sum = |prefix: &str| metric_sum(&m, prefix, sink);
        println!(
            "{sink}: acknowledged {}, retried {}, failures {}",
            sum("raven_forward_acknowledged_records_total{"),
            sum("raven_forward_retried_records_total{"),
            sum("raven_forward_failures_total{"),
        );
    }
    let relays = agent.http("GET", "/api/forward/relays", Some(TOKEN), None);
    println!("relayed domains: {relays:?}");

    // The NOC asks for the range again: `raven-agent replay` through the
    // API re-sends it on its own connection; the live cursor stays.
    let rfc3339 =
        |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
    let to = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let out = lab
        .appliance
        .command(common::AGENT)
        .args(["replay", "--api", METRICS_LISTEN, "--token", TOKEN, "--sink", "noc-syslog"])
        .args(["--stream", "syslog", "--exporter", VENUE_V4])
        .args(["--from", &rfc3339(started), "--to", &rfc3339(to)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["records"], raven_seqs.len(), "{answer}");
    wait_until("the replayed range at the NOC", Duration::from_secs(30), || {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for (raven, _) in rsyslog_lines(&rsyslog_log) {
            *counts.entry(raven).or_default() += 1;
        }
        raven_seqs.iter().all(|r| counts.get(r).is_some_and(|n| *n >= 2))
    });
    agent.wait_for_metric(
        "raven_forward_replayed_records_total{outcome=\"acknowledged\",sink=\"noc-syslog\"}",
        raven_seqs.len() as f64,
    );
    let m = agent.metrics();
    let backlog = "raven_forward_backlog_records{sink=\"noc-syslog\",stream=\"syslog\"}";
    assert_eq!(m.get(backlog).copied(), Some(0.0), "the live cursor did not move back: {m:?}");
    let owed = owed(&agent);
    assert!(owed.values().all(|n| *n == 0), "the live cursors did not move back: {owed:?}");
    println!("took {:.1} s", started_at.elapsed().as_secs_f64());
}

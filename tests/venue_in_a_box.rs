//! Venue in a box: three namespaces — `venue` (senders), `appliance`
//! (Raven, XDP on its venue-side veth), `noc` (a real `rsyslogd` with a TCP
//! input writing every message to a file). Syslog lines carrying sequence
//! numbers are sent continuously while the appliance↔NOC link is cut, Raven
//! is SIGKILLed during the outage and started again, and the link is
//! restored. Afterwards every line is in rsyslog's file, duplicates stay
//! within the documented in-flight window, and first arrivals keep the
//! order they were sent in.
//!
//! What this does not claim: datagrams still in the kernel ring or the
//! agent's memory at the instant of a SIGKILL are lost (UDP has no
//! retransmission). The test therefore kills Raven once what was sent is
//! durable (`raven_store_appended_records_total`), which is the property
//! the store guarantees; `docs/forwarding.md` states the window.

mod common;

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use common::{
    APPLIANCE_V4, Agent, Lab, METRICS_LISTEN,
    noc::{NOC, connect_noc, rsyslog_with, wait_until},
};

const SINK_PORT: u16 = 10514;
const TOKEN: &str = "venue-noc-token";
/// Records a sink sends per batch: the most one broken connection can
/// duplicate (docs/forwarding.md).
const BATCH: usize = 512;

fn config(lab: &Lab) -> String {
    format!(
        "[capture]\nmode = \"xdp\"\ninterfaces = [\"{}\"]\n\
         ports = [{{port = 514, stream = \"syslog\"}}]\n\
         [api]\nlisten = \"{METRICS_LISTEN}\"\ntokens_file = \"@DIR@/tokens\"\n\
         [forward]\nappliance_id = \"venue-7\"\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\n\
         probe_interval_ms = 500\n\
         [[forward.sinks]]\nname = \"noc-syslog\"\nprotocol = \"syslog_tcp\"\n\
         endpoint = \"{NOC}:{SINK_PORT}\"\nadd_record_id = true\nconnect_timeout_ms = 1000\n\
         ack_timeout_ms = 2000\n",
        lab.appliance_if
    )
}

/// Sends `<14>… seq=N` for N in `range`, about 2000 per second.
fn send(lab: &Lab, range: std::ops::Range<u64>) {
    let socket = lab.sender(false);
    for seq in range {
        let line = format!("<14>Nov 28 12:00:00 venue-sw1 app: venue line seq={seq}");
        socket.send_to(line.as_bytes(), (APPLIANCE_V4, 514)).unwrap();
        if seq % 20 == 19 {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// seq → how many times rsyslog wrote it, and the order of first arrivals.
fn received(path: &std::path::Path) -> (BTreeMap<u64, usize>, Vec<u64>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut counts = BTreeMap::new();
    let mut first_order = Vec::new();
    for line in text.lines() {
        let Some(seq) = line.rsplit_once("seq=").and_then(|(_, s)| s.trim().parse::<u64>().ok())
        else {
            continue;
        };
        let n = counts.entry(seq).or_insert(0);
        if *n == 0 {
            first_order.push(seq);
        }
        *n += 1;
    }
    (counts, first_order)
}

fn nft(ns: &common::Netns, script: &str) {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft (Debian package nftables)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft failed: {script}");
}

#[test]
fn syslog_survives_an_outage_and_a_sigkill_with_nothing_lost() {
    let lab = Lab::new();
    let noc = connect_noc(&lab.appliance);
    let rsyslog_dir = tempfile::tempdir().unwrap();
    let _rsyslog = rsyslog_with(&noc, rsyslog_dir.path(), SINK_PORT, "module(load=\"imtcp\")\n");
    let log = rsyslog_dir.path().join("received.log");

    let started = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let mut agent = Agent::with_files(&lab, &config(&lab), &[("tokens", TOKEN)], &[]);
    agent.wait_until_attached();
    let stored = "raven_store_appended_records_total{stream=\"syslog\"}";
    let state = "raven_forward_link_state{sink=\"noc-syslog\"}";
    let backlog = "raven_forward_backlog_records{sink=\"noc-syslog\",stream=\"syslog\"}";

    // Link up: live forwarding.
    send(&lab, 0..500);
    agent.wait_for_metric(stored, 500.0);
    wait_until("the first 500 lines at the NOC", Duration::from_secs(20), || {
        received(&log).0.len() == 500
    });

    // Cut the appliance↔NOC link both ways; sending goes on.
    nft(
        &noc,
        "table inet cut {\n chain in { type filter hook input priority 0; policy drop; }\n \
         chain out { type filter hook output priority 0; policy drop; }\n}\n",
    );
    send(&lab, 500..1500);
    agent.wait_for_metric(stored, 1500.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = agent.metrics();
        let (s, b) = (m.get(state).copied(), m.get(backlog).copied().unwrap_or(0.0));
        if s.is_some_and(|s| s < 2.0) && b > 0.0 {
            println!("outage seen: link state {s:?}, backlog {b} records");
            break;
        }
        assert!(Instant::now() < deadline, "the outage never showed: {m:?}");
        thread::sleep(Duration::from_millis(100));
    }

    // SIGKILL during the outage, start again on the same store.
    agent.kill_and_restart();
    agent.wait_until_attached();
    send(&lab, 1500..2000);
    agent.wait_for_metric(stored, 500.0);

    // Restore the link: the backlog drains, oldest first.
    nft(&noc, "delete table inet cut\n");
    wait_until("every line at the NOC", Duration::from_secs(60), || received(&log).0.len() == 2000);
    thread::sleep(Duration::from_millis(500)); // let stragglers (duplicates) land
    let (counts, first_order) = received(&log);
    let missing: Vec<u64> = (0..2000).filter(|s| !counts.contains_key(s)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let duplicated: usize = counts.values().map(|n| n - 1).sum();
    println!("syslog: captured 2000, delivered {}, duplicated {duplicated}", counts.len());
    // One batch per broken connection (the cut, the kill) at most.
    assert!(duplicated <= 2 * BATCH, "{duplicated} duplicates");
    let mut sorted = first_order.clone();
    sorted.sort_unstable();
    assert_eq!(first_order, sorted, "first arrivals keep the sending order");
    let m = agent.metrics();
    assert_eq!(m.get(backlog).copied(), Some(0.0), "caught up: {m:?}");

    // The NOC asks for the range again: `raven-agent replay` through the
    // API re-sends it on its own connection; the live cursor stays.
    let rfc3339 =
        |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
    let to = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let out = lab
        .appliance
        .command(common::AGENT)
        .args(["replay", "--api", METRICS_LISTEN, "--token", TOKEN, "--sink", "noc-syslog"])
        .args(["--stream", "syslog", "--exporter", "198.18.0.2"])
        .args(["--from", &rfc3339(started), "--to", &rfc3339(to)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["records"], 2000, "{answer}");
    wait_until("the replayed range at the NOC", Duration::from_secs(30), || {
        received(&log).0.values().all(|n| *n >= 2)
    });
    agent.wait_for_metric(
        "raven_forward_replayed_records_total{outcome=\"acknowledged\",sink=\"noc-syslog\"}",
        2000.0,
    );
    let m = agent.metrics();
    assert_eq!(m.get(backlog).copied(), Some(0.0), "the live cursor did not move back: {m:?}");
}

//! A real flow exporter against the running appliance: `softflowd`
//! (Debian's 1.1.0) replays shared captures of ordinary traffic (`-r`) and
//! exports their flows as NetFlow v5, NetFlow v9 and IPFIX from the venue
//! namespace to `raven-agent run` (XDP capture on the appliance veth). The
//! records Raven stored, read back with `raven-agent segments cat`, must
//! decode: the version, the templates (v9/IPFIX data sets use templates the
//! same export defined, nothing waits for one), as many datagrams and flow
//! records as softflowd says it exported (its `-d` statistics), the
//! sequence verdicts the RFCs give for softflowd's numbers, and flows whose
//! addresses, protocols and ports are exactly the one-way conversations
//! tshark finds in the replayed capture.
//!
//! What softflowd 1.1.0 does that the test allows for, each checked:
//! - it skips PPPoE session frames (counted as non-IP): the count must equal
//!   tshark's, and those frames are left out of the expected conversations;
//! - it tracks a 6in4 packet as an IPv4 flow of protocol 41 without ports:
//!   expected ports come from TCP/UDP headers directly inside IPv4 only;
//! - v9/IPFIX carry one options data record (sampling, template 256), which
//!   Raven lists among `flows` with every field null;
//! - its IPFIX sequence numbers count this message's flow records too, and
//!   not its options record (RFC 7011 wants the records sent before): the
//!   test checks that numbering and that Raven reports exactly the gaps and
//!   restarts the RFC arithmetic gives for it;
//! - with a control socket (`-c`) and `-r` it may block forever in
//!   accept(): it never polls the socket when reading a file but tests an
//!   uninitialised poll result; the test runs it with `-c none`.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use common::{APPLIANCE_V4, Agent, Lab, METRICS_LISTEN, shared_capture};
use serde_json::Value;

/// TCP and UDP conversations (with VLAN tags, PPPoE and 6in4 among them),
/// and 77 UDP conversations: more than one NetFlow v5 datagram holds.
const CAPTURES: &[&str] = &[
    "nDPI/tests/cfgs/default/pcap/syslog.pcap",
    "zeek/testing/btest/Traces/snmp/leak_test.pcapng",
];

/// (source, destination, protocol, source port, destination port)
type Conversation = (String, String, u64, u64, u64);

fn shared(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data").join(relative)
}

/// The one-way IPv4 conversations of a capture as tshark reads it, and how
/// many frames are PPPoE sessions.
fn conversations(capture: &Path) -> (BTreeSet<Conversation>, u64) {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(capture)
        .args(["-T", "fields", "-E", "occurrence=f", "-E", "separator=,"])
        .args(["-e", "frame.protocols", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.proto"])
        .args(["-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "udp.srcport", "-e", "udp.dstport"])
        .output()
        .expect("tshark (a test dependency: cargo xtask setup --test-deps) must be installed");
    assert!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr));
    let (mut set, mut pppoe) = (BTreeSet::new(), 0);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f[0].contains("pppoes") {
            pppoe += 1;
            continue;
        }
        if f[1].is_empty() {
            continue; // not IPv4
        }
        let protocol: u64 = f[3].parse().unwrap();
        let port = |tcp: &str, udp: &str| match protocol {
            6 => tcp.parse().unwrap(),
            17 => udp.parse().unwrap(),
            _ => 0,
        };
        set.insert((
            f[1].to_string(),
            f[2].to_string(),
            protocol,
            port(f[4], f[6]),
            port(f[5], f[7]),
        ));
    }
    (set, pppoe)
}

/// softflowd's exit statistics: (records, packets, failures, non-IP frames
/// ignored), from "Flows exported: N (R records) in P packets (F failures)"
/// and "Ignored packets: I (I non-IP, …)".
fn softflowd_stats(stdout: &str) -> (u64, u64, u64, u64) {
    let numbers = |line: &str| -> Vec<u64> {
        line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
    };
    let exported = stdout
        .lines()
        .find(|l| l.starts_with("Flows exported:"))
        .unwrap_or_else(|| panic!("no export statistics from softflowd:\n{stdout}"));
    let ignored = stdout.lines().find(|l| l.starts_with("Ignored packets:")).unwrap_or("0 (0");
    let (e, i) = (numbers(exported), numbers(ignored));
    (e[1], e[2], e[3], i.get(1).copied().unwrap_or(0))
}

#[test]
fn softflowd_netflow_v5_v9_and_ipfix_exports_are_stored_and_decode() {
    let lab = Lab::new();
    let config = format!(
        "[capture]\nmode = \"xdp\"\ninterfaces = [\"{}\"]\n\
         ports = [{{port = 2055, stream = \"netflow\"}}, {{port = 4739, stream = \"ipfix\"}}]\n\
         [api]\nlisten = \"{METRICS_LISTEN}\"\n",
        lab.appliance_if
    );
    let agent = Agent::run(&lab, &config, &[]);
    agent.wait_until_attached();
    let work = tempfile::tempdir().unwrap();
    let mut appended: BTreeMap<&str, f64> = BTreeMap::new();
    // Each export in turn, so each one's datagrams are known by their
    // source port (a new softflowd process, a new port).
    let mut exports = Vec::new();
    for capture in CAPTURES {
        let path = shared(capture);
        let (expected, pppoe) = conversations(&path);
        for (version, port, stream) in
            [("5", 2055, "netflow"), ("9", 2055, "netflow"), ("10", 4739, "ipfix")]
        {
            let out = lab
                .venue
                .command("timeout")
                .args(["60", "softflowd", "-d", "-r"])
                .arg(&path)
                .args(["-v", version, "-n", &format!("{APPLIANCE_V4}:{port}")])
                // It unlinks its pid file at exit even when it wrote none:
                // a file of ours, not /var/run/softflowd.pid.
                .arg("-p")
                .arg(work.path().join("softflowd.pid"))
                // No control socket: when reading a file softflowd never
                // polls it, yet tests its (uninitialised) poll result and
                // may block in accept() forever (softflowd.c main loop).
                .args(["-c", "none"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "softflowd -v {version} -r {capture}: {}\n{text}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let (records, packets, failures, non_ip) = softflowd_stats(&text);
            assert_eq!(failures, 0, "softflowd could not send:\n{text}");
            assert!(records > 0 && packets > 0, "softflowd exported nothing:\n{text}");
            assert_eq!(non_ip, pppoe, "softflowd ignores the PPPoE frames, and only those");
            let total = appended.entry(stream).or_default();
            *total += packets as f64;
            agent.wait_for_metric(
                &format!("raven_store_appended_records_total{{stream=\"{stream}\"}}"),
                *total,
            );
            exports.push((*capture, version, stream, records, packets, expected.clone()));
        }
    }

    // The stored datagrams of each export: the streams in order, split where
    // the source port changes (one softflowd process per export).
    let mut by_stream: BTreeMap<&str, Vec<Vec<Value>>> = BTreeMap::new();
    let mut reported_gaps: BTreeMap<&str, f64> = BTreeMap::new();
    for stream in ["netflow", "ipfix"] {
        let mut groups: Vec<Vec<Value>> = Vec::new();
        for record in common::segments_cat(&agent.dir.path().join("data"), Some(stream)) {
            match groups.last_mut() {
                Some(g) if g[0]["src"] == record["src"] => g.push(record),
                _ => groups.push(vec![record]),
            }
        }
        groups.reverse(); // popped in export order below
        by_stream.insert(stream, groups);
    }
    for (capture, version, stream, records, packets, expected) in exports {
        let what = format!("softflowd -v {version} -r {capture}");
        let datagrams = by_stream.get_mut(stream).unwrap().pop().unwrap_or_default();
        assert_eq!(datagrams.len() as u64, packets, "{what}: datagrams stored");
        let mut flows = BTreeSet::new();
        let (mut flow_count, mut options) = (0, 0);
        let mut templates = BTreeSet::new();
        for (i, d) in datagrams.iter().enumerate() {
            assert!(d["src"].as_str().unwrap().starts_with("198.18.0.2:"), "{what}: {}", d["src"]);
            assert_eq!(d["parse_error"], Value::Null, "{what}: {d}");
            assert_eq!(d["via"], "xdp", "{what}");
            assert_eq!(d["version"].to_string(), version, "{what}");
            // What the exporter's sequence numbers say, datagram after
            // datagram (the first of an export follows another softflowd
            // process from the same address: a restart or nothing).
            if i > 0 {
                let prev = &datagrams[i - 1];
                let sequence = |d: &Value| d["sequence"].as_u64().unwrap() as u32;
                let records = |d: &Value| d["flows"].as_array().unwrap().len() as u32;
                let (gap, restarted) = match version {
                    // v5: flow sequence of the first flow; v9: one per
                    // datagram. softflowd numbers both as the RFCs say.
                    "5" | "9" => (Value::Null, Value::Null),
                    // IPFIX (RFC 7011 section 3.1): the Data Records sent
                    // before this message, options data records included.
                    // softflowd 1.1.0 sends its running count *after*
                    // adding this message's flow records and leaves its
                    // options record out (ipfix.c, send_ipfix_common:
                    // `*records_sent += records` before setting the
                    // sequence), so its numbers are off by the difference
                    // between consecutive messages' record counts. Raven
                    // reads them as the RFC defines: a larger message after
                    // a smaller one looks like loss, a smaller one like a
                    // restart.
                    _ => {
                        let flows_here = records(d)
                            - d["flows"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .filter(|f| f["src_addr"].is_null())
                                .count() as u32;
                        assert_eq!(
                            sequence(d),
                            sequence(prev) + flows_here,
                            "{what}: softflowd's IPFIX numbering changed: re-check it"
                        );
                        let ahead = sequence(d).wrapping_sub(sequence(prev) + records(prev));
                        match ahead {
                            0 => (Value::Null, Value::Null),
                            1..0x0100_0000 => (ahead.into(), Value::Null),
                            _ => (Value::Null, true.into()),
                        }
                    }
                };
                assert_eq!(d["sequence_gap"], gap, "{what}: datagram {i}");
                assert_eq!(d["exporter_restarted"], restarted, "{what}: datagram {i}");
            }
            if let Some(gap) = d["sequence_gap"].as_f64() {
                *reported_gaps.entry(stream).or_default() += gap;
            }
            if version != "5" {
                let defined = ["templates", "options_templates"]
                    .map(|key| d[key].as_array().unwrap_or_else(|| panic!("{what}: {key}: {d}")));
                for template in defined.into_iter().flatten() {
                    let id = template["id"].as_u64().unwrap();
                    assert!(id >= 256, "{what}: template id {id}");
                    assert!(template["fields"].as_u64().unwrap() > 0, "{what}: {template}");
                    templates.insert(id);
                }
                for id in d["data_set_ids"].as_array().unwrap() {
                    assert!(
                        templates.contains(&id.as_u64().unwrap()),
                        "{what}: data set {id} without its template (defined: {templates:?})"
                    );
                }
            }
            for f in d["flows"].as_array().unwrap() {
                if f.as_object().unwrap().values().all(Value::is_null) {
                    // An options data record (softflowd's v9/IPFIX sampling
                    // options, template 256): Raven lists it among `flows`
                    // with every flow field null; not a flow.
                    assert_ne!(version, "5", "{what}: {d}");
                    options += 1;
                    continue;
                }
                flow_count += 1;
                // softflowd counts IP bytes: at least a header per packet.
                let (octets, packets) = (f["octets"].as_u64(), f["packets"].as_u64());
                assert!(
                    packets.is_some_and(|p| p >= 1) && octets >= packets.map(|p| 20 * p),
                    "{what}: octets and packets of {f}"
                );
                let text = |key: &str| {
                    let value = f[key].as_str().map(str::to_string);
                    value.unwrap_or_else(|| panic!("{what}: flow without {key}: {f} in {d}"))
                };
                flows.insert((
                    text("src_addr"),
                    text("dst_addr"),
                    f["protocol"].as_u64().unwrap_or_else(|| panic!("{what}: {f}")),
                    f["src_port"].as_u64().unwrap_or(0),
                    f["dst_port"].as_u64().unwrap_or(0),
                ));
            }
        }
        if version != "5" {
            assert!(!templates.is_empty(), "{what}: a template was exported");
        }
        assert_eq!(flow_count, records, "{what}: flow records");
        let missing: Vec<_> = expected.difference(&flows).collect();
        let extra: Vec<_> = flows.difference(&expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{what}: conversations tshark found but Raven did not: {missing:?}; \
             flows Raven decoded that tshark did not find: {extra:?}"
        );
        println!(
            "{what}: {packets} datagrams, {records} flows, {options} options records, \
             templates {templates:?}"
        );
    }
    let m = agent.metrics();
    for stream in ["netflow", "ipfix"] {
        let key = format!("raven_decode_records_total{{outcome=\"decoded\",stream=\"{stream}\"}}");
        assert_eq!(m.get(&key).copied(), appended.get(stream).copied(), "{key}: {m:?}");
    }
    for stream in ["netflow", "ipfix"] {
        let key = format!("raven_decode_sequence_lost_total{{stream=\"{stream}\"}}");
        let lost = m.get(&key).copied().unwrap_or(0.0);
        assert_eq!(lost, reported_gaps.get(stream).copied().unwrap_or(0.0), "{key}");
    }
    assert_eq!(reported_gaps.get("netflow"), None, "softflowd's NetFlow sequences run on");
}

/// Templates outlive the agent, and data never waits silently: akvorado's
/// NetFlow v9 captures (one exporter, `data.pcap` needing the templates
/// of `template.pcap`) are sent from one venue socket. Data before its
/// template is stored raw and held; the template releases it; after a
/// SIGKILL and restart the same data decodes at once from the journal.
#[test]
fn netflow_templates_are_journaled_across_a_restart_and_early_data_is_held() {
    let lab = Lab::new();
    let config = format!(
        "[capture]\nmode = \"xdp\"\ninterfaces = [\"{}\"]\n\
         ports = [{{port = 2055, stream = \"netflow\"}}]\n[api]\nlisten = \"{METRICS_LISTEN}\"\n",
        lab.appliance_if
    );
    let mut agent = Agent::run(&lab, &config, &[]);
    agent.wait_until_attached();
    let [(_, template)] =
        &shared_capture("akvorado/outlet/flow/decoder/netflow/testdata/template.pcap")[..]
    else {
        panic!("template.pcap holds one datagram")
    };
    let [(_, data)] =
        &shared_capture("akvorado/outlet/flow/decoder/netflow/testdata/data.pcap")[..]
    else {
        panic!("data.pcap holds one datagram")
    };
    // One socket, so the exporter (address and port) is the same throughout.
    let sender = lab.sender(false);
    sender.send_to(data, (APPLIANCE_V4, 2055)).unwrap();
    agent.wait_for_metric("raven_store_appended_records_total{stream=\"netflow\"}", 1.0);
    sender.send_to(template, (APPLIANCE_V4, 2055)).unwrap();
    agent.wait_for_metric("raven_store_appended_records_total{stream=\"netflow\"}", 2.0);
    let records = common::segments_cat(&agent.dir.path().join("data"), Some("netflow"));
    assert_eq!(records[0]["pending"], 1, "held for its template: {}", records[0]);
    assert_eq!(
        records[0]["parse_error"].as_str().map(|e| e.starts_with("no_template")),
        Some(true)
    );
    let released = records[1]["released_flows"].as_array().expect("released with the template");
    assert!(!released.is_empty(), "{}", records[1]);

    agent.kill_and_restart();
    agent.wait_until_attached();
    sender.send_to(data, (APPLIANCE_V4, 2055)).unwrap();
    agent.wait_for_metric("raven_store_appended_records_total{stream=\"netflow\"}", 1.0);
    let records = common::segments_cat(&agent.dir.path().join("data"), Some("netflow"));
    let after = records.last().unwrap();
    assert!(after["parse_error"].is_null(), "decoded from the journal: {after}");
    assert_eq!(after["flows"].as_array().map(Vec::len), Some(released.len()), "{after}");
    assert_eq!(after["flows"], serde_json::json!(released), "the same flows as released");
}

//! Capture on a real kernel: the XDP program attached in native mode to a
//! veth in a network namespace, real senders in the peer namespace, and
//! `raven-agent tap` (or `run`) as the receiver. Records received must be
//! what was sent, byte for byte.

mod common;

use std::{thread, time::Duration};

use common::{APPLIANCE_V4, APPLIANCE_V6, Agent, Lab, Tap, TapRecord, frame::Frame, receive_all};

const WAIT: Duration = Duration::from_secs(10);

fn sorted(mut payloads: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    payloads.sort();
    payloads
}

fn payloads(records: &[TapRecord]) -> Vec<Vec<u8>> {
    records.iter().map(|r| r.payload.clone()).collect()
}

fn tap(lab: &Lab, extra: &[&str]) -> Tap {
    let mut args = vec!["--interface", &lab.appliance_if, "--mode", "driver"];
    args.extend_from_slice(extra);
    Tap::start(&lab.appliance, &args)
}

/// logger over UDP, RFC 3164 and RFC 5424, to IPv4 and IPv6. In tee mode a
/// plain socket on the appliance still gets every datagram, and what Raven
/// captured is byte for byte what the kernel delivered to that socket.
#[test]
fn logger_rfc3164_and_rfc5424_over_ipv4_and_ipv6_tee_matches_the_host_socket() {
    let lab = Lab::new();
    let host_collector = lab.appliance.udp_socket("[::]:514");
    let tap = tap(&lab, &["--action", "tee"]);
    let mut sent = 0;
    for (format, dst) in [
        ("--rfc3164", APPLIANCE_V4),
        ("--rfc5424", APPLIANCE_V4),
        ("--rfc3164", APPLIANCE_V6),
        ("--rfc5424", APPLIANCE_V6),
    ] {
        for i in 0..5 {
            let message = format!("raven test {format} to {dst} line {i}");
            lab.venue.run("logger", &["--udp", "-n", dst, "-P", "514", format, &message]);
            sent += 1;
        }
    }
    let records = tap.take(sent, WAIT);
    let host = receive_all(&host_collector, sent, WAIT);
    assert_eq!(records.len(), sent, "records captured");
    assert_eq!(host.len(), sent, "tee passes every datagram to the host");
    assert_eq!(sorted(payloads(&records)), sorted(host), "captured bytes = delivered bytes");
    for r in &records {
        assert_eq!((r.stream.as_str(), r.via.as_str(), r.dst_port), ("syslog", "xdp", 514));
        assert_eq!(r.len as usize, r.payload.len());
        assert!(!r.truncated);
    }
    let v6 = records.iter().filter(|r| r.src.starts_with("[2001:db8::2]")).count();
    let v4 = records.iter().filter(|r| r.src.starts_with("198.18.0.2:")).count();
    assert_eq!((v4, v6), (10, 10));
    let rfc5424 =
        records.iter().filter(|r| r.payload.windows(9).any(|w| w == b"--rfc5424")).count();
    assert_eq!(rfc5424, 10);
}

/// Steal: a socket on the host gets nothing, Raven gets everything.
#[test]
fn steal_mode_takes_every_datagram_from_the_host() {
    let lab = Lab::new();
    let host_collector = lab.appliance.udp_socket("[::]:514");
    let tap = tap(&lab, &["--action", "steal", "--stats"]);
    let sender = lab.sender(false);
    let sent: Vec<Vec<u8>> =
        (0..200).map(|i| format!("<14>steal test datagram {i:04}").into_bytes()).collect();
    for p in &sent {
        sender.send_to(p, (APPLIANCE_V4, 514)).unwrap();
    }
    let records = tap.take(sent.len(), WAIT);
    assert_eq!(payloads(&records), sent, "all captured, in order");
    assert!(records.iter().all(|r| r.via == "xdp"));
    // Every datagram was captured (above); this waits only to make sure
    // none reaches the host as well: a negative check, so a fixed window.
    assert!(receive_all(&host_collector, 1, Duration::from_millis(500)).is_empty());
    let (_, stats) = tap.stop();
    assert_eq!(stats["kernel"]["matched"]["syslog"], 200, "{stats}");
    assert_eq!(stats["exporters"][0]["packets"], 200, "{stats}");
    assert_eq!(stats["exporters"][0]["exporter"], "198.18.0.2", "{stats}");
}

/// snmptrap v1 and v2c from Net-SNMP; tee, checked against the host socket.
#[test]
fn snmptrap_v1_and_v2c_are_captured_byte_for_byte() {
    let lab = Lab::new();
    let host_collector = lab.appliance.udp_socket("[::]:162");
    let tap = tap(&lab, &["--action", "tee"]);
    let target = format!("{APPLIANCE_V4}:162");
    lab.venue.run(
        "snmptrap",
        &[
            "-v",
            "1",
            "-c",
            "public",
            &target,
            "1.3.6.1.4.1.8072.2.3",
            "198.18.0.2",
            "6",
            "17",
            "",
            "1.3.6.1.2.1.1.5.0",
            "s",
            "venue-switch-7",
        ],
    );
    lab.venue.run(
        "snmptrap",
        &[
            "-v",
            "2c",
            "-c",
            "public",
            &target,
            "",
            "1.3.6.1.6.3.1.1.5.3",
            "1.3.6.1.2.1.2.2.1.1.3",
            "i",
            "3",
        ],
    );
    lab.venue.run(
        "snmptrap",
        &[
            "-v",
            "2c",
            "-c",
            "public",
            &format!("udp6:[{APPLIANCE_V6}]:162"),
            "",
            "1.3.6.1.6.3.1.1.5.4",
            "1.3.6.1.2.1.2.2.1.1.3",
            "i",
            "3",
        ],
    );
    let records = tap.take(3, WAIT);
    let host = receive_all(&host_collector, 3, WAIT);
    assert_eq!(records.len(), 3);
    assert_eq!(sorted(payloads(&records)), sorted(host));
    for r in &records {
        assert_eq!(r.stream, "snmp");
        assert_eq!(r.payload[0], 0x30, "a BER SEQUENCE");
        assert!(r.payload.windows(6).any(|w| w == b"public"));
    }
}

fn send_captures(lab: &Lab, files: &[(&str, u16)], v6: bool) -> Vec<(u16, Vec<u8>)> {
    let sender = lab.sender(v6);
    let dst = if v6 { APPLIANCE_V6 } else { APPLIANCE_V4 };
    let mut sent = Vec::new();
    for &(file, port) in files {
        for (_, payload) in common::shared_capture(file) {
            sender.send_to(&payload, (dst, port)).unwrap();
            sent.push((port, payload));
            // Keep the order observable: one datagram in flight at a time is
            // not needed, but a burst of jumbo datagrams would be.
            thread::sleep(Duration::from_millis(1));
        }
    }
    sent
}

/// NetFlow v5/v9, IPFIX and sFlow captures from ../shared/data, replayed
/// from the venue to the standard ports (their addresses rewritten to the
/// lab's), arrive unchanged and in order, each on its stream.
#[test]
fn netflow_ipfix_and_sflow_captures_replay_unchanged() {
    let lab = Lab::new();
    let tap = tap(&lab, &["--action", "steal"]);
    let files = [
        ("akvorado/outlet/flow/decoder/netflow/testdata/nfv5.pcap", 2055),
        ("akvorado/outlet/flow/decoder/netflow/testdata/template.pcap", 2055),
        ("akvorado/outlet/flow/decoder/netflow/testdata/data.pcap", 2055),
        ("akvorado/pcap/ipfix_v10_with_mpls_labels.pcap", 4739),
        ("akvorado/outlet/flow/decoder/netflow/testdata/ipfixprobe-templates.pcap", 4739),
        ("nDPI/tests/cfgs/default/pcap/sflow.pcap", 6343),
        ("akvorado/outlet/flow/decoder/sflow/testdata/data-1140.pcap", 6343),
    ];
    let mut sent = send_captures(&lab, &files, false);
    sent.extend(send_captures(&lab, &files[..2], true));
    let records = tap.take(sent.len(), WAIT);
    assert_eq!(records.len(), sent.len());
    for (r, (port, payload)) in records.iter().zip(&sent) {
        assert_eq!(&r.payload, payload);
        assert_eq!(r.dst_port, *port);
        let stream = match port {
            2055 => "netflow",
            4739 => "ipfix",
            _ => "sflow",
        };
        assert_eq!(r.stream, stream);
        assert_eq!(r.via, "xdp");
    }
}

/// 802.1Q and 802.1ad+802.1Q tagged frames on the wire, over IPv4 and IPv6,
/// are parsed through their tags by the program on the veth.
#[test]
fn vlan_and_qinq_tagged_datagrams_are_captured() {
    let lab = Lab::new();
    let tap = tap(&lab, &["--action", "steal"]);
    let mut frames = Vec::new();
    let mut sent = Vec::new();
    for (vlans, label) in [(vec![0x8100], "dot1q"), (vec![0x88a8, 0x8100], "qinq")] {
        for i in 0..10 {
            let payload = format!("<30>{label} tagged line {i}").into_bytes();
            let mut frame =
                if i % 2 == 0 { Frame::v4(514, &payload) } else { Frame::v6(514, &payload) };
            frame.vlans = vlans.clone();
            frames.push(frame.build().0);
            sent.push(payload);
        }
    }
    common::send_frames(&lab.venue, &lab.venue_if, &frames);
    let records = tap.take(sent.len(), WAIT);
    assert_eq!(payloads(&records), sent);
    assert!(records.iter().all(|r| r.via == "xdp"), "{records:?}");
    let v6 = records.iter().filter(|r| r.src.starts_with("[2001:db8::10]:")).count();
    assert_eq!(v6, 10);
}

/// A tiny ring and a burst: what does not fit goes through the kernel to the
/// agent's socket. Ring records + socket records = datagrams sent, no
/// duplicates, and each path's count matches its counter.
#[test]
fn ring_overflow_falls_back_to_the_socket_without_loss() {
    let lab = Lab::new();
    let tap = tap(&lab, &["--action", "steal", "--ring-bytes", "4096", "--stats"]);
    let sender = lab.sender(false);
    let total = 5000usize;
    let sent: Vec<Vec<u8>> =
        (0..total).map(|i| format!("<14>overflow burst datagram {i:06}").into_bytes()).collect();
    for p in &sent {
        sender.send_to(p, (APPLIANCE_V4, 514)).unwrap();
    }
    let mut records = tap.take(total, Duration::from_secs(20));
    let (rest, stats) = tap.stop();
    records.extend(rest);
    assert_eq!(sorted(payloads(&records)), sorted(sent.clone()), "none lost, none twice");
    let via_socket = records.iter().filter(|r| r.via == "socket").count() as u64;
    let via_xdp = records.iter().filter(|r| r.via == "xdp").count() as u64;
    assert!(via_socket > 0, "the burst did not overflow a one-page ring: {stats}");
    assert_eq!(stats["kernel"]["ring_full_passed"], via_socket, "{stats}");
    assert_eq!(stats["kernel"]["matched"]["syslog"], via_xdp, "{stats}");
    assert_eq!(stats["exporters"][0]["ring_full"], via_socket, "{stats}");
}

/// 4–8 KB datagrams are fragmented on a 1500-byte link; the program passes
/// the fragments and the agent's socket gets the reassembled datagrams.
#[test]
fn fragmented_datagrams_arrive_complete_through_the_socket() {
    let lab = Lab::new();
    let tap = tap(&lab, &["--action", "steal", "--stats"]);
    let mut sent = Vec::new();
    for v6 in [false, true] {
        let sender = lab.sender(v6);
        let dst = if v6 { APPLIANCE_V6 } else { APPLIANCE_V4 };
        for size in [4000usize, 6000, 8000] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
            sender.send_to(&payload, (dst, 2055)).unwrap();
            sent.push(payload);
        }
    }
    let records = tap.take(sent.len(), WAIT);
    assert_eq!(sorted(payloads(&records)), sorted(sent));
    assert!(records.iter().all(|r| r.via == "socket" && r.stream == "netflow" && !r.truncated));
    let (_, stats) = tap.stop();
    let fragments = stats["kernel"]["fragment_passed"].as_u64().unwrap();
    assert!(fragments >= 6 * 3, "each datagram is ≥ 3 fragments: {stats}");
}

/// Socket-only mode captures the same traffic without XDP.
#[test]
fn socket_mode_captures_without_xdp() {
    let lab = Lab::new();
    let tap = Tap::start(&lab.appliance, &["--interface", &lab.appliance_if, "--mode", "socket"]);
    let sender = lab.sender(true);
    let sent: Vec<Vec<u8>> = (0..50).map(|i| format!("<13>socket {i}").into_bytes()).collect();
    for p in &sent {
        sender.send_to(p, (APPLIANCE_V6, 514)).unwrap();
    }
    let records = tap.take(sent.len(), WAIT);
    assert_eq!(payloads(&records), sent);
    assert!(records.iter().all(|r| r.via == "socket" && r.src.starts_with("[2001:db8::2]:")));
}

fn xdp_attached(lab: &Lab) -> bool {
    let out = lab.appliance.run("ip", &["link", "show", "dev", &lab.appliance_if]);
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// SIGINT detaches; after a SIGKILL the next start attaches without any
/// manual cleanup (bpf_link attachments die with their process).
#[test]
fn clean_detach_and_restart_after_sigkill() {
    let lab = Lab::new();
    let first = tap(&lab, &["--action", "steal"]);
    assert!(xdp_attached(&lab));
    first.stop();
    assert!(!xdp_attached(&lab), "SIGINT leaves no program behind");

    let killed = tap(&lab, &["--action", "steal"]);
    killed.signal(libc::SIGKILL);
    drop(killed);
    let again = tap(&lab, &["--action", "steal"]);
    let sender = lab.sender(false);
    sender.send_to(b"<14>after restart", (APPLIANCE_V4, 514)).unwrap();
    let records = again.take(1, WAIT);
    assert_eq!(payloads(&records), vec![b"<14>after restart".to_vec()]);
    assert_eq!(records[0].via, "xdp");
}

/// `raven-agent run`: a port added to the config file is captured after
/// SIGHUP, without a restart; a bad file is refused and the running
/// configuration stays.
#[test]
fn run_applies_a_port_added_to_the_config_without_restart() {
    let lab = Lab::new();
    let config = |ports: &str| {
        format!(
            "[capture]\nmode = \"xdp\"\ninterfaces = [\"{}\"]\nports = [{ports}]\n\
             [api]\nlisten = \"{}\"\n",
            lab.appliance_if,
            common::METRICS_LISTEN,
        )
    };
    let agent = Agent::run(&lab, &config("{port = 514, stream = \"syslog\"}"), &[]);
    let captured = "raven_capture_records_total{stream=\"syslog\",via=\"xdp\"}";
    let sender = lab.sender(false);
    agent.wait_until_attached();
    let no_port = lab.appliance.udp_counts().no_port;
    sender.send_to(b"<14>on 5514 before", (APPLIANCE_V4, 5514)).unwrap();
    sender.send_to(b"<14>on 514", (APPLIANCE_V4, 514)).unwrap();
    // The datagram to 5514 went past the program to the host's stack, which
    // has no socket there, before the port is configured: otherwise it
    // could still be on its way when the new configuration applies.
    common::poll("the host to drop the datagram to 5514", WAIT, || {
        let counts = lab.appliance.udp_counts();
        if counts.no_port > no_port { Ok(()) } else { Err(counts) }
    });
    let m = agent.wait_for_metric(captured, 1.0);
    assert_eq!(m[captured], 1.0, "5514 is not configured yet");

    agent.rewrite_config(&config(
        "{port = 514, stream = \"syslog\"}, {port = 5514, stream = \"syslog\"}",
    ));
    agent.signal(libc::SIGHUP);
    assert!(agent.wait_stderr("configuration reloaded"), "{}", agent.stderr());
    sender.send_to(b"<14>on 5514 after", (APPLIANCE_V4, 5514)).unwrap();
    agent.wait_for_metric(captured, 2.0);

    agent.rewrite_config("[capture]\nsnap_length = 0\n");
    agent.signal(libc::SIGHUP);
    assert!(agent.wait_stderr("capture.snap_length"), "the refusal names the key");
    sender.send_to(b"<14>still on 5514", (APPLIANCE_V4, 5514)).unwrap();
    let m = agent.wait_for_metric(captured, 3.0);
    assert_eq!(m[captured], 3.0);
    agent.wait_for_metric("raven_store_appended_records_total{stream=\"syslog\"}", 3.0);
    let stored: Vec<String> = agent
        .stored("syslog")
        .iter()
        .map(|r| r["payload"].as_str().unwrap_or_else(|| panic!("{r}")).to_string())
        .collect();
    assert_eq!(stored, ["<14>on 514", "<14>on 5514 after", "<14>still on 5514"]);
    let status = agent.stop();
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
}

/// `lo` has no native XDP: auto mode falls back to generic (skb) mode and
/// still captures.
#[test]
fn auto_mode_falls_back_to_generic_xdp_where_native_is_missing() {
    let lab = Lab::new();
    let tap = Tap::start(&lab.appliance, &["--interface", "lo", "--action", "steal", "--stats"]);
    let sender = lab.appliance.udp_socket("127.0.0.1:0");
    sender.send_to(b"<14>over loopback", ("127.0.0.1", 514)).unwrap();
    let records = tap.take(1, WAIT);
    assert_eq!(payloads(&records), vec![b"<14>over loopback".to_vec()]);
    assert_eq!(records[0].via, "xdp");
    let (_, stats) = tap.stop();
    assert_eq!(stats["mode"]["Xdp"]["lo"], "skb", "{stats}");
}

/// A listener whose receive buffer overflows: the kernel's drops are
/// counted, so captured + counted-as-dropped = sent.
#[test]
fn socket_receive_buffer_overflow_is_counted() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("raven.toml");
    std::fs::write(
        &config,
        "[capture]\nsocket_receive_buffer_bytes = 2048\nports = [{port = 514, stream = \"syslog\"}]\n",
    )
    .unwrap();
    let tap = Tap::start(
        &lab.appliance,
        &[
            "--interface",
            &lab.appliance_if,
            "--mode",
            "socket",
            "--config",
            config.to_str().unwrap(),
            "--stats",
        ],
    );
    let sender = lab.sender(false);
    let total = 20_000usize;
    let (venue, appliance) = (lab.venue.udp_counts(), lab.appliance.udp_counts());
    for i in 0..total {
        sender.send_to(format!("<14>flood {i:06}").as_bytes(), (APPLIANCE_V4, 514)).unwrap();
    }
    // Every datagram read by the tap or dropped by the kernel: the drop
    // count is final and nothing waits in the buffer when the tap stops.
    common::wait_udp_taken(
        "the flood to be read or dropped",
        (&lab.venue, venue),
        (&lab.appliance, appliance),
        Duration::from_secs(20),
    );
    let (records, stats) = tap.stop();
    let dropped = stats["agent"]["raven_capture_socket_overflow_total{port=\"514\"}"]
        .as_f64()
        .unwrap_or(0.0) as usize;
    assert!(dropped > 0, "a 2 KiB buffer did not overflow: {stats}");
    assert_eq!(records.len() + dropped, total, "{stats}");
}

//! The forwarding sinks against real receivers: `rsyslogd` (imtcp),
//! `nfcapd` + `nfdump`, `snmptrapd`, and an HTTP receiver (axum).
//!
//! Each test makes two namespaces joined by a veth pair: the appliance side
//! (192.0.2.1, where the sink's sockets live) and the NOC side (192.0.2.2,
//! where the receiver runs). Everything is removed on drop, failures too.
//! Needs root (CI is root); fails loudly without it.

mod common;

use std::{
    collections::BTreeMap,
    io::Read,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, atomic::AtomicBool, atomic::Ordering},
    thread,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use common::{
    Netns,
    noc::{
        APPLIANCE, Link, NOC, Process, nfcapd, nfdump_exporters, nfdump_flows, rsyslog_with,
        snmptrapd, wait_until,
    },
    sh,
};
use raven_agent::{
    config::{ForwardConfig, SinkConfig, SinkProtocol, SyslogFraming},
    forward::{LinkState, ManagedSink, Outgoing, RecordId},
    record::Stream,
};

/// Runs `future` on a current-thread runtime on a thread inside `ns`, so
/// every socket it makes lives there.
fn block_on_in<T: Send>(ns: &Netns, future: impl std::future::Future<Output = T> + Send) -> T {
    ns.enter(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
    })
}

fn forward_config() -> ForwardConfig {
    ForwardConfig {
        appliance_id: "venue-7".into(),
        backoff_min_ms: 20,
        backoff_max_ms: 400,
        breaker_failures: 3,
        ..ForwardConfig::default()
    }
}

fn outgoing(stream: Stream, seq: u64, src: &str, dst_port: u16, payload: Vec<u8>) -> Outgoing {
    Outgoing {
        id: RecordId { appliance: "venue-7".into(), stream, seq },
        captured_at: SystemTime::now(),
        src: src.parse().unwrap(),
        dst_port,
        payload: Bytes::from(payload),
        decoded: None,
    }
}

/// What a forwarding run saw.
#[derive(Debug, Default)]
struct Run {
    failures: usize,
    states: Vec<LinkState>,
}

/// The forwarder's loop in miniature: from a cursor, batch by batch, moving
/// only over acknowledged records, waiting out backoff after failures.
async fn deliver_all(
    sink: &mut ManagedSink,
    records: &[Outgoing],
    batch: usize,
    timeout: Duration,
    acknowledged: Option<&std::sync::atomic::AtomicUsize>,
) -> Run {
    let deadline = Instant::now() + timeout;
    let mut cursor = 0;
    let mut run = Run::default();
    while cursor < records.len() {
        assert!(
            Instant::now() < deadline,
            "only {cursor} of {} acknowledged in time; {run:?}",
            records.len()
        );
        sink.wait_ready().await;
        let end = (cursor + batch).min(records.len());
        match sink.send(&records[cursor..end]).await {
            Ok(d) => cursor += d.acknowledged,
            Err(f) => {
                cursor += f.acknowledged;
                run.failures += 1;
            }
        }
        if run.states.last() != Some(&sink.state()) {
            run.states.push(sink.state());
        }
        if let Some(a) = acknowledged {
            a.store(cursor, Ordering::Relaxed);
        }
    }
    run
}

fn metric(name: &str) -> f64 {
    raven_agent::metrics::snapshot().get(name).copied().unwrap_or(0.0)
}

// ---------------------------------------------------------------- syslog

fn rsyslog(noc: &Netns, dir: &Path, port: u16) -> Process {
    rsyslog_with(noc, dir, port, "module(load=\"imtcp\")\n")
}

/// seq → how many times it is in rsyslog's file.
fn received_syslog(path: &Path) -> BTreeMap<u64, usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut seen = BTreeMap::new();
    for line in text.lines() {
        if let Some(seq) = line.rsplit_once("seq=").and_then(|(_, s)| s.trim().parse().ok()) {
            *seen.entry(seq).or_insert(0) += 1;
            assert!(
                line.contains(&format!("[raven@32473 id=\"venue-7:syslog:{seq}\"]")),
                "record id missing or wrong: {line}"
            );
        }
    }
    seen
}

#[test]
fn syslog_tcp_reaches_rsyslog_exactly_once_across_a_receiver_restart() {
    syslog_restart_case("rsyslog-tcp", libc::SIGTERM);
}

/// The receiver dies without warning (SIGKILL): whatever it had ACKed at
/// the TCP level but not yet written is the risk. The confirm delay means
/// only batches ACKed at least `ack_confirm_ms` ago were acknowledged, and
/// rsyslogd has written those by then.
#[test]
fn syslog_tcp_reaches_rsyslog_exactly_once_across_a_receiver_kill() {
    syslog_restart_case("rsyslog-tcp-kill", libc::SIGKILL);
}

/// Streams syslog to rsyslogd, stops it with `signal` a third of the way
/// in, restarts it, and checks every message arrived, duplicates within the
/// in-flight window.
fn syslog_restart_case(name: &str, signal: i32) {
    const RECORDS: u64 = 4000;
    const BATCH: usize = 50;
    let link = Link::new();
    let dir = tempfile::tempdir().unwrap();
    let port = 6514;
    let received = dir.path().join("received.log");
    let mut receiver = Some(rsyslog(&link.noc, dir.path(), port));

    let records: Vec<Outgoing> = (0..RECORDS)
        .map(|seq| {
            let msg = format!(
                "<14>1 2026-11-28T19:00:00.000Z venue-sw1 app - - - forward test seq={seq}"
            );
            outgoing(Stream::Syslog, seq, "198.18.0.2:514", 514, msg.into_bytes())
        })
        .collect();
    let mut config = SinkConfig::new(name, SinkProtocol::SyslogTcp, &format!("{NOC}:{port}"));
    config.add_record_id = true;
    config.max_records_per_second = 2000; // a few seconds of stream, so the kill lands mid-way
    let forward = forward_config();
    let acknowledged = std::sync::atomic::AtomicUsize::new(0);
    let done = AtomicBool::new(false);

    let run = thread::scope(|scope| {
        let sender = scope.spawn(|| {
            let run = block_on_in(&link.appliance, async {
                let mut sink = ManagedSink::new(&config, &forward).unwrap();
                deliver_all(
                    &mut sink,
                    &records,
                    BATCH,
                    Duration::from_secs(90),
                    Some(&acknowledged),
                )
                .await
            });
            done.store(true, Ordering::Relaxed);
            run
        });
        // Mid-stream: stop the receiver, keep it away a while, start it again.
        wait_until("a third of the stream", Duration::from_secs(60), || {
            acknowledged.load(Ordering::Relaxed) as u64 >= RECORDS / 3
                || done.load(Ordering::Relaxed)
        });
        assert!(!done.load(Ordering::Relaxed), "the stream ended before the restart");
        receiver.take().unwrap().stop(signal);
        let during_outage = acknowledged.load(Ordering::Relaxed);
        // The outage itself: no receiver for this long, and nothing may be
        // acknowledged meanwhile (a negative check, so a fixed time; the
        // link-state seconds below are measured against it).
        thread::sleep(Duration::from_millis(1500));
        let after_outage = acknowledged.load(Ordering::Relaxed);
        assert!(
            after_outage - during_outage <= BATCH,
            "records acknowledged while no receiver ran: {during_outage} → {after_outage}"
        );
        receiver = Some(rsyslog(&link.noc, dir.path(), port));
        sender.join().unwrap()
    });

    wait_until("rsyslog to write every message", Duration::from_secs(20), || {
        received_syslog(&received).len() as u64 == RECORDS
    });
    receiver.take().unwrap().terminate();
    let seen = received_syslog(&received);
    let missing: Vec<u64> = (0..RECORDS).filter(|s| !seen.contains_key(s)).collect();
    let duplicated: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("{name}: sent {RECORDS}, received {}, duplicated {duplicated}, {run:?}", seen.len());
    assert!(missing.is_empty(), "lost: {missing:?}");
    // At most the in-flight batch of each broken connection comes twice.
    assert!(duplicated <= BATCH, "{duplicated} duplicates (window is one batch of {BATCH})");
    assert!(run.failures >= 1, "the restart was not noticed: {run:?}");
    assert!(
        run.states.contains(&LinkState::Degraded) || run.states.contains(&LinkState::Down),
        "{run:?}"
    );
    assert_eq!(run.states.last(), Some(&LinkState::Up));
    let acknowledged =
        metric(&format!("raven_forward_acknowledged_records_total{{sink=\"{name}\"}}"));
    assert!(acknowledged >= RECORDS as f64, "{acknowledged}");
    let refused =
        metric(&format!("raven_forward_failures_total{{reason=\"connect\",sink=\"{name}\"}}"));
    assert!(refused >= 1.0, "connection refused while the receiver was away");
    assert_eq!(metric(&format!("raven_forward_link_state{{sink=\"{name}\"}}")), 2.0, "up");
    let seconds = |state: &str| {
        metric(&format!(
            "raven_forward_link_state_seconds_total{{sink=\"{name}\",state=\"{state}\"}}"
        ))
    };
    assert!(seconds("up") > 1.0, "time up: {}", seconds("up"));
    assert!(seconds("degraded") + seconds("down") > 0.5, "the outage lasted 1.5 s");
}

/// Sends `records` syslog messages through a sink of `protocol` / `framing`
/// to an rsyslogd with `input_module`, and checks each arrived once.
fn syslog_plain_case(
    name: &str,
    protocol: SinkProtocol,
    framing: SyslogFraming,
    input_module: &str,
) {
    const RECORDS: u64 = 500;
    let link = Link::new();
    let dir = tempfile::tempdir().unwrap();
    let port = 5514;
    let receiver = rsyslog_with(&link.noc, dir.path(), port, input_module);
    let records: Vec<Outgoing> = (0..RECORDS)
        .map(|seq| {
            let msg =
                format!("<14>1 2026-11-28T19:00:00.000Z venue-sw1 app - - - {name} seq={seq}\n");
            outgoing(Stream::Syslog, seq, "198.18.0.2:514", 514, msg.into_bytes())
        })
        .collect();
    let mut config = SinkConfig::new(name, protocol, &format!("{NOC}:{port}"));
    config.add_record_id = true;
    config.framing = framing;
    config.max_records_per_second = 5000;
    let forward = forward_config();
    let run = block_on_in(&link.appliance, async {
        let mut sink = ManagedSink::new(&config, &forward).unwrap();
        deliver_all(&mut sink, &records, 20, Duration::from_secs(30), None).await
    });
    assert_eq!(run.failures, 0, "{run:?}");
    let received = dir.path().join("received.log");
    wait_until("rsyslog to write every message", Duration::from_secs(20), || {
        received_syslog(&received).len() as u64 == RECORDS
    });
    receiver.terminate();
    let seen = received_syslog(&received);
    assert!(seen.values().all(|&n| n == 1), "{name}: duplicates without any failure");
}

#[test]
fn syslog_tcp_lf_framing_reaches_rsyslog() {
    syslog_plain_case(
        "rsyslog-lf",
        SinkProtocol::SyslogTcp,
        SyslogFraming::Lf,
        "module(load=\"imtcp\")\n",
    );
}

#[test]
fn syslog_udp_reaches_rsyslog() {
    syslog_plain_case(
        "rsyslog-udp",
        SinkProtocol::SyslogUdp,
        SyslogFraming::OctetCounting,
        "module(load=\"imudp\")\n",
    );
}

/// A CA, a server certificate for `noc.test` / 192.0.2.2 and a client
/// certificate, made with the openssl CLI.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| sh(Command::new("openssl").args(args).current_dir(dir));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=raven-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    for (name, cn, ext) in [
        (
            "server",
            "noc.test",
            "subjectAltName=DNS:noc.test,IP:192.0.2.2\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "raven-client",
            "subjectAltName=DNS:raven-client\nextendedKeyUsage=clientAuth\n",
        ),
    ] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{ext}"),
        )
        .unwrap();
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}

#[test]
fn syslog_tls_with_client_certificate_reaches_rsyslog() {
    const RECORDS: u64 = 500;
    let link = Link::new();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let port = 6515;
    let module = format!(
        "global(DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{}\" \
         DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\")\n\
         module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" \
         StreamDriver.AuthMode=\"x509/certvalid\")\n",
        file("ca.pem"),
        file("server.pem"),
        file("server.key"),
    );
    let receiver = rsyslog_with(&link.noc, dir.path(), port, &module);
    let records: Vec<Outgoing> = (0..RECORDS)
        .map(|seq| {
            let msg =
                format!("<14>1 2026-11-28T19:00:00.000Z venue-sw1 app - - - over tls seq={seq}");
            outgoing(Stream::Syslog, seq, "198.18.0.2:514", 514, msg.into_bytes())
        })
        .collect();
    let mut config =
        SinkConfig::new("rsyslog-tls", SinkProtocol::SyslogTls, &format!("{NOC}:{port}"));
    config.add_record_id = true;
    config.server_name = "noc.test".into();
    config.ca_file = file("ca.pem");
    config.cert_file = file("client.pem");
    config.key_file = file("client.key");
    let forward = forward_config();
    let run = block_on_in(&link.appliance, async {
        let mut sink = ManagedSink::new(&config, &forward).unwrap();
        sink.probe().await.expect("TLS handshake with rsyslogd");
        deliver_all(&mut sink, &records, 100, Duration::from_secs(30), None).await
    });
    assert_eq!(run.failures, 0, "{run:?}");
    let received = dir.path().join("received.log");
    wait_until("rsyslog to write every message", Duration::from_secs(20), || {
        received_syslog(&received).len() as u64 == RECORDS
    });
    receiver.terminate();
    let seen = received_syslog(&received);
    assert!(seen.values().all(|&n| n == 1), "duplicates without any failure");

    // Without the client certificate rsyslogd refuses the session: the
    // records are not acknowledged.
    let mut anonymous = config.clone();
    anonymous.name = "rsyslog-tls-anon".into();
    anonymous.cert_file.clear();
    anonymous.key_file.clear();
    let receiver = rsyslog_with(&link.noc, dir.path(), port, &module);
    let result = block_on_in(&link.appliance, async {
        let mut sink = ManagedSink::new(&anonymous, &forward).unwrap();
        sink.send(&records[..10]).await
    });
    receiver.terminate();
    let failure = result.expect_err("rsyslogd must refuse a client without a certificate");
    assert_eq!(failure.acknowledged, 0);
}

// ------------------------------------------------------------- UDP relay

/// Whether a NetFlow v9 / IPFIX datagram carries a (options) template set.
fn carries_templates(d: &[u8]) -> bool {
    let (mut at, ids) = match d.get(..2) {
        Some([0, 9]) => (20, [0u16, 1]),
        Some([0, 10]) => (16, [2, 3]),
        _ => return false,
    };
    while at + 4 <= d.len() {
        let id = u16::from_be_bytes([d[at], d[at + 1]]);
        let len = usize::from(u16::from_be_bytes([d[at + 2], d[at + 3]]));
        if ids.contains(&id) {
            return true;
        }
        if len < 4 {
            return false;
        }
        at += len;
    }
    false
}

/// Waits until every datagram the appliance sent since `before` was read
/// by a collector (or dropped) at the NOC: a collector stopped earlier
/// would leave datagrams unread in its socket.
fn wait_collected(link: &Link, (appliance, noc): (common::UdpCounts, common::UdpCounts)) {
    common::wait_udp_taken(
        "the NOC to read every datagram",
        (&link.appliance, appliance),
        (&link.noc, noc),
        Duration::from_secs(20),
    );
}

fn relay_config(name: &str, port: u16) -> SinkConfig {
    SinkConfig::new(name, SinkProtocol::UdpRelay, &format!("{NOC}:{port}"))
}

fn send_direct(link: &Link, port: u16, datagrams: &[Vec<u8>]) {
    let socket = link.appliance.udp_socket(&format!("{APPLIANCE}:0"));
    for d in datagrams {
        socket.send_to(d, format!("{NOC}:{port}")).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
}

fn relay(link: &Link, sink: &mut ManagedSink, records: &[Outgoing]) {
    block_on_in(&link.appliance, async {
        // Paced one by one so the collector's socket buffer never overflows.
        for record in records {
            sink.send(std::slice::from_ref(record)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
}

fn udp_relay_case(capture: &str, stream: Stream, name: &str) {
    let datagrams: Vec<Vec<u8>> =
        common::shared_capture(capture).into_iter().map(|(_, p)| p).collect();
    let split =
        datagrams.iter().rposition(|d| carries_templates(d)).expect("a template datagram") + 1;
    assert!(split < datagrams.len(), "{capture}: no data-only datagrams after the last template");
    let records: Vec<Outgoing> = datagrams
        .iter()
        .enumerate()
        .map(|(i, d)| outgoing(stream, i as u64, "198.18.0.2:40000", 2055, d.clone()))
        .collect();
    let link = Link::new();
    let dir = tempfile::tempdir().unwrap();
    let forward = forward_config();
    let ports = [9901u16, 9902, 9903, 9904, 9905];
    let dirs: Vec<PathBuf> = ["direct", "relayed", "restarted", "unprimed", "whole"]
        .iter()
        .map(|d| dir.path().join(d))
        .collect();
    let collectors: Vec<Process> =
        dirs.iter().zip(ports).map(|(d, port)| nfcapd(&link.noc, d, port)).collect();
    let counts_before = (link.appliance.udp_counts(), link.noc.udp_counts());

    // Baseline: the capture straight to a collector.
    send_direct(&link, ports[0], &datagrams);
    // Relayed: up to and including the last template datagram, then the
    // sink "restarts" (a new sink primed from the stored datagrams, as after
    // an agent restart) and relays the rest to a collector that never saw
    // the templates: they must go ahead of the data.
    let mut first =
        ManagedSink::new(&relay_config(&format!("{name}-a"), ports[1]), &forward).unwrap();
    relay(&link, &mut first, &records[..split]);
    let mapping = first.relay_mapping().unwrap().clone();
    assert_eq!(
        mapping.keys().map(|(ip, _)| *ip).collect::<Vec<_>>().first(),
        Some(&"198.18.0.2".parse::<IpAddr>().unwrap())
    );
    let mut restarted =
        ManagedSink::new(&relay_config(&format!("{name}-b"), ports[2]), &forward).unwrap();
    let primer = restarted.relay_mut().expect("a relay");
    primer.set_mapping(mapping.clone());
    primer.learn(&records[..split]);
    relay(&link, &mut restarted, &records[split..]);
    assert_eq!(restarted.relay_mapping(), Some(&mapping), "ids stay stable across the restart");
    // Control: the same without priming loses the data at the collector.
    let mut unprimed =
        ManagedSink::new(&relay_config(&format!("{name}-c"), ports[3]), &forward).unwrap();
    relay(&link, &mut unprimed, &records[split..]);

    // The whole capture through one sink, from two exporters that use the
    // same source id / domain: the collector must keep them apart.
    let mut whole =
        ManagedSink::new(&relay_config(&format!("{name}-w"), ports[4]), &forward).unwrap();
    let second: Vec<Outgoing> = records
        .iter()
        .map(|r| Outgoing { src: "198.18.0.3:40000".parse().unwrap(), ..r.clone() })
        .collect();
    // (one runtime: the sink's socket belongs to the runtime that made it)
    relay(&link, &mut whole, &[records.clone(), second].concat());
    let mapping = whole.relay_mapping().unwrap().clone();
    let exporters: std::collections::BTreeSet<IpAddr> = mapping.keys().map(|(ip, _)| *ip).collect();
    assert_eq!(exporters.len(), 2, "{mapping:?}");
    let ids: std::collections::BTreeSet<u32> = mapping.values().copied().collect();
    assert_eq!(ids.len(), mapping.len(), "one relayed id per (exporter, domain): {mapping:?}");

    wait_collected(&link, counts_before);
    for c in collectors {
        c.terminate();
    }
    let counts: Vec<usize> = dirs.iter().map(|d| nfdump_flows(d)).collect();
    eprintln!(
        "{capture}: {} datagrams (split {split}); flows direct/relayed/restarted/unprimed/whole = {counts:?}",
        datagrams.len()
    );
    assert!(counts[0] > 0, "nfcapd decoded nothing from the capture itself");
    assert_eq!(counts[4], 2 * counts[0], "the relayed captures must give the collector every flow");
    let exporters = nfdump_exporters(&dirs[4]);
    eprintln!("{capture}: exporters at the collector: {exporters:?}");
    assert_eq!(
        exporters.len(),
        mapping.len(),
        "the collector must see one exporter per (exporter, domain): {mapping:?}"
    );
    assert_eq!(counts[1] + counts[2], counts[0], "relayed flows must equal direct flows");
    assert!(counts[2] > 0, "no flows after the restart: templates were not re-sent");
    assert!(counts[3] < counts[2], "control: without templates the collector should lose data");
}

#[test]
fn udp_relay_netflow_v9_reaches_nfcapd_with_templates_resent_after_restart() {
    udp_relay_case(
        "pmacct/tests/101-NFv9-CISCO-cust_primitives/traffic-00.pcap",
        Stream::Netflow,
        "relay-v9",
    );
}

#[test]
fn udp_relay_ipfix_reaches_nfcapd_with_templates_resent_after_restart() {
    udp_relay_case("pmacct/tests/100-IPFIXv10-CISCO/traffic-00.pcap", Stream::Ipfix, "relay-ipfix");
}

// ------------------------------------------------------------------ SNMP

#[test]
fn snmp_traps_and_informs_reach_snmptrapd() {
    let link = Link::new();
    let dir = tempfile::tempdir().unwrap();
    // Real Net-SNMP senders, captured on a socket in the appliance namespace.
    let capture = link.appliance.udp_socket("127.0.0.1:0");
    let to = capture.local_addr().unwrap().to_string();
    let oid = "1.3.6.1.4.1.8072.2.3.2.1";
    let mut labels = Vec::new();
    for n in 0..8 {
        let label = format!("raven-v2c-{n}");
        link.appliance.run(
            "snmptrap",
            &["-v", "2c", "-c", "public", &to, "", "1.3.6.1.4.1.8072.2.3.0.1", oid, "s", &label],
        );
        labels.push(label);
    }
    for n in 0..4 {
        let label = format!("raven-v1-{n}");
        link.appliance.run(
            "snmptrap",
            &[
                "-v",
                "1",
                "-c",
                "public",
                &to,
                "1.3.6.1.4.1.8072.2.3",
                "198.18.0.2",
                "6",
                "17",
                "",
                oid,
                "s",
                &label,
            ],
        );
        labels.push(label);
    }
    let informs: Vec<Child> = (0..4)
        .map(|n| {
            let label = format!("raven-inform-{n}");
            let child = link
                .appliance
                .command("snmpinform")
                .args([
                    "-v",
                    "2c",
                    "-c",
                    "public",
                    "-r",
                    "0",
                    "-t",
                    "1",
                    &to,
                    "",
                    "1.3.6.1.4.1.8072.2.3.0.1",
                    oid,
                    "s",
                    &label,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            labels.push(label);
            child
        })
        .collect();
    let mut payloads = common::receive_all(&capture, labels.len(), Duration::from_secs(10));
    for mut c in informs {
        let _ = c.wait();
    }
    assert_eq!(payloads.len(), labels.len(), "captured from the Net-SNMP tools");
    // Plus one Response PDU (not a notification: must not reach the receiver).
    let mut response = payloads.last().unwrap().clone();
    let at = response.iter().position(|&b| b == 0xA6).unwrap();
    response[at] = 0xA2;
    payloads.push(response);
    let records: Vec<Outgoing> = payloads
        .into_iter()
        .enumerate()
        .map(|(i, p)| outgoing(Stream::Snmp, i as u64, "198.18.0.2:40001", 162, p))
        .collect();

    let log = dir.path().join("traps.log");
    let receiver = snmptrapd(&link.noc, dir.path(), 1162);

    let config = SinkConfig::new("noc-traps", SinkProtocol::Snmp, &format!("{NOC}:1162"));
    // (the Net-SNMP tools above sent in the appliance namespace too)
    let counts_before = (link.appliance.udp_counts(), link.noc.udp_counts());
    let run = block_on_in(&link.appliance, async {
        let mut sink = ManagedSink::new(&config, &forward_config()).unwrap();
        deliver_all(&mut sink, &records, 5, Duration::from_secs(20), None).await
    });
    assert_eq!(run.failures, 0);
    let count = |text: &str, label: &str| text.matches(&format!("\"{label}\"")).count();
    wait_until("snmptrapd to log every trap", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        labels.iter().all(|l| count(&text, l) >= 1)
    });
    // Every datagram the sink sent has been read by snmptrapd, and it
    // finishes what it read before it exits: a duplicate would be logged.
    wait_collected(&link, counts_before);
    receiver.terminate();
    let text = std::fs::read_to_string(&log).unwrap();
    for label in &labels {
        assert_eq!(count(&text, label), 1, "{label} in:\n{text}");
    }
    assert!(!text.contains("Response"), "a Response PDU reached the receiver:\n{text}");
    assert_eq!(metric("raven_forward_skipped_records_total{sink=\"noc-traps\"}"), 1.0);
    assert_eq!(
        metric("raven_forward_acknowledged_records_total{sink=\"noc-traps\"}"),
        records.len() as f64
    );
}

// ------------------------------------------------------------------ HTTP

#[derive(Default)]
struct Received {
    requests: usize,
    rejected: Vec<String>,
    accepted: Vec<String>,
    problems: Vec<String>,
}

async fn ingest(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<Received>>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> axum::http::StatusCode {
    let mut r = state.lock().unwrap();
    r.requests += 1;
    let header =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if header("content-encoding") != "gzip" || header("content-type") != "application/x-ndjson" {
        r.problems.push(format!("headers {headers:?}"));
    }
    let mut text = String::new();
    if let Err(e) = flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut text) {
        r.problems.push(format!("not gzip: {e}"));
    }
    let mut ids = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                r.problems.push(format!("{e}: {line}"));
                continue;
            }
        };
        let id = v["raven_id"].as_str().unwrap_or_default().to_string();
        let seq = id.rsplit(':').next().unwrap_or_default();
        let ok = v["stream"] == "syslog"
            && v["src"] == "198.18.0.2:514"
            && v["dst_port"] == 514
            && v["ts"].as_str().is_some_and(|t| t.ends_with('Z'))
            && v["message"] == format!("hello {seq}")
            && v.get("payload").is_none();
        if !ok {
            r.problems.push(format!("bad line {line}"));
        }
        ids.push(id);
    }
    if header("x-raven-first-id") != ids.first().cloned().unwrap_or_default() {
        r.problems.push("x-raven-first-id".into());
    }
    if r.requests == 1 {
        r.rejected.extend(ids);
        axum::http::StatusCode::INTERNAL_SERVER_ERROR
    } else {
        r.accepted.extend(ids);
        axum::http::StatusCode::NO_CONTENT
    }
}

#[test]
fn http_sink_posts_gzip_json_lines_and_retries_after_500() {
    http_case("noc-http", None);
}

#[test]
fn https_sink_verifies_the_server_and_retries_after_500() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    http_case("noc-https", Some(dir.path()));
}

/// An axum server over TLS: `axum::serve` over a listener that does the
/// handshake (with Raven's own TLS acceptor).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The HTTP sink against an axum receiver that answers the first POST with
/// 500 and the others with 204; over TLS when `certificates` is given.
fn http_case(name: &str, certificates: Option<&Path>) {
    let link = Link::new();
    let state = Arc::new(Mutex::new(Received::default()));
    let listener = link.noc.enter(|| std::net::TcpListener::bind(format!("{NOC}:8088")).unwrap());
    listener.set_nonblocking(true).unwrap();
    let acceptor = certificates.map(|dir| {
        raven_agent::capture::tcp::tls_acceptor(
            &dir.join("server.pem"),
            &dir.join("server.key"),
            None,
        )
        .unwrap()
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_state = state.clone();
    let server = thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(
            async move {
                let app = axum::Router::new()
                    .route("/ingest", axum::routing::post(ingest))
                    .with_state(server_state);
                let tcp = tokio::net::TcpListener::from_std(listener).unwrap();
                let stop = async {
                    let _ = stop_rx.await;
                };
                match acceptor {
                    Some(acceptor) => axum::serve(TlsListener { tcp, acceptor }, app)
                        .with_graceful_shutdown(stop)
                        .await
                        .unwrap(),
                    None => axum::serve(tcp, app).with_graceful_shutdown(stop).await.unwrap(),
                }
            },
        )
    });

    let records: Vec<Outgoing> = (0..250)
        .map(|seq| {
            let mut r = outgoing(
                Stream::Syslog,
                seq,
                "198.18.0.2:514",
                514,
                format!("<13>hello {seq}").into_bytes(),
            );
            r.decoded = Some(Bytes::from(format!(r#"{{"severity":5,"message":"hello {seq}"}}"#)));
            r
        })
        .collect();
    let scheme = if certificates.is_some() { "https" } else { "http" };
    let mut config =
        SinkConfig::new(name, SinkProtocol::Http, &format!("{scheme}://{NOC}:8088/ingest"));
    if let Some(dir) = certificates {
        config.ca_file = dir.join("ca.pem").display().to_string();
        config.server_name = "noc.test".into();
    }
    let run = block_on_in(&link.appliance, async {
        let mut sink = ManagedSink::new(&config, &forward_config()).unwrap();
        deliver_all(&mut sink, &records, 100, Duration::from_secs(20), None).await
    });
    if certificates.is_some() {
        // A server name the certificate does not carry is refused.
        let mut wrong = config.clone();
        wrong.name = format!("{name}-wrong-name");
        wrong.server_name = "other.test".into();
        let result = block_on_in(&link.appliance, async {
            let mut sink = ManagedSink::new(&wrong, &forward_config()).unwrap();
            sink.send(&records[..1]).await
        });
        let failure = result.expect_err("certificate name mismatch must fail");
        assert_eq!(failure.error.reason(), "tls", "{failure}");
    }
    let _ = stop_tx.send(());
    server.join().unwrap();

    let r = state.lock().unwrap();
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    let want: Vec<String> = records.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(r.accepted, want, "every record once, in order, after the retry");
    assert_eq!(r.rejected, want[..100], "the first batch was refused once");
    assert_eq!(r.requests, 4);
    assert_eq!(run.failures, 1);
    assert_eq!(run.states.last(), Some(&LinkState::Up));
    let failures =
        format!("raven_forward_failures_total{{reason=\"http_status\",sink=\"{name}\"}}");
    assert_eq!(metric(&failures), 1.0);
    assert_eq!(metric(&format!("raven_forward_retried_records_total{{sink=\"{name}\"}}")), 100.0);
}

// ----------------------------------------------------------- link health

/// A UDP sink cannot see acknowledgements, but it does see the ICMP "port
/// unreachable" a host without a receiver sends back: the probe fails and
/// the link is no longer up.
#[test]
fn udp_sink_notices_an_absent_receiver() {
    let link = Link::new();
    let config = SinkConfig::new("absent-traps", SinkProtocol::Snmp, &format!("{NOC}:1163"));
    let trap = {
        // A minimal SNMPv2c trap: version 1, community "public", empty PDU.
        let mut pdu = vec![0x02, 0x01, 0x01, 0x04, 0x06];
        pdu.extend_from_slice(b"public");
        pdu.extend([0xA7, 0x00]);
        let mut message = vec![0x30, pdu.len() as u8];
        message.extend(pdu);
        message
    };
    let records = [outgoing(Stream::Snmp, 0, "198.18.0.2:1", 162, trap)];
    let unreachable = |c: &BTreeMap<String, u64>| c.get("Icmp.InDestUnreachs").copied();
    let before = unreachable(&link.appliance.counters()).unwrap_or(0);
    let (sent, probed, state) = block_on_in(&link.appliance, async {
        let mut sink = ManagedSink::new(&config, &forward_config()).unwrap();
        let sent = sink.send(&records).await.map(|d| d.acknowledged);
        // The NOC's "port unreachable" has come back (the kernel sets the
        // socket's error as it takes the ICMP in).
        common::poll("the ICMP port unreachable", Duration::from_secs(10), || {
            let counters = link.appliance.counters();
            if unreachable(&counters).unwrap_or(0) > before { Ok(()) } else { Err(counters) }
        });
        let probed = sink.probe().await;
        (sent, probed, sink.state())
    });
    assert_eq!(sent.unwrap(), 1, "UDP cannot know yet");
    let error = probed.expect_err("the ICMP port unreachable must fail the probe");
    assert_eq!(error.reason(), "write", "{error}");
    assert_eq!(state, LinkState::Degraded);
    assert_eq!(metric("raven_forward_failures_total{reason=\"write\",sink=\"absent-traps\"}"), 1.0);
}

/// NetFlow v5 has no templates; the relay only rewrites the engine type/id,
/// so two exporters with the same engine stay apart at the collector.
#[test]
fn udp_relay_netflow_v5_reaches_nfcapd_with_exporters_apart() {
    let datagrams: Vec<Vec<u8>> =
        common::shared_capture("akvorado/outlet/flow/decoder/netflow/testdata/nfv5.pcap")
            .into_iter()
            .map(|(_, p)| p)
            .collect();
    let link = Link::new();
    let dir = tempfile::tempdir().unwrap();
    let (direct_dir, relayed_dir) = (dir.path().join("direct"), dir.path().join("relayed"));
    let collectors = [nfcapd(&link.noc, &direct_dir, 9911), nfcapd(&link.noc, &relayed_dir, 9912)];
    let counts_before = (link.appliance.udp_counts(), link.noc.udp_counts());
    send_direct(&link, 9911, &datagrams);
    let records: Vec<Outgoing> = ["198.18.0.2:40000", "198.18.0.3:40000"]
        .iter()
        .flat_map(|src| {
            datagrams
                .iter()
                .enumerate()
                .map(|(i, d)| outgoing(Stream::Netflow, i as u64, src, 2055, d.clone()))
        })
        .collect();
    let mut sink = ManagedSink::new(&relay_config("relay-v5", 9912), &forward_config()).unwrap();
    relay(&link, &mut sink, &records);
    wait_collected(&link, counts_before);
    for c in collectors {
        c.terminate();
    }
    let (direct, relayed) = (nfdump_flows(&direct_dir), nfdump_flows(&relayed_dir));
    eprintln!("nfv5: flows direct {direct}, relayed from two exporters {relayed}");
    assert_eq!(direct, 29, "the catalog says 29 v5 records");
    assert_eq!(relayed, 2 * direct);
    assert_eq!(nfdump_exporters(&relayed_dir).len(), 2, "two exporters at the collector");
}

//! Syslog over TCP and TLS with real clients: `logger --tcp` with octet
//! counting and with LF framing, `openssl s_client` over TLS, with and
//! without client certificates (PKI made with openssl at test time).

mod common;

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{APPLIANCE_V4, Lab, Tap};

const WAIT: Duration = Duration::from_secs(10);

fn openssl(dir: &Path, args: &[&str]) {
    common::sh(Command::new("openssl").args(args).current_dir(dir));
}

/// A CA, a server certificate for 198.18.0.1, and a client certificate.
fn pki(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=raven test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    for (name, subject, ext) in [
        ("server", "/CN=198.18.0.1", "subjectAltName=IP:198.18.0.1"),
        ("client", "/CN=venue-switch", "extendedKeyUsage=clientAuth"),
    ] {
        let mut req = vec!["req", "-subj", subject];
        req.extend(ec);
        let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let extfile = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &pem,
            ],
        );
    }
}

fn tap_with(lab: &Lab, dir: &Path, tls_extra: &str) -> Tap {
    let config = dir.join("raven.toml");
    let d = dir.display();
    std::fs::write(
        &config,
        format!(
            "[capture.syslog_tcp]\nlisten = \"{APPLIANCE_V4}:514\"\nmax_message_bytes = 1024\n\
             [capture.syslog_tls]\nlisten = \"{APPLIANCE_V4}:6514\"\n\
             cert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\n{tls_extra}"
        ),
    )
    .unwrap();
    Tap::start(
        &lab.appliance,
        &[
            "--interface",
            &lab.appliance_if,
            "--mode",
            "socket",
            "--config",
            config.to_str().unwrap(),
        ],
    )
}

fn tls_send(lab: &Lab, dir: &Path, client_cert: bool, data: &[u8]) -> bool {
    // The venue side sends, as a device would.
    // `-quiet` implies `-ign_eof`; `-no_ign_eof` makes it hang up after the data.
    let mut cmd = lab.venue.command("timeout");
    cmd.args(["10", "openssl", "s_client", "-connect", "198.18.0.1:6514", "-quiet", "-no_ign_eof"])
        .arg("-verify_return_error")
        .arg("-CAfile")
        .arg(dir.join("ca.pem"));
    if client_cert {
        cmd.arg("-cert").arg(dir.join("client.pem")).arg("-key").arg(dir.join("client.key"));
    }
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    child.wait_with_output().unwrap().status.success()
}

#[test]
fn logger_over_tcp_with_octet_counting_and_lf_framing() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let tap = tap_with(&lab, dir.path(), "");
    let mut sent = Vec::new();
    for (framing, i) in [("--octet-count", 0), ("--octet-count", 1), ("", 2), ("", 3)] {
        let text = format!("tcp line {i} framing {framing:?}");
        let mut args = vec!["--tcp", "-n", APPLIANCE_V4, "-P", "514", "--rfc5424"];
        if !framing.is_empty() {
            args.push(framing);
        }
        args.push(&text);
        lab.venue.run("logger", &args);
        sent.push(text);
    }
    // One oversize message: kept, cut at max_message_bytes, flagged.
    let long = "x".repeat(3000);
    lab.venue.run(
        "logger",
        &["--tcp", "-n", APPLIANCE_V4, "-P", "514", "--octet-count", "--size", "4000", &long],
    );
    let records = tap.take(5, WAIT);
    assert_eq!(records.len(), 5, "{records:?}");
    for (r, text) in records.iter().zip(&sent) {
        assert_eq!((r.stream.as_str(), r.via.as_str(), r.dst_port), ("syslog", "tcp", 514));
        assert!(r.payload.starts_with(b"<13>1 "), "{:?}", String::from_utf8_lossy(&r.payload));
        assert!(r.payload.ends_with(text.as_bytes()), "no framing left in the record");
        assert!(!r.truncated);
        assert!(r.src.starts_with("198.18.0.2:"));
    }
    let big = &records[4];
    assert!(big.truncated);
    assert_eq!(big.payload.len(), 1024);
    assert!(big.len > 3000);
}

#[test]
fn tls_with_and_without_client_certificates() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let tap = tap_with(&lab, dir.path(), "");
    let batch = b"<14>tls line one\n21 <14>tls octet counted\n<14>tls line three\n";
    assert!(tls_send(&lab, dir.path(), false, batch), "TLS client connects");
    let records = tap.take(3, WAIT);
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    assert_eq!(
        payloads,
        [&b"<14>tls line one"[..], b"<14>tls octet counted", b"<14>tls line three"]
    );
    assert!(records.iter().all(|r| r.via == "tls" && r.dst_port == 6514));
    drop(tap);

    // Mutual TLS: a client without a certificate is refused, one with passes.
    let ca = dir.path().join("ca.pem");
    let tap = tap_with(&lab, dir.path(), &format!("client_ca_file = \"{}\"\n", ca.display()));
    tls_send(&lab, dir.path(), false, b"<14>no client cert\n");
    assert!(tls_send(&lab, dir.path(), true, b"<14>with client cert\n"));
    let mut records = tap.take(1, WAIT);
    // The refused session ended before the accepted one began: had its line
    // been taken, it would be here by now. A short window to make sure.
    records.extend(tap.take(1, Duration::from_secs(1)));
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    assert_eq!(payloads, [&b"<14>with client cert"[..]]);
}

#[test]
fn connections_beyond_the_limit_are_refused_and_counted() {
    use std::{io::Read, net::TcpStream};
    let lab = Lab::new();
    let config = format!(
        "[capture]\nmode = \"socket\"\nports = []\n\
         [capture.syslog_tcp]\nlisten = \"{APPLIANCE_V4}:514\"\nmax_connections = 1\n\
         [api]\nlisten = \"{}\"\n",
        common::METRICS_LISTEN
    );
    // JSON logs (as a log shipper would take them): the refusal's line must
    // name stream, exporter and reason as fields.
    let agent = common::Agent::run(&lab, &config, &["env", "RAVEN_LOG_FORMAT=json"]);
    assert!(agent.wait_stderr("syslog"), "{}", agent.stderr());
    let connect = || {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match lab.venue.enter(|| TcpStream::connect((APPLIANCE_V4, 514))) {
                Ok(stream) => return stream,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot connect: {e}\n{}", agent.stderr()),
            }
        }
    };
    let mut first = connect();
    first.write_all(b"<14>held connection\n").unwrap();
    let captured = "raven_capture_records_total{stream=\"syslog\",via=\"tcp\"}";
    agent.wait_for_metric(captured, 1.0);

    // The second connection is accepted and closed at once.
    let mut second = connect();
    second.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(second.read(&mut buf).unwrap_or(0), 0, "refused connection is closed");
    let refused = "raven_capture_tcp_refused_total{port=\"514\",reason=\"connection_limit\"}";
    agent.wait_for_metric(refused, 1.0);
    // The log line reaches us through a pipe, on its own schedule.
    assert!(agent.wait_stderr("syslog connection refused"), "{}", agent.stderr());
    let stderr = agent.stderr();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let refusal = lines
        .iter()
        .map(|l| &l["fields"])
        .find(|f| f["message"] == "syslog connection refused")
        .unwrap_or_else(|| panic!("no refusal logged:\n{stderr}"));
    assert_eq!(refusal["stream"], "syslog", "{refusal}");
    assert_eq!(refusal["reason"], "connection_limit", "{refusal}");
    let exporter = refusal["exporter"].as_str().unwrap_or_default();
    assert!(exporter.starts_with("198.18.0.2:"), "{refusal}");

    // Once the first goes away, a new one is served. Until the agent has
    // seen it go, a new connection is refused (and counted): try again.
    drop(first);
    let count = |m: &std::collections::BTreeMap<String, f64>, name: &str| {
        m.get(name).copied().unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let refused_before = count(&agent.metrics(), refused);
        let mut third = connect();
        third.write_all(b"<14>after the first closed\n").unwrap();
        drop(third);
        let m = common::poll("the third connection served or refused", WAIT, || {
            let m = agent.metrics();
            if count(&m, captured) >= 2.0 || count(&m, refused) > refused_before {
                Ok(m)
            } else {
                Err(m)
            }
        });
        if count(&m, captured) >= 2.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed: {}", agent.stderr());
    }
}

//! The status page in a real browser: headless Chromium loads it from a
//! running agent with traffic, and the DOM shows the streams, numbers and
//! exporters. The screenshot goes to docs/ with RAVEN_BLESS=1.

mod common;

use std::{process::Command, time::Duration};

use common::{APPLIANCE_V4, Agent, Lab, METRICS_LISTEN};

fn chromium(lab: &Lab, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = common::sh(
        Command::new("ip")
            .args(["netns", "exec", &lab.appliance.name, "chromium"])
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=8000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_status_page_shows_streams_numbers_and_exporters() {
    let lab = Lab::new();
    let config = format!(
        "[capture]\nmode = \"xdp\"\ninterfaces = [\"{}\"]\n[api]\nlisten = \"{METRICS_LISTEN}\"\n\
         tokens_file = \"@DIR@/tokens\"\n\
         [[forward.sinks]]\nname = \"noc\"\nprotocol = \"syslog_tcp\"\nendpoint = \"198.18.0.2:10514\"\n",
        lab.appliance_if
    );
    let agent = Agent::with_files(&lab, &config, &[("tokens", "page-token\n")], &[]);
    agent.wait_until_attached();
    let sender = lab.sender(false);
    for i in 0..30 {
        sender
            .send_to(format!("<14>status page line {i}").as_bytes(), (APPLIANCE_V4, 514))
            .unwrap();
    }
    for _ in 0..5 {
        sender.send_to(&[0x30, 0x03, 0x02, 0x01, 0x01], (APPLIANCE_V4, 162)).unwrap();
    }
    agent.wait_for_metric("raven_capture_records_total{stream=\"syslog\",via=\"xdp\"}", 30.0);
    // The page shows what `/api/status` says when it loads: wait until that
    // holds everything checked below. The exporters come with the capture
    // status (published once a second), the sink's backlog once its
    // forwarder has looked at the store.
    common::poll("/api/status to catch up with the traffic", Duration::from_secs(15), || {
        let (code, body) = agent.http("GET", "/api/status", Some("page-token"), None).unwrap();
        let s: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let stream = |name: &str| {
            s["streams"].as_array().into_iter().flatten().find(|r| r["stream"] == name).cloned()
        };
        let (syslog, snmp) =
            (stream("syslog").unwrap_or_default(), stream("snmp").unwrap_or_default());
        let exporter = s["capture"]["exporters"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["exporter"] == "198.18.0.2");
        let sink =
            s["sinks"].as_array().into_iter().flatten().find(|k| k["sink"] == "noc").cloned();
        let caught_up = code == 200
            && syslog["records"] == 30
            && syslog["stored"] == 30
            && snmp["records"] == 5
            && exporter
            && sink.is_some_and(|k| k["backlog_records"] == 30.0);
        if caught_up { Ok(()) } else { Err(body) }
    });

    let base = format!("http://{METRICS_LISTEN}/");
    let without_token = chromium(&lab, &base, &["--dump-dom"]);
    assert!(without_token.contains("token needed"), "{without_token}");
    assert!(!without_token.contains("data-stream=\"syslog\""));

    let page = format!("{base}#token=page-token");
    let dom = chromium(&lab, &page, &["--dump-dom"]);
    let row = |stream: &str| {
        let start =
            dom.find(&format!("data-stream=\"{stream}\"")).unwrap_or_else(|| panic!("{dom}"));
        dom[start..start + dom[start..].find("</tr>").unwrap()].to_string()
    };
    assert!(row("syslog").contains(">30<"), "{}", row("syslog"));
    assert!(row("snmp").contains(">5<"), "{}", row("snmp"));
    assert!(row("netflow").contains(">0<"), "{}", row("netflow"));
    assert!(dom.contains("data-exporter=\"198.18.0.2\""), "{dom}");
    assert!(dom.contains(&format!("XDP on {} (driver)", lab.appliance_if)), "{dom}");
    assert!(dom.contains("<polyline"), "rate charts are drawn");
    // The store and the sink: every syslog line stored, the sink (nobody
    // listens) not up, its backlog all of them.
    assert!(row("syslog").contains("class=\"n stored\">30<"), "{}", row("syslog"));
    assert!(dom.contains("store ok"), "{dom}");
    let sink = &dom[dom.find("data-sink=\"noc\"").unwrap_or_else(|| panic!("{dom}"))..];
    let sink = &sink[..sink.find("</tr>").unwrap()];
    assert!(!sink.contains(">up<"), "{sink}");
    assert!(sink.contains("class=\"n backlog\">30<"), "{sink}");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    chromium(&lab, &page, &["--window-size=1280,720", &format!("--screenshot={}", shot.display())]);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a real screenshot");
    if std::env::var_os("RAVEN_BLESS").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/status-page.png");
        std::fs::copy(&shot, docs).unwrap();
    }
    assert!(agent.stop().success());
}

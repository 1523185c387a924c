//! The API over real HTTP against a running agent in a namespace: every
//! endpoint, authentication (none, wrong, rotated, right), configuration
//! validation for each kind of bad input, and live apply (a port added
//! through the API is captured).

mod common;

use std::time::Duration;

use common::{APPLIANCE_V4, Agent, Lab, METRICS_LISTEN, poll};
use serde_json::Value;

/// Bound on waits for what the agent publishes once a second.
const WAIT: Duration = Duration::from_secs(10);

const OLD: &str = "token-being-rotated-out";
const NEW: &str = "token-rotated-in";

fn config(lab: &Lab) -> String {
    format!(
        "[capture]\nmode = \"xdp\"\ninterfaces = [\"{}\"]\nports = [{{port = 514, stream = \"syslog\"}}]\n\
         [api]\nlisten = \"{METRICS_LISTEN}\"\ntokens_file = \"@DIR@/tokens\"\n",
        lab.appliance_if
    )
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn endpoints_auth_validation_and_live_apply() {
    let lab = Lab::new();
    let tokens = format!("{OLD}\n{NEW}\n");
    let agent = Agent::with_files(&lab, &config(&lab), &[("tokens", &tokens)], &[]);
    agent.wait_until_attached();

    // Open endpoints.
    assert_eq!(agent.http("GET", "/healthz", None, None).unwrap().0, 200);
    let (status, body) = agent.http("GET", "/readyz", None, None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["ready"], true);
    assert!(agent.http("GET", "/metrics", None, None).unwrap().1.contains("raven_xdp_attached"));

    // Auth: none, wrong, old-but-valid (rotation), new.
    for path in ["/api/buffer/config", "/api/capture/status", "/api/exporters", "/api/openapi.json"]
    {
        assert_eq!(agent.http("GET", path, None, None).unwrap().0, 401, "{path} without token");
        assert_eq!(agent.http("GET", path, Some("wrong"), None).unwrap().0, 401, "{path}");
        assert_eq!(agent.http("GET", path, Some(OLD), None).unwrap().0, 200, "{path} old");
        assert_eq!(agent.http("GET", path, Some(NEW), None).unwrap().0, 200, "{path} new");
    }
    let (_, body) = agent.http("GET", "/api/buffer/config", Some(NEW), None).unwrap();
    let mut config = json(&body);
    assert_eq!(config["capture"]["ports"][0]["port"], 514);
    let (_, body) = agent.http("GET", "/api/capture/status", Some(NEW), None).unwrap();
    assert_eq!(json(&body)["mode"]["Xdp"][&lab.appliance_if], "driver", "{body}");

    // Mutations always need a token.
    let (status, _) = agent.http("POST", "/api/buffer/config", None, Some("{}")).unwrap();
    assert_eq!(status, 401);

    // Each kind of bad input: 400 naming the key, running config untouched.
    let changed = |pointer: &str, value: Value| {
        let mut c = config.clone();
        *c.pointer_mut(pointer).unwrap() = value;
        c.to_string()
    };
    let bad_inputs = [
        ("not json".to_string(), ""),
        (r#"{"capture": {"snaplen": 5}}"#.to_string(), "capture"),
        (changed("/capture/snap_length", "big".into()), "capture.snap_length"),
        (changed("/capture/snap_length", 0.into()), "capture.snap_length"),
        (changed("/capture/ports/0/stream", "gopher".into()), "capture.ports[0].stream"),
        (changed("/capture/ports/0/port", 70000.into()), "capture.ports[0].port"),
        (
            changed(
                "/capture/ports",
                serde_json::json!([{"port": 9, "stream": "syslog"}, {"port": 9, "stream": "snmp"}]),
            ),
            "capture.ports[1].port",
        ),
        (changed("/capture/mode", "socket".into()), "capture.mode"),
        (changed("/capture/ring_bytes", 8192.into()), "capture.ring_bytes"),
        (changed("/api/listen", "198.18.0.1:9999".into()), "api.listen"),
        (
            changed("/api/open_paths", serde_json::json!(["/api/buffer/config"])),
            "api.open_paths[0]",
        ),
        (changed("/api/tokens_file", "/nonexistent/tokens".into()), "api.tokens_file"),
    ];
    for (input, key) in &bad_inputs {
        let (status, body) =
            agent.http("POST", "/api/buffer/config", Some(NEW), Some(input)).unwrap();
        assert_eq!(status, 400, "{input}: {body}");
        let problems = json(&body)["problems"].clone();
        assert!(
            problems
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["key"].as_str().unwrap().starts_with(key)),
            "{input}: expected a problem at {key:?}: {body}"
        );
    }
    let (_, body) = agent.http("GET", "/api/buffer/config", Some(NEW), None).unwrap();
    assert_eq!(json(&body), config, "a refused config leaves the running one");

    // Live apply: add port 5514; traffic on it is captured.
    let sender = lab.sender(false);
    let captured = "raven_capture_records_total{stream=\"syslog\",via=\"xdp\"}";
    let no_port = lab.appliance.udp_counts().no_port;
    sender.send_to(b"<14>before", (APPLIANCE_V4, 5514)).unwrap();
    // It went past the program to the host, which has no socket there,
    // before the change: not still on its way when the port is added.
    poll("the host to drop the datagram sent before the change", WAIT, || {
        let counts = lab.appliance.udp_counts();
        if counts.no_port > no_port { Ok(()) } else { Err(counts) }
    });
    config["capture"]["ports"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"port": 5514, "stream": "syslog", "action": "steal"}));
    let (status, body) =
        agent.http("POST", "/api/buffer/config", Some(NEW), Some(&config.to_string())).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["persisted"], true, "{body}");
    sender.send_to(b"<14>after", (APPLIANCE_V4, 5514)).unwrap();
    let m = agent.wait_for_metric(captured, 1.0);
    assert_eq!(m[captured], 1.0, "only the datagram after the change");
    agent.wait_for_metric("raven_store_appended_records_total{stream=\"syslog\"}", 1.0);
    let stored: Vec<Value> = agent.stored("syslog").iter().map(|r| r["payload"].clone()).collect();
    assert_eq!(stored, ["<14>after"], "only the datagram after the change is stored");
    let saved = std::fs::read_to_string(agent.dir.path().join("raven.toml")).unwrap();
    assert!(saved.contains("5514"), "the applied config was persisted:\n{saved}");

    // Rotation finished: the old token is removed from the file and reloaded.
    std::fs::write(agent.dir.path().join("tokens"), format!("{NEW}\n")).unwrap();
    agent.signal(libc::SIGHUP);
    poll("the retired token to be refused (the old one still works)", WAIT, || {
        match agent.http("GET", "/api/exporters", Some(OLD), None).unwrap() {
            (401, _) => Ok(()),
            other => Err(other),
        }
    });
    // The exporter table is published once a second.
    let body = poll("the exporter table to show the sender", WAIT, || {
        let (status, body) = agent.http("GET", "/api/exporters", Some(NEW), None).unwrap();
        assert_eq!(status, 200, "{body}");
        if json(&body)["exporters"][0]["exporter"] == "198.18.0.2" { Ok(body) } else { Err(body) }
    });
    assert_eq!(json(&body)["exporters"][0]["packets"], 1, "{body}");
    assert!(agent.stop().success());
}

#[test]
fn buffer_endpoints_report_the_store_and_schedule_work() {
    let lab = Lab::new();
    // A sink nobody listens on: the backlog stays.
    let config = format!(
        "{}[[forward.sinks]]\nname = \"noc\"\nprotocol = \"syslog_tcp\"\n\
         endpoint = \"198.18.0.2:10514\"\n",
        config(&lab).replace("ports = [", "ports = [{port = 2055, stream = \"netflow\"}, ")
    );
    let agent = Agent::with_files(&lab, &config, &[("tokens", NEW)], &[]);
    agent.wait_until_attached();
    let sender = lab.sender(false);
    for i in 0..10 {
        sender.send_to(format!("<14>stored {i}").as_bytes(), (APPLIANCE_V4, 514)).unwrap();
    }
    // NetFlow v5 from one exporter: flow sequence 0 (one flow), then 10 —
    // nine flows lost upstream —, then a datagram cut short.
    for datagram in [netflow_v5(0), netflow_v5(10), netflow_v5(11)[..30].to_vec()] {
        sender.send_to(&datagram, (APPLIANCE_V4, 2055)).unwrap();
    }
    agent.wait_for_metric("raven_store_appended_records_total{stream=\"syslog\"}", 10.0);
    agent.wait_for_metric("raven_store_appended_records_total{stream=\"netflow\"}", 3.0);

    let (status, body) = agent.http("GET", "/api/buffer/status", Some(NEW), None).unwrap();
    assert_eq!(status, 200, "{body}");
    let status_json = json(&body);
    let syslog = status_json["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "syslog")
        .unwrap()
        .clone();
    assert_eq!(syslog["records"], 10, "{body}");
    assert!(syslog["oldest"].is_string() && syslog["fill_ratio"].as_f64().unwrap() > 0.0);
    assert_eq!(status_json["state"], "ok", "{body}");

    // Rates average the capture counters over the last minute, sampled
    // each second: they show once a sample after the traffic exists.
    let rate = poll("a syslog rate", WAIT, || {
        let (_, body) = agent.http("GET", "/api/buffer/status", Some(NEW), None).unwrap();
        let streams = json(&body)["streams"].clone();
        let syslog = streams.as_array().unwrap().iter().find(|s| s["stream"] == "syslog").cloned();
        let rate = syslog.unwrap()["rate"]["records_per_second"].as_f64().unwrap();
        if rate > 0.0 { Ok(rate) } else { Err(body) }
    });
    // Ten records over the samples since: about 10/s (ticks jitter).
    assert!(rate < 20.0, "syslog rate {rate}");

    // The kernel's per-exporter counters come with the capture status,
    // published once a second; the rest is read when asked.
    let body = poll("the syslog exporter's XDP counters", WAIT, || {
        let (status, body) =
            agent.http("GET", "/api/buffer/stats/syslog", Some(NEW), None).unwrap();
        assert_eq!(status, 200, "{body}");
        if json(&body)["exporters"][0]["xdp_packets"] == 10 { Ok(body) } else { Err(body) }
    });
    assert_eq!(json(&body)["stream"]["records"], 10);
    let exporter = json(&body)["exporters"][0].clone();
    assert_eq!(exporter["exporter"], "198.18.0.2", "{body}");
    assert_eq!(exporter["records"], 10, "{body}");
    assert_eq!(exporter["stored_records"], 10, "{body}");
    assert_eq!(exporter["xdp_packets"], 10, "{body}");
    assert!(exporter["last_seen"].is_string() && exporter["newest"].is_string(), "{body}");
    let (status, body) = agent.http("GET", "/api/buffer/stats/netflow", Some(NEW), None).unwrap();
    assert_eq!(status, 200, "{body}");
    let exporter = json(&body)["exporters"][0].clone();
    assert_eq!(exporter["records"], 3, "{body}");
    assert_eq!(exporter["sequence_lost"], 9, "{body}");
    let parse_errors: u64 =
        exporter["parse_errors"].as_object().unwrap().values().filter_map(Value::as_u64).sum();
    assert_eq!(parse_errors, 1, "{body}");
    let (status, body) = agent.http("GET", "/api/buffer/stats/gopher", Some(NEW), None).unwrap();
    assert_eq!(status, 404);
    assert!(json(&body)["error"].as_str().unwrap().contains("gopher"), "{body}");

    let (status, body) = agent.http("GET", "/api/segments?stream=syslog", Some(NEW), None).unwrap();
    assert_eq!(status, 200, "{body}");
    let records: u64 =
        json(&body).as_array().unwrap().iter().map(|s| s["records"].as_u64().unwrap()).sum();
    assert_eq!(records, 10);
    let (status, _) = agent.http("GET", "/api/segments?from=yesterday", Some(NEW), None).unwrap();
    assert_eq!(status, 400);

    let (status, _) = agent.http("POST", "/api/buffer/cleanup", None, None).unwrap();
    assert_eq!(status, 401, "mutations need a token");
    let (status, body) = agent.http("POST", "/api/buffer/cleanup", Some(NEW), None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["segments"], 0, "nothing is old enough: {body}");

    let (status, body) = agent.http("POST", "/api/buffer/flush/syslog", Some(NEW), None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["sinks"][0]["sink"], "noc", "{body}");
    assert_eq!(json(&body)["sinks"][0]["backlog_records"], 10, "{body}");
    let (status, _) = agent.http("POST", "/api/buffer/flush/gopher", Some(NEW), None).unwrap();
    assert_eq!(status, 404);
    assert!(agent.stop().success());
}

#[path = "common/pki.rs"]
mod pki;

#[test]
fn vpn_profiles_are_validated_on_import_and_diagnostics_answer() {
    let lab = Lab::new();
    let agent = Agent::with_files(&lab, &config(&lab), &[("tokens", NEW)], &[]);
    agent.wait_until_attached();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::Pki::generate(dir.path());
    let good = pki.client_profile("198.18.0.2", 1194);

    let (status, body) = agent.http("GET", "/api/vpn/status", Some(NEW), None).unwrap();
    assert_eq!(status, 404, "the supervisor is off: {body}");
    let bad = good.replace("client\n", "client\nscript-security 2\n");
    let (status, body) =
        agent.http("POST", "/api/vpn/profiles/noc", Some(NEW), Some(&bad)).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("script-security"), "{body}");
    let (status, body) = agent.http("GET", "/api/vpn/profiles", Some(NEW), None).unwrap();
    assert_eq!((status, json(&body)), (200, serde_json::json!([])), "a refusal stores nothing");

    let (status, body) =
        agent.http("POST", "/api/vpn/profiles/noc?priority=5", Some(NEW), Some(&good)).unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(json(&body)["remotes"][0], "198.18.0.2:1194", "{body}");
    let (_, body) = agent.http("GET", "/api/vpn/profiles", Some(NEW), None).unwrap();
    assert_eq!(json(&body)[0]["name"], "noc");
    assert_eq!(json(&body)[0]["priority"], 5);
    let (status, _) =
        agent.http("POST", "/api/vpn/profiles/noc/activate", Some(NEW), None).unwrap();
    assert_eq!(status, 204);
    let (status, body) =
        agent.http("POST", "/api/vpn/profiles/noc/priority?value=7", Some(NEW), None).unwrap();
    assert_eq!((status, json(&body)["priority"].clone()), (200, 7.into()), "{body}");
    let (status, body) = agent.http("POST", "/api/vpn/validate", Some(NEW), Some(&good)).unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = agent.http("POST", "/api/vpn/validate", Some(NEW), Some(&bad)).unwrap();
    assert_eq!(status, 400);
    let (status, body) = agent.http("GET", "/api/vpn/history", Some(NEW), None).unwrap();
    assert_eq!((status, json(&body)), (200, serde_json::json!([])), "no supervisor, no samples");
    let (status, _) = agent.http("DELETE", "/api/vpn/profiles/noc", None, None).unwrap();
    assert_eq!(status, 401, "mutations need a token");
    let (status, _) = agent.http("DELETE", "/api/vpn/profiles/noc", Some(NEW), None).unwrap();
    assert_eq!(status, 204);
    let (status, _) = agent.http("DELETE", "/api/vpn/profiles/noc", Some(NEW), None).unwrap();
    assert_eq!(status, 404);

    // Diagnostics: the API's own port answers, a closed one does not.
    let (_, body) = agent
        .http("GET", &format!("/api/vpn/diagnostics/tcp?target={METRICS_LISTEN}"), Some(NEW), None)
        .unwrap();
    assert_eq!(json(&body)["connected"], true, "{body}");
    let (_, body) = agent
        .http("GET", "/api/vpn/diagnostics/tcp?target=198.18.0.2:9&timeout_ms=500", Some(NEW), None)
        .unwrap();
    assert_eq!(json(&body)["connected"], false, "{body}");
    let (_, body) = agent
        .http("GET", "/api/vpn/diagnostics/ping?target=198.18.0.2&count=2", Some(NEW), None)
        .unwrap();
    assert_eq!(json(&body)["received"], 2, "{body}");
    let url = format!("/api/vpn/diagnostics/http?url=http://{METRICS_LISTEN}/healthz");
    let (_, body) = agent.http("GET", &url, Some(NEW), None).unwrap();
    assert_eq!(json(&body)["status"], 200, "{body}");
    assert_eq!(json(&body)["bytes"], 3, "{body}");
    let url = "/api/vpn/diagnostics/traceroute?target=198.18.0.2&max_hops=3";
    let (_, body) = agent.http("GET", url, Some(NEW), None).unwrap();
    assert_eq!(json(&body)["reached"], true, "{body}");
    let url = "/api/vpn/diagnostics/dns?server=198.18.0.2:53&name=x&type=SOA";
    assert_eq!(agent.http("GET", url, Some(NEW), None).unwrap().0, 400, "unsupported type");
}

/// A NetFlow v5 datagram with one flow (192.0.2.1:1024 → 192.0.2.2:80).
fn netflow_v5(flow_sequence: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(72);
    d.extend(5u16.to_be_bytes());
    d.extend(1u16.to_be_bytes());
    d.extend([0u8; 12]); // uptime, unix secs, nsecs
    d.extend(flow_sequence.to_be_bytes());
    d.extend([0u8; 4]); // engine type and id, sampling
    d.extend([192, 0, 2, 1, 192, 0, 2, 2]);
    d.extend([0u8; 8]); // next hop, input, output
    d.extend(1u32.to_be_bytes()); // packets
    d.extend(100u32.to_be_bytes()); // octets
    d.extend([0u8; 8]); // first, last
    d.extend(1024u16.to_be_bytes());
    d.extend(80u16.to_be_bytes());
    d.extend([0, 0, 6, 0]); // pad, tcp flags, protocol, tos
    d.extend([0u8; 8]); // AS numbers, masks, pad
    d
}

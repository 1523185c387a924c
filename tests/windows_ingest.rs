//! Windows events over HTTP against a running agent: a JSON array and
//! gzipped NDJSON are acknowledged only once durable — the agent is
//! SIGKILLed right after each 200 and everything acknowledged is there
//! after the restart — and bad requests get 400/401/413 with nothing stored.

mod common;

use std::io::Write;

use common::{Agent, Lab, METRICS_LISTEN};
use serde_json::Value;

const TOKEN: &str = "windows-ingest-token";

/// `curl` from the venue: (status, body).
fn post(lab: &Lab, body_file: &std::path::Path, headers: &[&str]) -> (u16, String) {
    let mut cmd = lab.venue.command("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", "--max-time", "10"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg("--data-binary").arg(format!("@{}", body_file.display()));
    cmd.arg("http://198.18.0.1:8084/api/data/windows");
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `post`, again until the (re)started agent answers at all (bounded).
fn when_up(
    lab: &Lab,
    agent: &Agent,
    body_file: &std::path::Path,
    headers: &[&str],
) -> (u16, String) {
    common::poll(
        "the Windows listener to answer",
        std::time::Duration::from_secs(20),
        || match post(lab, body_file, headers) {
            (0, _) => Err(agent.stderr()),
            answer => Ok(answer),
        },
    )
}

#[test]
fn events_are_acknowledged_only_once_durable_and_bad_requests_are_refused() {
    let lab = Lab::new();
    let config = format!(
        "[capture]\nmode = \"socket\"\nports = []\n\
         [api]\nlisten = \"{METRICS_LISTEN}\"\ntokens_file = \"@DIR@/tokens\"\n\
         [windows]\nmax_body_bytes = 4096\nmax_events_per_request = 50\n"
    );
    let mut agent = Agent::with_files(&lab, &config, &[("tokens", TOKEN)], &[]);
    assert!(agent.wait_stderr("accepting Windows events"), "{}", agent.stderr());
    let dir = tempfile::tempdir().unwrap();
    let auth = format!("Authorization: Bearer {TOKEN}");

    let array = dir.path().join("array.json");
    std::fs::write(
        &array,
        r#"[{"EventID": 4624, "Computer": "dc1.venue", "Channel": "Security"},
            {"EventID": 4625, "Computer": "dc1.venue", "Message": "An account failed to log on"},
            {"EventID": 7036, "Computer": "pos-3"}]"#,
    )
    .unwrap();
    let (status, body) = post(&lab, &array, &[&auth, "Content-Type: application/json"]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["accepted"], 3);
    agent.kill_and_restart(); // right after the 200
    assert!(agent.wait_stderr("--- restarted ---"));

    let ndjson = dir.path().join("events.ndjson.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"{\"EventID\": 1102, \"Computer\": \"dc2\"}\n{\"EventID\": 4740}\n").unwrap();
    std::fs::write(&ndjson, gz.finish().unwrap()).unwrap();
    // The restarted agent binds its listener within moments (curl gets no
    // answer until then).
    let (status, body) = when_up(&lab, &agent, &ndjson, &[&auth, "Content-Encoding: gzip"]);
    assert_eq!(status, 200, "{body}");
    agent.kill_and_restart();

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, b"[{\"EventID\": 1}, oops]").unwrap();
    let big = dir.path().join("big.json");
    std::fs::write(&big, format!("[{{\"Message\": \"{}\"}}]", "x".repeat(8000))).unwrap();
    let mut checked = vec![("no token", when_up(&lab, &agent, &array, &[]).0, 401)];
    checked.push(("wrong token", post(&lab, &array, &["Authorization: Bearer nope"]).0, 401));
    checked.push(("bad JSON", post(&lab, &bad, &[&auth]).0, 400));
    checked.push(("oversize", post(&lab, &big, &[&auth]).0, 413));
    for (what, got, want) in checked {
        assert_eq!(got, want, "{what}");
    }

    let events = common::segments_cat(&agent.dir.path().join("data"), Some("windows"));
    let ids: Vec<i64> = events.iter().map(|e| e["event"]["EventID"].as_i64().unwrap()).collect();
    assert_eq!(ids, [4624, 4625, 7036, 1102, 4740], "exactly the acknowledged events, in order");
    assert_eq!(events[0]["event"]["Computer"], "dc1.venue");
    assert_eq!(events[0]["stream"], "windows");
    assert!(events[0]["src"].as_str().unwrap().starts_with("198.18.0.2:"));
    let m = agent.metrics();
    assert_eq!(m.get("raven_windows_refused_total{reason=\"bad_json\"}"), Some(&1.0), "{m:?}");
}

//! Decoding in the running appliance with real senders: `logger` lines and
//! `snmptrap`/`snmpinform` v2c from the venue namespace, captured with XDP,
//! decoded, stored, and read back with `raven-agent segments cat`. The
//! inform is answered only after it is durable, from the port it was sent
//! to, so `snmpinform` itself reports success.

mod common;

use std::process::Command;

use common::{AGENT, APPLIANCE_V4, Agent, Lab, METRICS_LISTEN};
use serde_json::Value;

fn stored(agent: &Agent) -> Vec<Value> {
    let out = Command::new(AGENT)
        .args(["segments", "--data-dir"])
        .arg(agent.dir.path().join("data"))
        .arg("cat")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn syslog_and_snmp_are_decoded_stored_and_informs_answered_after_durability() {
    let lab = Lab::new();
    let config = format!(
        "[capture]\nmode = \"xdp\"\ninterfaces = [\"{}\"]\n\
         ports = [{{port = 514, stream = \"syslog\"}}, {{port = 162, stream = \"snmp\"}}]\n\
         [api]\nlisten = \"{METRICS_LISTEN}\"\n",
        lab.appliance_if
    );
    let agent = Agent::run(&lab, &config, &[]);
    agent.wait_until_attached();

    lab.venue.run(
        "logger",
        &[
            "--udp",
            "-n",
            APPLIANCE_V4,
            "-P",
            "514",
            "--rfc5424",
            "-t",
            "venue-app",
            "-p",
            "local4.warning",
            "hello from the venue",
        ],
    );
    let trap = lab.venue.run(
        "snmptrap",
        &[
            "-v",
            "2c",
            "-c",
            "venue-community",
            &format!("{APPLIANCE_V4}:162"),
            "",
            "1.3.6.1.6.3.1.1.5.3",
            "1.3.6.1.2.1.2.2.1.1.3",
            "i",
            "3",
        ],
    );
    assert!(trap.status.success(), "{}", String::from_utf8_lossy(&trap.stderr));
    let inform = lab.venue.run(
        "snmpinform",
        &[
            "-v",
            "2c",
            "-c",
            "venue-community",
            "-r",
            "1",
            "-t",
            "5",
            &format!("{APPLIANCE_V4}:162"),
            "",
            "1.3.6.1.6.3.1.1.5.4",
        ],
    );
    assert!(
        inform.status.success(),
        "snmpinform got no Response: {}\n{}",
        String::from_utf8_lossy(&inform.stderr),
        agent.stderr()
    );
    agent.wait_for_metric("raven_store_appended_records_total{stream=\"snmp\"}", 2.0);
    agent.wait_for_metric("raven_store_appended_records_total{stream=\"syslog\"}", 1.0);
    let m = agent.metrics();
    assert_eq!(
        m.get("raven_decode_records_total{outcome=\"decoded\",stream=\"snmp\"}"),
        Some(&2.0),
        "{m:?}"
    );

    let records = stored(&agent);
    let syslog = records.iter().find(|r| r["stream"] == "syslog").expect("the logger line");
    assert_eq!(syslog["app_name"], "venue-app", "{syslog}");
    assert_eq!(syslog["facility"], "local4");
    assert_eq!(syslog["severity"], "warning");
    assert_eq!(syslog["message"], "hello from the venue");
    assert_eq!(syslog["parse_error"], Value::Null);
    let snmp: Vec<&Value> = records.iter().filter(|r| r["stream"] == "snmp").collect();
    assert_eq!(snmp.len(), 2, "{records:?}");
    assert_eq!(snmp[0]["pdu_type"], "trap_v2");
    assert_eq!(snmp[0]["trap_oid"], "1.3.6.1.6.3.1.1.5.3");
    assert_eq!(snmp[0]["community"], "venue-community");
    assert_eq!(snmp[1]["pdu_type"], "inform_request");
    assert_eq!(snmp[1]["trap_oid"], "1.3.6.1.6.3.1.1.5.4");
    assert!(!agent.stderr().contains("venue-community"), "the community never reaches the log");
}

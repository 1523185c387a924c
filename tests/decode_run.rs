//! Decoding in the running appliance with real senders: `logger` lines and
//! `snmptrap` v1 and v2c and `snmpinform` v2c from the venue namespace, captured with XDP,
//! decoded, stored, and read back with `raven-agent segments cat`. The
//! inform is answered only after it is durable, from the port it was sent
//! to, so `snmpinform` itself reports success.

mod common;

use common::{APPLIANCE_V4, Agent, Lab, METRICS_LISTEN};
use serde_json::Value;

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
    // SNMPv1: enterprise, agent address, generic linkDown, a varbind.
    let v1 = lab.venue.run(
        "snmptrap",
        &[
            "-v",
            "1",
            "-c",
            "venue-community",
            &format!("{APPLIANCE_V4}:162"),
            "1.3.6.1.4.1.8072.2.3",
            "192.0.2.77",
            "2",
            "0",
            "",
            "1.3.6.1.2.1.2.2.1.1.7",
            "i",
            "7",
        ],
    );
    assert!(v1.status.success(), "{}", String::from_utf8_lossy(&v1.stderr));
    agent.wait_for_metric("raven_store_appended_records_total{stream=\"snmp\"}", 3.0);
    agent.wait_for_metric("raven_store_appended_records_total{stream=\"syslog\"}", 1.0);
    let m = agent.metrics();
    assert_eq!(
        m.get("raven_decode_records_total{outcome=\"decoded\",stream=\"snmp\"}"),
        Some(&3.0),
        "{m:?}"
    );

    let records = common::segments_cat(&agent.dir.path().join("data"), None);
    let syslog = records.iter().find(|r| r["stream"] == "syslog").expect("the logger line");
    assert_eq!(syslog["app_name"], "venue-app", "{syslog}");
    assert_eq!(syslog["facility"], "local4");
    assert_eq!(syslog["severity"], "warning");
    assert_eq!(syslog["message"], "hello from the venue");
    assert_eq!(syslog["parse_error"], Value::Null);
    let snmp: Vec<&Value> = records.iter().filter(|r| r["stream"] == "snmp").collect();
    assert_eq!(snmp.len(), 3, "{records:?}");
    assert_eq!(snmp[0]["pdu_type"], "trap_v2");
    assert_eq!(snmp[0]["trap_oid"], "1.3.6.1.6.3.1.1.5.3");
    assert_eq!(snmp[0]["community"], "venue-community");
    assert_eq!(snmp[1]["pdu_type"], "inform_request");
    assert_eq!(snmp[1]["trap_oid"], "1.3.6.1.6.3.1.1.5.4");
    let v1 = snmp[2];
    assert_eq!(
        (&v1["version"], &v1["pdu_type"]),
        (&Value::from("1"), &Value::from("trap_v1")),
        "{v1}"
    );
    assert_eq!(v1["enterprise"], "1.3.6.1.4.1.8072.2.3", "{v1}");
    assert_eq!(v1["agent_address"], "192.0.2.77", "{v1}");
    assert_eq!((&v1["generic_trap"], &v1["specific_trap"]), (&Value::from(2), &Value::from(0)));
    assert_eq!(v1["varbinds"][0]["oid"], "1.3.6.1.2.1.2.2.1.1.7", "{v1}");
    assert!(!agent.stderr().contains("venue-community"), "the community never reaches the log");
}

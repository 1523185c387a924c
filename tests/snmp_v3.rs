//! SNMPv3 with USM in the running appliance, with real Net-SNMP senders in
//! the venue namespace: `snmptrap -v 3` at noAuthNoPriv, authNoPriv (SHA-1,
//! MD5, SHA-256) and authPriv (SHA-1 + AES-128, MD5 + DES), and
//! `snmpinform -v 3` authPriv (SHA-256 + AES-128) and v2c, which must exit 0:
//! Raven answered engine discovery with a Report and the inform with an
//! authenticated, encrypted Response once it was durable. The stored
//! records are read back with `raven-agent segments cat`; a stranger, a
//! wrong passphrase and a user tied to another engine are kept raw and
//! counted by reason. No passphrase reaches the log, the store or the API.
//! After a restart the engine boots go up and informs still get answered.

mod common;

use std::process::Output;

use common::{APPLIANCE_V4, Agent, Lab, METRICS_LISTEN};
use serde_json::Value;

const TOKEN: &str = "snmp-v3-test-token";
const AUTH: &str = "venue-auth-pass";
const PRIV: &str = "venue-priv-pass";
/// The engine snmptrap claims (traps: the sender is authoritative).
const TRAP_ENGINE: &str = "0x8000000001020304";

fn config(lab: &Lab) -> String {
    let user = |name: &str, auth: &str, privacy: &str, engine: &str| {
        let mut text = format!(
            "[[decode.snmp_users]]\nname = \"{name}\"\nauth_protocol = \"{auth}\"\n\
             auth_passphrase = \"{AUTH}\"\n"
        );
        if !privacy.is_empty() {
            text += &format!("priv_protocol = \"{privacy}\"\npriv_passphrase = \"{PRIV}\"\n");
        }
        if !engine.is_empty() {
            text += &format!("engine_id = \"{engine}\"\n");
        }
        text
    };
    format!(
        "[capture]\nmode = \"xdp\"\ninterfaces = [\"{}\"]\n\
         ports = [{{port = 162, stream = \"snmp\"}}]\n\
         [api]\nlisten = \"{METRICS_LISTEN}\"\ntokens_file = \"@DIR@/tokens\"\n\
         [decode]\n{}{}{}{}{}{}{}",
        lab.appliance_if,
        user("sha-user", "sha1", "", ""),
        user("md5-user", "md5", "", ""),
        user("sha256-user", "sha256", "", ""),
        user("aes-user", "sha", "aes128", ""),
        user("des-user", "md5", "des", ""),
        user("informer", "sha256", "aes", ""),
        user("tied-user", "sha1", "", "8000000001020399"),
    )
}

/// Runs a Net-SNMP tool in the venue namespace, its persistent state in
/// `state` (not the machine's /var/lib/snmp).
fn net_snmp(lab: &Lab, state: &std::path::Path, tool: &str, args: &[&str]) -> Output {
    let mut cmd = lab.venue.command(tool);
    cmd.env("SNMP_PERSISTENT_DIR", state).args(args);
    cmd.output().unwrap_or_else(|e| panic!("{tool}: {e}"))
}

fn ok(what: &str, out: &Output, agent: &Agent) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n--- agent ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        agent.stderr()
    );
}

/// `snmptrap -v 3` from engine TRAP_ENGINE with `security` (the -l/-a/-A/-x/-X
/// part), trap `trap_oid`, one integer varbind and one OctetString 00FF7F80.
fn trap(
    lab: &Lab,
    state: &std::path::Path,
    user: &str,
    security: &[&str],
    trap_oid: &str,
) -> Output {
    let target = format!("{APPLIANCE_V4}:162");
    let mut args = vec!["-v", "3", "-e", TRAP_ENGINE, "-u", user];
    args.extend_from_slice(security);
    args.extend_from_slice(&[
        &target,
        "",
        trap_oid,
        "1.3.6.1.2.1.2.2.1.1.3",
        "i",
        "3",
        "1.3.6.1.4.1.8072.2.3.2.1",
        "x",
        "00FF7F80",
    ]);
    net_snmp(lab, state, "snmptrap", &args)
}

/// `snmpinform -v 3` authPriv (SHA-256, AES) as user `informer` with
/// `auth` as its passphrase; `retries_timeout` = [-r, -t]; warmStart plus
/// `varbinds`.
fn v3_inform(
    lab: &Lab,
    state: &std::path::Path,
    auth: &str,
    retries_timeout: &[&str; 2],
    varbinds: &[&str],
) -> Output {
    let target = format!("{APPLIANCE_V4}:162");
    let mut args = vec![
        "-v",
        "3",
        "-u",
        "informer",
        "-l",
        "authPriv",
        "-a",
        "SHA-256",
        "-A",
        auth,
        "-x",
        "AES",
        "-X",
        PRIV,
        "-r",
        retries_timeout[0],
        "-t",
        retries_timeout[1],
        &target,
        "",
        "1.3.6.1.6.3.1.1.5.2",
    ];
    args.extend_from_slice(varbinds);
    net_snmp(lab, state, "snmpinform", &args)
}

fn by_trap<'a>(records: &'a [Value], user: &str, trap_oid: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["user"] == user && r["trap_oid"] == trap_oid)
        .unwrap_or_else(|| panic!("no record from {user} with trap {trap_oid}: {records:#?}"))
}

fn by_user<'a>(records: &'a [Value], user: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["user"] == user).collect()
}

fn reason(record: &Value) -> &str {
    record["parse_error"].as_str().and_then(|e| e.split(':').next()).unwrap_or("")
}

fn varbind<'a>(record: &'a Value, oid: &str) -> &'a Value {
    record["varbinds"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["oid"] == oid))
        .map(|v| &v["value"])
        .unwrap_or_else(|| panic!("no varbind {oid} in {record}"))
}

#[test]
fn net_snmp_v3_traps_and_informs_are_authenticated_decrypted_and_answered() {
    let lab = Lab::new();
    let mut agent = Agent::with_files(&lab, &config(&lab), &[("tokens", TOKEN)], &[]);
    agent.wait_until_attached();
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let sha = ["-l", "authNoPriv", "-a", "SHA", "-A", AUTH];

    // Traps at every level.
    ok(
        "noAuthNoPriv",
        &trap(&lab, state, "anyone", &["-l", "noAuthNoPriv"], "1.3.6.1.6.3.1.1.5.1"),
        &agent,
    );
    ok("SHA", &trap(&lab, state, "sha-user", &sha, "1.3.6.1.6.3.1.1.5.3"), &agent);
    let md5 = ["-l", "authNoPriv", "-a", "MD5", "-A", AUTH];
    ok("MD5", &trap(&lab, state, "md5-user", &md5, "1.3.6.1.6.3.1.1.5.3"), &agent);
    let sha256 = ["-l", "authNoPriv", "-a", "SHA-256", "-A", AUTH];
    ok("SHA-256", &trap(&lab, state, "sha256-user", &sha256, "1.3.6.1.6.3.1.1.5.3"), &agent);
    let aes = ["-l", "authPriv", "-a", "SHA", "-A", AUTH, "-x", "AES", "-X", PRIV];
    ok("SHA+AES", &trap(&lab, state, "aes-user", &aes, "1.3.6.1.6.3.1.1.5.4"), &agent);
    let des = ["-l", "authPriv", "-a", "MD5", "-A", AUTH, "-x", "DES", "-X", PRIV];
    ok("MD5+DES", &trap(&lab, state, "des-user", &des, "1.3.6.1.6.3.1.1.5.4"), &agent);
    // What Raven cannot accept: stored raw, counted.
    let stranger = ["-l", "authPriv", "-a", "SHA", "-A", AUTH, "-x", "AES", "-X", PRIV];
    ok("stranger", &trap(&lab, state, "stranger", &stranger, "1.3.6.1.6.3.1.1.5.5"), &agent);
    let wrong =
        ["-l", "authPriv", "-a", "SHA", "-A", "not-the-passphrase", "-x", "AES", "-X", PRIV];
    ok("wrong passphrase", &trap(&lab, state, "aes-user", &wrong, "1.3.6.1.6.3.1.1.5.5"), &agent);
    ok(
        "tied to another engine",
        &trap(&lab, state, "tied-user", &sha, "1.3.6.1.6.3.1.1.5.3"),
        &agent,
    );

    // Informs: Net-SNMP discovers Raven's engine, then sends the inform;
    // success means Raven's Response authenticated and decrypted for it.
    let target = format!("{APPLIANCE_V4}:162");
    let inform =
        v3_inform(&lab, state, AUTH, &["1", "5"], &["1.3.6.1.2.1.1.5.0", "s", "sw-core-1"]);
    ok("snmpinform -v 3 authPriv", &inform, &agent);
    let v2c = net_snmp(
        &lab,
        state,
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
            &target,
            "",
            "1.3.6.1.6.3.1.1.5.1",
        ],
    );
    ok("snmpinform -v 2c", &v2c, &agent);
    // A wrong passphrase: Raven's usmStatsWrongDigests Report, no Response.
    let refused = v3_inform(&lab, state, "not-the-passphrase", &["0", "3"], &[]);
    assert!(!refused.status.success(), "a wrong passphrase must not be answered");
    let why = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(why.contains("authentication failure"), "Net-SNMP says why: {why}");

    // 9 traps, v3 inform (+ its discovery), v2c inform, refused inform (+ discovery).
    agent.wait_for_metric("raven_store_appended_records_total{stream=\"snmp\"}", 14.0);
    let records = common::segments_cat(&agent.dir.path().join("data"), Some("snmp"));

    let plain = by_trap(&records, "anyone", "1.3.6.1.6.3.1.1.5.1");
    assert_eq!(plain["security_level"], "noAuthNoPriv");
    assert_eq!(plain["authenticated"], false);
    assert_eq!(plain["parse_error"], Value::Null);
    for user in ["sha-user", "md5-user", "sha256-user"] {
        let r = by_trap(&records, user, "1.3.6.1.6.3.1.1.5.3");
        assert_eq!(r["security_level"], "authNoPriv", "{r}");
        assert_eq!(r["authenticated"], true, "{r}");
        assert_eq!(r["parse_error"], Value::Null, "{r}");
        assert_eq!(r["engine_id"], "8000000001020304");
        assert_eq!(varbind(r, "1.3.6.1.2.1.2.2.1.1.3"), 3);
    }
    for user in ["aes-user", "des-user"] {
        let r = by_trap(&records, user, "1.3.6.1.6.3.1.1.5.4");
        assert_eq!(r["security_level"], "authPriv", "{r}");
        assert_eq!(r["authenticated"], true, "{r}");
        assert_eq!(r["encrypted"], false, "{r}");
        assert_eq!(r["parse_error"], Value::Null, "{r}");
        assert_eq!(r["pdu_type"], "trap_v2");
        assert_eq!(varbind(r, "1.3.6.1.2.1.2.2.1.1.3"), 3);
        assert_eq!(varbind(r, "1.3.6.1.4.1.8072.2.3.2.1"), "0x00ff7f80");
    }
    let stranger = by_user(&records, "stranger");
    assert_eq!(stranger.len(), 1);
    assert_eq!(reason(stranger[0]), "unknown_user", "{}", stranger[0]);
    assert_eq!(stranger[0]["encrypted"], true);
    let wrong: Vec<_> =
        by_user(&records, "aes-user").into_iter().filter(|r| r["encrypted"] == true).collect();
    assert_eq!(wrong.len(), 1, "the wrong-passphrase trap");
    assert_eq!(reason(wrong[0]), "auth_failed");
    assert!(wrong[0].get("trap_oid").is_none(), "still encrypted: {}", wrong[0]);
    let tied = by_user(&records, "tied-user");
    assert_eq!(reason(tied[0]), "unknown_user", "tied to another engine: {}", tied[0]);

    // The discovery probe is a record too.
    let probes: Vec<_> = records
        .iter()
        .filter(|r| r["version"] == "3" && r["engine_id"] == "" && r["pdu_type"] == "get_request")
        .collect();
    assert_eq!(probes.len(), 2, "two snmpinform -v 3 runs, one probe each: {records:#?}");
    let informs: Vec<_> =
        by_user(&records, "informer").into_iter().filter(|r| r["engine_id"] != "").collect();
    let answered = informs.iter().find(|r| r["parse_error"].is_null()).expect("the inform");
    assert_eq!(answered["pdu_type"], "inform_request");
    assert_eq!(answered["trap_oid"], "1.3.6.1.6.3.1.1.5.2");
    assert_eq!(varbind(answered, "1.3.6.1.2.1.1.5.0"), "sw-core-1");
    assert_eq!(answered["authenticated"], true);
    let engine = std::fs::read_to_string(agent.dir.path().join("data/snmp-engine")).unwrap();
    let engine_id = engine.lines().find_map(|l| l.strip_prefix("engine_id=")).unwrap();
    assert_eq!(answered["engine_id"], engine_id, "the inform went to Raven's engine");
    assert!(engine.contains("boots=1"), "{engine}");
    assert!(informs.iter().any(|r| reason(r) == "auth_failed"), "{informs:#?}");
    let v2c = records.iter().find(|r| r["community"] == "venue-community").unwrap();
    assert_eq!(v2c["pdu_type"], "inform_request");

    let m = agent.metrics();
    for (reason, at_least) in [("unknown_user", 2.0), ("auth_failed", 2.0)] {
        let key = format!("raven_decode_parse_errors_total{{reason=\"{reason}\",stream=\"snmp\"}}");
        assert!(m.get(&key).copied().unwrap_or(0.0) >= at_least, "{key}: {m:#?}");
    }

    // Secrets: not in the log, the store's files, the records, or the API.
    let (status, shown) = agent.http("GET", "/api/buffer/config", Some(TOKEN), None).unwrap();
    assert_eq!(status, 200, "{shown}");
    assert!(shown.contains("(redacted)"), "{shown}");
    let segments = serde_json::to_string(&records).unwrap();
    for secret in [AUTH, PRIV] {
        assert!(!agent.stderr().contains(secret), "{secret} in the log");
        assert!(!shown.contains(secret), "{secret} shown by the API");
        assert!(!segments.contains(secret), "{secret} in a record");
        for entry in std::fs::read_dir(agent.dir.path().join("data")).unwrap().flatten() {
            if entry.path().is_file() {
                let bytes = std::fs::read(entry.path()).unwrap();
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{secret} in {}",
                    entry.path().display()
                );
            }
        }
    }
    assert!(!agent.stderr().contains("venue-community"), "the community never reaches the log");

    // A restart: boots go up; Net-SNMP rediscovers and gets its answer.
    agent.kill_and_restart();
    agent.wait_until_attached();
    let engine = std::fs::read_to_string(agent.dir.path().join("data/snmp-engine")).unwrap();
    assert!(engine.contains("boots=2") && engine.contains(engine_id), "{engine}");
    let again = net_snmp(
        &lab,
        state,
        "snmpinform",
        &[
            "-v",
            "3",
            "-u",
            "informer",
            "-l",
            "authNoPriv",
            "-a",
            "SHA-256",
            "-A",
            AUTH,
            "-r",
            "1",
            "-t",
            "5",
            &target,
            "",
            "1.3.6.1.6.3.1.1.5.6",
        ],
    );
    ok("snmpinform -v 3 authNoPriv after a restart", &again, &agent);
    let status = agent.stop();
    assert!(status.success(), "{status}");
}

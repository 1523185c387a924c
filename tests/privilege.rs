//! Least privilege on a real kernel: Raven captures over XDP as an
//! unprivileged user holding only the documented capabilities, refuses to
//! start naming the one that is missing, and drops to `service.user` after
//! start-up keeping only what running needs.

mod common;

use common::{APPLIANCE_V4, Agent, Lab, METRICS_LISTEN};

const NEEDED: [&str; 4] = ["bpf", "perfmon", "net_admin", "net_bind_service"];

fn config(lab: &Lab, extra: &str) -> String {
    format!(
        "[capture]\nmode = \"xdp\"\ninterfaces = [\"{}\"]\n\
         ports = [{{port = 514, stream = \"syslog\"}}]\n\
         [api]\nlisten = \"{METRICS_LISTEN}\"\n{extra}",
        lab.appliance_if
    )
}

/// `setpriv` as nobody with exactly these capabilities (ambient, so they
/// survive the exec of the agent).
fn as_nobody_with(caps: &[&str]) -> Vec<String> {
    let list: String = caps.iter().map(|c| format!(",+{c}")).collect();
    vec![
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps=-all{list}"),
        format!("--ambient-caps=-all{list}"),
    ]
}

fn capture_one(lab: &Lab, agent: &Agent) {
    agent.wait_until_attached();
    lab.sender(false).send_to(b"<14>least privilege", (APPLIANCE_V4, 514)).unwrap();
    agent.wait_for_metric("raven_capture_records_total{stream=\"syslog\",via=\"xdp\"}", 1.0);
}

#[test]
fn an_unprivileged_user_with_the_documented_capabilities_captures_over_xdp() {
    let lab = Lab::new();
    let wrapper = as_nobody_with(&NEEDED);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = Agent::run(&lab, &config(&lab, ""), &wrapper);
    capture_one(&lab, &agent);
    assert!(agent.stop().success());
}

#[test]
fn each_missing_capability_refuses_the_start_and_is_named() {
    let lab = Lab::new();
    for missing in NEEDED {
        let caps: Vec<&str> = NEEDED.iter().copied().filter(|c| *c != missing).collect();
        let wrapper = as_nobody_with(&caps);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let mut agent = Agent::run(&lab, &config(&lab, ""), &wrapper);
        let status = agent.wait_exit();
        assert!(!status.success(), "started without {missing}");
        let name = format!("CAP_{}", missing.to_uppercase());
        assert!(
            agent.stderr().contains(&format!("missing capability {name}")),
            "the refusal names {name}:\n{}",
            agent.stderr()
        );
    }
}

#[test]
fn service_user_drops_privileges_after_start_and_keeps_capturing() {
    let lab = Lab::new();
    let agent = Agent::run(&lab, &config(&lab, "[service]\nuser = \"nobody\"\n"), &[]);
    capture_one(&lab, &agent);
    assert!(agent.wait_stderr("dropped privileges"), "{}", agent.stderr());
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).unwrap().split_whitespace().nth(1).unwrap()
    };
    assert_eq!(field("Uid:"), "65534", "{status}");
    // CAP_NET_ADMIN (12), CAP_NET_BIND_SERVICE (10), CAP_NET_RAW (13).
    let kept = (1u64 << 12) | (1 << 10) | (1 << 13);
    assert_eq!(u64::from_str_radix(field("CapEff:"), 16).unwrap(), kept, "{status}");
    assert_eq!(u64::from_str_radix(field("CapPrm:"), 16).unwrap(), kept, "{status}");
    // Still capturing after the drop: the ring and maps live on open fds.
    lab.sender(true).send_to(b"<14>after drop", ("2001:db8::1", 514)).unwrap();
    agent.wait_for_metric("raven_capture_records_total{stream=\"syslog\",via=\"xdp\"}", 2.0);
    assert!(agent.stop().success());
}

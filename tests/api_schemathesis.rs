//! schemathesis (PyPI) against a running agent: every operation in
//! `docs/openapi.json` is exercised with generated requests (examples,
//! coverage and fuzzing phases) and every response must conform to the
//! document — status codes, content types, schemas — and never be a 5xx.

mod common;

use std::process::Command;

use common::{Agent, Lab, METRICS_LISTEN};

const TOKEN: &str = "schemathesis-token";

#[test]
fn openapi_document_holds_against_the_running_agent() {
    let lab = Lab::new();
    let config = format!(
        "[capture]\nmode = \"socket\"\nports = [{{port = 514, stream = \"syslog\"}}]\n\
         [api]\nlisten = \"{METRICS_LISTEN}\"\ntokens_file = \"@DIR@/tokens\"\n"
    );
    let agent = Agent::with_files(&lab, &config, &[("tokens", TOKEN)], &[]);
    assert!(agent.wait_stderr("serving the API"), "{}", agent.stderr());
    // The API serves before capture has started; the schema's checks are
    // about the running agent, not its first second.
    agent.wait_until_ready();
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.appliance.name, "st", "run", spec])
        .args(["--url", &format!("http://{METRICS_LISTEN}")])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "all", "--phases", "examples,coverage,fuzzing"])
        // A configuration can be valid by the schema and still be refused
        // for what a schema cannot say (a restart-only key changed, a port
        // that cannot be bound): that is the 400 the API documents, so the
        // "schema-valid request must be accepted" check does not apply.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--max-time", "40", "--workers", "1", "--no-color"])
        .output()
        .expect("schemathesis (`st`) is installed by `cargo xtask setup --test-deps`");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\nagent:\n{}",
        agent.stderr()
    );
    assert!(text.contains("passed"), "{text}");
}

//! The command line's way into a running agent: one HTTP/1.1 request to
//! its API (plain HTTP; the API listens on localhost by default).
//!
//! Used by `raven-agent replay`, which must go through the agent: the
//! agent owns the store and the sinks' connections.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::Args;

/// `raven-agent replay`: re-send a stored range to a sink (cursor untouched).
#[derive(Args)]
pub struct ReplayArgs {
    /// The sink, by its name in `[[forward.sinks]]`.
    #[arg(long)]
    pub sink: String,
    #[arg(long)]
    pub stream: Option<String>,
    /// RFC 3339, inclusive.
    #[arg(long)]
    pub from: String,
    /// RFC 3339, inclusive.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub exporter: Option<std::net::IpAddr>,
    /// The agent's API address (`api.listen`).
    #[arg(long, default_value = "127.0.0.1:9184")]
    pub api: String,
    /// An API token (default: the RAVEN_API_TOKEN environment variable).
    #[arg(long, env = "RAVEN_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Sends one request; returns (status, body).
pub fn request(
    api: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(api)
        .with_context(|| format!("cannot reach the agent's API at {api}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("not an HTTP response")?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

pub fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "sink": args.sink,
        "stream": args.stream,
        "from": args.from,
        "to": args.to,
        "exporter": args.exporter,
    })
    .to_string();
    let (status, answer) =
        request(&args.api, "POST", "/api/replay", args.token.as_deref(), Some(&body))?;
    if status != 202 {
        bail!("the agent refused the replay ({status}): {answer}");
    }
    println!("{answer}");
    Ok(())
}

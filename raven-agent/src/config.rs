//! Raven's configuration: one TOML file, the same schema the API will read and
//! write as JSON.
//!
//! Invariants:
//! - Every key has a default, so an empty file is a valid configuration.
//! - Unknown keys are an error, never a silent no-op.
//! - A configuration is validated in full before anything uses it; a bad one
//!   is refused with every offending key and its reason, and whatever was
//!   running stays in force.
//!
//! Format: see `config/raven.toml` (the documented default) and
//! `docs/configuration.md` (every key, its default and unit).

use std::{collections::BTreeSet, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use crate::record::Stream;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub capture: CaptureConfig,
    pub api: ApiConfig,
    pub service: ServiceConfig,
    pub windows: WindowsConfig,
    pub decode: DecodeConfig,
    pub store: StoreConfig,
    // --- forward (issue 5) ---
    pub forward: ForwardConfig,
    // --- vpn (issue 7) ---
    pub vpn: VpnConfig,
}

/// `[windows]`: Windows events over HTTP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsConfig {
    /// `ADDRESS:PORT` of `POST /api/data/windows`; empty disables it.
    pub listen: String,
    /// Largest request body, after gzip decompression (bytes).
    pub max_body_bytes: usize,
    pub max_events_per_request: usize,
    /// Requests handled at once; more get 429.
    pub max_requests_in_flight: usize,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        WindowsConfig {
            listen: "0.0.0.0:8084".to_string(),
            max_body_bytes: 16 << 20,
            max_events_per_request: 10_000,
            max_requests_in_flight: 8,
        }
    }
}

/// `[decode]`: how records are read into fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// Zone of syslog timestamps that carry none (RFC 3164): `UTC` or `±HH:MM`.
    pub syslog_timezone: String,
    /// Raven's SNMP engine ID (hex, RFC 3411, 5–32 bytes), the one informs
    /// are sent to; empty: generated once and kept in the data directory.
    pub snmp_engine_id: String,
    /// SNMPv3 USM users whose messages are authenticated and decrypted.
    pub snmp_users: Vec<SnmpUserConfig>,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            syslog_timezone: "UTC".to_string(),
            snmp_engine_id: String::new(),
            snmp_users: Vec::new(),
        }
    }
}

/// A secret string (a passphrase): serialised as itself (the TOML file
/// keeps it), but never shown by `Debug`; [`Config::redacted`] replaces it
/// wherever the configuration is shown.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

/// What a shown configuration holds instead of a secret; posting it back
/// keeps the running value.
pub const REDACTED: &str = "(redacted)";

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { REDACTED })
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// One `[[decode.snmp_users]]` entry (RFC 3414 usmUser).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnmpUserConfig {
    /// msgUserName (1–32 bytes).
    pub name: String,
    /// Only for messages whose authoritative engine is this one (hex);
    /// empty: any engine (traps from any agent, informs to Raven).
    #[serde(default)]
    pub engine_id: String,
    /// `md5`, `sha1` (`sha`), `sha224`, `sha256`, `sha384`, `sha512`.
    pub auth_protocol: String,
    pub auth_passphrase: Secret,
    /// `des`, `aes128` (`aes`); empty: authNoPriv only.
    #[serde(default)]
    pub priv_protocol: String,
    #[serde(default)]
    pub priv_passphrase: Secret,
}

impl DecodeConfig {
    fn problems(&self) -> Vec<(String, String)> {
        use crate::decode::usm::{AuthProtocol, PrivProtocol, parse_engine_id};
        let mut out: Vec<(String, String)> = Vec::new();
        if crate::decode::syslog::parse_offset(&self.syslog_timezone).is_none() {
            out.push((
                "decode.syslog_timezone".into(),
                "must be UTC or an offset like +01:00".into(),
            ));
        }
        if !self.snmp_engine_id.is_empty() && parse_engine_id(&self.snmp_engine_id).is_none() {
            out.push((
                "decode.snmp_engine_id".into(),
                "must be 5 to 32 bytes of hex (or empty)".into(),
            ));
        }
        for (i, user) in self.snmp_users.iter().enumerate() {
            let key = |k: &str| format!("decode.snmp_users[{i}].{k}");
            let passphrase = |p: &Secret, k: &str, out: &mut Vec<(String, String)>| {
                if p.0 == REDACTED {
                    out.push((
                        key(k),
                        "the redacted placeholder, and no running value to keep".into(),
                    ));
                } else if p.0.chars().count() < 8 {
                    out.push((key(k), "must be at least 8 characters (RFC 3414 11.2)".into()));
                }
            };
            if !(1..=32).contains(&user.name.len()) {
                out.push((key("name"), "must be 1 to 32 bytes".into()));
            }
            if !user.engine_id.is_empty() && parse_engine_id(&user.engine_id).is_none() {
                out.push((key("engine_id"), "must be 5 to 32 bytes of hex (or empty)".into()));
            }
            if AuthProtocol::from_name(&user.auth_protocol).is_none() {
                out.push((key("auth_protocol"), format!("must be one of {}", AuthProtocol::NAMES)));
            }
            passphrase(&user.auth_passphrase, "auth_passphrase", &mut out);
            if user.priv_protocol.is_empty() {
                if !user.priv_passphrase.0.is_empty() {
                    out.push((key("priv_passphrase"), "given without priv_protocol".into()));
                }
            } else {
                if PrivProtocol::from_name(&user.priv_protocol).is_none() {
                    out.push((
                        key("priv_protocol"),
                        format!("must be one of {} (or empty)", PrivProtocol::NAMES),
                    ));
                }
                passphrase(&user.priv_passphrase, "priv_passphrase", &mut out);
            }
        }
        out
    }
}

/// `[store]`: the ring buffer on local disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Segment files and the index live here.
    pub data_dir: String,
    /// A segment is sealed once it would grow past this (bytes).
    pub segment_max_bytes: u64,
    /// ... or once it is this old (seconds).
    pub segment_max_age_s: u64,
    /// How blocks are compressed (recorded per segment).
    pub codec: crate::store::segment::Codec,
    /// Level of the codec (gzip 1..9, zstd 1..19; higher is smaller and slower).
    pub compression_level: u32,
    /// Records older than this are evicted (days).
    pub max_age_days: u64,
    /// Bytes each stream may use; 0: no per-stream limit.
    pub stream_quota_bytes: u64,
    /// Bytes all streams together may use; 0: no total limit.
    pub total_quota_bytes: u64,
    /// Evict the oldest segments while the disk has less free than this (bytes).
    pub min_free_bytes: u64,
    /// How often retention runs (seconds).
    pub cleanup_interval_s: u64,
    /// Group commit: after the first captured batch arrives, wait up to
    /// this long for more before one write and fdatasync (milliseconds;
    /// 0: take only what is already queued).
    pub flush_interval_ms: u64,
    /// ... or until this many records are waiting.
    pub flush_max_records: usize,
    /// Re-pack sealed segments of small blocks into large ones during
    /// maintenance (`store::repack`).
    pub repack_enabled: bool,
    /// A sealed segment whose blocks hold fewer records than this on
    /// average is re-packed.
    pub repack_min_records_per_block: u64,
    /// Records per block of a re-packed segment.
    pub repack_block_records: usize,
    /// At most this many segments ...
    pub repack_max_segments_per_pass: usize,
    /// ... and this many bytes of them (at least one) per maintenance pass.
    pub repack_max_bytes_per_pass: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: "/var/lib/raven".to_string(),
            segment_max_bytes: 64 << 20,
            segment_max_age_s: 3600,
            codec: Default::default(),
            compression_level: 6,
            max_age_days: 14,
            stream_quota_bytes: 0,
            total_quota_bytes: 0,
            min_free_bytes: 1 << 30,
            cleanup_interval_s: 3600,
            flush_interval_ms: 10,
            flush_max_records: 16384,
            repack_enabled: true,
            repack_min_records_per_block: 100,
            repack_block_records: 1000,
            repack_max_segments_per_pass: 8,
            repack_max_bytes_per_pass: 512 << 20,
        }
    }
}

impl StoreConfig {
    fn problems(&self) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        let mut check = |ok: bool, key: &str, reason: &'static str| {
            if !ok {
                out.push((format!("store.{key}"), reason));
            }
        };
        check(!self.data_dir.is_empty(), "data_dir", "must name a directory");
        check(self.segment_max_bytes >= 4096, "segment_max_bytes", "must be at least 4096");
        check(self.segment_max_age_s >= 1, "segment_max_age_s", "must be at least 1 second");
        check(
            self.codec.levels().contains(&self.compression_level),
            "compression_level",
            match self.codec {
                crate::store::segment::Codec::Gzip => "must be between 1 and 9 for gzip",
                crate::store::segment::Codec::Zstd => "must be between 1 and 19 for zstd",
            },
        );
        check(self.max_age_days >= 1, "max_age_days", "must be at least 1 day");
        check(self.cleanup_interval_s >= 1, "cleanup_interval_s", "must be at least 1 second");
        check(
            self.flush_interval_ms <= 1000,
            "flush_interval_ms",
            "must be at most 1000 (acknowledgements wait for it)",
        );
        check(self.flush_max_records >= 1, "flush_max_records", "must be at least 1");
        check(
            (1..=65_536).contains(&self.repack_block_records),
            "repack_block_records",
            "must be between 1 and 65536",
        );
        out
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// After XDP is attached and the sockets are bound, run as this user,
    /// keeping only the capabilities running needs. Empty: stay as started.
    pub user: String,
}

/// How datagrams are taken off the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// XDP program on the interfaces plus socket listeners as the safety net.
    Xdp,
    /// Socket listeners only (no privileges needed beyond binding the ports).
    Socket,
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Native (driver) mode where the interface supports it, generic otherwise.
    Auto,
    /// Native mode only; fail if the driver has no XDP support.
    Driver,
    /// Generic (skb) mode: works on every interface, costs more CPU.
    Skb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortAction {
    /// Copy, then drop: the host's stack never sees the datagram.
    Steal,
    /// Copy, then pass: collectors already on the host still get it.
    Tee,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    pub port: u16,
    pub stream: Stream,
    #[serde(default = "default_action")]
    pub action: PortAction,
}

fn default_action() -> PortAction {
    PortAction::Steal
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    pub mode: CaptureMode,
    pub xdp_mode: XdpAttachMode,
    /// Interfaces to attach to; empty means the interfaces that carry a
    /// default route.
    pub interfaces: Vec<String>,
    pub ports: Vec<PortConfig>,
    /// Payload bytes kept per datagram (bytes).
    pub snap_length: u32,
    /// Size of the kernel ring buffer (bytes; a power of two, at least 4096).
    pub ring_bytes: u32,
    /// Force a ring wakeup every this many records per CPU.
    pub wakeup_every: u32,
    /// How often the ring is read even without a wakeup (milliseconds).
    pub poll_interval_ms: u64,
    /// Receive buffer of each UDP listener (bytes).
    pub socket_receive_buffer_bytes: u32,
    /// Largest batch handed to the next stage (records).
    pub batch_max_records: usize,
    /// Syslog over TCP (RFC 6587).
    pub syslog_tcp: TcpInputConfig,
    /// Syslog over TLS (RFC 5425).
    pub syslog_tls: TcpInputConfig,
}

/// A syslog stream input (TCP, or TLS when a certificate is given).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpInputConfig {
    /// `ADDRESS:PORT` to listen on; empty disables the input.
    pub listen: String,
    pub max_connections: usize,
    /// Longer messages are kept cut at this length and flagged truncated.
    pub max_message_bytes: usize,
    /// TLS only: PEM certificate chain and private key.
    pub cert_file: String,
    pub key_file: String,
    /// TLS only: require client certificates signed by this CA (PEM).
    pub client_ca_file: String,
}

impl Default for TcpInputConfig {
    fn default() -> Self {
        TcpInputConfig {
            listen: String::new(),
            max_connections: 512,
            max_message_bytes: 64 * 1024,
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
        }
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            mode: CaptureMode::Xdp,
            xdp_mode: XdpAttachMode::Auto,
            interfaces: Vec::new(),
            ports: Stream::WIRE
                .into_iter()
                .map(|stream| PortConfig {
                    port: stream.default_port(),
                    stream,
                    action: PortAction::Steal,
                })
                .collect(),
            snap_length: raven_common::MAX_SNAP_LEN as u32,
            ring_bytes: 16 * 1024 * 1024,
            wakeup_every: 64,
            poll_interval_ms: 5,
            socket_receive_buffer_bytes: 32 * 1024 * 1024,
            batch_max_records: 1024,
            syslog_tcp: TcpInputConfig::default(),
            syslog_tls: TcpInputConfig::default(),
        }
    }
}

impl CaptureConfig {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Where the REST API, `/metrics` and the status page are served;
    /// empty disables the listener.
    pub listen: String,
    /// File with the valid bearer tokens, one per line (several at once, so
    /// a token can be rotated without downtime). `RAVEN_API_TOKENS`
    /// (comma-separated) adds more.
    pub tokens_file: String,
    /// Paths answered without a token.
    pub open_paths: Vec<String>,
    /// Serve the status page (read-only) without a token.
    pub status_page_public: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:9184".to_string(),
            tokens_file: String::new(),
            open_paths: ["/healthz", "/readyz", "/metrics"].map(String::from).to_vec(),
            status_page_public: false,
        }
    }
}

/// One reason a configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Dotted path of the offending key, e.g. `capture.ports[2].port`.
    pub key: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("invalid configuration: {}", format_problems(.0))]
    Invalid(Vec<Problem>),
}

/// toml's message quotes the offending line; not when that line may hold
/// a secret (a passphrase): then only the reason and the line number.
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else { return e.to_string() };
    let start = text.get(..span.start).unwrap_or(text).rfind('\n').map_or(0, |i| i + 1);
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    if text[start..end].contains("passphrase") {
        let line = text[..start].matches('\n').count() + 1;
        format!("line {line}: {}", e.message())
    } else {
        e.to_string()
    }
}

fn format_problems(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("{}: {}", p.key, p.reason)).collect::<Vec<_>>().join("; ")
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => {
                ConfigError::Syntax { path: path.display().to_string(), message }
            }
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: "<config>".to_string(),
            message: syntax_message(text, &e),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem =
            |key: String, reason: &str| problems.push(Problem { key, reason: reason.to_string() });
        let c = &self.capture;
        let mut seen = BTreeSet::new();
        for (i, rule) in c.ports.iter().enumerate() {
            if rule.port == 0 {
                problem(format!("capture.ports[{i}].port"), "port 0 cannot be captured");
            }
            if rule.stream == Stream::Windows {
                problem(
                    format!("capture.ports[{i}].stream"),
                    "windows events come over HTTP (windows.listen), not UDP",
                );
            }
            if !seen.insert(rule.port) {
                problem(format!("capture.ports[{i}].port"), "port listed twice");
            }
        }
        if c.snap_length == 0 || c.snap_length as usize > raven_common::MAX_SNAP_LEN {
            problem(
                "capture.snap_length".into(),
                &format!("must be between 1 and {} bytes", raven_common::MAX_SNAP_LEN),
            );
        }
        if c.ring_bytes < 4096 || !c.ring_bytes.is_power_of_two() {
            problem("capture.ring_bytes".into(), "must be a power of two of at least 4096 bytes");
        }
        if c.poll_interval_ms == 0 || c.poll_interval_ms > 1000 {
            problem("capture.poll_interval_ms".into(), "must be between 1 and 1000 ms");
        }
        if c.batch_max_records == 0 {
            problem("capture.batch_max_records".into(), "must be at least 1");
        }
        for (i, name) in c.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
                problem(format!("capture.interfaces[{i}]"), "not a valid interface name");
            }
        }
        if !self.api.listen.is_empty() && self.api.listen.parse::<std::net::SocketAddr>().is_err() {
            problem("api.listen".into(), "must be ADDRESS:PORT (or empty to disable)");
        }
        for (i, path) in self.api.open_paths.iter().enumerate() {
            if !path.starts_with('/') {
                problem(format!("api.open_paths[{i}]"), "must start with /");
            }
            if path.starts_with("/api/buffer/config") || path.starts_with("/api/data") {
                problem(format!("api.open_paths[{i}]"), "mutating endpoints always need a token");
            }
        }
        for (name, input, tls) in [
            ("capture.syslog_tcp", &c.syslog_tcp, false),
            ("capture.syslog_tls", &c.syslog_tls, true),
        ] {
            if !input.listen.is_empty() && input.listen.parse::<std::net::SocketAddr>().is_err() {
                problem(format!("{name}.listen"), "must be ADDRESS:PORT (or empty to disable)");
            }
            if input.max_connections == 0 {
                problem(format!("{name}.max_connections"), "must be at least 1");
            }
            if input.max_message_bytes < 480 {
                problem(format!("{name}.max_message_bytes"), "must be at least 480 (RFC 5424)");
            }
            let has_cert = !input.cert_file.is_empty() || !input.key_file.is_empty();
            if !tls && (has_cert || !input.client_ca_file.is_empty()) {
                problem(format!("{name}.cert_file"), "certificates belong in capture.syslog_tls");
            }
            if tls
                && !input.listen.is_empty()
                && (input.cert_file.is_empty() || input.key_file.is_empty())
            {
                problem(format!("{name}.cert_file"), "TLS needs cert_file and key_file");
            }
        }
        if self.service.user.contains(['/', ':', ' ', '\0']) {
            problem("service.user".into(), "not a valid user name");
        }
        let w = &self.windows;
        if !w.listen.is_empty() && w.listen.parse::<std::net::SocketAddr>().is_err() {
            problem("windows.listen".into(), "must be ADDRESS:PORT (or empty to disable)");
        }
        if w.max_body_bytes < 1024 {
            problem("windows.max_body_bytes".into(), "must be at least 1024");
        }
        if w.max_events_per_request == 0 {
            problem("windows.max_events_per_request".into(), "must be at least 1");
        }
        if w.max_requests_in_flight == 0 {
            problem("windows.max_requests_in_flight".into(), "must be at least 1");
        }
        for (key, reason) in self.decode.problems() {
            problem(key, &reason);
        }
        for (key, reason) in self.store.problems() {
            problem(key, reason);
        }
        for (key, reason) in self.forward.problems() {
            problem(key, &reason);
        }
        for (key, reason) in self.vpn.problems() {
            problem(key, &reason);
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// This configuration as it may be shown (API, configuration history):
    /// every secret replaced by [`REDACTED`].
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        for user in &mut shown.decode.snmp_users {
            for secret in [&mut user.auth_passphrase, &mut user.priv_passphrase] {
                if !secret.0.is_empty() {
                    secret.0 = REDACTED.to_string();
                }
            }
        }
        shown
    }

    /// Puts back the running secrets where a posted configuration holds
    /// [`REDACTED`] (it was read from the API and edited): the same user
    /// (name and engine) at the same position, or else the first with that
    /// name and engine. What has no running value stays redacted, and
    /// validation refuses it.
    pub fn keep_secrets_from(&mut self, running: &Config) {
        let running = &running.decode.snmp_users;
        for (i, user) in self.decode.snmp_users.iter_mut().enumerate() {
            let same = |r: &&SnmpUserConfig| r.name == user.name && r.engine_id == user.engine_id;
            let Some(old) = running.get(i).filter(same).or_else(|| running.iter().find(same))
            else {
                continue;
            };
            if user.auth_passphrase.0 == REDACTED {
                user.auth_passphrase = old.auth_passphrase.clone();
            }
            if user.priv_passphrase.0 == REDACTED {
                user.priv_passphrase = old.priv_passphrase.clone();
            }
        }
    }
}

// --- forward (issue 5) ---

/// `[forward]`: where records go upstream and how hard Raven tries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// The appliance part of every record id `<appliance_id>:<stream>:<seq>`.
    pub appliance_id: String,
    /// Backoff after a failed attempt: full jitter in [0, min(max, min·2^(n-1))].
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Consecutive failures that open a sink's circuit breaker (state down).
    pub breaker_failures: u32,
    /// How often an idle sink's link is probed (milliseconds).
    pub probe_interval_ms: u64,
    pub sinks: Vec<SinkConfig>,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            appliance_id: "raven".to_string(),
            backoff_min_ms: 500,
            backoff_max_ms: 15_000,
            breaker_failures: 5,
            probe_interval_ms: 10_000,
            sinks: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkProtocol {
    SyslogTcp,
    SyslogTls,
    SyslogUdp,
    UdpRelay,
    Snmp,
    Http,
}

impl SinkProtocol {
    /// The streams a sink of this protocol takes when `streams` is empty.
    pub fn default_streams(self) -> &'static [Stream] {
        match self {
            SinkProtocol::SyslogTcp | SinkProtocol::SyslogTls | SinkProtocol::SyslogUdp => {
                &[Stream::Syslog]
            }
            SinkProtocol::UdpRelay => &[Stream::Netflow, Stream::Ipfix, Stream::Sflow],
            SinkProtocol::Snmp => &[Stream::Snmp],
            SinkProtocol::Http => &Stream::ALL,
        }
    }

    /// Streams a sink of this protocol can carry at all.
    fn can_carry(self, stream: Stream) -> bool {
        self == SinkProtocol::Http || self.default_streams().contains(&stream)
    }
}

/// How syslog messages are delimited on a TCP/TLS stream (RFC 6587).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogFraming {
    /// `LEN SP MSG` (RFC 6587 3.4.1): any message content is safe.
    OctetCounting,
    /// `MSG LF` (RFC 6587 3.4.2): for receivers without octet counting.
    Lf,
}

/// One `[[forward.sinks]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name (metrics label, cursor key, CLI/API).
    pub name: String,
    pub protocol: SinkProtocol,
    /// `HOST:PORT` (syslog_*, udp_relay, snmp) or an `http://`/`https://` URL.
    pub endpoint: String,
    /// Streams this sink takes; empty: the protocol's natural streams.
    #[serde(default)]
    pub streams: Vec<Stream>,
    /// syslog_tcp / syslog_tls only.
    #[serde(default = "default_framing")]
    pub framing: SyslogFraming,
    /// TLS (syslog_tls, https): PEM CA bundle to verify the server; empty:
    /// refuse (Raven has no built-in roots).
    #[serde(default)]
    pub ca_file: String,
    /// TLS client certificate chain and key (PEM), both or neither.
    #[serde(default)]
    pub cert_file: String,
    #[serde(default)]
    pub key_file: String,
    /// Name checked against the server certificate; empty: the endpoint host.
    #[serde(default)]
    pub server_name: String,
    /// syslog: add a structured-data element with the record id to RFC 5424 messages.
    #[serde(default)]
    pub add_record_id: bool,
    /// SD-ID of that element.
    #[serde(default = "default_sd_id")]
    pub sd_id: String,
    /// Pacing; 0 means unlimited.
    #[serde(default)]
    pub max_records_per_second: u64,
    #[serde(default)]
    pub max_bytes_per_second: u64,
    /// The forwarder pauses this sink while the VPN is down.
    #[serde(default)]
    pub requires_vpn: bool,
    /// snmp: forward informs as SNMPv2 traps (the NOC receiver does not answer).
    #[serde(default = "default_true")]
    pub informs_as_traps: bool,
    /// udp_relay: give each (exporter, source id / domain) its own id upstream.
    #[serde(default = "default_true")]
    pub rewrite_domains: bool,
    /// udp_relay: re-send known templates at least this often (seconds).
    #[serde(default = "default_template_interval")]
    pub template_resend_interval_s: u64,
    /// Connect timeout (milliseconds).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// syslog_tcp/tls: how long written bytes may stay unacknowledged by the
    /// peer's TCP stack (milliseconds); http: the request timeout.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_ms: u64,
    /// syslog_tcp/tls: the connection must stay healthy this long after the
    /// peer ACKed a batch before the batch counts as acknowledged (ms).
    #[serde(default = "default_ack_confirm")]
    pub ack_confirm_ms: u64,
    /// Most records per send. A send is one acknowledgement cycle, so this
    /// bounds both the drain rate after an outage (a TCP batch per
    /// RTT + `ack_confirm_ms`) and what a broken connection re-sends.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// Most payload bytes per send (at least one record always goes).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: u64,
}

fn default_framing() -> SyslogFraming {
    SyslogFraming::OctetCounting
}
fn default_sd_id() -> String {
    "raven@32473".to_string()
}
fn default_true() -> bool {
    true
}
fn default_template_interval() -> u64 {
    300
}
fn default_connect_timeout() -> u64 {
    5_000
}
fn default_ack_timeout() -> u64 {
    10_000
}
fn default_ack_confirm() -> u64 {
    100
}
fn default_batch_max_records() -> usize {
    4096
}
fn default_batch_max_bytes() -> u64 {
    1 << 20
}

impl SinkConfig {
    /// A sink with every optional key at its default.
    pub fn new(name: &str, protocol: SinkProtocol, endpoint: &str) -> SinkConfig {
        SinkConfig {
            name: name.to_string(),
            protocol,
            endpoint: endpoint.to_string(),
            streams: Vec::new(),
            framing: default_framing(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            server_name: String::new(),
            add_record_id: false,
            sd_id: default_sd_id(),
            max_records_per_second: 0,
            max_bytes_per_second: 0,
            requires_vpn: false,
            informs_as_traps: true,
            rewrite_domains: true,
            template_resend_interval_s: default_template_interval(),
            connect_timeout_ms: default_connect_timeout(),
            ack_timeout_ms: default_ack_timeout(),
            ack_confirm_ms: default_ack_confirm(),
            batch_max_records: default_batch_max_records(),
            batch_max_bytes: default_batch_max_bytes(),
        }
    }

    pub fn effective_streams(&self) -> Vec<Stream> {
        if self.streams.is_empty() {
            self.protocol.default_streams().to_vec()
        } else {
            self.streams.clone()
        }
    }

    /// The host part of `endpoint` (`HOST:PORT`, `[V6]:PORT` or a URL).
    pub fn endpoint_host(&self) -> String {
        let rest = self.endpoint.split_once("://").map_or(self.endpoint.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some(v6) = authority.strip_prefix('[') {
            return v6.split(']').next().unwrap_or_default().to_string();
        }
        authority.rsplit_once(':').map_or(authority, |(h, _)| h).to_string()
    }
}

/// RFC 5424 SD-NAME: 1–32 printable US-ASCII, no `=`, SP, `]`, `"`.
fn valid_sd_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id.bytes().all(|b| (33..=126).contains(&b) && !b"= ]\"".contains(&b))
}

impl ForwardConfig {
    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut problem = |key: String, reason: &str| out.push((key, reason.to_string()));
        if self.appliance_id.is_empty() || self.appliance_id.contains([':', ' ', '\0']) {
            problem("forward.appliance_id".into(), "must be non-empty, without ':' or spaces");
        }
        if self.backoff_min_ms == 0 {
            problem("forward.backoff_min_ms".into(), "must be at least 1 ms");
        }
        if self.backoff_max_ms < self.backoff_min_ms {
            problem("forward.backoff_max_ms".into(), "must be at least backoff_min_ms");
        }
        if self.breaker_failures == 0 {
            problem("forward.breaker_failures".into(), "must be at least 1");
        }
        if self.probe_interval_ms < 100 {
            problem("forward.probe_interval_ms".into(), "must be at least 100 ms");
        }
        let mut names = BTreeSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let key = |k: &str| format!("forward.sinks[{i}].{k}");
            if sink.name.is_empty()
                || !sink.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                problem(key("name"), "must be non-empty letters, digits, '-', '_' or '.'");
            }
            if !names.insert(sink.name.as_str()) {
                problem(key("name"), "sink name used twice");
            }
            match sink.protocol {
                SinkProtocol::Http => {
                    let ok = sink.endpoint.parse::<http::Uri>().is_ok_and(|u| {
                        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                    });
                    if !ok {
                        problem(key("endpoint"), "must be an http:// or https:// URL");
                    }
                }
                _ => {
                    let port_ok = sink.endpoint.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                    });
                    if !port_ok {
                        problem(key("endpoint"), "must be HOST:PORT");
                    }
                }
            }
            for (j, stream) in sink.streams.iter().enumerate() {
                if !sink.protocol.can_carry(*stream) {
                    problem(
                        format!("forward.sinks[{i}].streams[{j}]"),
                        "this protocol cannot carry that stream",
                    );
                }
            }
            let tls = sink.protocol == SinkProtocol::SyslogTls
                || (sink.protocol == SinkProtocol::Http && sink.endpoint.starts_with("https://"));
            if tls && sink.ca_file.is_empty() {
                problem(key("ca_file"), "TLS needs a CA file to verify the server");
            }
            let has_tls_files =
                !(sink.ca_file.is_empty() && sink.cert_file.is_empty() && sink.key_file.is_empty());
            if !tls && has_tls_files {
                problem(key("ca_file"), "TLS files only apply to syslog_tls and https sinks");
            }
            if sink.cert_file.is_empty() != sink.key_file.is_empty() {
                problem(key("cert_file"), "cert_file and key_file go together");
            }
            if !valid_sd_id(&sink.sd_id) {
                problem(
                    key("sd_id"),
                    "not a valid RFC 5424 SD-ID (1-32 printable, no = ] \" or space)",
                );
            }
            if sink.add_record_id && !sink.protocol.default_streams().contains(&Stream::Syslog) {
                problem(
                    key("add_record_id"),
                    "only syslog sinks carry the record id in the message",
                );
            }
            if sink.template_resend_interval_s == 0 {
                problem(key("template_resend_interval_s"), "must be at least 1 s");
            }
            if sink.connect_timeout_ms == 0 || sink.ack_timeout_ms == 0 {
                problem(key("ack_timeout_ms"), "timeouts must be at least 1 ms");
            }
            if sink.ack_confirm_ms > sink.ack_timeout_ms {
                problem(key("ack_confirm_ms"), "must not exceed ack_timeout_ms");
            }
            if sink.batch_max_records == 0 {
                problem(key("batch_max_records"), "must be at least 1");
            }
            if sink.batch_max_bytes == 0 {
                problem(key("batch_max_bytes"), "must be at least 1");
            }
        }
        out
    }
}

// --- vpn (issue 7) ---

/// `[vpn]`: the supervised OpenVPN client and its health probes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VpnConfig {
    /// Supervise an OpenVPN client at all.
    pub enabled: bool,
    pub openvpn_binary: String,
    /// Backoff before restarting openvpn after it exited: min·2^(n-1), capped at max.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Consecutive failed starts (exits without reaching CONNECTED) before failing over.
    pub failover_after_failures: u32,
    /// Unhealthy time before failing over to the next profile.
    pub failover_after_ms: u64,
    /// Time a lower-priority profile must run healthy before the preferred one is retried.
    pub failback_after_ms: u64,
    pub probe_interval_ms: u64,
    /// Each probe's deadline; also how quickly a cut is noticed.
    pub probe_deadline_ms: u64,
    /// Consecutive all-failed probe rounds (while CONNECTED) that make the link "down".
    pub down_after_probes: u32,
    /// `HOST:PORT` targets probed with a TCP connect through the tunnel.
    pub probe_targets: Vec<String>,
    /// An address pinged through the tunnel (ICMP echo); empty: no ping probe.
    pub ping_target: String,
    /// Accept profiles that run scripts (`up`, `down`, `script-security 2`).
    pub allow_scripts: bool,
    pub expiry_warning_days: u32,
}

impl Default for VpnConfig {
    fn default() -> Self {
        VpnConfig {
            enabled: false,
            openvpn_binary: "/usr/sbin/openvpn".to_string(),
            backoff_min_ms: 1000,
            backoff_max_ms: 60_000,
            failover_after_failures: 3,
            failover_after_ms: 120_000,
            failback_after_ms: 600_000,
            probe_interval_ms: 5000,
            probe_deadline_ms: 2000,
            down_after_probes: 2,
            probe_targets: Vec::new(),
            ping_target: String::new(),
            allow_scripts: false,
            expiry_warning_days: 30,
        }
    }
}

impl VpnConfig {
    /// Problems as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut problem =
            |key: &str, reason: &str| out.push((format!("vpn.{key}"), reason.to_string()));
        if self.enabled && !self.openvpn_binary.starts_with('/') {
            problem("openvpn_binary", "must be an absolute path");
        }
        if self.backoff_min_ms == 0 || self.backoff_min_ms > self.backoff_max_ms {
            problem("backoff_min_ms", "must be at least 1 and at most backoff_max_ms");
        }
        if self.failover_after_failures == 0 {
            problem("failover_after_failures", "must be at least 1");
        }
        if self.probe_interval_ms < 100 {
            problem("probe_interval_ms", "must be at least 100 ms");
        }
        if self.probe_deadline_ms == 0 || self.probe_deadline_ms > self.probe_interval_ms {
            problem("probe_deadline_ms", "must be at least 1 ms and at most probe_interval_ms");
        }
        if self.down_after_probes == 0 {
            problem("down_after_probes", "must be at least 1");
        }
        if self.failover_after_ms < self.probe_interval_ms {
            problem("failover_after_ms", "must be at least probe_interval_ms");
        }
        if self.failback_after_ms < self.failover_after_ms {
            problem("failback_after_ms", "must be at least failover_after_ms (hysteresis)");
        }
        for (i, target) in self.probe_targets.iter().enumerate() {
            if target.parse::<std::net::SocketAddr>().is_err() {
                out.push((format!("vpn.probe_targets[{i}]"), "must be ADDRESS:PORT".to_string()));
            }
        }
        if !self.ping_target.is_empty() && self.ping_target.parse::<std::net::IpAddr>().is_err() {
            out.push((
                "vpn.ping_target".to_string(),
                "must be an IP address (or empty)".to_string(),
            ));
        }
        out
    }

    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }

    pub fn probe_deadline(&self) -> Duration {
        Duration::from_millis(self.probe_deadline_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn the_shipped_default_parses_and_matches_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/raven.toml");
        let shipped = Config::load(&path).unwrap();
        assert_eq!(shipped, Config::default(), "config/raven.toml drifted from Config::default()");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = Config::parse("[capture]\nsnaplen = 5\n").unwrap_err().to_string();
        assert!(err.contains("snaplen"), "{err}");
    }

    #[test]
    fn every_bad_value_is_listed_with_its_key() {
        let err = Config::parse(
            "[capture]\nsnap_length = 0\nring_bytes = 5000\n\
             ports = [{port = 514, stream = \"syslog\"}, {port = 514, stream = \"snmp\"}]\n",
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = err else { panic!("{err}") };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["capture.ports[1].port", "capture.snap_length", "capture.ring_bytes"]);
    }

    /// Dotted key paths of a TOML value's leaves and arrays (arrays of
    /// tables also as `a[].b`).
    fn key_paths(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
        match value {
            toml::Value::Table(table) => {
                for (key, inner) in table {
                    let path =
                        if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    if !inner.is_table() {
                        out.push(path.clone());
                    }
                    key_paths(&path, inner, out);
                }
            }
            toml::Value::Array(items) => {
                for item in items.iter().filter(|i| i.is_table()) {
                    key_paths(&format!("{prefix}[]"), item, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_key_is_documented() {
        let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let doc = std::fs::read_to_string(doc_path).unwrap();
        let mut keys = Vec::new();
        key_paths("", &toml::Value::try_from(Config::default()).unwrap(), &mut keys);
        let missing: Vec<_> =
            keys.iter().filter(|k| !doc.contains(&format!("| `{k}` |"))).collect();
        assert!(missing.is_empty(), "keys without a row in docs/configuration.md: {missing:?}");
    }

    #[test]
    fn forward_sinks_parse_with_defaults_and_are_validated() {
        let ok = Config::parse(
            "[forward]\nappliance_id = \"venue-7\"\n\
             [[forward.sinks]]\nname = \"noc-syslog\"\nprotocol = \"syslog_tcp\"\n\
             endpoint = \"192.0.2.10:6514\"\nadd_record_id = true\n",
        )
        .unwrap();
        let sink = &ok.forward.sinks[0];
        assert_eq!(sink.framing, SyslogFraming::OctetCounting);
        assert_eq!(sink.sd_id, "raven@32473");
        assert_eq!(sink.effective_streams(), [Stream::Syslog]);
        assert_eq!(sink.endpoint_host(), "192.0.2.10");
        let err = Config::parse(
            "[[forward.sinks]]\nname = \"a\"\nprotocol = \"syslog_tls\"\nendpoint = \"x\"\n\
             streams = [\"netflow\"]\n\
             [[forward.sinks]]\nname = \"a\"\nprotocol = \"http\"\nendpoint = \"ftp://x\"\n\
             sd_id = \"bad id\"\n",
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = err else { panic!("{err}") };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "forward.sinks[0].endpoint",
                "forward.sinks[0].streams[0]",
                "forward.sinks[0].ca_file",
                "forward.sinks[1].name",
                "forward.sinks[1].endpoint",
                "forward.sinks[1].sd_id",
            ]
        );
    }

    #[test]
    fn unknown_stream_names_are_refused() {
        let err = Config::parse("[capture]\nports = [{port = 9, stream = \"gopher\"}]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("gopher"), "{err}");
    }

    const USERS: &str = "[decode]\nsnmp_engine_id = \"0x80007ed90501020304\"\n\
        [[decode.snmp_users]]\nname = \"noc\"\nauth_protocol = \"sha256\"\n\
        auth_passphrase = \"auth-secret-1\"\npriv_protocol = \"aes128\"\n\
        priv_passphrase = \"priv-secret-1\"\n\
        [[decode.snmp_users]]\nname = \"sw1\"\nengine_id = \"8000000001020304\"\n\
        auth_protocol = \"md5\"\nauth_passphrase = \"auth-secret-2\"\n";

    #[test]
    fn snmp_users_parse_and_bad_ones_are_refused_by_key() {
        let ok = Config::parse(USERS).unwrap();
        assert_eq!(ok.decode.snmp_users.len(), 2);
        assert_eq!(ok.decode.snmp_users[1].priv_protocol, "");
        let err = Config::parse(
            "[decode]\nsnmp_engine_id = \"80\"\n\
             [[decode.snmp_users]]\nname = \"\"\nengine_id = \"xyz\"\nauth_protocol = \"sha3\"\n\
             auth_passphrase = \"short\"\npriv_protocol = \"3des\"\npriv_passphrase = \"(redacted)\"\n\
             [[decode.snmp_users]]\nname = \"a\"\nauth_protocol = \"sha\"\n\
             auth_passphrase = \"long enough\"\npriv_passphrase = \"orphan-passphrase\"\n",
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = err else { panic!("{err}") };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "decode.snmp_engine_id",
                "decode.snmp_users[0].name",
                "decode.snmp_users[0].engine_id",
                "decode.snmp_users[0].auth_protocol",
                "decode.snmp_users[0].auth_passphrase",
                "decode.snmp_users[0].priv_protocol",
                "decode.snmp_users[0].priv_passphrase",
                "decode.snmp_users[1].priv_passphrase",
            ]
        );
        let text = format!("{problems:?}");
        assert!(!text.contains("short") && !text.contains("orphan-passphrase"), "{text}");
    }

    #[test]
    fn a_syntax_error_on_a_passphrase_line_does_not_quote_it() {
        let err = Config::parse(
            "[[decode.snmp_users]]\nname = \"a\"\nauth_protocol = \"sha\"\n\
             auth_passphrase = not-quoted-secret\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 4") && !err.contains("not-quoted-secret"), "{err}");
        let other = Config::parse("[capture]\nsnap_length = \"x\"\n").unwrap_err().to_string();
        assert!(other.contains("snap_length"), "other lines are still quoted: {other}");
    }

    #[test]
    fn passphrases_are_redacted_wherever_the_config_is_shown_and_kept_when_posted_back() {
        let running = Config::parse(USERS).unwrap();
        let shown = running.redacted();
        for text in [
            serde_json::to_string(&shown).unwrap(),
            toml::to_string(&shown).unwrap(),
            format!("{running:?}"),
        ] {
            assert!(!text.contains("auth-secret") && !text.contains("priv-secret"), "{text}");
            assert!(text.contains(REDACTED), "{text}");
        }
        // GET, edit, POST: the redacted values come back as the running ones.
        let mut posted: Config =
            serde_json::from_str(&serde_json::to_string(&shown).unwrap()).unwrap();
        posted.decode.snmp_users.swap(0, 1);
        posted.keep_secrets_from(&running);
        posted.validate().unwrap();
        assert_eq!(posted.decode.snmp_users[1].auth_passphrase.expose(), "auth-secret-1");
        assert_eq!(posted.decode.snmp_users[1].priv_passphrase.expose(), "priv-secret-1");
        assert_eq!(posted.decode.snmp_users[0].auth_passphrase.expose(), "auth-secret-2");
        // A new user cannot take a redacted value from nowhere.
        let mut new_user = shown.clone();
        new_user.decode.snmp_users[0].name = "someone-else".into();
        new_user.keep_secrets_from(&running);
        assert!(new_user.validate().is_err());
        // The file written back holds the real values.
        assert!(toml::to_string(&running).unwrap().contains("auth-secret-1"));
    }
}

//! OpenVPN client profiles: parsing against an allow-list, certificate
//! validation and the on-disk profile store.
//!
//! # Invariants
//! - Only profiles whose every directive is on the client allow-list are stored;
//!   anything else is refused with its line number and the reason.
//! - Key material is inline (`<ca>`, `<cert>`, `<key>`, `<tls-auth>`, ...): a stored
//!   profile is self-contained and never points at files outside its directory.
//! - Certificates are valid now, the client certificate is signed by a CA of the
//!   profile and the private key belongs to the client certificate.
//! - `profile.ovpn` is written with mode 0600 (it holds the private key) inside a
//!   0700 directory, atomically (temporary file, fsync, rename).
//!
//! # Format
//! `<data_dir>/vpn/profiles/<name>/profile.ovpn` — the imported text, unchanged.
//! `<data_dir>/vpn/profiles/<name>/meta.json` — `{name, priority, imported_at}`.
//! `<data_dir>/vpn/profiles/active` — the name of the activated profile, if any.
//! A lower `priority` number is preferred (1 is tried before 2).
//!
//! # Operations
//! [`parse`], [`validate_text`], [`ProfileStore::list`], [`ProfileStore::import`],
//! [`ProfileStore::remove`], [`ProfileStore::set_priority`], [`ProfileStore::activate`].

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use ring::signature::{self, KeyPair};
use serde::{Deserialize, Serialize};
use x509_parser::{certificate::X509Certificate, pem::Pem};

use super::VpnError;

/// Options that govern how strictly a profile is checked.
#[derive(Debug, Clone, Copy)]
pub struct ProfilePolicy {
    /// Allow `up`/`down`/... scripts and `script-security 2`.
    pub allow_scripts: bool,
    /// Warn when a certificate expires within this many days.
    pub expiry_warning_days: u32,
}

impl Default for ProfilePolicy {
    fn default() -> Self {
        ProfilePolicy { allow_scripts: false, expiry_warning_days: 30 }
    }
}

/// One directive line of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub line: usize,
    pub name: String,
    pub args: Vec<String>,
}

/// A profile that passed the allow-list.
#[derive(Debug, Clone, Default)]
pub struct ParsedProfile {
    pub directives: Vec<Directive>,
    /// Inline blocks by tag (`ca`, `cert`, `key`, ...), their text unchanged.
    pub inline: BTreeMap<String, String>,
}

impl ParsedProfile {
    /// The `remote` endpoints as (host, port) — the port defaults to 1194.
    pub fn remotes(&self) -> Vec<(String, u16)> {
        let default_port = self
            .directive("port")
            .and_then(|d| d.args.first())
            .and_then(|p| p.parse().ok())
            .unwrap_or(1194);
        self.directives
            .iter()
            .filter(|d| d.name == "remote")
            .filter_map(|d| {
                let host = d.args.first()?.clone();
                let port = d.args.get(1).and_then(|p| p.parse().ok()).unwrap_or(default_port);
                Some((host, port))
            })
            .collect()
    }

    pub fn directive(&self, name: &str) -> Option<&Directive> {
        self.directives.iter().find(|d| d.name == name)
    }
}

/// The outcome of a successful validation.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ValidationReport {
    /// Problems that do not refuse the profile (e.g. a certificate expiring soon).
    pub warnings: Vec<String>,
    /// Subject of the client certificate.
    pub client_subject: String,
    /// Expiry of the client certificate, seconds since the Unix epoch.
    pub client_not_after: i64,
    /// The `remote` endpoints as `host:port`.
    pub remotes: Vec<String>,
}

/// Directives a client profile may use.
const ALLOWED: &[&str] = &[
    "client",
    "tls-client",
    "pull",
    "dev",
    "dev-type",
    "proto",
    "remote",
    "remote-random",
    "remote-random-hostname",
    "port",
    "rport",
    "lport",
    "resolv-retry",
    "nobind",
    "float",
    "persist-key",
    "persist-tun",
    "persist-remote-ip",
    "remote-cert-tls",
    "remote-cert-ku",
    "remote-cert-eku",
    "ns-cert-type",
    "cipher",
    "data-ciphers",
    "data-ciphers-fallback",
    "ncp-ciphers",
    "auth",
    "verb",
    "mute",
    "mute-replay-warnings",
    "key-direction",
    "comp-lzo",
    "compress",
    "allow-compression",
    "tls-version-min",
    "tls-version-max",
    "tls-cipher",
    "tls-ciphersuites",
    "tls-groups",
    "verify-x509-name",
    "ping",
    "ping-restart",
    "ping-exit",
    "keepalive",
    "connect-retry",
    "connect-retry-max",
    "connect-timeout",
    "server-poll-timeout",
    "hand-window",
    "tran-window",
    "reneg-sec",
    "reneg-bytes",
    "tun-mtu",
    "link-mtu",
    "mssfix",
    "fragment",
    "sndbuf",
    "rcvbuf",
    "txqueuelen",
    "explicit-exit-notify",
    "auth-nocache",
    "route",
    "route-ipv6",
    "route-nopull",
    "route-delay",
    "route-metric",
    "pull-filter",
    "redirect-gateway",
    "dhcp-option",
    "block-outside-dns",
    "topology",
    "ifconfig",
    "ifconfig-ipv6",
    "ifconfig-nowarn",
    "tun-ipv6",
    "push-peer-info",
    "setenv",
    "script-security",
    "key-direction",
    "ca",
    "cert",
    "key",
    "tls-auth",
    "tls-crypt",
    "tls-crypt-v2",
    "extra-certs",
];

/// Directives that run external programs: refused unless scripts are allowed.
const SCRIPTS: &[&str] = &[
    "up",
    "down",
    "route-up",
    "route-pre-down",
    "ipchange",
    "tls-verify",
    "auth-user-pass-verify",
    "client-connect",
    "client-disconnect",
    "learn-address",
    "up-restart",
    "down-pre",
];

/// Inline blocks a profile may carry.
const INLINE_TAGS: &[&str] =
    &["ca", "cert", "key", "tls-auth", "tls-crypt", "tls-crypt-v2", "extra-certs"];

/// Why a directive that is never allowed is refused.
fn forbidden_reason(name: &str) -> Option<&'static str> {
    Some(match name {
        "plugin" => "plugins run arbitrary code inside openvpn",
        n if n.starts_with("management") => "the agent owns the management interface",
        "log" | "log-append" | "syslog" | "status" | "status-version" => {
            "the agent collects openvpn's log through the management interface"
        }
        "daemon" | "writepid" | "cd" | "chroot" | "user" | "group" | "tmp-dir" => {
            "the agent runs and supervises the openvpn process itself"
        }
        "config" => "a profile may not include other files",
        "auth-user-pass" | "askpass" => {
            "username/password authentication is not supported; use certificates"
        }
        "pkcs12" | "secret" => "only inline PEM certificates and keys are supported",
        _ => return None,
    })
}

fn directive_error(line: usize, reason: impl Into<String>) -> VpnError {
    VpnError::Directive { line, reason: reason.into() }
}

/// Splits a directive line into words, honouring double/single quotes and `\` escapes.
fn tokenize(line: &str, line_no: usize) -> Result<Vec<String>, VpnError> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            (Some(_), c) => current.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(next) = chars.next() {
                    current.push(next);
                    in_word = true;
                }
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, '#' | ';') if !in_word => break,
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(directive_error(line_no, "unterminated quote"));
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

/// Parses a profile and checks every directive against the allow-list.
pub fn parse(text: &str, policy: &ProfilePolicy) -> Result<ParsedProfile, VpnError> {
    let mut profile = ParsedProfile::default();
    let mut open_block: Option<(String, usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if let Some((tag, start, body)) = open_block.as_mut() {
            if line == format!("</{tag}>") {
                let (tag, _, body) = open_block.take().expect("block is open");
                profile.inline.insert(tag, body);
            } else {
                body.push_str(raw);
                body.push('\n');
                let _ = start;
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(tag) = line.strip_prefix('<').and_then(|l| l.strip_suffix('>')) {
            if tag.starts_with('/') {
                return Err(directive_error(
                    line_no,
                    format!("closing tag <{tag}> without an opening tag"),
                ));
            }
            if !INLINE_TAGS.contains(&tag) {
                return Err(directive_error(
                    line_no,
                    format!(
                        "inline block <{tag}> is not allowed (allowed: {})",
                        INLINE_TAGS.join(", ")
                    ),
                ));
            }
            if profile.inline.contains_key(tag) {
                return Err(directive_error(
                    line_no,
                    format!("inline block <{tag}> appears twice"),
                ));
            }
            open_block = Some((tag.to_string(), line_no, String::new()));
            continue;
        }
        let mut words = tokenize(line, line_no)?;
        if words.is_empty() {
            continue;
        }
        let name = words.remove(0).trim_start_matches("--").to_string();
        check_directive(&name, &words, line_no, policy)?;
        profile.directives.push(Directive { line: line_no, name, args: words });
    }
    if let Some((tag, start, _)) = open_block {
        return Err(directive_error(start, format!("inline block <{tag}> is never closed")));
    }
    check_complete(&profile)?;
    Ok(profile)
}

fn check_directive(
    name: &str,
    args: &[String],
    line: usize,
    policy: &ProfilePolicy,
) -> Result<(), VpnError> {
    if let Some(reason) = forbidden_reason(name) {
        return Err(directive_error(line, format!("directive '{name}' is refused: {reason}")));
    }
    if SCRIPTS.contains(&name) {
        if policy.allow_scripts {
            return Ok(());
        }
        return Err(directive_error(
            line,
            format!("directive '{name}' runs a script; refused unless vpn.allow_scripts is true"),
        ));
    }
    if !ALLOWED.contains(&name) {
        return Err(directive_error(
            line,
            format!("unknown directive '{name}' (not on the client allow-list)"),
        ));
    }
    match name {
        "script-security" => {
            let level: u8 = args
                .first()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| directive_error(line, "script-security needs a level 0-3"))?;
            if level > 1 && !policy.allow_scripts {
                return Err(directive_error(
                    line,
                    format!(
                        "script-security {level} lets openvpn run scripts; refused unless vpn.allow_scripts is true"
                    ),
                ));
            }
        }
        "ca" | "cert" | "key" | "tls-auth" | "tls-crypt" | "tls-crypt-v2" | "extra-certs" => {
            // `tls-auth [inline] 1` style lines are fine only when they refer to inline data.
            let refers_to_file =
                args.first().is_some_and(|a| a != "[inline]" && a.parse::<u8>().is_err());
            if refers_to_file {
                return Err(directive_error(
                    line,
                    format!("'{name}' refers to a file; put it inline as <{name}>...</{name}>"),
                ));
            }
        }
        "dev" if !args.first().is_some_and(|d| d.starts_with("tun") || d.starts_with("tap")) => {
            return Err(directive_error(line, "dev must be tun or tap"));
        }
        _ => {}
    }
    Ok(())
}

fn check_complete(profile: &ParsedProfile) -> Result<(), VpnError> {
    if profile.directive("client").is_none() && profile.directive("tls-client").is_none() {
        return Err(directive_error(
            0,
            "not a client profile: 'client' (or 'tls-client') is missing",
        ));
    }
    if profile.directive("remote").is_none() {
        return Err(directive_error(
            0,
            "no 'remote' directive: the profile says nowhere to connect",
        ));
    }
    for tag in ["ca", "cert", "key"] {
        if !profile.inline.contains_key(tag) {
            return Err(directive_error(0, format!("inline <{tag}> block is missing")));
        }
    }
    Ok(())
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn pems(text: &str, what: &str) -> Result<Vec<Pem>, VpnError> {
    let mut out = Vec::new();
    for pem in Pem::iter_from_buffer(text.as_bytes()) {
        let pem = pem.map_err(|e| VpnError::Certificate(format!("<{what}>: bad PEM: {e}")))?;
        out.push(pem);
    }
    if out.is_empty() {
        return Err(VpnError::Certificate(format!("<{what}> holds no PEM block")));
    }
    Ok(out)
}

fn certificates<'a>(pems: &'a [Pem], what: &str) -> Result<Vec<X509Certificate<'a>>, VpnError> {
    pems.iter()
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| {
            p.parse_x509().map_err(|e| {
                VpnError::Certificate(format!("<{what}>: not an X.509 certificate: {e}"))
            })
        })
        .collect()
}

fn check_validity(
    cert: &X509Certificate,
    what: &str,
    now: i64,
    policy: &ProfilePolicy,
    warnings: &mut Vec<String>,
) -> Result<(), VpnError> {
    let subject = cert.subject().to_string();
    let not_before = cert.validity().not_before;
    let not_after = cert.validity().not_after;
    if now < not_before.timestamp() {
        return Err(VpnError::Certificate(format!(
            "{what} certificate '{subject}' is not valid before {not_before}"
        )));
    }
    if now > not_after.timestamp() {
        return Err(VpnError::Certificate(format!(
            "{what} certificate '{subject}' expired on {not_after}"
        )));
    }
    let remaining_days = (not_after.timestamp() - now) / 86_400;
    if remaining_days < i64::from(policy.expiry_warning_days) {
        warnings.push(format!(
            "{what} certificate '{subject}' expires in {remaining_days} days ({not_after})"
        ));
    }
    Ok(())
}

/// The public key bytes (as in the certificate's SubjectPublicKeyInfo bit string)
/// derived from a PEM private key.
fn public_key_of(key_pem: &Pem) -> Result<Vec<u8>, VpnError> {
    let der = &key_pem.contents;
    let rng = ring::rand::SystemRandom::new();
    match key_pem.label.as_str() {
        "PRIVATE KEY" => {
            if let Ok(k) = signature::RsaKeyPair::from_pkcs8(der) {
                return Ok(k.public_key().as_ref().to_vec());
            }
            for alg in [&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &signature::ECDSA_P384_SHA384_ASN1_SIGNING] {
                if let Ok(k) = signature::EcdsaKeyPair::from_pkcs8(alg, der, &rng) {
                    return Ok(k.public_key().as_ref().to_vec());
                }
            }
            if let Ok(k) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                return Ok(k.public_key().as_ref().to_vec());
            }
            Err(VpnError::Certificate("<key>: unsupported PKCS#8 key (RSA, ECDSA P-256/P-384 and Ed25519 are supported)".into()))
        }
        "RSA PRIVATE KEY" => signature::RsaKeyPair::from_der(der)
            .map(|k| k.public_key().as_ref().to_vec())
            .map_err(|e| VpnError::Certificate(format!("<key>: bad RSA key: {e}"))),
        "EC PRIVATE KEY" => Err(VpnError::Certificate(
            "<key>: SEC1 'EC PRIVATE KEY' is not supported; convert with `openssl pkcs8 -topk8 -nocrypt`".into(),
        )),
        "ENCRYPTED PRIVATE KEY" => {
            Err(VpnError::Certificate("<key>: the key is encrypted; the agent needs an unencrypted key".into()))
        }
        other => Err(VpnError::Certificate(format!("<key>: unexpected PEM block '{other}'"))),
    }
}

/// Parses a profile and validates its certificates and key.
pub fn validate_text(
    text: &str,
    policy: &ProfilePolicy,
) -> Result<(ParsedProfile, ValidationReport), VpnError> {
    validate_text_at(text, policy, now_unix())
}

/// [`validate_text`] at a given time (seconds since the epoch).
pub fn validate_text_at(
    text: &str,
    policy: &ProfilePolicy,
    now: i64,
) -> Result<(ParsedProfile, ValidationReport), VpnError> {
    let profile = parse(text, policy)?;
    let mut report = ValidationReport {
        remotes: profile.remotes().iter().map(|(h, p)| format!("{h}:{p}")).collect(),
        ..Default::default()
    };
    let ca_pems = pems(&profile.inline["ca"], "ca")?;
    let cas = certificates(&ca_pems, "ca")?;
    if cas.is_empty() {
        return Err(VpnError::Certificate("<ca> holds no certificate".into()));
    }
    let cert_pems = pems(&profile.inline["cert"], "cert")?;
    let certs = certificates(&cert_pems, "cert")?;
    let client =
        certs.first().ok_or_else(|| VpnError::Certificate("<cert> holds no certificate".into()))?;
    let extra_pems = match profile.inline.get("extra-certs") {
        Some(text) => pems(text, "extra-certs")?,
        None => Vec::new(),
    };
    let extras = certificates(&extra_pems, "extra-certs")?;

    for ca in &cas {
        check_validity(ca, "CA", now, policy, &mut report.warnings)?;
    }
    check_validity(client, "client", now, policy, &mut report.warnings)?;
    report.client_subject = client.subject().to_string();
    report.client_not_after = client.validity().not_after.timestamp();

    // The client certificate must chain to a CA of the profile, directly or
    // through one intermediate carried in <cert> or <extra-certs>.
    let signed_by = |cert: &X509Certificate, issuer: &X509Certificate| {
        cert.verify_signature(Some(issuer.public_key())).is_ok()
    };
    let direct = cas.iter().any(|ca| signed_by(client, ca));
    let via_intermediate = certs
        .iter()
        .skip(1)
        .chain(extras.iter())
        .any(|mid| signed_by(client, mid) && cas.iter().any(|ca| signed_by(mid, ca)));
    if !direct && !via_intermediate {
        return Err(VpnError::Certificate(format!(
            "client certificate '{}' is not signed by the profile's CA ('{}')",
            client.subject(),
            cas[0].subject()
        )));
    }

    let key_pems = pems(&profile.inline["key"], "key")?;
    let key_pem = key_pems
        .iter()
        .find(|p| p.label.contains("PRIVATE KEY"))
        .ok_or_else(|| VpnError::Certificate("<key> holds no private key".into()))?;
    let derived = public_key_of(key_pem)?;
    if derived.as_slice() != client.public_key().subject_public_key.data.as_ref() {
        return Err(VpnError::Certificate(format!(
            "the private key in <key> does not match the client certificate '{}'",
            client.subject()
        )));
    }
    for tag in ["tls-auth", "tls-crypt"] {
        if let Some(block) = profile.inline.get(tag)
            && !block.contains("-----BEGIN OpenVPN Static key V1-----")
        {
            return Err(VpnError::Certificate(format!("<{tag}> is not an OpenVPN static key")));
        }
    }
    Ok((profile, report))
}

/// Stored facts about a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProfileMeta {
    pub name: String,
    /// Lower is preferred.
    pub priority: u32,
    /// Seconds since the Unix epoch.
    pub imported_at: i64,
}

/// The profiles under `<data_dir>/vpn/profiles`.
#[derive(Debug, Clone)]
pub struct ProfileStore {
    root: PathBuf,
}

fn check_name(name: &str) -> Result<(), VpnError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(VpnError::BadName(name.to_string())) }
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), VpnError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(VpnError::io(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(VpnError::io(&tmp))?;
    file.write_all(bytes).map_err(VpnError::io(&tmp))?;
    file.sync_all().map_err(VpnError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(VpnError::io(path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(VpnError::io(dir))?;
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), VpnError> {
    fs::create_dir_all(dir).map_err(VpnError::io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(VpnError::io(dir))
}

impl ProfileStore {
    /// Opens (creating if needed) the store under `<data_dir>/vpn/profiles`.
    pub fn open(data_dir: &Path) -> Result<ProfileStore, VpnError> {
        let vpn = data_dir.join("vpn");
        create_private_dir(&vpn)?;
        let root = vpn.join("profiles");
        create_private_dir(&root)?;
        Ok(ProfileStore { root })
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The path openvpn is started with for this profile.
    pub fn config_path(&self, name: &str) -> Result<PathBuf, VpnError> {
        check_name(name)?;
        let path = self.dir(name).join("profile.ovpn");
        if !path.exists() {
            return Err(VpnError::NoSuchProfile(name.to_string()));
        }
        Ok(path)
    }

    fn read_meta(&self, name: &str) -> Result<ProfileMeta, VpnError> {
        let path = self.dir(name).join("meta.json");
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VpnError::NoSuchProfile(name.to_string()));
            }
            Err(e) => return Err(VpnError::Io { path, source: e }),
        };
        serde_json::from_slice(&text).map_err(|source| VpnError::Json { path, source })
    }

    fn write_meta(&self, meta: &ProfileMeta) -> Result<(), VpnError> {
        let path = self.dir(&meta.name).join("meta.json");
        let json = serde_json::to_vec_pretty(meta)
            .map_err(|source| VpnError::Json { path: path.clone(), source })?;
        write_atomically(&path, &json, 0o600)
    }

    /// All profiles, preferred first (priority, then name).
    pub fn list(&self) -> Result<Vec<ProfileMeta>, VpnError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(VpnError::io(&self.root))? {
            let entry = entry.map_err(VpnError::io(&self.root))?;
            if !entry.file_type().map_err(VpnError::io(entry.path()))?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_name(&name).is_err() {
                continue;
            }
            match self.read_meta(&name) {
                Ok(meta) => out.push(meta),
                // A directory without meta.json is an interrupted import: not a profile.
                Err(VpnError::NoSuchProfile(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.priority.cmp(&b.priority).then_with(|| a.name.cmp(&b.name)));
        Ok(out)
    }

    /// Validates and stores a profile. Refuses to overwrite an existing one.
    pub fn import(
        &self,
        name: &str,
        text: &str,
        priority: u32,
        policy: &ProfilePolicy,
    ) -> Result<(ProfileMeta, ValidationReport), VpnError> {
        check_name(name)?;
        let (_, report) = validate_text(text, policy)?;
        let dir = self.dir(name);
        if dir.join("meta.json").exists() {
            return Err(VpnError::ProfileExists(name.to_string()));
        }
        create_private_dir(&dir)?;
        write_atomically(&dir.join("profile.ovpn"), text.as_bytes(), 0o600)?;
        let meta = ProfileMeta { name: name.to_string(), priority, imported_at: now_unix() };
        // meta.json last: its presence marks a complete import.
        self.write_meta(&meta)?;
        Ok((meta, report))
    }

    /// Re-validates a stored profile.
    pub fn validate(
        &self,
        name: &str,
        policy: &ProfilePolicy,
    ) -> Result<ValidationReport, VpnError> {
        let path = self.config_path(name)?;
        let text = fs::read_to_string(&path).map_err(VpnError::io(&path))?;
        validate_text(&text, policy).map(|(_, report)| report)
    }

    pub fn remove(&self, name: &str) -> Result<(), VpnError> {
        check_name(name)?;
        self.read_meta(name)?;
        let dir = self.dir(name);
        fs::remove_dir_all(&dir).map_err(VpnError::io(&dir))?;
        if self.active()?.as_deref() == Some(name) {
            let path = self.root.join("active");
            fs::remove_file(&path).map_err(VpnError::io(&path))?;
        }
        Ok(())
    }

    pub fn set_priority(&self, name: &str, priority: u32) -> Result<ProfileMeta, VpnError> {
        check_name(name)?;
        let mut meta = self.read_meta(name)?;
        meta.priority = priority;
        self.write_meta(&meta)?;
        Ok(meta)
    }

    /// Marks a profile as the one the supervisor should use first.
    pub fn activate(&self, name: &str) -> Result<(), VpnError> {
        check_name(name)?;
        self.read_meta(name)?;
        write_atomically(&self.root.join("active"), name.as_bytes(), 0o600)
    }

    /// The activated profile, if one was activated and still exists.
    pub fn active(&self) -> Result<Option<String>, VpnError> {
        let path = self.root.join("active");
        match fs::read_to_string(&path) {
            Ok(name) => {
                let name = name.trim().to_string();
                Ok((check_name(&name).is_ok() && self.dir(&name).join("meta.json").exists())
                    .then_some(name))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(VpnError::Io { path, source: e }),
        }
    }

    /// Profiles in the order the supervisor tries them: the activated one first,
    /// then by priority.
    pub fn failover_order(&self) -> Result<Vec<ProfileMeta>, VpnError> {
        let mut list = self.list()?;
        if let Some(active) = self.active()?
            && let Some(pos) = list.iter().position(|m| m.name == active)
        {
            let meta = list.remove(pos);
            list.insert(0, meta);
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL_KEYS: &str = "<ca>\nx\n</ca>\n<cert>\nx\n</cert>\n<key>\nx\n</key>\n";

    fn parse_default(text: &str) -> Result<ParsedProfile, VpnError> {
        parse(text, &ProfilePolicy::default())
    }

    fn line_of(err: VpnError) -> (usize, String) {
        match err {
            VpnError::Directive { line, reason } => (line, reason),
            other => panic!("expected a directive error, got {other}"),
        }
    }

    #[test]
    fn parses_a_client_profile() {
        let text = format!(
            "# comment\nclient\ndev tun\nproto udp\nremote 198.18.0.1 1194\nremote \"backup host\" 1195 ; trailing\n\
             nobind\nverb 3\nscript-security 1\n{MINIMAL_KEYS}<tls-crypt>\nk\n</tls-crypt>\n"
        );
        let profile = parse_default(&text).unwrap();
        assert_eq!(
            profile.remotes(),
            vec![("198.18.0.1".to_string(), 1194), ("backup host".to_string(), 1195)]
        );
        assert_eq!(profile.inline["tls-crypt"], "k\n");
        assert_eq!(profile.directive("verb").unwrap().line, 8);
    }

    #[test]
    fn refuses_unknown_and_dangerous_directives_with_line_numbers() {
        let cases = [
            ("frobnicate yes", "unknown directive 'frobnicate'"),
            ("script-security 2", "script-security 2"),
            ("up /bin/evil.sh", "runs a script"),
            ("plugin /lib/x.so", "plugins run arbitrary code"),
            ("management 127.0.0.1 7505", "owns the management interface"),
            ("log-append /tmp/x", "collects openvpn's log"),
            ("daemon", "supervises the openvpn process"),
            ("config other.ovpn", "may not include other files"),
            ("ca /etc/ca.pem", "refers to a file"),
        ];
        for (bad, expected) in cases {
            let text = format!("client\nremote 198.18.0.1\n{bad}\n{MINIMAL_KEYS}");
            let (line, reason) = line_of(parse_default(&text).unwrap_err());
            assert_eq!(line, 3, "{bad}");
            assert!(reason.contains(expected), "{bad}: {reason}");
        }
    }

    #[test]
    fn scripts_are_allowed_only_by_policy() {
        let text =
            format!("client\nremote 198.18.0.1\nscript-security 2\nup /bin/true\n{MINIMAL_KEYS}");
        let policy = ProfilePolicy { allow_scripts: true, ..Default::default() };
        assert!(parse(&text, &policy).is_ok());
        assert!(parse_default(&text).is_err());
    }

    #[test]
    fn refuses_incomplete_profiles() {
        let (line, reason) = line_of(parse_default("client\nremote x\n<ca>\nabc\n").unwrap_err());
        assert_eq!(line, 3);
        assert!(reason.contains("never closed"));
        let (_, reason) = line_of(parse_default(&format!("remote x\n{MINIMAL_KEYS}")).unwrap_err());
        assert!(reason.contains("not a client profile"));
        let (_, reason) = line_of(parse_default("client\nremote x\n<ca>\nx\n</ca>\n").unwrap_err());
        assert!(reason.contains("<cert>"));
        let (line, reason) =
            line_of(parse_default("client\n<secret>\nx\n</secret>\n").unwrap_err());
        assert_eq!(line, 2);
        assert!(reason.contains("not allowed"));
        let (line, reason) = line_of(parse_default("client\nremote \"x\n").unwrap_err());
        assert_eq!(line, 2);
        assert!(reason.contains("quote"));
    }

    #[test]
    fn refuses_bad_names() {
        for bad in ["", "../x", ".hidden", "a/b", "a b"] {
            assert!(matches!(check_name(bad), Err(VpnError::BadName(_))), "{bad:?}");
        }
        assert!(check_name("noc-primary_1.v2").is_ok());
    }

    use crate::vpn::test_pki as pki;

    fn certificate_error(text: &str) -> String {
        match validate_text(text, &ProfilePolicy::default()) {
            Err(VpnError::Certificate(reason)) => reason,
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }

    #[test]
    fn validates_certificates_and_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = pki::Pki::generate(tmp.path());
        let (_, report) =
            validate_text(&pki.client_profile("198.18.0.1", 1194), &ProfilePolicy::default())
                .unwrap();
        assert!(report.client_subject.contains("raven-appliance"), "{report:?}");
        assert_eq!(report.remotes, vec!["198.18.0.1:1194"]);
        assert!(report.warnings.is_empty(), "{report:?}");

        // Expiring within the warning window: a warning, not a refusal.
        let policy = ProfilePolicy { expiry_warning_days: 90, ..Default::default() };
        let (_, report) = validate_text(&pki.client_profile("198.18.0.1", 1194), &policy).unwrap();
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("client certificate") && w.contains("expires in")),
            "{report:?}"
        );

        let expired =
            pki.client_profile_with("198.18.0.1", 1194, &pki.expired_cert, &pki.expired_key, "");
        assert!(certificate_error(&expired).contains("expired on"));

        let mismatched =
            pki.client_profile_with("198.18.0.1", 1194, &pki.client_cert, &pki.stray_key, "");
        assert!(certificate_error(&mismatched).contains("does not match the client certificate"));

        let foreign =
            pki.client_profile_with("198.18.0.1", 1194, &pki.foreign_cert, &pki.foreign_key, "");
        assert!(certificate_error(&foreign).contains("not signed by the profile's CA"));

        // Not valid yet: validate as of 2019.
        let early = validate_text_at(
            &pki.client_profile("198.18.0.1", 1194),
            &ProfilePolicy::default(),
            1_550_000_000,
        );
        assert!(
            matches!(early, Err(VpnError::Certificate(ref r)) if r.contains("not valid before")),
            "{early:?}"
        );

        let garbage = pki.client_profile_with(
            "198.18.0.1",
            1194,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            &pki.client_key,
            "",
        );
        assert!(matches!(
            validate_text(&garbage, &ProfilePolicy::default()),
            Err(VpnError::Certificate(_))
        ));
    }

    #[test]
    fn store_imports_lists_prioritises_activates_and_removes() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = pki::Pki::generate(&tmp.path().join("pki"));
        let data = tmp.path().join("data");
        let store = ProfileStore::open(&data).unwrap();
        let policy = ProfilePolicy::default();
        store.import("primary", &pki.client_profile("198.18.0.1", 1194), 10, &policy).unwrap();
        store.import("backup", &pki.client_profile("198.18.0.5", 1194), 20, &policy).unwrap();
        assert!(matches!(
            store.import("backup", &pki.client_profile("198.18.0.5", 1194), 20, &policy),
            Err(VpnError::ProfileExists(_))
        ));
        let bad = format!("{}script-security 2\n", pki.client_profile("198.18.0.9", 1194));
        assert!(matches!(store.import("bad", &bad, 1, &policy), Err(VpnError::Directive { .. })));
        assert!(!data.join("vpn/profiles/bad").exists(), "a refused profile leaves nothing behind");

        let file = data.join("vpn/profiles/primary/profile.ovpn");
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(file.parent().unwrap()).unwrap().permissions().mode() & 0o777,
            0o700
        );

        let names = |list: Vec<ProfileMeta>| list.into_iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(store.list().unwrap()), ["primary", "backup"]);
        store.set_priority("backup", 5).unwrap();
        assert_eq!(names(store.list().unwrap()), ["backup", "primary"]);
        store.activate("primary").unwrap();
        assert_eq!(names(store.failover_order().unwrap()), ["primary", "backup"]);
        assert!(store.validate("primary", &policy).is_ok());
        store.remove("primary").unwrap();
        assert_eq!(store.active().unwrap(), None);
        assert_eq!(names(store.list().unwrap()), ["backup"]);
        assert!(matches!(store.remove("primary"), Err(VpnError::NoSuchProfile(_))));
        assert!(matches!(store.set_priority("nope", 1), Err(VpnError::NoSuchProfile(_))));
    }
}

//! SNMP: v1 traps, v2c traps and informs, v3 with the User-based Security
//! Model (authenticated, decrypted, informs answered).
//!
//! Invariants:
//! - The community string goes into the `community` field of the record
//!   and nowhere else: never into logs or parse-error details. USM
//!   passphrases and keys go nowhere at all (see [`super::usm`]).
//! - An InformRequest gets a Response PDU in [`Decoded::reply`]: v2c, the
//!   same message with the PDU tag changed from InformRequest (0xA6) to
//!   Response (0xA2) — same request-id, error-status noError, the same
//!   varbinds, as RFC 3416 section 4.2.7 asks; v3, the same scoped PDU with
//!   that tag changed, in a message from Raven's engine, at the inform's
//!   security level, under the user's keys localised to Raven's engine. The
//!   pipeline sends it only once the inform is durable, so a sender that
//!   got its answer never loses the trap.
//! - SNMPv3 with USM users configured: `authenticated: true` only when the
//!   HMAC verified with a configured user's key; the scoped PDU is
//!   decrypted only after that. What cannot be authenticated or decrypted
//!   is kept raw (an encrypted PDU stays `encrypted: true`) with a reason
//!   from a fixed set: `no_usm_user` (no users configured), `unknown_user`,
//!   `auth_failed`, `decrypt_failed`, `not_in_time_window` (an inform
//!   outside Raven's time window), `bad_flags` (privacy without
//!   authentication).
//! - Raven answers only for its own engine and only what USM asks: a
//!   Report (usmStats counter) for a reportable message it cannot accept,
//!   a Response for an inform. Traps are never answered, and never held to
//!   a time window (Raven is not their authoritative engine; a replayed
//!   trap is an authentic copy and is stored again).
//!
//! Format: BER per RFC 1157 (v1), RFC 3416 (v2c PDUs), RFC 3412/3414 (v3),
//! parsed with `snmp-parser`; the few bytes the replies need are walked
//! ([`classify`], [`tlv`]) and written ([`ber`]) by hand.
//!
//! Operations: [`SnmpDecoder::decode`], per datagram. For a v3 message:
//! 1. Header and USM parameters into fields.
//! 2. Is Raven the authoritative engine (msgAuthoritativeEngineID is
//!    Raven's)? If not and the message is reportable (a request: engine
//!    discovery, RFC 3414 section 4), the answer is a Report with
//!    usmStatsUnknownEngineIDs carrying Raven's engine ID, boots and time.
//! 3. Authenticated levels: the users with that name (and that engine, or
//!    any engine) are tried until one's HMAC verifies.
//! 4. authPriv: the scoped PDU is decrypted (DES-CBC or AES-128-CFB) and
//!    parsed.
//! 5. Raven authoritative: the time window is checked, then an
//!    InformRequest is answered with a Response; a failure at 3–5 is
//!    answered with the matching Report when the message is reportable.

use serde_json::{Map, Value, json};
use snmp_parser::{
    NetworkAddress, ObjectSyntax, PduType, ScopedPdu, ScopedPduData, SecurityParameters,
    SnmpGenericMessage, SnmpMessage, SnmpPdu, SnmpV3Message, SnmpVariable, VarBindValue,
    parse_snmp_generic_message, parse_snmp_v3,
};

use super::{
    Decoded, ParseError,
    usm::{LocalEngine, LocalKeys, Usm, UsmStat, hex},
};

pub const RESPONSE: u8 = 0xA2;
pub const TRAP_V1: u8 = 0xA4;
pub const INFORM: u8 = 0xA6;
pub const TRAP_V2: u8 = 0xA7;

/// A BER TLV header at `at`: (tag, content start, content length).
pub(crate) fn tlv(buf: &[u8], at: usize) -> Option<(u8, usize, usize)> {
    let tag = *buf.get(at)?;
    let first = *buf.get(at + 1)?;
    let (len, start) = if first < 0x80 {
        (usize::from(first), at + 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None; // indefinite or absurd length: not valid SNMP BER
        }
        let bytes = buf.get(at + 2..at + 2 + n)?;
        (bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)), at + 2 + n)
    };
    (start.checked_add(len)? <= buf.len()).then_some((tag, start, len))
}

/// What one message is, for forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// v1 or v2c with this PDU tag; `pdu_at` is the tag's offset.
    Community {
        version: u8,
        pdu_tag: u8,
        pdu_at: usize,
    },
    V3,
}

pub fn classify(message: &[u8]) -> Option<Message> {
    let (tag, start, _) = tlv(message, 0)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, version_at, version_len) = tlv(message, start)?;
    if tag != 0x02 || version_len != 1 {
        return None;
    }
    let version = message[version_at];
    if version == 3 {
        return Some(Message::V3);
    }
    if version > 1 {
        return None;
    }
    let (tag, community_at, community_len) = tlv(message, version_at + 1)?;
    if tag != 0x04 {
        return None;
    }
    let pdu_at = community_at + community_len;
    let (pdu_tag, _, _) = tlv(message, pdu_at)?;
    Some(Message::Community { version, pdu_tag, pdu_at })
}

/// The version from the first bytes (`SEQUENCE { INTEGER version … }`),
/// without requiring the rest to be complete.
fn header_version(payload: &[u8]) -> Option<&'static str> {
    if *payload.first()? != 0x30 {
        return None;
    }
    let len_byte = *payload.get(1)?;
    let at = if len_byte < 0x80 { 2 } else { 2 + usize::from(len_byte & 0x7f) };
    match payload.get(at..at + 3)? {
        [0x02, 0x01, 0] => Some("1"),
        [0x02, 0x01, 1] => Some("2c"),
        [0x02, 0x01, 3] => Some("3"),
        _ => None,
    }
}

const SYS_UPTIME: &str = "1.3.6.1.2.1.1.3.0";
const SNMP_TRAP_OID: &str = "1.3.6.1.6.3.1.1.4.1.0";

fn pdu_name(t: PduType) -> &'static str {
    match t {
        PduType::GetRequest => "get_request",
        PduType::GetNextRequest => "get_next_request",
        PduType::Response => "response",
        PduType::SetRequest => "set_request",
        PduType::TrapV1 => "trap_v1",
        PduType::GetBulkRequest => "get_bulk_request",
        PduType::InformRequest => "inform_request",
        PduType::TrapV2 => "trap_v2",
        PduType::Report => "report",
        _ => "unknown",
    }
}

/// Printable text as a string, anything else as hex.
fn octets(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.chars().all(|c| !c.is_control() || c == '\n' || c == '\r' || c == '\t') => {
            Value::String(s.to_owned())
        }
        _ => Value::String(format!("0x{}", hex(bytes))),
    }
}

/// `oid.to_id_string()`, written into one string sized once, each arc
/// read straight from the content bytes and written by `itoa`: asn1-rs
/// makes a String per arc and joins them, which was over half of a v2c
/// trap's decode time (`cargo xtask bench decode`), and its generic arc
/// iterator and `fmt` were most of what remained. The arcs are asn1-rs's
/// (`Oid::iter`, a property test checks every byte string): the first
/// byte is `first / 40` and `first % 40` (a lone 0 is just "0"), an arc
/// cut short at the end is written as it stands, and an OID with an arc
/// past 64 bits takes asn1-rs's own path. snmp-parser's OIDs are absolute
/// (never relative), which is what this reads.
fn oid_string(oid: &snmp_parser::Oid) -> String {
    let bytes = oid.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else { return String::new() };
    // A content byte adds at most 3 digits and a dot (one-byte arcs up to
    // 127); the first byte holds two arcs ("1.3").
    let mut out = String::with_capacity(bytes.len() * 4 + 4);
    let mut digits = itoa::Buffer::new();
    out.push_str(digits.format(first / 40));
    if first == 0 && rest.is_empty() {
        return out;
    }
    out.push('.');
    out.push_str(digits.format(first % 40));
    let (mut arc, mut bits) = (0u64, 0u32);
    for &byte in rest {
        arc = (arc << 7) | u64::from(byte & 0x7f);
        bits += 7;
        if byte & 0x80 == 0 {
            if bits > 64 {
                return oid.to_id_string();
            }
            out.push('.');
            out.push_str(digits.format(arc));
            (arc, bits) = (0, 0);
        }
    }
    if bits > 0 {
        out.push('.');
        out.push_str(digits.format(arc));
    }
    out
}

/// An IPv4 address in dotted-quad text (what `Ipv4Addr`'s `Display`
/// writes), without `fmt`.
fn ipv4_string(ip: std::net::Ipv4Addr) -> String {
    let mut out = String::with_capacity(15);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(digits.format(octet));
    }
    out
}

/// A varbind's type name and value as JSON.
fn varbind_value(val: &VarBindValue) -> (&'static str, Value) {
    match val {
        VarBindValue::Value(value) => match value {
            ObjectSyntax::Number(n) => ("integer", Value::from(*n)),
            ObjectSyntax::String(s) => ("octet_string", octets(s)),
            ObjectSyntax::Object(oid) => ("oid", Value::String(oid_string(oid))),
            ObjectSyntax::BitString(b) => ("bit_string", Value::String(hex(b.as_ref()))),
            ObjectSyntax::Empty => ("null", Value::Null),
            ObjectSyntax::IpAddress(NetworkAddress::IPv4(ip)) => {
                ("ip_address", Value::String(ipv4_string(*ip)))
            }
            ObjectSyntax::Counter32(n) => ("counter32", Value::from(*n)),
            ObjectSyntax::Gauge32(n) => ("gauge32", Value::from(*n)),
            ObjectSyntax::TimeTicks(n) => ("timeticks", Value::from(*n)),
            ObjectSyntax::Opaque(b) => ("opaque", Value::String(hex(b))),
            ObjectSyntax::NsapAddress(b) => ("nsap_address", Value::String(hex(b))),
            ObjectSyntax::Counter64(n) => ("counter64", Value::from(*n)),
            ObjectSyntax::UInteger32(n) => ("uinteger32", Value::from(*n)),
            ObjectSyntax::UnknownSimple(a) | ObjectSyntax::UnknownApplication(a) => {
                ("unknown", Value::String(hex(a.data)))
            }
        },
        VarBindValue::Unspecified => ("unspecified", Value::Null),
        VarBindValue::NoSuchObject => ("no_such_object", Value::Null),
        VarBindValue::NoSuchInstance => ("no_such_instance", Value::Null),
        VarBindValue::EndOfMibView => ("end_of_mib_view", Value::Null),
    }
}

/// A map with `keys` (which must be sorted, as the map keeps them), every
/// value `null`: cloned and filled ([`filled`]) for each object of that
/// shape. A clone copies the keys in order into one node; inserting them
/// searched the node for each key and shifted the entries after it (a
/// fifth of a v2c trap's decode time, `docs/benchmarks.md`).
fn prototype(keys: &[&str]) -> Map<String, Value> {
    debug_assert!(keys.is_sorted(), "{keys:?}");
    keys.iter().map(|&k| (k.to_owned(), Value::Null)).collect()
}

/// A clone of `prototype` with `values` in its keys' order.
fn filled(
    prototype: &Map<String, Value>,
    values: impl IntoIterator<Item = Value>,
) -> Map<String, Value> {
    let mut object = prototype.clone();
    let mut values = values.into_iter();
    for slot in object.values_mut() {
        *slot = values.next().unwrap_or(Value::Null);
    }
    debug_assert!(values.next().is_none(), "more values than keys");
    object
}

/// `{"oid", "type", "value"}`.
static VARBIND: std::sync::LazyLock<Map<String, Value>> =
    std::sync::LazyLock::new(|| prototype(&["oid", "type", "value"]));

/// One varbind as `{"oid", "type", "value"}`.
fn varbind(oid: String, kind: &'static str, value: Value) -> Value {
    Value::Object(filled(&VARBIND, [Value::String(oid), Value::String(kind.to_owned()), value]))
}

/// A PDU's varbinds, and the values of sysUpTime.0 (TimeTicks) and
/// snmpTrapOID.0 (an OID) among them (the last of each, if repeated).
struct Varbinds {
    list: Vec<Value>,
    uptime: Option<u32>,
    trap_oid: Option<String>,
}

fn varbinds(vars: &[SnmpVariable]) -> Varbinds {
    let mut out = Varbinds { list: Vec::with_capacity(vars.len()), uptime: None, trap_oid: None };
    for v in vars {
        let oid = oid_string(&v.oid);
        let (kind, value) = varbind_value(&v.val);
        if oid == SYS_UPTIME
            && let VarBindValue::Value(ObjectSyntax::TimeTicks(t)) = v.val
        {
            out.uptime = Some(t);
        }
        // The value is already text: copied, not converted again.
        if oid == SNMP_TRAP_OID
            && let (VarBindValue::Value(ObjectSyntax::Object(_)), Value::String(trap)) =
                (&v.val, &value)
        {
            out.trap_oid = Some(trap.clone());
        }
        out.list.push(varbind(oid, kind, value));
    }
    out
}

fn pdu_fields(pdu: &SnmpPdu, fields: &mut Map<String, Value>) {
    let text = |s: &str| Value::String(s.to_owned());
    let vars: &[SnmpVariable] = match pdu {
        SnmpPdu::Generic(p) => {
            fields.insert("pdu_type".into(), text(pdu_name(p.pdu_type)));
            fields.insert("request_id".into(), Value::from(p.req_id));
            &p.var
        }
        SnmpPdu::Bulk(p) => {
            fields.insert("pdu_type".into(), text("get_bulk_request"));
            fields.insert("request_id".into(), Value::from(p.req_id));
            &p.var
        }
        SnmpPdu::TrapV1(t) => {
            fields.insert("pdu_type".into(), text("trap_v1"));
            fields.insert("enterprise".into(), Value::String(oid_string(&t.enterprise)));
            let NetworkAddress::IPv4(agent) = t.agent_addr;
            fields.insert("agent_address".into(), Value::String(ipv4_string(agent)));
            fields.insert("generic_trap".into(), Value::from(t.generic_trap.0));
            fields.insert("specific_trap".into(), Value::from(t.specific_trap));
            fields.insert("timestamp".into(), Value::from(t.timestamp));
            &t.var
        }
    };
    let Varbinds { list, uptime, trap_oid } = varbinds(vars);
    if let Some(t) = uptime {
        fields.insert("uptime".into(), Value::from(t));
    }
    if let Some(trap) = trap_oid {
        fields.insert("trap_oid".into(), Value::String(trap));
    }
    fields.insert("varbinds".into(), Value::Array(list));
}

/// The fields of a v1/v2c message with a generic PDU (traps, informs,
/// gets, responses), by whether it has `uptime` and `trap_oid`: index
/// `uptime as usize * 2 + trap_oid as usize`.
static COMMUNITY_GENERIC: std::sync::LazyLock<[Map<String, Value>; 4]> =
    std::sync::LazyLock::new(|| {
        let with = |uptime: bool, trap_oid: bool| {
            let keys = [
                Some("community"),
                Some("pdu_type"),
                Some("request_id"),
                trap_oid.then_some("trap_oid"),
                uptime.then_some("uptime"),
                Some("varbinds"),
                Some("version"),
            ];
            prototype(&keys.into_iter().flatten().collect::<Vec<_>>())
        };
        [with(false, false), with(false, true), with(true, false), with(true, true)]
    });

/// A v1/v2c message's fields; the parser's community string is moved,
/// not copied. A generic PDU fills a prototype; a bulk or v1 trap PDU is
/// inserted.
fn community_fields(version: &str, m: SnmpMessage) -> Map<String, Value> {
    let SnmpMessage { community, pdu, .. } = m;
    let SnmpPdu::Generic(p) = &pdu else {
        let mut fields = Map::new();
        fields.insert("version".into(), Value::String(version.to_owned()));
        fields.insert("community".into(), Value::String(community));
        pdu_fields(&pdu, &mut fields);
        return fields;
    };
    let Varbinds { list, uptime, trap_oid } = varbinds(&p.var);
    let prototype =
        &COMMUNITY_GENERIC[usize::from(uptime.is_some()) * 2 + usize::from(trap_oid.is_some())];
    // In the prototype's (sorted) key order; absent ones are not in it.
    let values = [
        Some(Value::String(community)),
        Some(Value::String(pdu_name(p.pdu_type).to_owned())),
        Some(Value::from(p.req_id)),
        trap_oid.map(Value::String),
        uptime.map(Value::from),
        Some(Value::Array(list)),
        Some(Value::String(version.to_owned())),
    ];
    filled(prototype, values.into_iter().flatten())
}

pub const REPORT: u8 = 0xA8;

/// msgMaxSize of Raven's replies (the largest UDP payload over IPv4, as
/// Net-SNMP announces).
const MAX_SIZE: u32 = 65507;

/// A scoped PDU's context and PDU into fields.
fn scoped_fields(scoped: &ScopedPdu, fields: &mut Map<String, Value>) {
    fields.insert("context_engine_id".into(), json!(hex(scoped.ctx_engine_id)));
    fields.insert("context_name".into(), octets(scoped.ctx_engine_name));
    pdu_fields(&scoped.data, fields);
}

/// Where `inner` (a slice the parser returned) sits in `outer`.
fn range_in(outer: &[u8], inner: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len()).then_some(start..end)
}

/// The msgData TLV of a v3 message (the plaintext scopedPDU SEQUENCE, or
/// the encryptedPDU OCTET STRING), header included.
fn v3_data_range(message: &[u8]) -> Option<std::ops::Range<usize>> {
    let (_, body, _) = tlv(message, 0)?;
    let (_, version_at, version_len) = tlv(message, body)?;
    let (_, header_at, header_len) = tlv(message, version_at + version_len)?;
    let (_, usm_at, usm_len) = tlv(message, header_at + header_len)?;
    let data = usm_at + usm_len;
    let (_, content_at, content_len) = tlv(message, data)?;
    Some(data..content_at + content_len)
}

/// Offset of the PDU's tag in a scoped PDU (after contextEngineID and
/// contextName).
fn scoped_pdu_at(scoped: &[u8]) -> Option<usize> {
    let (tag, body, _) = tlv(scoped, 0)?;
    let (engine_tag, engine_at, engine_len) = tlv(scoped, body)?;
    let (name_tag, name_at, name_len) = tlv(scoped, engine_at + engine_len)?;
    let pdu_at = name_at + name_len;
    tlv(scoped, pdu_at)?;
    (tag == 0x30 && engine_tag == 0x04 && name_tag == 0x04).then_some(pdu_at)
}

/// Parses decrypted scoped-PDU bytes. snmp-parser reads scoped PDUs only
/// inside a message, so they are wrapped in a minimal noAuthNoPriv v3
/// message first. Bytes after the scoped PDU's SEQUENCE (DES padding) are
/// dropped, as RFC 3414 8.3.2 allows. Returns the scoped PDU's own bytes
/// and what `read` made of it.
fn parse_scoped<T>(
    plain: &[u8],
    read: impl FnOnce(&ScopedPdu) -> T,
) -> Result<(Vec<u8>, T), String> {
    let (tag, start, len) = tlv(plain, 0).ok_or("not BER")?;
    if tag != 0x30 {
        return Err("not a SEQUENCE".into());
    }
    let scoped = &plain[..start + len];
    let usm = ber::seq(&[
        ber::octets(&[]),
        ber::int(0),
        ber::int(0),
        ber::octets(&[]),
        ber::octets(&[]),
        ber::octets(&[]),
    ]);
    let header = ber::seq(&[ber::int(0), ber::int(MAX_SIZE), ber::octets(&[0]), ber::int(3)]);
    let wrapped = ber::seq(&[ber::int(3), header, ber::octets(&usm), scoped.to_vec()]);
    match parse_snmp_v3(&wrapped) {
        Ok(([], m)) => match &m.data {
            ScopedPduData::Plaintext(s) => Ok((scoped.to_vec(), read(s))),
            ScopedPduData::Encrypted(_) => Err("not a scoped PDU".into()),
        },
        Ok(_) => Err("bytes after the scoped PDU".into()),
        // The error names BER kinds and positions only.
        Err(e) => Err(format!("{e:?}")),
    }
}

/// What a Report or Response needs from the request it answers.
struct Request<'a> {
    msg_id: u32,
    user: &'a str,
    context_name: Vec<u8>,
    request_id: u32,
    pdu_type: Option<PduType>,
}

impl Request<'_> {
    fn note(&mut self, scoped: &ScopedPdu) {
        self.context_name = scoped.ctx_engine_name.to_vec();
        self.pdu_type = Some(scoped.data.pdu_type());
        self.request_id = match &scoped.data {
            SnmpPdu::Generic(p) => p.req_id,
            SnmpPdu::Bulk(p) => p.req_id,
            SnmpPdu::TrapV1(_) => 0,
        };
    }
}

/// How Raven protects a message it sends.
#[derive(Clone, Copy)]
enum Protection<'a> {
    None,
    Auth(&'a LocalKeys),
    AuthPriv(&'a LocalKeys),
}

/// The SNMP decoder: the USM users and Raven's own engine.
#[derive(Debug)]
pub struct SnmpDecoder {
    usm: Usm,
    engine: LocalEngine,
}

impl Default for SnmpDecoder {
    /// No users; an unpersisted engine (offline decoding).
    fn default() -> Self {
        SnmpDecoder::new(Usm::default(), LocalEngine::ephemeral(""))
    }
}

impl SnmpDecoder {
    pub fn new(usm: Usm, engine: LocalEngine) -> SnmpDecoder {
        SnmpDecoder { usm, engine }
    }

    pub fn set_engine(&mut self, engine: LocalEngine) {
        self.engine = engine;
    }

    pub fn engine(&self) -> &LocalEngine {
        &self.engine
    }

    /// Decodes one SNMP message; informs come with their Response in
    /// `reply`, v3 requests Raven cannot accept with a Report.
    pub fn decode(&self, payload: &[u8]) -> Decoded {
        let mut fields = Map::new();
        let mut reply = None;
        let parse_error = match parse_snmp_generic_message(payload) {
            Ok((rest, message)) => {
                let mut error = None;
                match message {
                    SnmpGenericMessage::V1(m) => fields = community_fields("1", m),
                    SnmpGenericMessage::V2(m) => {
                        let inform = m.pdu_type() == PduType::InformRequest;
                        fields = community_fields("2c", m);
                        if inform
                            && let Some(Message::Community { pdu_tag: INFORM, pdu_at, .. }) =
                                classify(payload)
                        {
                            let mut response = payload.to_vec();
                            response[pdu_at] = RESPONSE;
                            reply = Some(bytes::Bytes::from(response));
                        }
                    }
                    SnmpGenericMessage::V3(m) => {
                        // The message without what follows it: what the HMAC covers.
                        let whole = &payload[..payload.len().saturating_sub(rest.len())];
                        (error, reply) = self.decode_v3(whole, &m, &mut fields);
                    }
                }
                error.or_else(|| {
                    (!rest.is_empty()).then(|| {
                        ParseError::new(
                            "trailing_bytes",
                            format!("{} bytes after the message", rest.len()),
                        )
                    })
                })
            }
            // The error type never carries the community (snmp-parser reports
            // BER positions and kinds only).
            Err(e) => {
                // What the header still says, read leniently (a message cut
                // short, or a value the parser is too strict about).
                if let Some(version) = header_version(payload) {
                    fields.insert("version".into(), json!(version));
                }
                Some(ParseError::new("bad_ber", format!("not fully parsed: {e:?}")))
            }
        };
        Decoded { fields, parse_error, reply }
    }

    /// Steps 1–5 of the module comment for one v3 message (`message`: its
    /// bytes, exactly).
    fn decode_v3(
        &self,
        message: &[u8],
        m: &SnmpV3Message,
        fields: &mut Map<String, Value>,
    ) -> (Option<ParseError>, Option<bytes::Bytes>) {
        let header = &m.header_data;
        let (auth, privacy, reportable) =
            (header.is_authenticated(), header.is_encrypted(), header.is_reportable());
        fields.insert("version".into(), json!("3"));
        fields.insert("msg_id".into(), json!(header.msg_id));
        let level = match (auth, privacy) {
            (true, true) => "authPriv",
            (true, false) => "authNoPriv",
            (false, false) => "noAuthNoPriv",
            (false, true) => "invalid",
        };
        fields.insert("security_level".into(), json!(level));
        let SecurityParameters::USM(usm) = &m.security_params else {
            // Another security model: the header, and a plaintext PDU.
            fields.insert("encrypted".into(), json!(privacy));
            if let ScopedPduData::Plaintext(scoped) = &m.data {
                scoped_fields(scoped, fields);
            }
            return (None, None);
        };
        let engine_id = usm.msg_authoritative_engine_id;
        let (boots, time) = (usm.msg_authoritative_engine_boots, usm.msg_authoritative_engine_time);
        fields.insert("engine_id".into(), json!(hex(engine_id)));
        fields.insert("engine_boots".into(), json!(boots));
        fields.insert("engine_time".into(), json!(time));
        fields.insert("user".into(), json!(usm.msg_user_name));
        let mut request = Request {
            msg_id: header.msg_id,
            user: &usm.msg_user_name,
            context_name: Vec::new(),
            request_id: 0,
            pdu_type: None,
        };
        if let ScopedPduData::Plaintext(scoped) = &m.data {
            // Readable whatever the outcome below; `authenticated` says
            // whether it can be trusted.
            scoped_fields(scoped, fields);
            request.note(scoped);
        }
        let ours = engine_id == self.engine.id();
        let user = &usm.msg_user_name;
        let mut error = None;
        let mut report = None;
        let mut keys = None;
        let mut decrypted = None;
        if privacy && !auth {
            // An invalid msgFlags: dropped unanswered (RFC 3412 7.2 step 5).
            fields.insert("authenticated".into(), json!(false));
            fields.insert("encrypted".into(), json!(true));
            let error = ParseError::new("bad_flags", "privacy without authentication");
            return (Some(error), None);
        }
        if auth {
            let candidates = self.usm.candidates(user, engine_id);
            let verified = range_in(message, usm.msg_authentication_parameters)
                .and_then(|at| candidates.iter().find(|k| k.verify(message, at.clone())).cloned());
            if candidates.is_empty() {
                error = Some(if self.usm.is_empty() {
                    ParseError::new("no_usm_user", "no USM user is configured")
                } else {
                    ParseError::new(
                        "unknown_user",
                        format!("no USM user {user:?} for engine {}", hex(engine_id)),
                    )
                });
                report = Some(UsmStat::UnknownUserNames);
            } else if let Some(k) = verified {
                if let ScopedPduData::Encrypted(ciphertext) = &m.data {
                    let plain = if k.privacy().is_none() {
                        report = Some(UsmStat::UnsupportedSecLevels);
                        Err(format!("USM user {user:?} has no priv_protocol configured"))
                    } else {
                        k.decrypt(boots, time, usm.msg_privacy_parameters, ciphertext)
                            .map_err(String::from)
                            .and_then(|plain| {
                                parse_scoped(&plain, |scoped| {
                                    scoped_fields(scoped, fields);
                                    request.note(scoped);
                                })
                                .map_err(|e| format!("the decrypted PDU does not parse: {e}"))
                            })
                            .map(|(scoped, ())| scoped)
                    };
                    match plain {
                        Ok(scoped) => decrypted = Some(scoped),
                        Err(detail) => {
                            report = report.or(Some(UsmStat::DecryptionErrors));
                            error = Some(ParseError::new("decrypt_failed", detail));
                        }
                    }
                }
                if error.is_none() && ours && !self.engine.in_time_window(boots, time) {
                    error = Some(ParseError::new(
                        "not_in_time_window",
                        format!(
                            "boots {boots} time {time}; Raven's engine is at boots {} time {}",
                            self.engine.boots(),
                            self.engine.time()
                        ),
                    ));
                    report = Some(UsmStat::NotInTimeWindows);
                }
                keys = Some(k);
            } else {
                error = Some(ParseError::new(
                    "auth_failed",
                    format!("no USM user {user:?} key verifies the message's HMAC"),
                ));
                report = Some(UsmStat::WrongDigests);
            }
        }
        fields.insert("authenticated".into(), json!(keys.is_some()));
        fields.insert("encrypted".into(), json!(privacy && decrypted.is_none()));

        let reply = if !ours {
            // A request to another engine, or engine discovery (empty ID).
            if reportable { self.report(&request, UsmStat::UnknownEngineIds, None) } else { None }
        } else if let Some(stat) = report {
            if !reportable {
                None
            } else if stat == UsmStat::NotInTimeWindows {
                // Authenticated, so the sender can trust the time it learns
                // (RFC 3414 3.2 step 7a).
                self.report(&request, stat, keys.as_deref())
            } else {
                self.report(&request, stat, None)
            }
        } else if error.is_none() && request.pdu_type == Some(PduType::InformRequest) {
            // At the inform's own security level, with the keys that verified it.
            let protection = match (keys.as_deref(), privacy) {
                (None, _) => Protection::None,
                (Some(k), false) => Protection::Auth(k),
                (Some(k), true) => Protection::AuthPriv(k),
            };
            decrypted
                .or_else(|| v3_data_range(message).map(|r| message[r].to_vec()))
                .and_then(|scoped| self.response(&request, protection, scoped))
        } else {
            None
        };
        (error, reply)
    }

    /// A Report PDU with one usmStats counter (counted here), from Raven's
    /// engine, noAuthNoPriv or (`keys`) authNoPriv.
    fn report(
        &self,
        request: &Request,
        stat: UsmStat,
        keys: Option<&LocalKeys>,
    ) -> Option<bytes::Bytes> {
        let count = self.engine.count(stat);
        let varbinds = ber::seq(&[ber::seq(&[
            ber::tlv(0x06, &stat.oid()),
            ber::tlv(0x41, &ber::unsigned(count)),
        ])]);
        let pdu = ber::tlv(
            REPORT,
            &[ber::int(request.request_id), ber::int(0), ber::int(0), varbinds].concat(),
        );
        let scoped =
            ber::seq(&[ber::octets(self.engine.id()), ber::octets(&request.context_name), pdu]);
        let protection = keys.map_or(Protection::None, Protection::Auth);
        self.message(request, protection, &scoped)
    }

    /// The Response to an InformRequest: its scoped PDU with the PDU tag
    /// changed (same request-id, noError, same varbinds).
    fn response(
        &self,
        request: &Request,
        protection: Protection,
        mut scoped: Vec<u8>,
    ) -> Option<bytes::Bytes> {
        let at = scoped_pdu_at(&scoped)?;
        if scoped[at] != INFORM {
            return None;
        }
        scoped[at] = RESPONSE;
        self.message(request, protection, &scoped)
    }

    /// A whole v3 message from Raven's engine to `request`'s sender.
    fn message(
        &self,
        request: &Request,
        protection: Protection,
        scoped: &[u8],
    ) -> Option<bytes::Bytes> {
        let (boots, time) = (self.engine.boots(), self.engine.time());
        let (flags, keys, auth_params, priv_params, data) = match protection {
            Protection::None => (0u8, None, Vec::new(), Vec::new(), scoped.to_vec()),
            Protection::Auth(k) => {
                (1, Some(k), vec![0; k.auth.mac_len()], Vec::new(), scoped.to_vec())
            }
            Protection::AuthPriv(k) => {
                let salt = self.engine.next_salt(k.privacy()?);
                let ciphertext = k.encrypt(boots, time, salt, scoped)?;
                (3, Some(k), vec![0; k.auth.mac_len()], salt.to_vec(), ber::octets(&ciphertext))
            }
        };
        let usm = ber::seq(&[
            ber::octets(self.engine.id()),
            ber::int(boots),
            ber::int(time),
            ber::octets(request.user.as_bytes()),
            ber::octets(&auth_params),
            ber::octets(&priv_params),
        ]);
        let header = ber::seq(&[
            ber::int(request.msg_id),
            ber::int(MAX_SIZE),
            ber::octets(&[flags]),
            ber::int(3),
        ]);
        let mut message = ber::seq(&[ber::int(3), header, ber::octets(&usm), data]);
        if let Some(k) = keys {
            let at = match parse_snmp_v3(&message) {
                Ok((_, SnmpV3Message { security_params: SecurityParameters::USM(usm), .. })) => {
                    range_in(&message, usm.msg_authentication_parameters)?
                }
                _ => return None,
            };
            if !k.sign(&mut message, at) {
                return None;
            }
        }
        Some(bytes::Bytes::from(message))
    }
}

/// Just enough BER writing for Reports and Responses (definite lengths,
/// minimal INTEGERs, as RFC 3417 asks).
pub(crate) mod ber {
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend(&bytes[skip..]);
        }
        out.extend(content);
        out
    }

    pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    pub fn octets(bytes: &[u8]) -> Vec<u8> {
        tlv(0x04, bytes)
    }

    pub fn int(n: u32) -> Vec<u8> {
        tlv(0x02, &unsigned(n))
    }

    /// The content of a non-negative INTEGER (or Counter32): big-endian,
    /// shortest, with a leading zero when the high bit would read as a sign.
    pub fn unsigned(n: u32) -> Vec<u8> {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count().min(3);
        let mut out = bytes[skip..].to_vec();
        if out[0] & 0x80 != 0 {
            out.insert(0, 0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::decode::usm::{AuthProtocol, Clock, PrivProtocol, User, parse_engine_id};

    fn decode(payload: &[u8]) -> Decoded {
        SnmpDecoder::default().decode(payload)
    }

    /// A v2c InformRequest: community "public", request-id 7, uptime and
    /// trap OID varbinds (hand-encoded BER).
    fn inform() -> Vec<u8> {
        let varbinds: Vec<u8> = [
            // sysUpTime.0 = TimeTicks 1234
            &[
                0x30, 0x0e, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x02, 0x01, 0x01, 0x03, 0x00, 0x43, 0x02,
                0x04, 0xd2,
            ][..],
            // snmpTrapOID.0 = 1.3.6.1.6.3.1.1.5.3 (linkDown)
            &[
                0x30, 0x17, 0x06, 0x0a, 0x2b, 0x06, 0x01, 0x06, 0x03, 0x01, 0x01, 0x04, 0x01, 0x00,
                0x06, 0x09, 0x2b, 0x06, 0x01, 0x06, 0x03, 0x01, 0x01, 0x05, 0x03,
            ][..],
        ]
        .concat();
        let mut vb = vec![0x30, varbinds.len() as u8];
        vb.extend(varbinds);
        let mut pdu_body = vec![0x02, 0x01, 0x07, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00];
        pdu_body.extend(vb);
        let mut pdu = vec![INFORM, pdu_body.len() as u8];
        pdu.extend(pdu_body);
        let mut body = vec![0x02, 0x01, 0x01, 0x04, 0x06];
        body.extend(b"public");
        body.extend(pdu);
        let mut msg = vec![0x30, body.len() as u8];
        msg.extend(body);
        msg
    }

    #[test]
    fn a_v2c_inform_is_decoded_and_answered_with_a_response() {
        let d = decode(&inform());
        assert_eq!(d.parse_error, None);
        assert_eq!(d.fields["version"], "2c");
        assert_eq!(d.fields["community"], "public");
        assert_eq!(d.fields["pdu_type"], "inform_request");
        assert_eq!(d.fields["uptime"], 1234);
        assert_eq!(d.fields["trap_oid"], "1.3.6.1.6.3.1.1.5.3");
        assert_eq!(d.fields["varbinds"].as_array().unwrap().len(), 2);
        let reply = d.reply.expect("a Response PDU");
        let answered = decode(&reply);
        assert_eq!(answered.fields["pdu_type"], "response");
        assert_eq!(answered.fields["request_id"], 7);
        assert_eq!(answered.fields["varbinds"], d.fields["varbinds"]);
        assert!(answered.reply.is_none(), "a response is not answered");
    }

    #[test]
    fn garbage_is_an_error_without_the_community_in_it() {
        let mut bad = inform();
        bad.truncate(20);
        let d = decode(&bad);
        let e = d.parse_error.unwrap();
        assert_eq!(e.reason, "bad_ber");
        assert!(!e.detail.contains("public"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_and_mutated_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            flip in 0usize..80, byte in proptest::num::u8::ANY, cut in 0usize..80,
        ) {
            let _ = decode(&bytes);
            let mut m = inform();
            if flip < m.len() { m[flip] = byte; }
            m.truncate(cut.max(1).min(m.len()));
            let _ = decode(&m);
        }

        /// `oid_string` is asn1-rs's `to_id_string`, arcs past 64 bits
        /// included.
        #[test]
        fn oid_strings_are_asn1_rs_ones(arcs in proptest::collection::vec(proptest::num::u64::ANY, 0..12), wide in proptest::bool::ANY) {
            // BER of the arcs after the first two (first octet 0x2b: 1.3).
            let mut ber = vec![0x2b];
            for arc in arcs {
                let mut groups = vec![(arc & 0x7f) as u8];
                let mut rest = arc >> 7;
                while rest > 0 { groups.push((rest & 0x7f) as u8 | 0x80); rest >>= 7; }
                ber.extend(groups.iter().rev());
            }
            if wide { ber.extend([0x82; 10]); ber.push(0x01); } // an arc of 71 bits
            let oid = snmp_parser::Oid::new(std::borrow::Cow::Borrowed(&ber));
            proptest::prop_assert_eq!(oid_string(&oid), oid.to_id_string());
        }

        /// The same for any content bytes at all: a first byte past 0x7f,
        /// an arc cut short at the end, wide arcs anywhere, a lone 0.
        #[test]
        fn oid_strings_of_any_bytes_are_asn1_rs_ones(
            ber in proptest::collection::vec(proptest::prop_oneof![proptest::num::u8::ANY, 0x80u8..=0xff, 0u8..=1], 0..40),
        ) {
            let oid = snmp_parser::Oid::new(std::borrow::Cow::Borrowed(&ber));
            proptest::prop_assert_eq!(oid_string(&oid), oid.to_id_string());
        }

        /// Every SNMP payload of the shared captures (v1, v2c, v3, the
        /// fuzz regressions), mutated; a reply is never answered.
        #[test]
        fn mutated_shared_payloads_never_panic(m in crate::decode::samples::testing::mutation()) {
            let samples = crate::decode::samples::testing::of(crate::record::Stream::Snmp);
            let payload = m.apply(&samples[m.pick % samples.len()].payload);
            let d = decode(&payload);
            let _ = classify(&payload);
            if let Some(reply) = d.reply {
                if d.fields.get("version") == Some(&json!("2c")) {
                    proptest::prop_assert_eq!(reply.len(), payload.len());
                }
                proptest::prop_assert_eq!(decode(&reply).reply, None);
            }
        }
    }

    /// The PDU rendering as it was before it was made fast (`json!`,
    /// asn1-rs's `to_id_string`, `Ipv4Addr`'s `Display`, the community
    /// copied): what the fast path must equal, field for field.
    mod before {
        use super::super::*;

        fn varbind(v: &SnmpVariable, oid: String) -> Value {
            let (kind, value) = match &v.val {
                VarBindValue::Value(value) => match value {
                    ObjectSyntax::Number(n) => ("integer", json!(n)),
                    ObjectSyntax::String(s) => ("octet_string", octets(s)),
                    ObjectSyntax::Object(oid) => ("oid", json!(oid.to_id_string())),
                    ObjectSyntax::BitString(b) => ("bit_string", json!(hex(b.as_ref()))),
                    ObjectSyntax::Empty => ("null", Value::Null),
                    ObjectSyntax::IpAddress(NetworkAddress::IPv4(ip)) => {
                        ("ip_address", json!(ip.to_string()))
                    }
                    ObjectSyntax::Counter32(n) => ("counter32", json!(n)),
                    ObjectSyntax::Gauge32(n) => ("gauge32", json!(n)),
                    ObjectSyntax::TimeTicks(n) => ("timeticks", json!(n)),
                    ObjectSyntax::Opaque(b) => ("opaque", json!(hex(b))),
                    ObjectSyntax::NsapAddress(b) => ("nsap_address", json!(hex(b))),
                    ObjectSyntax::Counter64(n) => ("counter64", json!(n)),
                    ObjectSyntax::UInteger32(n) => ("uinteger32", json!(n)),
                    ObjectSyntax::UnknownSimple(a) | ObjectSyntax::UnknownApplication(a) => {
                        ("unknown", json!(hex(a.data)))
                    }
                },
                VarBindValue::Unspecified => ("unspecified", Value::Null),
                VarBindValue::NoSuchObject => ("no_such_object", Value::Null),
                VarBindValue::NoSuchInstance => ("no_such_instance", Value::Null),
                VarBindValue::EndOfMibView => ("end_of_mib_view", Value::Null),
            };
            json!({ "oid": oid, "type": kind, "value": value })
        }

        pub fn pdu_fields(pdu: &SnmpPdu, fields: &mut Map<String, Value>) {
            let vars: Vec<&SnmpVariable> = match pdu {
                SnmpPdu::Generic(p) => {
                    fields.insert("pdu_type".into(), json!(pdu_name(p.pdu_type)));
                    fields.insert("request_id".into(), json!(p.req_id));
                    p.var.iter().collect()
                }
                SnmpPdu::Bulk(p) => {
                    fields.insert("pdu_type".into(), json!("get_bulk_request"));
                    fields.insert("request_id".into(), json!(p.req_id));
                    p.var.iter().collect()
                }
                SnmpPdu::TrapV1(t) => {
                    fields.insert("pdu_type".into(), json!("trap_v1"));
                    fields.insert("enterprise".into(), json!(t.enterprise.to_id_string()));
                    let NetworkAddress::IPv4(agent) = t.agent_addr;
                    fields.insert("agent_address".into(), json!(agent.to_string()));
                    fields.insert("generic_trap".into(), json!(t.generic_trap.0));
                    fields.insert("specific_trap".into(), json!(t.specific_trap));
                    fields.insert("timestamp".into(), json!(t.timestamp));
                    t.var.iter().collect()
                }
            };
            let mut varbinds = Vec::with_capacity(vars.len());
            for v in &vars {
                let oid = v.oid.to_id_string();
                if oid == SYS_UPTIME
                    && let VarBindValue::Value(ObjectSyntax::TimeTicks(t)) = v.val
                {
                    fields.insert("uptime".into(), json!(t));
                }
                if oid == SNMP_TRAP_OID
                    && let VarBindValue::Value(ObjectSyntax::Object(trap)) = &v.val
                {
                    fields.insert("trap_oid".into(), json!(trap.to_id_string()));
                }
                varbinds.push(varbind(v, oid));
            }
            fields.insert("varbinds".into(), Value::Array(varbinds));
        }

        pub fn community_fields(version: &str, m: &SnmpMessage, fields: &mut Map<String, Value>) {
            fields.insert("version".into(), json!(version));
            fields.insert("community".into(), json!(m.community));
            pdu_fields(&m.pdu, fields);
        }
    }

    /// The fast rendering and the one before it, on one message; how many
    /// PDUs were compared (0 or 1: an encrypted or unparsed one has none).
    fn same_as_before(payload: &[u8]) -> Result<usize, proptest::test_runner::TestCaseError> {
        let Ok((_, message)) = parse_snmp_generic_message(payload) else { return Ok(0) };
        let (mut fast, mut old) = (Map::new(), Map::new());
        match message {
            SnmpGenericMessage::V1(m) | SnmpGenericMessage::V2(m) => {
                before::community_fields("x", &m, &mut old);
                fast = community_fields("x", m);
            }
            SnmpGenericMessage::V3(m) => {
                let ScopedPduData::Plaintext(scoped) = &m.data else { return Ok(0) };
                before::pdu_fields(&scoped.data, &mut old);
                pdu_fields(&scoped.data, &mut fast);
            }
        }
        proptest::prop_assert_eq!(fast, old);
        Ok(1)
    }

    #[test]
    fn fast_rendering_equals_the_old_one_on_every_shared_payload() {
        let samples = crate::decode::samples::testing::of(crate::record::Stream::Snmp);
        let mut compared = 0;
        for s in &samples {
            compared += same_as_before(&s.payload).unwrap();
        }
        // Net-SNMP's v3 capture, decrypted where it is encrypted.
        let raven = as_snmptrapd(3);
        for frame in capture() {
            compared += same_as_before(&frame).unwrap();
            let Ok((_, m)) = parse_snmp_v3(&frame) else { continue };
            let (SecurityParameters::USM(usm), ScopedPduData::Encrypted(ciphertext)) =
                (&m.security_params, &m.data)
            else {
                continue;
            };
            let engine = usm.msg_authoritative_engine_id;
            for k in raven.usm.candidates(&usm.msg_user_name, engine) {
                let (boots, time) =
                    (usm.msg_authoritative_engine_boots, usm.msg_authoritative_engine_time);
                let Ok(plain) = k.decrypt(boots, time, usm.msg_privacy_parameters, ciphertext)
                else {
                    continue;
                };
                let (mut fast, mut old) = (Map::new(), Map::new());
                if parse_scoped(&plain, |s| {
                    pdu_fields(&s.data, &mut fast);
                    before::pdu_fields(&s.data, &mut old);
                })
                .is_ok()
                {
                    assert_eq!(fast, old);
                    compared += 1;
                }
            }
        }
        assert!(compared > 600, "only {compared} PDUs compared");
    }

    proptest::proptest! {
        /// The same on mutated shared payloads (other values, other types,
        /// OIDs with odd bytes).
        #[test]
        fn fast_rendering_equals_the_old_one_on_mutated_payloads(m in crate::decode::samples::testing::mutation()) {
            let samples = crate::decode::samples::testing::of(crate::record::Stream::Snmp);
            same_as_before(&m.apply(&samples[m.pick % samples.len()].payload))?;
        }
    }

    /// The shared Net-SNMP capture (see its README.md): frame N is
    /// `capture()[N - 1]`.
    fn capture() -> Vec<Vec<u8>> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/_generated-locally/net-snmp-5.9.3/netsnmp-traps-informs.pcap");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let datagrams = crate::decode::capture_file::read(&bytes).unwrap().datagrams;
        assert_eq!(datagrams.len(), 11, "the capture's frames");
        datagrams.into_iter().map(|d| d.payload.to_vec()).collect()
    }

    /// snmptrapd's engine ID, from its Report in frame 9.
    const TRAPD_ENGINE: &str = "80001f88808a0f315dfd6e026b00000000";

    fn user(name: &str, auth: &str, privacy: Option<&str>) -> User {
        User::new(
            name,
            None,
            AuthProtocol::Sha1,
            auth.as_bytes(),
            privacy.map(|p| (PrivProtocol::Aes128, p.as_bytes())),
        )
    }

    /// The capture's credentials (README.md beside it).
    fn capture_users() -> Usm {
        Usm::new(vec![
            user("raventest", "ravenauthpass", Some("ravenprivpass")),
            user("raveninform", "ravenauthpass", Some("ravenprivpass")),
        ])
    }

    /// A decoder that has the capture's users and is, like snmptrapd in the
    /// capture, engine `TRAPD_ENGINE` at boots 1, time `time`.
    fn as_snmptrapd(time: u32) -> SnmpDecoder {
        let engine =
            LocalEngine::new(parse_engine_id(TRAPD_ENGINE).unwrap(), 1, Clock::Fixed(time));
        SnmpDecoder::new(capture_users(), engine)
    }

    fn varbind_value<'a>(d: &'a Decoded, oid: &str) -> &'a Value {
        d.fields["varbinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["oid"] == oid)
            .map(|v| &v["value"])
            .unwrap_or_else(|| panic!("no varbind {oid} in {:?}", d.fields))
    }

    #[test]
    fn net_snmp_v3_traps_are_authenticated_and_decrypted() {
        let frames = capture();
        let decoder = SnmpDecoder::new(capture_users(), LocalEngine::ephemeral(""));

        let plain = decoder.decode(&frames[4]);
        assert_eq!(plain.parse_error, None);
        assert_eq!(plain.fields["security_level"], "noAuthNoPriv");
        assert_eq!(plain.fields["authenticated"], false);
        assert_eq!(plain.fields["trap_oid"], "1.3.6.1.6.3.1.1.5.1");
        // snmptrap's own sysUpTime.0 first, then the one given on its command line.
        assert!(
            plain.fields["varbinds"]
                .as_array()
                .unwrap()
                .contains(&json!({"oid": "1.3.6.1.2.1.1.3.0", "type": "timeticks", "value": 4242})),
            "{:?}",
            plain.fields
        );

        let auth = decoder.decode(&frames[5]);
        assert_eq!(auth.parse_error, None);
        assert_eq!(auth.fields["security_level"], "authNoPriv");
        assert_eq!(auth.fields["authenticated"], true);
        assert_eq!(auth.fields["encrypted"], false);
        assert_eq!(auth.fields["engine_id"], "8000000001020304");
        assert_eq!(auth.fields["user"], "raventest");
        assert_eq!(auth.fields["trap_oid"], "1.3.6.1.6.3.1.1.5.3");
        assert_eq!(varbind_value(&auth, "1.3.6.1.2.1.2.2.1.1.3"), 3);

        let private = decoder.decode(&frames[6]);
        assert_eq!(private.parse_error, None);
        assert_eq!(private.fields["security_level"], "authPriv");
        assert_eq!(private.fields["authenticated"], true);
        assert_eq!(private.fields["encrypted"], false);
        assert_eq!(private.fields["pdu_type"], "trap_v2");
        assert_eq!(private.fields["trap_oid"], "1.3.6.1.6.3.1.1.5.4");
        assert_eq!(private.fields["context_name"], "");
        assert_eq!(varbind_value(&private, "1.3.6.1.2.1.2.2.1.1.3"), 3);
        assert_eq!(varbind_value(&private, "1.3.6.1.4.1.8072.2.3.2.1"), "0x00ff7f80");
        assert!(private.reply.is_none(), "traps are not answered");

        // The inform to snmptrapd and its answer, under snmptrapd's engine.
        let inform = decoder.decode(&frames[9]);
        assert_eq!(inform.parse_error, None);
        assert_eq!(inform.fields["user"], "raveninform");
        assert_eq!(inform.fields["engine_id"], TRAPD_ENGINE);
        assert_eq!(inform.fields["pdu_type"], "inform_request");
        assert_eq!(inform.fields["trap_oid"], "1.3.6.1.6.3.1.1.5.2");
        assert_eq!(varbind_value(&inform, "1.3.6.1.2.1.1.5.0"), "sw-core-1");
        // Sent to Raven, an inform for another engine (a stale engine ID)
        // gets usmStatsUnknownEngineIDs: the sender discovers Raven's.
        let report = decoder.decode(&inform.reply.expect("a Report"));
        assert_eq!(report.fields["pdu_type"], "report");
        assert_eq!(report.fields["engine_id"], hex(decoder.engine().id()));
        assert_eq!(report.fields["msg_id"], inform.fields["msg_id"]);
        assert_eq!(varbind_value(&report, "1.3.6.1.6.3.15.1.1.4.0"), 1);
        let response = decoder.decode(&frames[10]);
        assert_eq!(response.parse_error, None);
        assert_eq!(response.fields["pdu_type"], "response");
        assert_eq!(response.fields["request_id"], inform.fields["request_id"]);
        assert_eq!(response.fields["varbinds"], inform.fields["varbinds"]);
    }

    #[test]
    fn wrong_or_missing_keys_keep_the_message_raw_with_a_reason() {
        let frames = capture();
        let wrong_auth = SnmpDecoder::new(
            Usm::new(vec![user("raventest", "not-the-passphrase", Some("ravenprivpass"))]),
            LocalEngine::ephemeral(""),
        );
        for frame in [5, 6] {
            let d = wrong_auth.decode(&frames[frame]);
            assert_eq!(d.parse_error.as_ref().map(|e| e.reason), Some("auth_failed"));
            assert_eq!(d.fields["authenticated"], false);
            let detail = &d.parse_error.unwrap().detail;
            assert!(!detail.contains("not-the-passphrase") && !detail.contains("ravenpriv"));
        }
        assert_eq!(wrong_auth.decode(&frames[6]).fields["encrypted"], true);
        assert!(wrong_auth.decode(&frames[6]).fields.get("trap_oid").is_none());
        // authNoPriv: readable, but not trusted.
        assert_eq!(wrong_auth.decode(&frames[5]).fields["trap_oid"], "1.3.6.1.6.3.1.1.5.3");

        let wrong_priv = SnmpDecoder::new(
            Usm::new(vec![user("raventest", "ravenauthpass", Some("not-the-passphrase"))]),
            LocalEngine::ephemeral(""),
        );
        let d = wrong_priv.decode(&frames[6]);
        assert_eq!(d.parse_error.map(|e| e.reason), Some("decrypt_failed"));
        assert_eq!(d.fields["authenticated"], true);
        assert_eq!(d.fields["encrypted"], true);

        let no_priv = SnmpDecoder::new(
            Usm::new(vec![user("raventest", "ravenauthpass", None)]),
            LocalEngine::ephemeral(""),
        );
        assert_eq!(
            no_priv.decode(&frames[6]).parse_error.map(|e| e.reason),
            Some("decrypt_failed")
        );
        assert_eq!(no_priv.decode(&frames[5]).parse_error, None);

        let other = SnmpDecoder::new(
            Usm::new(vec![user("someone", "ravenauthpass", Some("ravenprivpass"))]),
            LocalEngine::ephemeral(""),
        );
        assert_eq!(other.decode(&frames[6]).parse_error.map(|e| e.reason), Some("unknown_user"));
        let tied = SnmpDecoder::new(
            Usm::new(vec![User::new(
                "raventest",
                Some(parse_engine_id("8000000001020305").unwrap()),
                AuthProtocol::Sha1,
                b"ravenauthpass",
                None,
            )]),
            LocalEngine::ephemeral(""),
        );
        assert_eq!(
            tied.decode(&frames[5]).parse_error.map(|e| e.reason),
            Some("unknown_user"),
            "a user tied to another engine"
        );

        // Privacy without authentication is no valid message: kept, unanswered.
        let mut bad = frames[9].clone();
        let at = flags_at(&bad);
        bad[at] = 0x06;
        let d = as_snmptrapd(3).decode(&bad);
        assert_eq!(d.parse_error.map(|e| e.reason), Some("bad_flags"));
        assert_eq!((d.fields["security_level"].as_str(), d.reply), (Some("invalid"), None));

        let none = SnmpDecoder::default();
        let d = none.decode(&frames[6]);
        assert_eq!(d.parse_error.map(|e| e.reason), Some("no_usm_user"));
        assert_eq!(d.fields["encrypted"], true);
        assert_eq!(d.fields["user"], "raventest");
        assert_eq!(none.decode(&frames[4]).parse_error, None, "noAuthNoPriv needs no user");
    }

    #[test]
    fn engine_discovery_is_answered_as_snmptrapd_answered_it() {
        let frames = capture();
        // Frame 8: Net-SNMP's probe (empty engine ID, noAuthNoPriv,
        // reportable). Frame 9: snmptrapd's Report, engine boots 1, time 3,
        // usmStatsUnknownEngineIDs = 1. Raven in snmptrapd's place answers
        // the same bytes.
        let raven = as_snmptrapd(3);
        let probe = raven.decode(&frames[7]);
        assert_eq!(probe.parse_error, None);
        assert_eq!(probe.fields["engine_id"], "");
        assert_eq!(probe.fields["user"], "");
        assert_eq!(probe.fields["pdu_type"], "get_request");
        assert_eq!(probe.reply.as_deref(), Some(&frames[8][..]));
        // Anyone's engine ID but Raven's is unknown (the counter goes on).
        let other = SnmpDecoder::new(capture_users(), LocalEngine::ephemeral(""));
        let report = other.decode(&other.decode(&frames[7]).reply.unwrap());
        assert_eq!(report.fields["pdu_type"], "report");
        assert_eq!(report.fields["engine_id"], hex(other.engine().id()));
        assert_eq!(varbind_value(&report, "1.3.6.1.6.3.15.1.1.4.0"), 1);
        // Traps (not reportable) get nothing.
        assert!(other.decode(&frames[4]).reply.is_none());
    }

    #[test]
    fn a_v3_inform_to_raven_gets_an_authenticated_encrypted_response() {
        let frames = capture();
        let raven = as_snmptrapd(3);
        let inform = raven.decode(&frames[9]);
        assert_eq!(inform.parse_error, None);
        let reply = inform.reply.expect("a Response");
        // Raven can read its own answer with the same user's keys, and it
        // says what snmptrapd's answer (frame 11) says.
        let ours = raven.decode(&reply);
        let theirs = raven.decode(&frames[10]);
        assert_eq!(ours.parse_error, None, "{:?}", ours.fields);
        for key in [
            "security_level",
            "authenticated",
            "encrypted",
            "engine_id",
            "engine_boots",
            "engine_time",
            "user",
            "msg_id",
            "context_engine_id",
            "context_name",
            "pdu_type",
            "request_id",
            "varbinds",
        ] {
            assert_eq!(ours.fields[key], theirs.fields[key], "{key}");
        }
        assert!(ours.reply.is_none(), "a response is not answered");
        assert_ne!(&reply[..], &frames[10][..], "its own salt");

        // Outside the time window: an authenticated Report, no Response.
        let later = as_snmptrapd(1000);
        let stale = later.decode(&frames[9]);
        assert_eq!(stale.parse_error.map(|e| e.reason), Some("not_in_time_window"));
        let report = later.decode(&stale.reply.expect("a Report"));
        assert_eq!(report.fields["pdu_type"], "report");
        assert_eq!(report.fields["security_level"], "authNoPriv");
        assert_eq!(report.fields["authenticated"], true);
        assert_eq!(report.fields["engine_time"], 1000);
        assert_eq!(varbind_value(&report, "1.3.6.1.6.3.15.1.1.2.0"), 1);

        // A wrong key at Raven's engine: usmStatsWrongDigests.
        let engine = LocalEngine::new(parse_engine_id(TRAPD_ENGINE).unwrap(), 1, Clock::Fixed(3));
        let wrong = SnmpDecoder::new(
            Usm::new(vec![user("raveninform", "wrongwrongwrong", Some("ravenprivpass"))]),
            engine,
        );
        let d = wrong.decode(&frames[9]);
        assert_eq!(d.parse_error.map(|e| e.reason), Some("auth_failed"));
        let report = wrong.decode(&d.reply.expect("a Report"));
        assert_eq!(report.fields["security_level"], "noAuthNoPriv");
        assert_eq!(varbind_value(&report, "1.3.6.1.6.3.15.1.1.5.0"), 1);
    }

    /// Offset of a v3 message's msgFlags byte.
    fn flags_at(message: &[u8]) -> usize {
        let (_, body, _) = tlv(message, 0).unwrap();
        let (_, version_at, version_len) = tlv(message, body).unwrap();
        let (_, header_at, _) = tlv(message, version_at + version_len).unwrap();
        let (_, id_at, id_len) = tlv(message, header_at).unwrap();
        let (_, size_at, size_len) = tlv(message, id_at + id_len).unwrap();
        tlv(message, size_at + size_len).unwrap().1
    }

    /// A v3 InformRequest from Raven's own encoder, for protocol pairs the
    /// capture does not have (Net-SNMP's own are in tests/snmp_v3.rs).
    fn own_inform(sender: &SnmpDecoder, keys: Option<&LocalKeys>, privacy: bool) -> Vec<u8> {
        let trap_oid = ber::seq(&[
            ber::tlv(0x06, &[0x2b, 6, 1, 6, 3, 1, 1, 4, 1, 0]),
            ber::tlv(0x06, &[0x2b, 6, 1, 6, 3, 1, 1, 5, 3]),
        ]);
        let pdu = ber::tlv(
            INFORM,
            &[ber::int(77), ber::int(0), ber::int(0), ber::seq(&[trap_oid])].concat(),
        );
        let scoped = ber::seq(&[ber::octets(sender.engine().id()), ber::octets(b""), pdu]);
        let request = Request {
            msg_id: 5,
            user: keys.map_or("nobody", |k| k.user.as_str()),
            context_name: Vec::new(),
            request_id: 0,
            pdu_type: None,
        };
        let protection = match (keys, privacy) {
            (None, _) => Protection::None,
            (Some(k), false) => Protection::Auth(k),
            (Some(k), true) => Protection::AuthPriv(k),
        };
        let mut message = sender.message(&request, protection, &scoped).unwrap().to_vec();
        // Reportable, as a real inform is (then signed again).
        let at = flags_at(&message);
        message[at] |= 4;
        if let Some(k) = keys {
            let Ok((_, m)) = parse_snmp_v3(&message) else { panic!() };
            let SecurityParameters::USM(usm) = &m.security_params else { panic!() };
            let at = range_in(&message, usm.msg_authentication_parameters).unwrap();
            message[at.clone()].fill(0);
            assert!(k.sign(&mut message, at));
        }
        message
    }

    #[test]
    fn every_auth_and_privacy_protocol_round_trips_through_an_inform() {
        let engine_id = parse_engine_id("80007ed90501020304").unwrap();
        for auth in [
            AuthProtocol::Md5,
            AuthProtocol::Sha1,
            AuthProtocol::Sha224,
            AuthProtocol::Sha256,
            AuthProtocol::Sha384,
            AuthProtocol::Sha512,
        ] {
            for privacy in [None, Some(PrivProtocol::Des), Some(PrivProtocol::Aes128)] {
                let make = || {
                    Usm::new(vec![User::new(
                        "u1",
                        None,
                        auth,
                        b"authpassphrase",
                        privacy.map(|p| (p, &b"privpassphrase"[..])),
                    )])
                };
                let raven = SnmpDecoder::new(
                    make(),
                    LocalEngine::new(engine_id.clone(), 4, Clock::Fixed(500)),
                );
                let keys = raven.usm.candidates("u1", &engine_id).remove(0);
                let inform = own_inform(&raven, Some(&keys), privacy.is_some());
                let d = raven.decode(&inform);
                let what = format!("{auth:?}/{privacy:?}");
                assert_eq!(d.parse_error, None, "{what}");
                assert_eq!(d.fields["authenticated"], true, "{what}");
                assert_eq!(d.fields["trap_oid"], "1.3.6.1.6.3.1.1.5.3", "{what}");
                let answer = raven.decode(&d.reply.expect("a Response"));
                assert_eq!(answer.parse_error, None, "{what}");
                assert_eq!(answer.fields["pdu_type"], "response", "{what}");
                assert_eq!(answer.fields["request_id"], 77, "{what}");
                assert_eq!(answer.fields["encrypted"], false, "{what}");
            }
        }
        // noAuthNoPriv informs to Raven are answered too (like v2c).
        let raven =
            SnmpDecoder::new(Usm::default(), LocalEngine::new(engine_id, 1, Clock::Fixed(0)));
        let d = raven.decode(&own_inform(&raven, None, false));
        assert_eq!(d.parse_error, None);
        let answer = raven.decode(&d.reply.expect("a Response"));
        assert_eq!(answer.fields["pdu_type"], "response");
        assert_eq!(answer.fields["security_level"], "noAuthNoPriv");
    }

    fn decoder_with_users() -> &'static SnmpDecoder {
        static DECODER: OnceLock<SnmpDecoder> = OnceLock::new();
        DECODER.get_or_init(|| as_snmptrapd(3))
    }

    proptest::proptest! {
        #[test]
        fn mutated_v3_messages_never_panic(
            frame in 4usize..11, flips in proptest::collection::vec((0usize..400, proptest::num::u8::ANY), 1..4),
            cut in 1usize..400,
        ) {
            static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
            let frames = FRAMES.get_or_init(capture);
            let mut m = frames[frame].clone();
            for (at, byte) in flips {
                if at < m.len() { m[at] = byte; }
            }
            let d = decoder_with_users().decode(&m);
            if let Some(reply) = &d.reply {
                let _ = decoder_with_users().decode(reply);
            }
            m.truncate(cut.min(m.len()));
            let _ = decoder_with_users().decode(&m);
        }
    }
}

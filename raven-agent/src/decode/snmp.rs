//! SNMP: v1 traps, v2c traps and informs, v3 headers.
//!
//! Invariants:
//! - The community string goes into the `community` field of the record
//!   and nowhere else: never into logs or parse-error details.
//! - An InformRequest gets a Response PDU in [`Decoded::reply`]: the same
//!   message with the PDU tag changed from InformRequest (0xA6) to Response
//!   (0xA2) — same request-id, error-status noError, the same varbinds, as
//!   RFC 3416 section 4.2.7 asks. The pipeline sends it only once the inform
//!   is durable, so a sender that got its answer never loses the trap.
//! - SNMPv3: the header (msgID, flags, authoritative engine, user, security
//!   level) is read; an encrypted scoped PDU stays encrypted (`encrypted:
//!   true`, counted) — USM keys are not configurable yet.
//!
//! Format: BER per RFC 1157 (v1), RFC 3416 (v2c PDUs), RFC 3412/3414 (v3),
//! parsed with `snmp-parser`; the few bytes the reply needs are walked by
//! hand ([`classify`]).

use serde_json::{Map, Value, json};
use snmp_parser::{
    NetworkAddress, ObjectSyntax, PduType, ScopedPduData, SecurityParameters, SnmpGenericMessage,
    SnmpMessage, SnmpPdu, SnmpVariable, VarBindValue, parse_snmp_generic_message,
};

use super::{Decoded, ParseError};

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Printable text as a string, anything else as hex.
fn octets(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.chars().all(|c| !c.is_control() || c == '\n' || c == '\r' || c == '\t') => {
            json!(s)
        }
        _ => json!(format!("0x{}", hex(bytes))),
    }
}

fn varbind(v: &SnmpVariable) -> Value {
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
    json!({ "oid": v.oid.to_id_string(), "type": kind, "value": value })
}

fn pdu_fields(pdu: &SnmpPdu, fields: &mut Map<String, Value>) {
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
    }
    fields.insert("varbinds".into(), Value::Array(vars.iter().map(|v| varbind(v)).collect()));
}

fn community_fields(version: &str, m: &SnmpMessage, fields: &mut Map<String, Value>) {
    fields.insert("version".into(), json!(version));
    fields.insert("community".into(), json!(m.community));
    pdu_fields(&m.pdu, fields);
}

/// Decodes one SNMP message; informs come with their Response in `reply`.
pub fn decode(payload: &[u8]) -> Decoded {
    let mut fields = Map::new();
    let mut reply = None;
    let parsed = parse_snmp_generic_message(payload);
    let parse_error = match parsed {
        Ok((rest, message)) => {
            match &message {
                SnmpGenericMessage::V1(m) => community_fields("1", m, &mut fields),
                SnmpGenericMessage::V2(m) => {
                    community_fields("2c", m, &mut fields);
                    if m.pdu_type() == PduType::InformRequest
                        && let Some(Message::Community { pdu_tag: INFORM, pdu_at, .. }) =
                            classify(payload)
                    {
                        let mut response = payload.to_vec();
                        response[pdu_at] = RESPONSE;
                        reply = Some(bytes::Bytes::from(response));
                    }
                }
                SnmpGenericMessage::V3(m) => {
                    fields.insert("version".into(), json!("3"));
                    fields.insert("msg_id".into(), json!(m.header_data.msg_id));
                    let level =
                        match (m.header_data.is_authenticated(), m.header_data.is_encrypted()) {
                            (true, true) => "authPriv",
                            (true, false) => "authNoPriv",
                            _ => "noAuthNoPriv",
                        };
                    fields.insert("security_level".into(), json!(level));
                    if let SecurityParameters::USM(usm) = &m.security_params {
                        fields.insert(
                            "engine_id".into(),
                            json!(hex(usm.msg_authoritative_engine_id)),
                        );
                        fields.insert(
                            "engine_boots".into(),
                            json!(usm.msg_authoritative_engine_boots),
                        );
                        fields
                            .insert("engine_time".into(), json!(usm.msg_authoritative_engine_time));
                        fields.insert("user".into(), json!(usm.msg_user_name));
                    }
                    match &m.data {
                        ScopedPduData::Plaintext(scoped) => {
                            fields.insert("encrypted".into(), json!(false));
                            fields.insert(
                                "context_engine_id".into(),
                                json!(hex(scoped.ctx_engine_id)),
                            );
                            pdu_fields(&scoped.data, &mut fields);
                        }
                        ScopedPduData::Encrypted(_) => {
                            fields.insert("encrypted".into(), json!(true));
                        }
                    }
                }
            }
            (!rest.is_empty()).then(|| {
                ParseError::new("trailing_bytes", format!("{} bytes after the message", rest.len()))
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}

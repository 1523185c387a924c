//! Syslog: RFC 5424, RFC 3164, and what devices really send.
//!
//! Invariants:
//! - Every input yields fields; at worst the whole text is the `message`
//!   with a parse error (`no_pri`, `unparsed`). Nothing panics, nothing is
//!   dropped; the raw bytes stay in the record.
//! - Invalid UTF-8 is decoded lossily for the fields and flagged
//!   (`invalid_utf8`); the record keeps the exact bytes.
//! - A timestamp without a year gets the year that puts it closest to the
//!   receive time: a "Dec 31" line received on Jan 1 is last year's.
//!
//! Format: `syslog_loose` parses RFC 5424 first, then RFC 3164. Before it,
//! the Cisco IOS prefix is taken off: `<PRI>seq: *Mar  1 00:02:10.123: …`
//! (a sequence number, `*` = clock not synchronised, `.` = synchronised
//! but via NTP lost), and after it `%FAC-SEV-MNEMONIC:` is read from the
//! message.

use std::time::SystemTime;

use chrono::{DateTime, Datelike, FixedOffset, Utc};
use serde_json::{Map, Value, json};
use syslog_loose::{ProcId, Protocol, Variant};

use super::{Decoded, ParseError};

/// RFC 5424 facility and severity names (as `syslog_loose` spells them).
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clockd", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];
const SEVERITIES: [&str; 8] =
    ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];

/// Decodes syslog payloads; `default_offset` applies to timestamps that
/// carry no zone (RFC 3164).
#[derive(Clone, Debug)]
pub struct SyslogDecoder {
    default_offset: FixedOffset,
}

impl Default for SyslogDecoder {
    fn default() -> Self {
        SyslogDecoder { default_offset: FixedOffset::east_opt(0).expect("UTC") }
    }
}

/// `"+02:00"`, `"-0530"`, `"UTC"` or `"Z"` → an offset.
pub fn parse_offset(text: &str) -> Option<FixedOffset> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("utc") || t == "Z" {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match t.as_bytes().first()? {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() != 4 || rest.len() > 5 {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    if hours > 14 || minutes > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
}

/// The Cisco IOS prefix: sequence number and clock-state marker.
struct CiscoPrefix {
    sequence: Option<u64>,
    clock: Option<&'static str>,
}

/// Splits `<PRI>` and a Cisco `seq: ` / `*` / `.` prefix off `text`,
/// returning the text syslog_loose should see.
fn strip_cisco(text: &str) -> (String, CiscoPrefix) {
    let mut prefix = CiscoPrefix { sequence: None, clock: None };
    let Some(end) = text.strip_prefix('<').and_then(|t| t.find('>')).map(|i| i + 2) else {
        return (text.to_string(), prefix);
    };
    let (pri, mut rest) = text.split_at(end);
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 && rest[digits..].starts_with(": ") {
        prefix.sequence = rest[..digits].parse().ok();
        rest = &rest[digits + 2..];
    }
    if let Some(r) = rest.strip_prefix('*') {
        prefix.clock = Some("unsynchronized");
        rest = r;
    } else if rest.starts_with('.') && rest[1..].starts_with(|c: char| c.is_ascii_alphabetic()) {
        prefix.clock = Some("ntp_lost");
        rest = &rest[1..];
    }
    if prefix.sequence.is_none() && prefix.clock.is_none() {
        return (text.to_string(), prefix);
    }
    // Cisco ends the timestamp with ": " and may add milliseconds; RFC 3164
    // parsers expect "Mmm dd hh:mm:ss host". Keep the text after the
    // timestamp as the message.
    let stamp_end = rest.find(": ").unwrap_or(0);
    let stamp = &rest[..stamp_end];
    let stamp = stamp.split_once('.').map_or(stamp, |(s, _)| s);
    let rest_msg = if stamp_end > 0 { &rest[stamp_end + 2..] } else { rest };
    (format!("{pri}{stamp} - {rest_msg}"), prefix)
}

/// `%FAC-SEV-MNEMONIC:` anywhere in the message.
fn cisco_mnemonic(message: &str) -> Option<(String, u8, String)> {
    let mut from = 0;
    while let Some(i) = message[from..].find('%') {
        let start = from + i + 1;
        let candidate = &message[start..];
        let end = candidate.find(':').unwrap_or(candidate.len());
        let mut parts = candidate[..end].split('-');
        if let (Some(facility), Some(severity), Some(mnemonic)) =
            (parts.next(), parts.next(), parts.next())
        {
            let ok = |s: &str| {
                !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            };
            if ok(facility)
                && ok(mnemonic)
                && severity.len() == 1
                && let Ok(sev) = severity.parse::<u8>()
            {
                let mnemonic = candidate[..end][facility.len() + 3..].to_string();
                return Some((facility.to_string(), sev, mnemonic));
            }
        }
        from = start;
    }
    None
}

fn strip_bom(s: &str) -> &str {
    s.strip_prefix('\u{feff}').unwrap_or(s)
}

impl SyslogDecoder {
    pub fn new(default_offset: FixedOffset) -> SyslogDecoder {
        SyslogDecoder { default_offset }
    }

    pub fn decode(&self, payload: &[u8], received: SystemTime) -> Decoded {
        let mut fields = Map::new();
        let text = String::from_utf8_lossy(payload);
        if matches!(text, std::borrow::Cow::Owned(_)) {
            fields.insert("invalid_utf8".into(), json!(true));
        }
        // Devices end lines with LF, CRLF or NUL; none of it is message.
        let text = strip_bom(text.trim_end_matches(['\n', '\r', '\0']));
        let (input, cisco) = strip_cisco(text);
        let received: DateTime<Utc> = received.into();
        let received_local = received.with_timezone(&self.default_offset);
        let get_year = |(month, _day, _h, _m, _s): syslog_loose::IncompleteDate| {
            let year = received_local.year();
            // A month well after the receive month is from last year
            // (December lines arriving in January); one month of slack
            // covers clocks a little ahead.
            if month > received_local.month() + 1 { year - 1 } else { year }
        };
        let parsed = syslog_loose::parse_message_with_year_exact_tz(
            &input,
            get_year,
            Some(self.default_offset),
            Variant::Either,
        );
        let mut parse_error = None;
        if !text.starts_with('<') {
            parse_error = Some(ParseError::new("no_pri", "the message does not start with <PRI>"));
        }
        match parsed {
            Ok(m) => {
                if let Some(f) = m.facility {
                    fields.insert("facility".into(), json!(f.as_str()));
                    fields.insert("facility_code".into(), json!(f as u8));
                }
                if let Some(s) = m.severity {
                    fields.insert("severity".into(), json!(s.as_str()));
                    fields.insert("severity_code".into(), json!(s as u8));
                }
                let protocol = match m.protocol {
                    Protocol::RFC3164 => "rfc3164",
                    Protocol::RFC5424(_) => "rfc5424",
                };
                fields.insert("protocol".into(), json!(protocol));
                if let Some(t) = m.timestamp {
                    fields.insert("timestamp".into(), json!(t.to_rfc3339()));
                }
                let text_field = |v: Option<&str>| v.filter(|s| *s != "-").map(|s| json!(s));
                let hostname = text_field(m.hostname);
                fields.insert("hostname".into(), hostname.unwrap_or(Value::Null));
                fields.insert("app_name".into(), text_field(m.appname).unwrap_or(Value::Null));
                let procid = match m.procid {
                    Some(ProcId::PID(pid)) => json!(pid.to_string()),
                    Some(ProcId::Name(name)) => json!(name),
                    None => Value::Null,
                };
                fields.insert("procid".into(), procid);
                fields.insert("msgid".into(), text_field(m.msgid).unwrap_or(Value::Null));
                let mut sd = Map::new();
                for element in &m.structured_data {
                    let params: Map<String, Value> =
                        element.params().map(|(k, v)| (k.to_string(), json!(v))).collect();
                    sd.insert(element.id.to_string(), Value::Object(params));
                }
                fields.insert("structured_data".into(), Value::Object(sd));
                fields.insert("message".into(), json!(strip_bom(m.msg)));
            }
            Err(_) => {
                // The header is not RFC 5424 or 3164, but a valid PRI still
                // says facility and severity (as tshark and rsyslog read it).
                let mut message = text;
                if let Some((pri, rest)) = text
                    .strip_prefix('<')
                    .and_then(|t| t.split_once('>'))
                    .and_then(|(n, rest)| Some((n.parse::<u8>().ok()?, rest)))
                    .filter(|(pri, _)| *pri <= 191)
                {
                    let (facility, severity) = (pri >> 3, pri & 7);
                    fields.insert("facility".into(), json!(FACILITIES[usize::from(facility)]));
                    fields.insert("facility_code".into(), json!(facility));
                    fields.insert("severity".into(), json!(SEVERITIES[usize::from(severity)]));
                    fields.insert("severity_code".into(), json!(severity));
                    message = rest;
                }
                fields.insert("message".into(), json!(message));
                parse_error.get_or_insert_with(|| {
                    ParseError::new("unparsed", "neither RFC 5424 nor RFC 3164 after the PRI")
                });
            }
        }
        // The mnemonic is looked for in the whole line: RFC 3164 parsers
        // often take `%FAC-SEV-MNEMONIC:` for the tag.
        if cisco.sequence.is_some() || cisco.clock.is_some() || text.contains('%') {
            let mut c = Map::new();
            if let Some(seq) = cisco.sequence {
                c.insert("sequence".into(), json!(seq));
            }
            if let Some(clock) = cisco.clock {
                c.insert("clock".into(), json!(clock));
            }
            if let Some((facility, severity, mnemonic)) = cisco_mnemonic(text) {
                c.insert("facility".into(), json!(facility));
                c.insert("severity".into(), json!(severity));
                c.insert("mnemonic".into(), json!(mnemonic));
            }
            if !c.is_empty() {
                fields.insert("cisco".into(), Value::Object(c));
            }
        }
        Decoded { fields, parse_error, reply: None }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn utc() -> SyslogDecoder {
        SyslogDecoder::default()
    }

    fn when(rfc3339: &str) -> SystemTime {
        let t = DateTime::parse_from_rfc3339(rfc3339).unwrap();
        UNIX_EPOCH + Duration::from_secs(t.timestamp() as u64)
    }

    fn field<'a>(d: &'a Decoded, key: &str) -> &'a Value {
        d.fields.get(key).unwrap_or(&Value::Null)
    }

    #[test]
    fn rfc5424_with_structured_data_and_bom() {
        let line = "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 \
                    [exampleSDID@32473 iut=\"3\" eventSource=\"Application\"] \u{feff}An application event";
        let d = utc().decode(line.as_bytes(), when("2003-10-12T00:00:00Z"));
        assert_eq!(d.parse_error, None);
        assert_eq!(field(&d, "facility"), "local4");
        assert_eq!(field(&d, "severity_code"), 5);
        assert_eq!(field(&d, "protocol"), "rfc5424");
        assert_eq!(field(&d, "hostname"), "mymachine.example.com");
        assert_eq!(field(&d, "app_name"), "evntslog");
        assert_eq!(field(&d, "procid"), &Value::Null);
        assert_eq!(field(&d, "msgid"), "ID47");
        assert_eq!(field(&d, "structured_data")["exampleSDID@32473"]["iut"], "3");
        assert_eq!(field(&d, "message"), "An application event");
        assert_eq!(field(&d, "timestamp"), "2003-10-11T22:14:15.003+00:00");
    }

    #[test]
    fn rfc3164_year_is_inferred_across_new_year() {
        let line = b"<34>Dec 31 23:59:58 mymachine su: 'su root' failed for lonvick on /dev/pts/8";
        let d = utc().decode(line, when("2027-01-01T00:00:03Z"));
        assert_eq!(field(&d, "timestamp"), "2026-12-31T23:59:58+00:00");
        assert_eq!(field(&d, "hostname"), "mymachine");
        assert_eq!(field(&d, "app_name"), "su");
        assert_eq!(field(&d, "severity"), "crit");
        let d = utc().decode(b"<34>Jan  1 00:00:01 host app: hi", when("2027-01-01T00:00:03Z"));
        assert_eq!(field(&d, "timestamp"), "2027-01-01T00:00:01+00:00");
    }

    #[test]
    fn the_default_zone_applies_to_zoneless_timestamps() {
        let cet = SyslogDecoder::new(parse_offset("+01:00").unwrap());
        let d = cet.decode(b"<13>Nov 28 12:00:00 sw1 app: x", when("2026-11-28T11:00:05Z"));
        assert_eq!(field(&d, "timestamp"), "2026-11-28T12:00:00+01:00");
        assert_eq!(parse_offset("-0530"), FixedOffset::west_opt(5 * 3600 + 1800));
        assert_eq!(parse_offset("UTC"), FixedOffset::east_opt(0));
        assert_eq!(parse_offset("bogus"), None);
        assert_eq!(parse_offset("+99:00"), None);
    }

    #[test]
    fn cisco_sequence_clock_marker_and_mnemonic() {
        let line =
            b"<189>123: *Mar  1 00:02:10.123: %SYS-5-CONFIG_I: Configured from console by vty0";
        let d = utc().decode(line, when("2026-03-01T00:05:00Z"));
        let cisco = field(&d, "cisco");
        assert_eq!(cisco["sequence"], 123);
        assert_eq!(cisco["clock"], "unsynchronized");
        assert_eq!(cisco["facility"], "SYS");
        assert_eq!(cisco["severity"], 5);
        assert_eq!(cisco["mnemonic"], "CONFIG_I");
        assert_eq!(field(&d, "severity"), "notice");
        assert!(field(&d, "message").as_str().unwrap().contains("Configured from console"));
    }

    #[test]
    fn no_pri_invalid_utf8_and_trailing_nul_keep_the_text() {
        let d = utc().decode(b"just some text\n\0", SystemTime::now());
        assert_eq!(d.parse_error.as_ref().unwrap().reason, "no_pri");
        assert!(field(&d, "message").as_str().unwrap().contains("just some text"));
        let d =
            utc().decode(b"<14>Nov 28 12:00:00 h app: caf\xe9 ok", when("2026-11-28T12:00:00Z"));
        assert_eq!(field(&d, "invalid_utf8"), true);
        assert!(field(&d, "message").as_str().unwrap().starts_with("caf"));
        let d = utc().decode(b"<14>line one\nline two", SystemTime::now());
        assert!(field(&d, "message").as_str().unwrap().contains("line two"), "{:?}", d.fields);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let d = utc().decode(&bytes, SystemTime::now());
            proptest::prop_assert!(d.fields.contains_key("message"));
        }

        #[test]
        fn mutated_real_lines_never_panic(cut in 0usize..120, flip in 0usize..120, byte in proptest::num::u8::ANY) {
            let mut line = b"<189>123: *Mar  1 00:02:10.123: %SYS-5-CONFIG_I: Configured from console by vty0 [x@9 a=\"b\"]".to_vec();
            if flip < line.len() { line[flip] = byte; }
            line.truncate(cut.min(line.len()));
            let _ = utc().decode(&line, SystemTime::now());
        }

        /// The syslog payloads of the shared captures and rsyslog's test
        /// vectors, mutated.
        #[test]
        fn mutated_shared_payloads_never_panic(m in crate::decode::samples::testing::mutation()) {
            let samples = crate::decode::samples::testing::of(crate::record::Stream::Syslog);
            let sample = samples[m.pick % samples.len()];
            let d = utc().decode(&m.apply(&sample.payload), sample.captured_at);
            proptest::prop_assert!(d.fields.contains_key("message"));
        }
    }
}

//! Compact form of a record's decoded fields inside a version-2 block.
//!
//! Invariants:
//! - Lossless: [`Fields::decode`] gives back exactly the bytes handed to
//!   [`Fields::encode`]. Every record's compact form is decoded again while
//!   encoding and compared; bytes that do not come back (JSON not in
//!   `serde_json`'s own compact form, which `decode::stored_form` writes)
//!   are kept verbatim.
//! - A string value that occurs in the record's payload is stored as its
//!   place there, not again: syslog's message, hostname and app name are
//!   slices of the datagram, so the block holds them once.
//! - Keys are written once per block, then referred to by number.
//! - Cheap: the JSON is split with `serde_json`'s borrowing parser (no
//!   value tree, no copies of strings) and rebuilt by concatenation.
//! - Reading never trusts a count or length beyond the bytes present;
//!   nesting is bounded ([`MAX_DEPTH`]).
//!
//! Format (integers are LEB128 varints):
//!
//! ```text
//! fields  0x00 json-bytes-to-the-end   verbatim
//!       | 0x01 object                  compact (the JSON is an object)
//! value   0x00 null | 0x01 false | 0x02 true
//!       | 0x03 u | 0x04 zigzag i        an integer written as serde_json writes it
//!       | 0x06 len bytes               a string without escapes: "bytes"
//!       | 0x07 offset len              such a string: payload[offset..offset+len]
//!       | 0x0b offset len              a string with escapes, payload[offset..offset+len]
//!                                      escaped as serde_json escapes
//!       | 0x08 n value*n               an array: [value,value,...]
//!       | 0x09 object                  an object
//!       | 0x0a len bytes               any other JSON value, as its text
//! object  n (key value)*n              {"key":value,...}
//! key     0 len bytes                  a new key, appended to the block's key table
//!       | k (k >= 1)                   the block's key table entry k-1
//! ```
//!
//! The key table lives as long as one block: the records of a block are
//! encoded and decoded in order with one [`Fields`].

use std::{collections::HashMap, fmt, io::Write};

use bytes::Bytes;
use integer_encoding::VarInt;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Deeper values are refused on read; on write, values nested deeper are
/// kept as text.
pub const MAX_DEPTH: usize = 32;
/// Shorter strings are written out: a reference would not be smaller.
const MIN_REFERENCE: usize = 4;

const VERBATIM: u8 = 0;
const COMPACT: u8 = 1;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const UNSIGNED: u8 = 3;
const SIGNED: u8 = 4;
const STRING: u8 = 6;
const IN_PAYLOAD: u8 = 7;
const ARRAY: u8 = 8;
const OBJECT: u8 = 9;
const TEXT: u8 = 10;
const ESCAPED_IN_PAYLOAD: u8 = 11;

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 10];
    let n = v.encode_var(&mut buf);
    out.extend_from_slice(&buf[..n]);
}

pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    let mut buf = [0u8; 10];
    let n = v.encode_var(&mut buf);
    out.extend_from_slice(&buf[..n]);
}

/// Where `needle` first occurs in `payload`. Most needles are short and
/// most payloads a datagram: the candidates of the first byte are tried
/// directly (a `memmem` searcher costs more to build than that), and after
/// a few misses the linear-time searcher takes over.
fn find(payload: &[u8], needle: &[u8]) -> Option<usize> {
    let &first = needle.first()?;
    let last_start = payload.len().checked_sub(needle.len())?;
    for (tried, at) in memchr::memchr_iter(first, &payload[..=last_start]).enumerate() {
        if tried == 8 {
            return memchr::memmem::find(&payload[at..], needle).map(|i| at + i);
        }
        if payload[at..].starts_with(needle) {
            return Some(at);
        }
    }
    None
}

/// An integer as Rust (and serde_json) prints it: digits, an optional
/// minus, no leading zeros, no "-0", no "+".
fn canonical_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" && digits.len() == text.len() || !digits.starts_with('0'))
}

fn put_bytes(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over bytes read from a file: every read is checked against
/// what is left.
pub struct Reader<'a> {
    pub rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn u8(&mut self) -> Result<u8, String> {
        let (&b, rest) = self.rest.split_first().ok_or("frame ends inside a value")?;
        self.rest = rest;
        Ok(b)
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        let (v, n) = u64::decode_var(self.rest).ok_or("bad or truncated varint")?;
        self.rest = &self.rest[n..];
        Ok(v)
    }

    pub fn i64(&mut self) -> Result<i64, String> {
        let (v, n) = i64::decode_var(self.rest).ok_or("bad or truncated varint")?;
        self.rest = &self.rest[n..];
        Ok(v)
    }

    /// A varint used as a length or count: at most the bytes left (every
    /// counted item takes at least one byte), so nothing is sized beyond
    /// the frame.
    pub fn length(&mut self) -> Result<usize, String> {
        let v = self.u64()?;
        if v > self.rest.len() as u64 {
            return Err(format!("length {v} past the end of the frame"));
        }
        Ok(v as usize)
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err("frame shorter than its records".into());
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
}

/// An object's members in the order written, values as their JSON text:
/// `serde_json` splits it without building values or copying strings.
struct Members<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<&'de str, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Each)
    }
}

/// The key table of one block.
#[derive(Default)]
struct Keys {
    names: Vec<String>,
    /// Encoding only: the entry after the last one used (records of a
    /// stream repeat their keys in the same order, so this is usually the
    /// next key).
    next: usize,
    /// Encoding only: name -> index in `names`.
    index: HashMap<String, u64>,
}

impl Keys {
    /// Forgets the keys added since the table had `len` (a record that
    /// went verbatim after all).
    fn truncate(&mut self, len: usize) {
        for name in self.names.drain(len..) {
            self.index.remove(&name);
        }
        self.next = self.next.min(len);
    }
}

/// Encodes and decodes the decoded fields of one block's records.
#[derive(Default)]
pub struct Fields {
    keys: Keys,
    /// Encoding only: the decoder's view of the key table, to check each
    /// record's compact form before keeping it.
    mirror: Option<Box<Fields>>,
    scratch: Vec<u8>,
}

impl Fields {
    /// Appends the stored form of `json` (a record's decoded fields) to `out`.
    pub fn encode(&mut self, json: &[u8], payload: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let keys = self.keys.names.len();
        out.push(COMPACT);
        let compact = match std::str::from_utf8(json) {
            Ok(text) if text.starts_with('{') => self.object(text, payload, out, 0),
            _ => false,
        };
        let mirror = self.mirror.get_or_insert_with(Default::default);
        let back = compact && mirror.decode(&out[start..], payload).is_ok_and(|b| b == json);
        if !back {
            out.truncate(start);
            self.keys.truncate(keys);
            mirror.keys.truncate(keys);
            out.push(VERBATIM);
            out.extend_from_slice(json);
        }
    }

    /// An object's members; false if `text` is not one this form can hold.
    fn object(&mut self, text: &str, payload: &[u8], out: &mut Vec<u8>, depth: usize) -> bool {
        // Borrowed keys: a key with escapes does not parse, and the object
        // is kept as text by the caller (or the record verbatim).
        let Ok(Members(members)) = serde_json::from_str::<Members<'_>>(text) else {
            return false;
        };
        put_u64(out, members.len() as u64);
        for (key, value) in members {
            let hint = self.keys.next;
            let known = if self.keys.names.get(hint).is_some_and(|name| name == key) {
                Some(hint as u64)
            } else {
                self.keys.index.get(key).copied()
            };
            match known {
                Some(k) => {
                    put_u64(out, k + 1);
                    self.keys.next = k as usize + 1;
                }
                None => {
                    put_bytes(out, 0, key.as_bytes());
                    self.keys.index.insert(key.to_owned(), self.keys.names.len() as u64);
                    self.keys.names.push(key.to_owned());
                    self.keys.next = self.keys.names.len();
                }
            }
            self.value(value.get(), payload, out, depth + 1);
        }
        true
    }

    fn value(&mut self, text: &str, payload: &[u8], out: &mut Vec<u8>, depth: usize) {
        let bytes = text.as_bytes();
        match bytes.first() {
            Some(b'"') if bytes.len() >= 2 && !bytes.contains(&b'\\') => {
                let content = &bytes[1..bytes.len() - 1];
                let at = (content.len() >= MIN_REFERENCE).then(|| find(payload, content)).flatten();
                match at {
                    Some(offset) => {
                        out.push(IN_PAYLOAD);
                        put_u64(out, offset as u64);
                        put_u64(out, content.len() as u64);
                    }
                    None => put_bytes(out, STRING, content),
                }
            }
            Some(b'{') if depth < MAX_DEPTH => {
                let mark = out.len();
                out.push(OBJECT);
                if !self.object(text, payload, out, depth) {
                    out.truncate(mark);
                    put_bytes(out, TEXT, bytes);
                }
            }
            Some(b'[') if depth < MAX_DEPTH => match serde_json::from_str::<Vec<&RawValue>>(text) {
                Ok(items) => {
                    out.push(ARRAY);
                    put_u64(out, items.len() as u64);
                    for item in items {
                        self.value(item.get(), payload, out, depth + 1);
                    }
                }
                Err(_) => put_bytes(out, TEXT, bytes),
            },
            // A string with escapes (a message with a newline or a quote):
            // still found in the payload once unescaped. (Escapes other than
            // serde_json's own do not come back: the record's check catches
            // that, and it is kept verbatim.)
            Some(b'"') => {
                let at = serde_json::from_str::<String>(text)
                    .ok()
                    .and_then(|s| Some((find(payload, s.as_bytes())?, s.len())));
                match at {
                    Some((offset, len)) => {
                        out.push(ESCAPED_IN_PAYLOAD);
                        put_u64(out, offset as u64);
                        put_u64(out, len as u64);
                    }
                    None => put_bytes(out, TEXT, bytes),
                }
            }
            _ => match text {
                "null" => out.push(NULL),
                "false" => out.push(FALSE),
                "true" => out.push(TRUE),
                // Integers whose text is the number's own (no leading
                // zeros, no "-0"); any other number stays text.
                _ if canonical_integer(text) => match (text.parse::<u64>(), text.parse::<i64>()) {
                    (Ok(u), _) => {
                        out.push(UNSIGNED);
                        put_u64(out, u);
                    }
                    (_, Ok(i)) => {
                        out.push(SIGNED);
                        put_i64(out, i);
                    }
                    _ => put_bytes(out, TEXT, bytes),
                },
                _ => put_bytes(out, TEXT, bytes),
            },
        }
    }

    /// Reads back what [`Fields::encode`] wrote (all of `stored`).
    pub fn decode(&mut self, stored: &[u8], payload: &[u8]) -> Result<Bytes, String> {
        let (&form, rest) = stored.split_first().ok_or("empty decoded fields")?;
        match form {
            VERBATIM => Ok(Bytes::copy_from_slice(rest)),
            COMPACT => {
                let mut reader = Reader { rest };
                let mut json = std::mem::take(&mut self.scratch);
                json.clear();
                let read = self.read_object(&mut reader, payload, &mut json, 0);
                let out = Bytes::copy_from_slice(&json);
                self.scratch = json;
                read?;
                if !reader.rest.is_empty() {
                    return Err("bytes after the decoded fields".into());
                }
                Ok(out)
            }
            other => Err(format!("unknown decoded-fields form {other}")),
        }
    }

    fn read_object(
        &mut self,
        r: &mut Reader<'_>,
        payload: &[u8],
        json: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), String> {
        let n = r.length()?;
        json.push(b'{');
        for i in 0..n {
            if i > 0 {
                json.push(b',');
            }
            let k = r.u64()?;
            let key = if k == 0 {
                let len = r.length()?;
                let key = std::str::from_utf8(r.bytes(len)?).map_err(|_| "key is not UTF-8")?;
                self.keys.names.push(key.to_owned());
                self.keys.names.len() - 1
            } else if k <= self.keys.names.len() as u64 {
                (k - 1) as usize
            } else {
                return Err(format!("unknown key {k}"));
            };
            json.push(b'"');
            json.extend_from_slice(self.keys.names[key].as_bytes());
            json.extend_from_slice(b"\":");
            self.read_value(r, payload, json, depth + 1)?;
        }
        json.push(b'}');
        Ok(())
    }

    fn read_value(
        &mut self,
        r: &mut Reader<'_>,
        payload: &[u8],
        json: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("decoded fields nested too deep".into());
        }
        match r.u8()? {
            NULL => json.extend_from_slice(b"null"),
            FALSE => json.extend_from_slice(b"false"),
            TRUE => json.extend_from_slice(b"true"),
            UNSIGNED => write!(json, "{}", r.u64()?).expect("writing to a Vec"),
            SIGNED => write!(json, "{}", r.i64()?).expect("writing to a Vec"),
            STRING => {
                let n = r.length()?;
                json.push(b'"');
                json.extend_from_slice(r.bytes(n)?);
                json.push(b'"');
            }
            IN_PAYLOAD => {
                let (offset, len) = (r.u64()?, r.u64()?);
                let end = offset.checked_add(len).filter(|&e| e <= payload.len() as u64);
                let end = end.ok_or("a string reference past the payload")?;
                json.push(b'"');
                json.extend_from_slice(&payload[offset as usize..end as usize]);
                json.push(b'"');
            }
            ESCAPED_IN_PAYLOAD => {
                let (offset, len) = (r.u64()?, r.u64()?);
                let end = offset.checked_add(len).filter(|&e| e <= payload.len() as u64);
                let end = end.ok_or("a string reference past the payload")?;
                let s = std::str::from_utf8(&payload[offset as usize..end as usize])
                    .map_err(|_| "a string reference that is not UTF-8")?;
                serde_json::to_writer(&mut *json, s).map_err(|e| e.to_string())?;
            }
            ARRAY => {
                let n = r.length()?;
                json.push(b'[');
                for i in 0..n {
                    if i > 0 {
                        json.push(b',');
                    }
                    self.read_value(r, payload, json, depth + 1)?;
                }
                json.push(b']');
            }
            OBJECT => self.read_object(r, payload, json, depth)?,
            TEXT => {
                let n = r.length()?;
                json.extend_from_slice(r.bytes(n)?);
            }
            tag => return Err(format!("unknown value tag {tag}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Number, Value};

    use super::*;

    /// Encodes the records with one `Fields`, decodes them with another.
    fn round_trip(records: &[(&[u8], &[u8])]) -> Vec<Vec<u8>> {
        let mut enc = Fields::default();
        let stored: Vec<Vec<u8>> = records
            .iter()
            .map(|(json, payload)| {
                let mut out = Vec::new();
                enc.encode(json, payload, &mut out);
                out
            })
            .collect();
        let mut dec = Fields::default();
        for ((json, payload), stored) in records.iter().zip(&stored) {
            assert_eq!(
                String::from_utf8_lossy(&dec.decode(stored, payload).unwrap()),
                String::from_utf8_lossy(json)
            );
        }
        stored
    }

    #[test]
    fn syslog_fields_refer_to_the_payload_and_come_back_byte_for_byte() {
        let payload =
            b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8";
        let json = br#"{"app_name":"su","facility":"auth","facility_code":4,"hostname":"mymachine","message":"'su root' failed for lonvick on /dev/pts/8","procid":null,"severity":"crit","severity_code":2,"structured_data":{},"timestamp":"2026-10-11T22:14:15+00:00"}"#;
        let stored = round_trip(&[(json, payload), (json, payload), (br#"{"message":null}"#, b"")]);
        let (first, second) = (&stored[0], &stored[1]);
        assert_eq!(first[0], COMPACT);
        assert!(!first.windows(9).any(|w| w == b"mymachine"), "the hostname is a reference");
        // The keys are written once per block; then a record takes the
        // strings that are not in its payload and a few bytes per field.
        assert!(second.len() < json.len() / 3, "{} of {}", second.len(), json.len());
    }

    #[test]
    fn json_that_would_not_come_back_is_kept_verbatim_and_any_json_round_trips() {
        // Spaces, not an object, not JSON, an escape serde_json does not write.
        for (json, payload) in [
            (&br#"{"b": 1, "a": 2}"#[..], &b""[..]),
            (b"{not json", b""),
            (b"[1,2,3]", b""),
            (b"\xff\xfe", b""),
            (br#"{"m":"\u0041 and more"}"#, b"<1>A and more"),
        ] {
            let stored = round_trip(&[(json, payload)]);
            assert_eq!(stored[0][0], VERBATIM, "{}", String::from_utf8_lossy(json));
        }
        // Escapes, odd numbers, keys out of order, duplicates and nesting
        // come back whatever form they take.
        for json in [
            &br#"{"m":"\u0041\n","x":1.50,"e":1e5,"z":-0,"n":{"a":[{"b":"\"q\""},[],{}]}}"#[..],
            br#"{"k\u0041":{"x":[1,2]},"b":1,"a":2,"a":3,"i":-12,"u":007}"#,
            br#"{}"#,
        ] {
            round_trip(&[(json, b"A\n q")]);
        }
    }

    #[test]
    fn damaged_input_is_an_error_not_a_panic() {
        let payload = b"hello world";
        let json = br#"{"m":"hello world","n":[1,-2,0.5,true,null,{"z":"hello"}]}"#;
        let stored = round_trip(&[(json, payload)]);
        let out = &stored[0];
        for cut in 0..out.len() {
            let _ = Fields::default().decode(&out[..cut], payload);
        }
        for i in 0..out.len() {
            for b in [0u8, 1, 6, 7, 8, 9, 10, 0x7f, 0x80, 0xff] {
                let mut bad = out.clone();
                bad[i] = b;
                let _ = Fields::default().decode(&bad, payload);
                let _ = Fields::default().decode(&bad, b"");
            }
        }
        // A count far beyond the bytes present is refused before any allocation.
        assert!(Fields::default().decode(&[COMPACT, 0xff, 0xff, 0xff, 0x0f], b"").is_err());
        // Deep nesting is bounded.
        let deep: Vec<u8> = [COMPACT, 1, 0, 1, b'a']
            .into_iter()
            .chain(std::iter::repeat_n([ARRAY, 1], 10_000).flatten())
            .collect();
        assert!(Fields::default().decode(&deep, b"").is_err());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(|n| Value::Number(n.into())),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
            "[a-z <>:\u{e9}\u{1F600}\\n\"\\\\]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-e\"\\n]{1,3}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn what_serde_json_writes_round_trips(
            values in prop::collection::vec(
                (prop::collection::btree_map("[a-f]{1,4}", json_value(), 0..8), "[a-z <>:\\n]{0,40}"),
                1..8,
            )
        ) {
            let records: Vec<(Vec<u8>, Vec<u8>)> = values
                .iter()
                .map(|(map, payload)| {
                    // Payloads that hold some of the strings, so references happen.
                    let object: serde_json::Map<String, Value> = map.clone().into_iter().collect();
                    let json = serde_json::to_vec(&object).unwrap();
                    let mut p = payload.clone().into_bytes();
                    p.extend_from_slice(&json);
                    (json, p)
                })
                .collect();
            let pairs: Vec<(&[u8], &[u8])> =
                records.iter().map(|(j, p)| (j.as_slice(), p.as_slice())).collect();
            let stored = round_trip(&pairs);
            prop_assert!(stored.iter().all(|s| s[0] == COMPACT), "serde_json's form is compact");
        }
    }
}

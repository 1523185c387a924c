//! Compact form of a record's decoded fields inside a version-2 block.
//!
//! Invariants:
//! - Lossless: [`Fields::decode`] gives back exactly the bytes handed to
//!   [`Fields::encode`]. The compact form is used only when those bytes are
//!   what `serde_json` itself writes for the value they hold (what
//!   `decode::stored_form` stores); any other bytes are kept verbatim.
//! - A string value that occurs in the record's payload is stored as its
//!   place there, not again: syslog's message, hostname and app name are
//!   slices of the datagram, so the block holds them once.
//! - Reading never trusts a count or length beyond the bytes present;
//!   nesting is bounded ([`MAX_DEPTH`], as deep as `serde_json` parses).
//!
//! Format (integers are LEB128 varints, signed ones zigzag):
//!
//! ```text
//! fields  0x00 json-bytes-to-the-end   verbatim (not serde_json's own form)
//!       | 0x01 value                   compact
//! value   0x00 null | 0x01 false | 0x02 true
//!       | 0x03 u64 | 0x04 i64 (negative integers) | 0x05 f64 (8 bytes LE)
//!       | 0x06 len bytes               a string (UTF-8)
//!       | 0x07 offset len              a string: payload[offset..offset+len]
//!       | 0x08 n value*n               an array
//!       | 0x09 n (key value)*n         an object, keys in serde_json's order
//! key     0 len bytes                  a new key, appended to the block's key table
//!       | k (k >= 1)                   the block's key table entry k-1
//! ```
//!
//! The key table lives as long as one block: the records of a block are
//! encoded and decoded in order with one [`Fields`].

use bytes::Bytes;
use integer_encoding::VarInt;
use serde_json::{Map, Number, Value};

/// Deeper values are refused on read (`serde_json` parses at most 128).
pub const MAX_DEPTH: usize = 128;
/// Shorter strings are written out: a reference would not be smaller.
const MIN_REFERENCE: usize = 4;

const VERBATIM: u8 = 0;
const COMPACT: u8 = 1;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const UNSIGNED: u8 = 3;
const NEGATIVE: u8 = 4;
const FLOAT: u8 = 5;
const STRING: u8 = 6;
const IN_PAYLOAD: u8 = 7;
const ARRAY: u8 = 8;
const OBJECT: u8 = 9;

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
    pub fn len(&mut self) -> Result<usize, String> {
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

/// Encodes and decodes the decoded fields of one block's records.
#[derive(Default)]
pub struct Fields {
    keys: Vec<String>,
    /// Encoding only: key -> index in `keys`.
    index: std::collections::HashMap<String, u64>,
}

impl Fields {
    /// Appends the stored form of `json` (a record's decoded fields) to `out`.
    pub fn encode(&mut self, json: &[u8], payload: &[u8], out: &mut Vec<u8>) {
        let canonical = serde_json::from_slice::<Value>(json)
            .ok()
            .filter(|value| serde_json::to_vec(value).is_ok_and(|again| again == json));
        match canonical {
            Some(value) => {
                out.push(COMPACT);
                self.value(&value, payload, out);
            }
            None => {
                out.push(VERBATIM);
                out.extend_from_slice(json);
            }
        }
    }

    fn value(&mut self, value: &Value, payload: &[u8], out: &mut Vec<u8>) {
        match value {
            Value::Null => out.push(NULL),
            Value::Bool(false) => out.push(FALSE),
            Value::Bool(true) => out.push(TRUE),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    out.push(UNSIGNED);
                    put_u64(out, u);
                } else if let Some(i) = n.as_i64() {
                    out.push(NEGATIVE);
                    put_i64(out, i);
                } else {
                    out.push(FLOAT);
                    out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
                }
            }
            Value::String(s) => {
                let at = (s.len() >= MIN_REFERENCE)
                    .then(|| memchr::memmem::find(payload, s.as_bytes()))
                    .flatten();
                match at {
                    Some(offset) => {
                        out.push(IN_PAYLOAD);
                        put_u64(out, offset as u64);
                        put_u64(out, s.len() as u64);
                    }
                    None => {
                        out.push(STRING);
                        put_u64(out, s.len() as u64);
                        out.extend_from_slice(s.as_bytes());
                    }
                }
            }
            Value::Array(items) => {
                out.push(ARRAY);
                put_u64(out, items.len() as u64);
                for item in items {
                    self.value(item, payload, out);
                }
            }
            Value::Object(map) => {
                out.push(OBJECT);
                put_u64(out, map.len() as u64);
                for (key, item) in map {
                    match self.index.get(key) {
                        Some(&k) => put_u64(out, k + 1),
                        None => {
                            out.push(0);
                            put_u64(out, key.len() as u64);
                            out.extend_from_slice(key.as_bytes());
                            self.index.insert(key.clone(), self.keys.len() as u64);
                            self.keys.push(key.clone());
                        }
                    }
                    self.value(item, payload, out);
                }
            }
        }
    }

    /// Reads back what [`Fields::encode`] wrote (all of `stored`).
    pub fn decode(&mut self, stored: &[u8], payload: &[u8]) -> Result<Bytes, String> {
        let (&form, rest) = stored.split_first().ok_or("empty decoded fields")?;
        match form {
            VERBATIM => Ok(Bytes::copy_from_slice(rest)),
            COMPACT => {
                let mut reader = Reader { rest };
                let value = self.read_value(&mut reader, payload, 0)?;
                if !reader.rest.is_empty() {
                    return Err("bytes after the decoded fields".into());
                }
                serde_json::to_vec(&value).map(Bytes::from).map_err(|e| e.to_string())
            }
            other => Err(format!("unknown decoded-fields form {other}")),
        }
    }

    fn read_value(
        &mut self,
        r: &mut Reader<'_>,
        payload: &[u8],
        depth: usize,
    ) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("decoded fields nested too deep".into());
        }
        let utf8 = |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| "decoded string is not UTF-8".to_string())
        };
        Ok(match r.u8()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            UNSIGNED => Value::Number(r.u64()?.into()),
            NEGATIVE => Value::Number(r.i64()?.into()),
            FLOAT => {
                let raw = r.bytes(8)?.try_into().expect("8 bytes");
                Value::Number(
                    Number::from_f64(f64::from_le_bytes(raw))
                        .ok_or("a float that is not finite")?,
                )
            }
            STRING => {
                let n = r.len()?;
                Value::String(utf8(r.bytes(n)?)?)
            }
            IN_PAYLOAD => {
                let (offset, len) = (r.u64()?, r.u64()?);
                let end = offset.checked_add(len).filter(|&e| e <= payload.len() as u64);
                let end = end.ok_or("a string reference past the payload")?;
                Value::String(utf8(&payload[offset as usize..end as usize])?)
            }
            ARRAY => {
                let n = r.len()?;
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.read_value(r, payload, depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => {
                let n = r.len()?;
                let mut map = Map::new();
                for _ in 0..n {
                    let key = match r.u64()? {
                        0 => {
                            let len = r.len()?;
                            let key = utf8(r.bytes(len)?)?;
                            self.keys.push(key.clone());
                            key
                        }
                        k => self
                            .keys
                            .get((k - 1) as usize)
                            .cloned()
                            .ok_or_else(|| format!("unknown key {k}"))?,
                    };
                    map.insert(key, self.read_value(r, payload, depth + 1)?);
                }
                Value::Object(map)
            }
            tag => return Err(format!("unknown value tag {tag}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn round_trip(jsons: &[(&[u8], &[u8])]) {
        let mut enc = Fields::default();
        let stored: Vec<Vec<u8>> = jsons
            .iter()
            .map(|(json, payload)| {
                let mut out = Vec::new();
                enc.encode(json, payload, &mut out);
                out
            })
            .collect();
        let mut dec = Fields::default();
        for ((json, payload), stored) in jsons.iter().zip(&stored) {
            assert_eq!(&dec.decode(stored, payload).unwrap()[..], *json);
        }
    }

    #[test]
    fn syslog_fields_refer_to_the_payload_and_come_back_byte_for_byte() {
        let payload =
            b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8";
        let json = br#"{"app_name":"su","facility":"auth","facility_code":4,"hostname":"mymachine","message":"'su root' failed for lonvick on /dev/pts/8","procid":null,"severity":"crit","severity_code":2,"structured_data":{},"timestamp":"2026-10-11T22:14:15+00:00"}"#;
        let mut fields = Fields::default();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        fields.encode(json, payload, &mut first);
        fields.encode(json, payload, &mut second);
        assert_eq!(first[0], COMPACT);
        assert!(!first.windows(9).any(|w| w == b"mymachine"), "the hostname is a reference");
        // The keys are written once per block; then a record takes the
        // strings that are not in its payload and a few bytes per field.
        assert!(second.len() < json.len() / 3, "{} of {}", second.len(), json.len());
        round_trip(&[(json, payload), (json, payload), (br#"{"message":null}"#, b"")]);
    }

    #[test]
    fn other_json_is_kept_verbatim() {
        // Not serde_json's own form: spaces, key order, escapes, a bad document.
        for json in [
            &br#"{"b": 1, "a": 2}"#[..],
            br#"{"b":1,"a":2}"#,
            br#"{"m":"\u0041"}"#,
            br#"{"x":1.50}"#,
            b"{not json",
            b"[1,2,3] ",
        ] {
            let mut out = Vec::new();
            Fields::default().encode(json, b"", &mut out);
            assert_eq!(out[0], VERBATIM, "{}", String::from_utf8_lossy(json));
            round_trip(&[(json, b"")]);
        }
    }

    #[test]
    fn damaged_input_is_an_error_not_a_panic() {
        let payload = b"hello world";
        let mut out = Vec::new();
        Fields::default().encode(
            br#"{"m":"hello world","n":[1,-2,0.5,true,null]}"#,
            payload,
            &mut out,
        );
        for cut in 0..out.len() {
            let _ = Fields::default().decode(&out[..cut], payload);
        }
        for i in 0..out.len() {
            for b in [0u8, 0x7f, 0x80, 0xff] {
                let mut bad = out.clone();
                bad[i] = b;
                let _ = Fields::default().decode(&bad, payload);
                let _ = Fields::default().decode(&bad, b"");
            }
        }
        // A count far beyond the bytes present is refused before any allocation.
        assert!(Fields::default().decode(&[COMPACT, ARRAY, 0xff, 0xff, 0xff, 0x0f], b"").is_err());
        // Deep nesting is bounded.
        let deep: Vec<u8> = std::iter::once(COMPACT)
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
            "[a-z <>:\u{e9}\u{1F600}\\n\"]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-e]{1,3}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_serde_json_value_round_trips(
            values in prop::collection::vec((json_value(), "[a-z <>:\\n]{0,40}"), 1..8)
        ) {
            let records: Vec<(Vec<u8>, Vec<u8>)> = values
                .iter()
                .map(|(v, payload)| {
                    // Payloads that hold some of the strings, so references happen.
                    let json = serde_json::to_vec(v).unwrap();
                    let mut p = payload.clone().into_bytes();
                    p.extend_from_slice(&json);
                    (json, p)
                })
                .collect();
            let pairs: Vec<(&[u8], &[u8])> =
                records.iter().map(|(j, p)| (j.as_slice(), p.as_slice())).collect();
            round_trip(&pairs);
        }
    }
}

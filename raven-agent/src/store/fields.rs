//! Compact form of a record's decoded fields inside a version-2 block.
//!
//! Invariants:
//! - Lossless: [`Fields::decode`] gives back exactly the text `serde_json`
//!   writes for the fields handed to [`Fields::encode`] (the decoder's
//!   object, never re-parsed from text). Debug builds — every test — check
//!   each record by decoding it back; release builds rely on the property
//!   tests below rather than pay for a second pass per record.
//! - A string value that occurs in the record's payload is stored as its
//!   place there, not again: syslog's message, hostname and app name are
//!   slices of the datagram, so the block holds them once.
//! - Keys are written once per block, then referred to by number.
//! - Fields nested deeper than [`MAX_DEPTH`] are kept as their JSON text
//!   (verbatim), so whatever is written can be read back.
//! - Reading never trusts a count or length beyond the bytes present;
//!   nesting is bounded ([`MAX_DEPTH`], as deep as `serde_json` parses).
//!
//! Format (integers are LEB128 varints, signed ones zigzag):
//!
//! ```text
//! fields  0x00 json-bytes-to-the-end   verbatim
//!       | 0x01 object                  compact (the JSON is an object)
//! value   0x00 null | 0x01 false | 0x02 true
//!       | 0x03 u64 | 0x04 i64 | 0x05 f64 (8 bytes LE)   numbers as serde_json holds them
//!       | 0x06 len bytes               a string without escapes
//!       | 0x07 offset len              such a string: payload[offset..offset+len]
//!       | 0x0a len bytes               a string with escapes, unescaped
//!       | 0x0b offset len              such a string, unescaped: payload[offset..offset+len]
//!       | 0x08 n value*n               an array
//!       | 0x09 object                  an object
//! object  n (key value)*n              in the order written
//! key     0 len bytes                  a new key (its JSON text between the quotes),
//!                                      appended to the block's key table
//!       | k (k >= 1)                   the block's key table entry k-1
//! ```
//!
//! Operations: [`Fields::encode`] and [`Fields::decode`], one record at a
//! time. The key table lives as long as one block: the records of a block
//! are encoded and decoded in order with one [`Fields`].

use std::collections::HashMap;

use bytes::Bytes;
use integer_encoding::VarInt;
use serde_json::{Map, Value};

/// Deeper values are refused on read, and records holding them are kept
/// verbatim (`serde_json` itself parses at most 128 levels).
pub const MAX_DEPTH: usize = 128;
/// Shorter strings are written out: a reference would not be smaller.
const MIN_REFERENCE: usize = 4;

const VERBATIM: u8 = 0;
const COMPACT: u8 = 1;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const UNSIGNED: u8 = 3;
const SIGNED: u8 = 4;
const FLOAT: u8 = 5;
const STRING: u8 = 6;
const IN_PAYLOAD: u8 = 7;
const ARRAY: u8 = 8;
const OBJECT: u8 = 9;
const ESCAPED: u8 = 10;
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

fn put_bytes(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Whether `serde_json` writes `s` with escapes: a quote, a backslash or
/// a control character (nothing else; it writes UTF-8 as it is).
fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
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

    /// `payload[offset..offset+len]` for a string reference.
    fn slice_of<'p>(&mut self, payload: &'p [u8]) -> Result<&'p str, String> {
        let (offset, len) = (self.u64()?, self.u64()?);
        let end = offset.checked_add(len).filter(|&e| e <= payload.len() as u64);
        let end = end.ok_or("a string reference past the payload")?;
        std::str::from_utf8(&payload[offset as usize..end as usize])
            .map_err(|_| "a string reference that is not UTF-8".to_string())
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
    /// Encoding only: per entry of `names`, whether it holds no escape, so
    /// that a key equal to it is that very key (a key that needs escapes
    /// never equals an escaped spelling without a backslash).
    plain: Vec<bool>,
}

impl Keys {
    /// Forgets the keys added since the table had `len` (a record that
    /// went verbatim after all).
    fn truncate(&mut self, len: usize) {
        for name in self.names.drain(len..) {
            self.index.remove(&name);
        }
        self.plain.truncate(len);
        self.next = self.next.min(len);
    }
}

/// Encodes and decodes the decoded fields of one block's records.
#[derive(Default)]
pub struct Fields {
    keys: Keys,
    /// Encoding in debug builds: the decoder's view of the key table, to
    /// check each record's compact form.
    #[cfg(debug_assertions)]
    mirror: Option<Box<Fields>>,
    scratch: Vec<u8>,
}

impl Fields {
    /// Appends the stored form of a record's decoded fields to `out`.
    pub fn encode(&mut self, fields: &Map<String, Value>, payload: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let keys = self.keys.names.len();
        out.push(COMPACT);
        if !self.object(fields, payload, out, 0) {
            // Too deep to read back within [`MAX_DEPTH`]: the JSON text.
            out.truncate(start);
            self.keys.truncate(keys);
            out.push(VERBATIM);
            serde_json::to_writer(&mut *out, fields).expect("a JSON map serialises");
        }
        #[cfg(debug_assertions)]
        self.check(&out[start..], payload, fields);
    }

    /// Test and debug builds: the compact form reads back as exactly the
    /// text `serde_json` writes for the fields (what the store promised
    /// before it stopped keeping that text). Release builds rely on the
    /// property tests below instead of paying for a second pass.
    #[cfg(debug_assertions)]
    fn check(&mut self, stored: &[u8], payload: &[u8], fields: &Map<String, Value>) {
        let mirror = self.mirror.get_or_insert_with(Default::default);
        let back = mirror.decode(stored, payload).expect("the compact form reads back");
        let json = serde_json::to_vec(fields).expect("a JSON map serialises");
        assert_eq!(
            String::from_utf8_lossy(&back),
            String::from_utf8_lossy(&json),
            "decoded fields must come back byte for byte"
        );
    }

    /// Writes an object's members; false if they nest too deep.
    fn object(
        &mut self,
        members: &Map<String, Value>,
        payload: &[u8],
        out: &mut Vec<u8>,
        depth: usize,
    ) -> bool {
        put_u64(out, members.len() as u64);
        for (key, value) in members {
            // Records of a stream repeat their keys in the same order: the
            // entry after the last one used is usually this key.
            let hint = self.keys.next;
            let known = if self.keys.plain.get(hint) == Some(&true) && self.keys.names[hint] == *key
            {
                Some(hint as u64)
            } else {
                // Keys are kept as they stand between their quotes.
                let quoted;
                let key: &str = if needs_escape(key) {
                    quoted = serde_json::to_string(key).expect("a string serialises");
                    &quoted[1..quoted.len() - 1]
                } else {
                    key
                };
                let known = self.keys.index.get(key).copied();
                if known.is_none() {
                    put_bytes(out, 0, key.as_bytes());
                    self.keys.index.insert(key.to_owned(), self.keys.names.len() as u64);
                    self.keys.names.push(key.to_owned());
                    self.keys.plain.push(!key.contains('\\'));
                    self.keys.next = self.keys.names.len();
                }
                known
            };
            if let Some(k) = known {
                put_u64(out, k + 1);
                self.keys.next = k as usize + 1;
            }
            if !self.value(value, payload, out, depth + 1) {
                return false;
            }
        }
        true
    }

    fn value(&mut self, value: &Value, payload: &[u8], out: &mut Vec<u8>, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match value {
            Value::Null => out.push(NULL),
            Value::Bool(false) => out.push(FALSE),
            Value::Bool(true) => out.push(TRUE),
            Value::Number(n) => {
                // As serde_json writes them: an integer's digits, or the
                // shortest text of the float.
                if let Some(u) = n.as_u64() {
                    out.push(UNSIGNED);
                    put_u64(out, u);
                } else if let Some(i) = n.as_i64() {
                    out.push(SIGNED);
                    put_i64(out, i);
                } else {
                    out.push(FLOAT);
                    out.extend_from_slice(&n.as_f64().unwrap_or(f64::NAN).to_le_bytes());
                }
            }
            Value::String(s) => {
                // A message with a newline or a quote is still found in the
                // payload as it is; the reader escapes it again.
                let (literal, reference) = if needs_escape(s) {
                    (ESCAPED, ESCAPED_IN_PAYLOAD)
                } else {
                    (STRING, IN_PAYLOAD)
                };
                let at = (s.len() >= MIN_REFERENCE).then(|| find(payload, s.as_bytes())).flatten();
                match at {
                    Some(offset) => {
                        out.push(reference);
                        put_u64(out, offset as u64);
                        put_u64(out, s.len() as u64);
                    }
                    None => put_bytes(out, literal, s.as_bytes()),
                }
            }
            Value::Array(items) => {
                out.push(ARRAY);
                put_u64(out, items.len() as u64);
                for item in items {
                    if !self.value(item, payload, out, depth + 1) {
                        return false;
                    }
                }
            }
            Value::Object(members) => {
                out.push(OBJECT);
                return self.object(members, payload, out, depth);
            }
        }
        true
    }

    /// Reads back what [`Fields::encode`] wrote (all of `stored`).
    pub fn decode(&mut self, stored: &[u8], payload: &[u8]) -> Result<Bytes, String> {
        let mut text = std::mem::take(&mut self.scratch);
        text.clear();
        let read = self.decode_into(stored, payload, &mut text);
        let out = Bytes::copy_from_slice(&text);
        self.scratch = text;
        read.map(|()| out)
    }

    fn decode_into(
        &mut self,
        stored: &[u8],
        payload: &[u8],
        json: &mut Vec<u8>,
    ) -> Result<(), String> {
        let (&form, rest) = stored.split_first().ok_or("empty decoded fields")?;
        match form {
            VERBATIM => json.extend_from_slice(rest),
            COMPACT => {
                let mut reader = Reader { rest };
                self.read_object(&mut reader, payload, json, 0)?;
                if !reader.rest.is_empty() {
                    return Err("bytes after the decoded fields".into());
                }
            }
            other => return Err(format!("unknown decoded-fields form {other}")),
        }
        Ok(())
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
            // Keys are kept as they stand between their quotes.
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
        fn utf8(bytes: &[u8]) -> Result<&str, String> {
            std::str::from_utf8(bytes).map_err(|_| "a string that is not UTF-8".to_string())
        }
        let escaped = |json: &mut Vec<u8>, s: &str| {
            serde_json::to_writer(&mut *json, s).map_err(|e| e.to_string())
        };
        match r.u8()? {
            NULL => json.extend_from_slice(b"null"),
            FALSE => json.extend_from_slice(b"false"),
            TRUE => json.extend_from_slice(b"true"),
            UNSIGNED => json.extend_from_slice(itoa::Buffer::new().format(r.u64()?).as_bytes()),
            SIGNED => json.extend_from_slice(itoa::Buffer::new().format(r.i64()?).as_bytes()),
            FLOAT => {
                let f = f64::from_le_bytes(r.bytes(8)?.try_into().expect("8 bytes"));
                // serde_json's own formatting (null for a non-finite one).
                serde_json::to_writer(&mut *json, &f).map_err(|e| e.to_string())?;
            }
            STRING => {
                let n = r.length()?;
                json.push(b'"');
                json.extend_from_slice(utf8(r.bytes(n)?)?.as_bytes());
                json.push(b'"');
            }
            IN_PAYLOAD => {
                let s = r.slice_of(payload)?;
                json.push(b'"');
                json.extend_from_slice(s.as_bytes());
                json.push(b'"');
            }
            ESCAPED => {
                let n = r.length()?;
                escaped(json, utf8(r.bytes(n)?)?)?;
            }
            ESCAPED_IN_PAYLOAD => escaped(json, r.slice_of(payload)?)?,
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

    fn object(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    /// Encodes the records with one `Fields`, decodes them with another:
    /// each comes back as the text serde_json writes for it.
    fn round_trip(records: &[(&Map<String, Value>, &[u8])]) -> Vec<Vec<u8>> {
        let mut enc = Fields::default();
        let stored: Vec<Vec<u8>> = records
            .iter()
            .map(|(fields, payload)| {
                let mut out = Vec::new();
                enc.encode(fields, payload, &mut out);
                out
            })
            .collect();
        let mut dec = Fields::default();
        for ((fields, payload), stored) in records.iter().zip(&stored) {
            assert_eq!(
                String::from_utf8_lossy(&dec.decode(stored, payload).unwrap()),
                serde_json::to_string(fields).unwrap()
            );
        }
        stored
    }

    #[test]
    fn syslog_fields_refer_to_the_payload_and_come_back_byte_for_byte() {
        let payload =
            b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8";
        let fields = object(
            r#"{"app_name":"su","facility":"auth","facility_code":4,"hostname":"mymachine","message":"'su root' failed for lonvick on /dev/pts/8","procid":null,"severity":"crit","severity_code":2,"structured_data":{},"timestamp":"2026-10-11T22:14:15+00:00"}"#,
        );
        let json_len = serde_json::to_vec(&fields).unwrap().len();
        let stored = round_trip(&[
            (&fields, payload),
            (&fields, payload),
            (&object(r#"{"message":null}"#), b""),
        ]);
        let (first, second) = (&stored[0], &stored[1]);
        assert_eq!(first[0], COMPACT);
        assert!(!first.windows(9).any(|w| w == b"mymachine"), "the hostname is a reference");
        // The keys are written once per block; then a record takes the
        // strings that are not in its payload and a few bytes per field.
        assert!(second.len() < json_len / 3, "{} of {json_len}", second.len());
    }

    #[test]
    fn escapes_numbers_and_nesting_come_back_and_too_deep_is_kept_as_text() {
        // Escaped keys and strings (found in the payload unescaped), floats
        // serde_json writes in its shortest form, negative and large numbers.
        let fields = object(
            r#"{"m":"A\n","q":"say \"hi\"","k\u0001":{"x":[1,2]},"x":1.5,"e":1e300,"z":-0.0,"i":-12,"u":18446744073709551615,"n":{"a":[{"b":"\"q\""},[],{}]}}"#,
        );
        let stored = round_trip(&[(&fields, b"A\n say \"hi\"")]);
        assert_eq!(stored[0][0], COMPACT);
        round_trip(&[(&Map::new(), b"")]);
        // Deeper than a reader follows: the JSON text, still byte for byte.
        let mut deep = Value::Null;
        for _ in 0..MAX_DEPTH + 2 {
            deep = Value::Array(vec![deep]);
        }
        let fields = Map::from_iter([("deep".to_string(), deep)]);
        let mut out = Vec::new();
        Fields::default().encode(&fields, b"", &mut out);
        assert_eq!(out[0], VERBATIM);
        assert_eq!(&out[1..], serde_json::to_vec(&fields).unwrap());
        // The next record of the block still uses the key table.
        let mut enc = Fields::default();
        let mut dec = Fields::default();
        let plain = object(r#"{"deep":1,"b":2}"#);
        for fields in [&fields, &plain, &plain] {
            let mut out = Vec::new();
            enc.encode(fields, b"", &mut out);
            assert_eq!(dec.decode(&out, b"").unwrap(), serde_json::to_vec(fields).unwrap());
        }
    }

    #[test]
    fn damaged_input_is_an_error_not_a_panic() {
        let payload = b"hello world";
        let fields = object(r#"{"m":"hello world","n":[1,-2,0.5,true,null,{"z":"hello"}]}"#);
        let stored = round_trip(&[(&fields, payload)]);
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
        fn any_decoded_fields_round_trip(
            values in prop::collection::vec(
                (prop::collection::btree_map("[a-f]{1,4}", json_value(), 0..8), "[a-z <>:\\n]{0,40}"),
                1..8,
            )
        ) {
            let records: Vec<(Map<String, Value>, Vec<u8>)> = values
                .iter()
                .map(|(map, payload)| {
                    // Payloads that hold some of the strings, so references happen.
                    let object: Map<String, Value> = map.clone().into_iter().collect();
                    let mut p = payload.clone().into_bytes();
                    p.extend_from_slice(&serde_json::to_vec(&object).unwrap());
                    for value in object.values() {
                        if let Value::String(s) = value {
                            p.extend_from_slice(s.as_bytes());
                        }
                    }
                    (object, p)
                })
                .collect();
            let pairs: Vec<(&Map<String, Value>, &[u8])> =
                records.iter().map(|(j, p)| (j, p.as_slice())).collect();
            // Every record compact (nothing here nests too deep), and back
            // byte for byte — floats included, as their bits are kept.
            for stored in round_trip(&pairs) {
                prop_assert_eq!(stored[0], COMPACT);
            }
        }
    }
}

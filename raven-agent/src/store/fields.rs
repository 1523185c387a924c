//! Compact form of a record's decoded fields inside a version-2 block.
//!
//! Invariants:
//! - Lossless: [`Fields::decode`] gives back exactly the text `serde_json`
//!   writes for the fields handed to [`Fields::encode`] (the decoder's
//!   value, never re-parsed from text). Debug builds — every test — check
//!   each record by decoding it back; release builds rely on the property
//!   tests below rather than pay for a second pass per record.
//! - A string value that occurs in the record's payload is stored as its
//!   place there, not again: syslog's message, hostname and app name are
//!   slices of the datagram, so the block holds them once.
//! - Keys are written once per block, then referred to by number.
//! - Fields nested deeper than [`MAX_DEPTH`] are kept as their JSON text
//!   (verbatim), so whatever is written can be read back; so are fields
//!   that are not an object, and values whose text the format does not
//!   hold as serde_json writes it (an `f32` whose shortest digits are not
//!   its `f64`'s, an integer beyond 64 bits, raw JSON, float map keys).
//!   Fields serde_json cannot write at all (a map key that is not a
//!   string, a `Serialize` implementation's own error) are stored as
//!   `null`: the record and its payload are kept.
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
//! are encoded and decoded in order with one [`Fields`]. `encode` takes
//! any `serde::Serialize` value (a `serde_json::Map` or a decoder's typed
//! struct alike) and writes the compact form straight from its serde calls
//! (a `Serializer` mirroring serde_json's: integers as digits, non-finite
//! floats as null, bytes as arrays, `Option` and newtypes as their inner
//! value, enum variants with data as `{"Variant": ...}`, integer, bool and
//! char map keys as strings, lengths not known up front counted as the
//! items are written), with no intermediate `serde_json::Value`.

use std::{collections::HashMap, fmt::Display};

use bytes::Bytes;
use integer_encoding::VarInt;
use serde::{
    Serialize, Serializer,
    ser::{
        Impossible, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant,
        SerializeTuple, SerializeTupleStruct, SerializeTupleVariant,
    },
};

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

#[inline]
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    // Most are counts, lengths and key numbers: one byte, no copy.
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
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
    /// Decoding: the JSON text of the record being read.
    scratch: Vec<u8>,
    /// Encoding: the text of a `Display` value (an address) being written.
    text: String,
}

impl Fields {
    /// Appends the stored form of a record's decoded fields to `out`:
    /// compact when they are an object within [`MAX_DEPTH`] that
    /// [`Encoder`] can mirror, else their JSON text (verbatim).
    pub fn encode<T: Serialize + ?Sized>(&mut self, fields: &T, payload: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let keys = self.keys.names.len();
        out.push(COMPACT);
        let mut encoder = Encoder {
            keys: &mut self.keys,
            text: &mut self.text,
            payload,
            out: &mut *out,
            depth: 0,
            top: true,
            failed: false,
        };
        let compact = fields.serialize(&mut encoder).and_then(|()| encoder.finished());
        if compact.is_err() {
            // Too deep to read back within [`MAX_DEPTH`], not an object,
            // or something only serde_json's own text keeps exactly.
            out.truncate(start);
            self.keys.truncate(keys);
            out.push(VERBATIM);
            if serde_json::to_writer(&mut *out, fields).is_err() {
                // serde_json cannot write it either (a map key that is not
                // a string, the value's own error): the fields are lost,
                // the record (its payload) is not.
                out.truncate(start + 1);
                out.extend_from_slice(b"null");
            }
        }
        #[cfg(debug_assertions)]
        self.check(&out[start..], payload, fields);
    }

    /// Test and debug builds: the compact form reads back as exactly the
    /// text `serde_json` writes for the fields (what the store promised
    /// before it stopped keeping that text). Release builds rely on the
    /// property tests below instead of paying for a second pass.
    #[cfg(debug_assertions)]
    fn check<T: Serialize + ?Sized>(&mut self, stored: &[u8], payload: &[u8], fields: &T) {
        let mirror = self.mirror.get_or_insert_with(Default::default);
        let back = mirror.decode(stored, payload).expect("the compact form reads back");
        let json = serde_json::to_vec(fields).unwrap_or_else(|_| b"null".to_vec());
        assert_eq!(
            String::from_utf8_lossy(&back),
            String::from_utf8_lossy(&json),
            "decoded fields must come back byte for byte"
        );
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

/// Why a record's fields were not written compact (they are kept as
/// serde_json's text instead). Never shown: it carries no text, so that
/// every serializer call returns its `Result` in a register.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("nested deeper than MAX_DEPTH")]
    TooDeep,
    #[error("the fields are not an object")]
    NotObject,
    /// A value whose text serde_json writes in a way the format does not
    /// hold (an f32's own shortest digits, a 128-bit integer beyond 64
    /// bits, raw JSON), or a map key that is not a string.
    #[error("a value with no compact form")]
    Unsupported,
    /// A `Serialize` implementation that broke serde's protocol (a length
    /// that is not the count, a key without its value, a refusal ignored):
    /// what serde_json writes for it is kept as it is.
    #[error("serde's protocol broken")]
    Malformed,
    /// The value's own error (serde_json fails on it too).
    #[error("the value's own error")]
    Custom,
}

impl serde::ser::Error for Refused {
    fn custom<T: Display>(_msg: T) -> Self {
        Refused::Custom
    }
}

/// The name `serde_json::value::RawValue` serialises itself under (its
/// text is written as it stands, so only verbatim keeps it exactly).
const RAW_VALUE: &str = "$serde_json::private::RawValue";

/// The text serde_json writes for `value`, in `buf` (numbers only: they
/// fit).
fn json_text<'b, T: Serialize>(buf: &'b mut [u8; 32], value: &T) -> Option<&'b [u8]> {
    let left = {
        let mut w = &mut buf[..];
        serde_json::to_writer(&mut w, value).ok()?;
        w.len()
    };
    Some(&buf[..buf.len() - left])
}

/// A serde `Serializer` writing the compact form of one record as
/// serde_json would write its text: whatever it accepts reads back as
/// exactly that text; anything else is refused (and kept verbatim).
struct Encoder<'a> {
    keys: &'a mut Keys,
    /// `collect_str`'s text, reused from record to record.
    text: &'a mut String,
    payload: &'a [u8],
    out: &'a mut Vec<u8>,
    /// The nesting of the next value: the top object's members are at 1,
    /// as the reader counts.
    depth: usize,
    /// Nothing written yet: the first value must be an object.
    top: bool,
    /// Something was refused, even if the `Serialize` implementation went
    /// on as if not (what it wrote since is not the compact form).
    failed: bool,
}

impl Encoder<'_> {
    /// Before a value that is not an object.
    fn value(&mut self) -> Result<(), Refused> {
        if self.top {
            return Err(Refused::NotObject);
        }
        if self.depth > MAX_DEPTH {
            return Err(Refused::TooDeep);
        }
        Ok(())
    }

    /// After the top value: nothing refused on the way, even if ignored.
    /// (serde hands out `Ok` only for a whole value, so the object is
    /// written and closed.)
    fn finished(&self) -> Result<(), Refused> {
        if self.failed || self.top || self.depth != 0 {
            return Err(Refused::Malformed);
        }
        Ok(())
    }

    fn tag(&mut self, tag: u8) -> Result<(), Refused> {
        self.value()?;
        self.out.push(tag);
        Ok(())
    }

    fn unsigned(&mut self, v: u64) -> Result<(), Refused> {
        self.tag(UNSIGNED)?;
        put_u64(self.out, v);
        Ok(())
    }

    /// serde_json writes an integer as its digits, whatever its type: a
    /// non-negative one is stored as the unsigned it equals.
    fn signed(&mut self, v: i64) -> Result<(), Refused> {
        match u64::try_from(v) {
            Ok(u) => self.unsigned(u),
            Err(_) => {
                self.tag(SIGNED)?;
                put_i64(self.out, v);
                Ok(())
            }
        }
    }

    fn float(&mut self, v: f64) -> Result<(), Refused> {
        if !v.is_finite() {
            // serde_json writes null for NaN and the infinities.
            return self.tag(NULL);
        }
        self.tag(FLOAT)?;
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn string(&mut self, s: &str) -> Result<(), Refused> {
        self.value()?;
        // A message with a newline or a quote is still found in the
        // payload as it is; the reader escapes it again.
        let (literal, reference) =
            if needs_escape(s) { (ESCAPED, ESCAPED_IN_PAYLOAD) } else { (STRING, IN_PAYLOAD) };
        let at = (s.len() >= MIN_REFERENCE).then(|| find(self.payload, s.as_bytes())).flatten();
        match at {
            Some(offset) => {
                self.out.push(reference);
                put_u64(self.out, offset as u64);
                put_u64(self.out, s.len() as u64);
            }
            None => put_bytes(self.out, literal, s.as_bytes()),
        }
        Ok(())
    }

    /// `value`'s `Display` text in the reused buffer, then `write` of it.
    fn displayed<T: Display + ?Sized>(
        &mut self,
        value: &T,
        write: impl FnOnce(&mut Self, &str) -> Result<(), Refused>,
    ) -> Result<(), Refused> {
        use std::fmt::Write;
        let mut text = std::mem::take(self.text);
        text.clear();
        let written = match write!(text, "{value}") {
            Ok(()) => write(self, &text),
            // serde_json fails on it too.
            Err(_) => Err(Refused::Custom),
        };
        *self.text = text;
        written
    }

    /// An object member's key, through the block's key table.
    fn key(&mut self, key: &str) {
        let keys = &mut *self.keys;
        // Records of a stream repeat their keys in the same order: the
        // entry after the last one used is usually this key.
        let hint = keys.next;
        let known = if keys.plain.get(hint) == Some(&true) && keys.names[hint] == *key {
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
            let known = keys.index.get(key).copied();
            if known.is_none() {
                put_bytes(self.out, 0, key.as_bytes());
                keys.index.insert(key.to_owned(), keys.names.len() as u64);
                keys.names.push(key.to_owned());
                keys.plain.push(!key.contains('\\'));
                keys.next = keys.names.len();
            }
            known
        };
        if let Some(k) = known {
            put_u64(self.out, k + 1);
            keys.next = k as usize + 1;
        }
    }

    /// Opens an array (`ARRAY`) or object (`OBJECT`) of `len` items; of
    /// unknown length, its count is put in front of them at the end.
    fn open(&mut self, tag: u8, len: Option<usize>) -> Result<Open, Refused> {
        if tag == OBJECT && self.top {
            // The record's own object: its form byte says so already.
            self.top = false;
        } else {
            self.tag(tag)?;
        }
        let count_at = self.out.len();
        if let Some(n) = len {
            put_u64(self.out, n as u64);
        }
        self.depth += 1;
        Ok(Open { count_at, len, count: 0, keyed: false, variant: false })
    }

    /// `{"Variant":` as serde_json writes an enum variant with data: an
    /// object of one member, its value to follow.
    fn open_variant(&mut self, variant: &'static str) -> Result<(), Refused> {
        self.open(OBJECT, Some(1))?;
        self.key(variant);
        Ok(())
    }

    /// Passes `result` on, remembering a refusal (a `Serialize`
    /// implementation may drop the error of one of its items).
    fn noted(&mut self, result: Result<(), Refused>) -> Result<(), Refused> {
        self.failed |= result.is_err();
        result
    }
}

/// An array or object being written.
struct Open {
    /// Where its count is (or goes, if `len` is unknown).
    count_at: usize,
    len: Option<usize>,
    count: usize,
    /// An object: a key written, its value not yet.
    keyed: bool,
    /// A tuple or struct variant: inside `{"Variant":`, closed with it.
    variant: bool,
}

/// An open array or object and the encoder writing it.
struct Compound<'e, 'a> {
    encoder: &'e mut Encoder<'a>,
    open: Open,
}

impl Compound<'_, '_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
        let written = value.serialize(&mut *self.encoder);
        self.encoder.noted(written)?;
        self.open.count += 1;
        Ok(())
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Refused> {
        self.encoder.key(key);
        self.element(value)
    }

    fn end(self) -> Result<(), Refused> {
        let Compound { encoder, open } = self;
        if open.keyed {
            // A key without its value.
            return Err(Refused::Malformed);
        }
        encoder.depth -= 1;
        match open.len {
            Some(n) if n == open.count => {}
            // Not the count promised.
            Some(_) => return Err(Refused::Malformed),
            None => {
                let mut buf = [0u8; 10];
                let n = (open.count as u64).encode_var(&mut buf);
                encoder.out.splice(open.count_at..open.count_at, buf[..n].iter().copied());
            }
        }
        if open.variant {
            encoder.depth -= 1;
        }
        Ok(())
    }
}

impl<'e, 'a> Serializer for &'e mut Encoder<'a> {
    type Ok = ();
    type Error = Refused;
    type SerializeSeq = Compound<'e, 'a>;
    type SerializeTuple = Compound<'e, 'a>;
    type SerializeTupleStruct = Compound<'e, 'a>;
    type SerializeTupleVariant = Compound<'e, 'a>;
    type SerializeMap = Compound<'e, 'a>;
    type SerializeStruct = Compound<'e, 'a>;
    type SerializeStructVariant = Compound<'e, 'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Refused> {
        self.tag(if v { TRUE } else { FALSE })
    }

    fn serialize_i8(self, v: i8) -> Result<(), Refused> {
        self.signed(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result<(), Refused> {
        self.signed(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result<(), Refused> {
        self.signed(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result<(), Refused> {
        self.signed(v)
    }

    fn serialize_i128(self, v: i128) -> Result<(), Refused> {
        match (u64::try_from(v), i64::try_from(v)) {
            (Ok(u), _) => self.unsigned(u),
            (_, Ok(i)) => self.signed(i),
            _ => Err(Refused::Unsupported),
        }
    }

    fn serialize_u8(self, v: u8) -> Result<(), Refused> {
        self.unsigned(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result<(), Refused> {
        self.unsigned(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result<(), Refused> {
        self.unsigned(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result<(), Refused> {
        self.unsigned(v)
    }

    fn serialize_u128(self, v: u128) -> Result<(), Refused> {
        match u64::try_from(v) {
            Ok(u) => self.unsigned(u),
            Err(_) => Err(Refused::Unsupported),
        }
    }

    fn serialize_f32(self, v: f32) -> Result<(), Refused> {
        // serde_json writes an f32's own shortest digits (0.1, not the
        // widened 0.10000000149011612): kept as an f64 only when that
        // writes the same.
        let (mut narrow, mut wide) = ([0u8; 32], [0u8; 32]);
        if v.is_finite() && json_text(&mut narrow, &v) != json_text(&mut wide, &f64::from(v)) {
            return Err(Refused::Unsupported);
        }
        self.float(v.into())
    }

    fn serialize_f64(self, v: f64) -> Result<(), Refused> {
        self.float(v)
    }

    fn serialize_char(self, v: char) -> Result<(), Refused> {
        self.string(v.encode_utf8(&mut [0u8; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<(), Refused> {
        self.string(v)
    }

    /// An array of numbers, as serde_json writes bytes.
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Refused> {
        self.tag(ARRAY)?;
        if !v.is_empty() && self.depth + 1 > MAX_DEPTH {
            return Err(Refused::TooDeep);
        }
        put_u64(self.out, v.len() as u64);
        for &b in v {
            self.out.push(UNSIGNED);
            put_u64(self.out, b.into());
        }
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Refused> {
        self.tag(NULL)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Refused> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Refused> {
        self.tag(NULL)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Refused> {
        self.tag(NULL)
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Refused> {
        self.string(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        self.open_variant(variant)?;
        value.serialize(&mut *self)?;
        self.depth -= 1;
        Ok(())
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Compound<'e, 'a>, Refused> {
        let open = self.open(ARRAY, len)?;
        Ok(Compound { encoder: self, open })
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'e, 'a>, Refused> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Compound<'e, 'a>, Refused> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'e, 'a>, Refused> {
        self.open_variant(variant)?;
        let mut compound = self.serialize_seq(Some(len))?;
        compound.open.variant = true;
        Ok(compound)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Compound<'e, 'a>, Refused> {
        let open = self.open(OBJECT, len)?;
        Ok(Compound { encoder: self, open })
    }

    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Compound<'e, 'a>, Refused> {
        if name == RAW_VALUE {
            return Err(Refused::Unsupported);
        }
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'e, 'a>, Refused> {
        self.open_variant(variant)?;
        let mut compound = self.serialize_map(Some(len))?;
        compound.open.variant = true;
        Ok(compound)
    }

    /// What serde uses for `Display` types: written through the reused
    /// text buffer instead of a new `String` each.
    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<(), Refused> {
        self.displayed(value, |encoder, text| encoder.string(text))
    }
}

/// Sequences, tuples and tuple variants: items one after another (a
/// tuple variant's array inside its `{"Variant": ...}`).
macro_rules! items_compound {
    ($($trait:ident :: $method:ident),*) => {$(
        impl $trait for Compound<'_, '_> {
            type Ok = ();
            type Error = Refused;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
                self.element(value)
            }

            fn end(self) -> Result<(), Refused> {
                Compound::end(self)
            }
        }
    )*};
}

items_compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = Refused;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Refused> {
        let written = if self.open.keyed {
            Err(Refused::Malformed)
        } else {
            key.serialize(KeyEncoder(&mut *self.encoder))
        };
        self.encoder.noted(written)?;
        self.open.keyed = true;
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
        if !self.open.keyed {
            return self.encoder.noted(Err(Refused::Malformed));
        }
        self.element(value)?;
        self.open.keyed = false;
        Ok(())
    }

    fn end(self) -> Result<(), Refused> {
        Compound::end(self)
    }
}

impl SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = Refused;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Refused> {
        Compound::end(self)
    }
}

impl SerializeStructVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = Refused;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Refused> {
        Compound::end(self)
    }
}

/// A map key, as serde_json writes one: strings, and the integers,
/// booleans and chars it turns into strings; anything else is refused
/// (serde_json writes floats its own way, and fails on the rest).
struct KeyEncoder<'e, 'a>(&'e mut Encoder<'a>);

impl KeyEncoder<'_, '_> {
    fn text(self, key: &str) -> Result<(), Refused> {
        self.0.key(key);
        Ok(())
    }

    fn integer(self, v: impl itoa::Integer) -> Result<(), Refused> {
        self.text(itoa::Buffer::new().format(v))
    }

    fn refuse<T>(self) -> Result<T, Refused> {
        Err(Refused::Unsupported)
    }
}

/// A map key's `serialize_<integer>` methods: every integer becomes its
/// decimal text, as serde_json writes integer keys.
macro_rules! integer_keys {
    ($($method:ident: $ty:ty),*) => {
        $(fn $method(self, v: $ty) -> Result<(), Refused> {
            self.integer(v)
        })*
    };
}

impl Serializer for KeyEncoder<'_, '_> {
    type Ok = ();
    type Error = Refused;
    type SerializeSeq = Impossible<(), Refused>;
    type SerializeTuple = Impossible<(), Refused>;
    type SerializeTupleStruct = Impossible<(), Refused>;
    type SerializeTupleVariant = Impossible<(), Refused>;
    type SerializeMap = Impossible<(), Refused>;
    type SerializeStruct = Impossible<(), Refused>;
    type SerializeStructVariant = Impossible<(), Refused>;

    fn serialize_str(self, v: &str) -> Result<(), Refused> {
        self.text(v)
    }

    fn serialize_char(self, v: char) -> Result<(), Refused> {
        self.text(v.encode_utf8(&mut [0u8; 4]))
    }

    fn serialize_bool(self, v: bool) -> Result<(), Refused> {
        self.text(if v { "true" } else { "false" })
    }

    integer_keys!(
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128
    );

    fn serialize_f32(self, _v: f32) -> Result<(), Refused> {
        self.refuse()
    }

    fn serialize_f64(self, _v: f64) -> Result<(), Refused> {
        self.refuse()
    }

    fn serialize_bytes(self, _v: &[u8]) -> Result<(), Refused> {
        self.refuse()
    }

    fn serialize_none(self) -> Result<(), Refused> {
        self.refuse()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Refused> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Refused> {
        self.refuse()
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Refused> {
        self.refuse()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Refused> {
        self.text(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), Refused> {
        self.refuse()
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Refused> {
        self.refuse()
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Refused> {
        self.refuse()
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Refused> {
        self.refuse()
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Refused> {
        self.refuse()
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Refused> {
        self.refuse()
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Refused> {
        self.refuse()
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Refused> {
        self.refuse()
    }

    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<(), Refused> {
        self.0.displayed(value, |encoder, text| {
            encoder.key(text);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
    };

    use proptest::prelude::*;
    use serde_json::{Map, Number, Value};

    use super::*;

    fn object(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    /// Encodes the records with one `Fields`, decodes them with another:
    /// each comes back as the text serde_json writes for it.
    fn round_trip<T: Serialize + ?Sized>(records: &[(&T, &[u8])]) -> Vec<Vec<u8>> {
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
                serde_json::to_string(fields).unwrap_or_else(|_| "null".into())
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

    /// The `serde_json::Value`-walking encoder that [`Encoder`] replaced,
    /// kept as it was: for a `Map` the serde encoder must write the very
    /// same bytes (the format did not change with it).
    #[derive(Default)]
    struct Walker {
        keys: Keys,
    }

    impl Walker {
        fn encode(&mut self, fields: &Map<String, Value>, payload: &[u8], out: &mut Vec<u8>) {
            let start = out.len();
            let keys = self.keys.names.len();
            out.push(COMPACT);
            if !self.object(fields, payload, out, 0) {
                out.truncate(start);
                self.keys.truncate(keys);
                out.push(VERBATIM);
                serde_json::to_writer(&mut *out, fields).expect("a JSON map serialises");
            }
        }

        fn object(
            &mut self,
            members: &Map<String, Value>,
            payload: &[u8],
            out: &mut Vec<u8>,
            depth: usize,
        ) -> bool {
            put_u64(out, members.len() as u64);
            for (key, value) in members {
                let hint = self.keys.next;
                let known =
                    if self.keys.plain.get(hint) == Some(&true) && self.keys.names[hint] == *key {
                        Some(hint as u64)
                    } else {
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

        fn value(
            &mut self,
            value: &Value,
            payload: &[u8],
            out: &mut Vec<u8>,
            depth: usize,
        ) -> bool {
            if depth > MAX_DEPTH {
                return false;
            }
            match value {
                Value::Null => out.push(NULL),
                Value::Bool(false) => out.push(FALSE),
                Value::Bool(true) => out.push(TRUE),
                Value::Number(n) => {
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
                    let (literal, reference) = if needs_escape(s) {
                        (ESCAPED, ESCAPED_IN_PAYLOAD)
                    } else {
                        (STRING, IN_PAYLOAD)
                    };
                    let at =
                        (s.len() >= MIN_REFERENCE).then(|| find(payload, s.as_bytes())).flatten();
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
    }

    /// `value` inside `levels` arrays, or single-member objects.
    fn nest(mut value: Value, levels: usize, objects: bool) -> Value {
        for _ in 0..levels {
            value = if objects {
                Value::Object(Map::from_iter([("w".to_string(), value)]))
            } else {
                Value::Array(vec![value])
            };
        }
        value
    }

    proptest! {
        #[test]
        fn maps_are_written_as_the_value_walker_wrote_them(
            values in prop::collection::vec(
                (
                    prop::collection::btree_map("[a-f\"]{1,3}", json_value(), 0..8),
                    // Now and then nested around MAX_DEPTH: compact just
                    // below it, verbatim above (the key table rolled back).
                    prop::option::weighted(0.3, (MAX_DEPTH - 3..MAX_DEPTH + 2, any::<bool>())),
                    "[a-z <>:\\n]{0,40}",
                ),
                1..10,
            )
        ) {
            let mut fields = Fields::default();
            let mut walker = Walker::default();
            for (map, deep, payload) in values {
                let mut object: Map<String, Value> = map.into_iter().collect();
                if let Some((levels, objects)) = deep {
                    object.insert("deep".into(), nest(Value::Null, levels, objects));
                }
                let mut payload = payload.into_bytes();
                for value in object.values() {
                    if let Value::String(s) = value {
                        payload.extend_from_slice(s.as_bytes());
                    }
                }
                let (mut ours, mut theirs) = (Vec::new(), Vec::new());
                fields.encode(&object, &payload, &mut ours);
                walker.encode(&object, &payload, &mut theirs);
                prop_assert_eq!(ours, theirs);
            }
        }
    }

    // Typed values, as a decoder that builds structs hands them over.

    #[derive(Serialize, Clone, Debug)]
    enum Kind {
        Plain,
        #[serde(rename = "q\"uoted")]
        Quoted,
        Newtype(u32),
        Pair(u8, i8),
        Named {
            a: u16,
            b: Option<String>,
        },
    }

    #[derive(Serialize, Clone, Debug)]
    struct Hop {
        addr: IpAddr,
        ttl: Option<u8>,
        kinds: Vec<Kind>,
        /// `flatten` makes serde write the struct as a map of unknown length.
        #[serde(flatten)]
        extra: BTreeMap<String, i64>,
    }

    #[derive(Serialize, Clone, Debug)]
    struct Flow {
        sequence: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        src: Option<IpAddr>,
        #[serde(skip_serializing_if = "Option::is_none")]
        dst: Option<IpAddr>,
        delta: i64,
        rate: f64,
        message: String,
        kind: Kind,
        hops: Vec<Hop>,
        names: BTreeMap<u32, String>,
        labels: Unsized,
    }

    /// A map and arrays whose lengths serde is not told up front.
    #[derive(Clone, Debug)]
    struct Unsized(Vec<(String, Vec<i64>)>);

    impl Serialize for Unsized {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            struct Items<'a>(&'a [i64]);
            impl Serialize for Items<'_> {
                fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    let mut seq = s.serialize_seq(None)?;
                    for item in self.0 {
                        seq.serialize_element(item)?;
                    }
                    seq.end()
                }
            }
            let mut map = s.serialize_map(None)?;
            for (key, items) in &self.0 {
                map.serialize_entry(key, &Items(items))?;
            }
            map.end()
        }
    }

    const TEXT: &str = "[a-z <>:\u{e9}\u{1F600}\\n\"\\\\]{0,12}";

    fn address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
            // Zeros, written with `::`.
            any::<u16>().prop_map(|a| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, a))),
            any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
        ]
    }

    fn float() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            any::<i32>().prop_map(f64::from),
        ]
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Plain),
            Just(Kind::Quoted),
            any::<u32>().prop_map(Kind::Newtype),
            any::<(u8, i8)>().prop_map(|(a, b)| Kind::Pair(a, b)),
            (any::<u16>(), prop::option::of(TEXT)).prop_map(|(a, b)| Kind::Named { a, b }),
        ]
    }

    fn hop() -> impl Strategy<Value = Hop> {
        (
            address(),
            any::<Option<u8>>(),
            prop::collection::vec(kind(), 0..3),
            prop::collection::btree_map("[x-z]{1,2}", any::<i64>(), 0..3),
        )
            .prop_map(|(addr, ttl, kinds, extra)| Hop { addr, ttl, kinds, extra })
    }

    fn flow() -> impl Strategy<Value = Flow> {
        (
            (any::<Option<u64>>(), prop::option::of(address()), prop::option::of(address())),
            (any::<i64>(), float(), TEXT, kind()),
            prop::collection::vec(hop(), 0..4),
            prop::collection::btree_map(any::<u32>(), TEXT, 0..3),
            prop::collection::vec((TEXT, prop::collection::vec(any::<i64>(), 0..4)), 0..3),
        )
            .prop_map(
                |((sequence, src, dst), (delta, rate, message, kind), hops, names, labels)| Flow {
                    sequence,
                    src,
                    dst,
                    delta,
                    rate,
                    message,
                    kind,
                    hops,
                    names,
                    labels: Unsized(labels),
                },
            )
    }

    /// A payload holding some of the flow's strings (as a datagram holds
    /// a syslog message), so that references happen.
    fn payload_of(flow: &Flow, noise: &str) -> Vec<u8> {
        let mut p = noise.as_bytes().to_vec();
        p.extend_from_slice(flow.message.as_bytes());
        for hop in &flow.hops {
            p.extend_from_slice(hop.addr.to_string().as_bytes());
        }
        for name in flow.names.values() {
            p.extend_from_slice(name.as_bytes());
        }
        p
    }

    proptest! {
        #[test]
        fn typed_values_read_back_as_serde_json_writes_them(
            flows in prop::collection::vec((flow(), "[a-z <>:\\n]{0,20}"), 1..6)
        ) {
            let payloads: Vec<Vec<u8>> =
                flows.iter().map(|(flow, noise)| payload_of(flow, noise)).collect();
            let records: Vec<(&Flow, &[u8])> =
                flows.iter().zip(&payloads).map(|((flow, _), p)| (flow, p.as_slice())).collect();
            // All of it compact: nothing here needs serde_json's own text.
            for stored in round_trip(&records) {
                prop_assert_eq!(stored[0], COMPACT);
            }
        }
    }

    /// Fields in the order a `Map` keeps them (sorted), so that the typed
    /// value and its `serde_json::Value` are the same serde calls but for
    /// the types: signed integers, `Option`s, addresses, floats.
    #[derive(Serialize, Clone, Debug)]
    struct Sorted {
        address: Option<IpAddr>,
        delta: i64,
        kinds: Vec<Kind>,
        message: String,
        rate: f64,
        small: i8,
    }

    proptest! {
        #[test]
        fn a_typed_value_is_written_as_its_serde_json_value(
            values in prop::collection::vec(
                (
                    prop::option::of(address()),
                    any::<i64>(),
                    prop::collection::vec(kind(), 0..3),
                    TEXT,
                    float(),
                    any::<i8>(),
                ),
                1..6,
            )
        ) {
            let (mut typed, mut walked) = (Fields::default(), Fields::default());
            for (address, delta, kinds, message, rate, small) in values {
                let value = Sorted { address, delta, kinds, message, rate, small };
                let map = match serde_json::to_value(&value).unwrap() {
                    Value::Object(map) => map,
                    other => panic!("{other}"),
                };
                let payload = format!("{} {:?}", value.message, value.address);
                let (mut ours, mut theirs) = (Vec::new(), Vec::new());
                typed.encode(&value, payload.as_bytes(), &mut ours);
                walked.encode(&map, payload.as_bytes(), &mut theirs);
                prop_assert_eq!(ours, theirs);
            }
        }
    }

    /// A byte string, as serde writes `serde_bytes` and the like.
    #[derive(Clone, Debug)]
    struct Bytes(Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    #[derive(Serialize, Clone, Debug)]
    struct Unit;

    #[derive(Serialize, Clone, Debug)]
    struct Wrapped(String);

    #[derive(Serialize, Clone, Debug)]
    struct Odd {
        single: f32,
        wide: i128,
        wider: u128,
        letter: char,
        bytes: Bytes,
        nothing: (),
        unit: Unit,
        wrapped: Wrapped,
        pair: (u8, String),
        maybe: Option<Option<bool>>,
        small: (i8, i16, i32, u16),
        by_letter: BTreeMap<char, u8>,
        by_flag: BTreeMap<bool, u8>,
        by_number: BTreeMap<i64, u8>,
        by_kind: BTreeMap<Wrapped, Kind>,
    }

    // Keys of `by_kind`.
    impl PartialEq for Wrapped {
        fn eq(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }
    impl Eq for Wrapped {}
    impl PartialOrd for Wrapped {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Wrapped {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            self.0.cmp(&other.0)
        }
    }

    fn odd() -> impl Strategy<Value = Odd> {
        (
            (
                prop_oneof![any::<f32>(), Just(0.5f32), Just(f32::NAN), Just(1e30f32)],
                prop_oneof![any::<i128>(), any::<i64>().prop_map(i128::from)],
                prop_oneof![any::<u128>(), any::<u64>().prop_map(u128::from)],
                any::<char>(),
                prop::collection::vec(any::<u8>(), 0..6).prop_map(Bytes),
            ),
            (TEXT.prop_map(Wrapped), (any::<u8>(), TEXT), any::<Option<Option<bool>>>()),
            any::<(i8, i16, i32, u16)>(),
            (
                prop::collection::btree_map(any::<char>(), any::<u8>(), 0..3),
                prop::collection::btree_map(any::<bool>(), any::<u8>(), 0..3),
                prop::collection::btree_map(any::<i64>(), any::<u8>(), 0..3),
                prop::collection::btree_map(TEXT.prop_map(Wrapped), kind(), 0..3),
            ),
        )
            .prop_map(
                |(
                    (single, wide, wider, letter, bytes),
                    (wrapped, pair, maybe),
                    small,
                    (by_letter, by_flag, by_number, by_kind),
                )| Odd {
                    single,
                    wide,
                    wider,
                    letter,
                    bytes,
                    nothing: (),
                    unit: Unit,
                    wrapped,
                    pair,
                    maybe,
                    small,
                    by_letter,
                    by_flag,
                    by_number,
                    by_kind,
                },
            )
    }

    proptest! {
        #[test]
        fn every_kind_of_serde_value_reads_back_as_serde_json_writes_it(
            odds in prop::collection::vec(odd(), 1..6)
        ) {
            let records: Vec<(&Odd, &[u8])> = odds.iter().map(|odd| (odd, &b""[..])).collect();
            for (odd, stored) in odds.iter().zip(round_trip(&records)) {
                // Compact unless it holds what only serde_json's own text
                // keeps: an f32 that is not written as its f64, or an
                // integer beyond 64 bits.
                let single = serde_json::to_string(&odd.single).unwrap();
                let widened = serde_json::to_string(&f64::from(odd.single)).unwrap();
                let compact = single == widened
                    && (i64::try_from(odd.wide).is_ok() || u64::try_from(odd.wide).is_ok())
                    && u64::try_from(odd.wider).is_ok();
                prop_assert_eq!(stored[0], if compact { COMPACT } else { VERBATIM });
            }
        }
    }

    /// Encodes one record with a fresh `Fields`, checks it reads back as
    /// serde_json's text (or `null`) and returns its form byte.
    fn form_of<T: Serialize + ?Sized>(fields: &T) -> u8 {
        round_trip(&[(fields, &b""[..])])[0][0]
    }

    #[test]
    fn top_level_values_that_are_not_objects_are_kept_as_text() {
        assert_eq!(form_of(&vec![1, 2]), VERBATIM);
        assert_eq!(form_of(&7u64), VERBATIM);
        assert_eq!(form_of("text"), VERBATIM);
        assert_eq!(form_of(&None::<Map<String, Value>>), VERBATIM);
        assert_eq!(form_of(&()), VERBATIM);
        assert_eq!(form_of(&Kind::Plain), VERBATIM);
        // Objects however they come: behind an Option, a newtype, or an
        // enum variant with data (`{"Newtype":5}`).
        assert_eq!(form_of(&Some(object(r#"{"a":1}"#))), COMPACT);
        assert_eq!(form_of(&Kind::Newtype(5)), COMPACT);
        assert_eq!(form_of(&Kind::Pair(1, -1)), COMPACT);
        assert_eq!(form_of(&Kind::Named { a: 1, b: None }), COMPACT);
        assert_eq!(form_of(&Unsized(vec![])), COMPACT);
    }

    #[test]
    fn numbers_are_compact_only_where_serde_json_writes_the_same_digits() {
        #[derive(Serialize)]
        struct Number<T> {
            n: T,
        }
        // serde_json writes an f32's own shortest digits: 0.1, not
        // 0.10000000149011612 (its f64).
        assert_eq!(serde_json::to_string(&0.1f32).unwrap(), "0.1");
        assert_eq!(form_of(&Number { n: 0.1f32 }), VERBATIM);
        assert_eq!(form_of(&Number { n: 0.5f32 }), COMPACT);
        assert_eq!(form_of(&Number { n: f32::NAN }), COMPACT);
        assert_eq!(form_of(&Number { n: f64::NEG_INFINITY }), COMPACT);
        assert_eq!(form_of(&Number { n: -5i128 }), COMPACT);
        assert_eq!(form_of(&Number { n: u128::from(u64::MAX) }), COMPACT);
        assert_eq!(form_of(&Number { n: i128::MIN }), VERBATIM);
        assert_eq!(form_of(&Number { n: u128::MAX }), VERBATIM);
        assert_eq!(form_of(&BTreeMap::from([(1u8, Number { n: 1.5f64 })])), COMPACT);
        // Float keys: serde_json's own text.
        #[derive(Serialize)]
        struct FloatKey(#[serde(serialize_with = "float_key")] ());
        fn float_key<S: Serializer>(_: &(), s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry(&2.5f64, &1)?;
            map.end()
        }
        assert_eq!(form_of(&Number { n: FloatKey(()) }), VERBATIM);
    }

    #[test]
    fn lengths_not_known_up_front_are_counted_and_put_in_front() {
        // Counts of more than one varint byte, at the top and inside.
        let many: Vec<(String, Vec<i64>)> =
            (0..300).map(|i| (format!("k{i}"), (0..i % 200).collect())).collect();
        assert_eq!(form_of(&Unsized(many)), COMPACT);
    }

    #[test]
    fn bytes_nest_as_the_arrays_they_are_written_as() {
        /// `bytes` inside `levels` arrays, inside the record's object.
        struct Deep(usize, Bytes);
        impl Serialize for Deep {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                struct Level<'a>(usize, &'a Bytes);
                impl Serialize for Level<'_> {
                    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                        if self.0 == 0 {
                            return self.1.serialize(s);
                        }
                        let mut seq = s.serialize_seq(Some(1))?;
                        seq.serialize_element(&Level(self.0 - 1, self.1))?;
                        seq.end()
                    }
                }
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("b", &Level(self.0, &self.1))?;
                map.end()
            }
        }
        // The member is at depth 1: the bytes' array at MAX_DEPTH holds
        // numbers one deeper than a reader follows, unless it is empty.
        assert_eq!(form_of(&Deep(MAX_DEPTH - 2, Bytes(vec![1, 2]))), COMPACT);
        assert_eq!(form_of(&Deep(MAX_DEPTH - 1, Bytes(vec![1, 2]))), VERBATIM);
        assert_eq!(form_of(&Deep(MAX_DEPTH - 1, Bytes(vec![]))), COMPACT);
        assert_eq!(form_of(&Deep(MAX_DEPTH, Bytes(vec![]))), VERBATIM);
    }

    #[test]
    fn raw_json_is_kept_as_it_stands() {
        #[derive(Serialize)]
        struct WithRaw {
            a: u8,
            raw: Box<serde_json::value::RawValue>,
        }
        let raw = serde_json::value::RawValue::from_string(r#"{ "x" : [1, 2] }"#.into()).unwrap();
        let fields = WithRaw { a: 1, raw };
        assert_eq!(form_of(&fields), VERBATIM);
        assert!(serde_json::to_string(&fields).unwrap().contains(r#"{ "x" : [1, 2] }"#));
    }

    #[test]
    fn what_serde_json_cannot_write_is_null_and_the_block_goes_on() {
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let plain = object(r#"{"a":"value","b":2}"#);
        let failing = BTreeMap::from([("a", Fails)]);
        let keyed_by_lists = BTreeMap::from([(vec![1u8], 1u8)]);
        let mut enc = Fields::default();
        let mut dec = Fields::default();
        let mut round_trip = |fields: &dyn Fn(&mut Fields, &mut Vec<u8>)| {
            let mut out = Vec::new();
            fields(&mut enc, &mut out);
            (out[0], String::from_utf8(dec.decode(&out, b"").unwrap().to_vec()).unwrap())
        };
        let plain_text = serde_json::to_string(&plain).unwrap();
        assert_eq!(round_trip(&|e, o| e.encode(&plain, b"", o)), (COMPACT, plain_text.clone()));
        assert_eq!(round_trip(&|e, o| e.encode(&failing, b"", o)), (VERBATIM, "null".into()));
        assert_eq!(
            round_trip(&|e, o| e.encode(&keyed_by_lists, b"", o)),
            (VERBATIM, "null".into())
        );
        assert_eq!(round_trip(&|e, o| e.encode(&Fails, b"", o)), (VERBATIM, "null".into()));
        // The key table written before them still holds.
        let again = round_trip(&|e, o| e.encode(&plain, b"", o));
        assert_eq!(again, (COMPACT, plain_text));
    }

    #[test]
    fn serde_protocol_broken_or_errors_dropped_is_serde_json_s_text() {
        /// Promises three items, gives one.
        struct Short;
        impl Serialize for Short {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(3))?;
                seq.serialize_element(&1)?;
                seq.end()
            }
        }
        /// Drops the error of an item this encoder refuses.
        struct Careless(bool);
        impl Serialize for Careless {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(None)?;
                // Refused before a byte is written: without noticing, the
                // array would be `[1]`, not `[0.1,1]`.
                let _ = seq.serialize_element(&0.1f32);
                seq.serialize_element(&1)?;
                if self.0 {
                    // Refused when half written.
                    let _ = seq.serialize_element(&nest(Value::Null, MAX_DEPTH + 1, true));
                }
                seq.end()
            }
        }
        /// A value without its key.
        struct Keyless;
        impl Serialize for Keyless {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_value(&1)?;
                map.end()
            }
        }
        assert_eq!(form_of(&BTreeMap::from([("s", Short)])), VERBATIM);
        assert_eq!(form_of(&BTreeMap::from([("c", Careless(false))])), VERBATIM);
        assert_eq!(form_of(&BTreeMap::from([("c", Careless(true))])), VERBATIM);
        assert_eq!(form_of(&Keyless), VERBATIM);
    }
}

//! Decode: typed fields beside a record's raw bytes.
//!
//! Invariants:
//! - Decoding never replaces or changes `Record::payload`; it only adds
//!   [`Decoded::fields`].
//! - Input that does not parse yields a [`Decoded`] with `parse_error` set
//!   (a reason from a small fixed set, usable as a metric label) and whatever
//!   fields could be read; it is never dropped and never panics.
//! - Memory per input is bounded: no allocation is sized by a length field
//!   read from the wire without checking it against the bytes present.
//!
//! Format: the fields of each stream are documented in `docs/records.md`
//! (the JSON schema `raven-agent decode` prints and the store keeps).

use bytes::Bytes;
use serde_json::{Map, Value};

/// What decoding one record produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decoded {
    /// Stream-specific fields (see `docs/records.md`), JSON-ready.
    pub fields: Map<String, Value>,
    /// Set when the input did not fully parse.
    pub parse_error: Option<ParseError>,
    /// A datagram to send back to the record's source once the record is
    /// durable (the Response PDU that acknowledges an SNMP inform).
    pub reply: Option<Bytes>,
}

/// Why an input did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// Short snake_case reason from a fixed set per decoder
    /// (e.g. `truncated`, `bad_version`, `bad_ber`): a metric label.
    pub reason: &'static str,
    /// Human detail for logs and the JSON output; never holds secrets
    /// (SNMP communities, keys).
    pub detail: String,
}

impl ParseError {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        ParseError { reason, detail: detail.into() }
    }
}

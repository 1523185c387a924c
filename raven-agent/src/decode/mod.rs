//! Decode: typed fields beside a record's raw bytes.
//!
//! Invariants:
//! - Decoding never replaces or changes `Record::payload`; it only adds
//!   [`Decoded::fields`].
//! - Input that does not parse yields a [`Decoded`] with `parse_error` set
//!   (a reason from a small fixed set, usable as a metric label) and whatever
//!   fields could be read; it is never dropped and never panics. Should a
//!   decoder (or a parser crate under it) panic all the same, the panic is
//!   caught per record: that record is kept raw with `decoder_panic`, and
//!   the ingest stage goes on with the next one.
//! - Memory per input is bounded: no allocation is sized by a length field
//!   read from the wire without checking it against the bytes present.
//!
//! Format: the fields of each stream are documented in `docs/records.md`
//! (the JSON schema the store keeps and `raven-agent segments cat` prints).
//!
//! Operations: [`Decoder::decode_batch`] per captured batch (one metrics
//! event per batch). Syslog, SNMP, NetFlow, IPFIX and sFlow v5 are decoded;
//! flow decoders also report sequence gaps (loss upstream) per exporter.

pub mod capture_file;
pub mod cli;
pub mod exporters;
pub mod flow;
pub mod sflow;
pub mod snmp;
pub mod syslog;
pub mod templates;
pub mod usm;

/// The shared captures as inputs for fuzzing, benches and property tests.
pub mod samples;

use bytes::Bytes;
use serde_json::{Map, Value};

/// What decoding one record produced: a stream decoder's `F` is its fields'
/// type (a JSON map for most), the [`Decoder`]'s is [`Fields`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decoded<F = Map<String, Value>> {
    /// Stream-specific fields (see `docs/records.md`), JSON-ready.
    pub fields: F,
    /// Set when the input did not fully parse.
    pub parse_error: Option<ParseError>,
    /// A datagram to send back to the record's source once the record is
    /// durable: the Response PDU that acknowledges an SNMP inform, or the
    /// Report an SNMPv3 request gets (engine discovery, USM errors).
    pub reply: Option<Bytes>,
}

/// A record's decoded fields: a JSON object either way. Most decoders
/// build a `serde_json::Map`; the flow decoder builds typed structs, since
/// a map with an owned `String` per key for every flow, and dropping it,
/// were a third of an IPFIX datagram's decode (`docs/benchmarks.md`). The
/// store encodes either as it serializes (`store::fields`), without making
/// one from the other.
#[derive(Clone, Debug, PartialEq)]
pub enum Fields {
    Object(Map<String, Value>),
    Flow(flow::Message),
}

impl Default for Fields {
    fn default() -> Self {
        Fields::Object(Map::new())
    }
}

impl From<Map<String, Value>> for Fields {
    fn from(map: Map<String, Value>) -> Self {
        Fields::Object(map)
    }
}

impl serde::Serialize for Fields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Fields::Object(map) => map.serialize(serializer),
            Fields::Flow(message) => message.serialize(serializer),
        }
    }
}

impl From<Decoded> for Decoded<Fields> {
    fn from(d: Decoded) -> Self {
        Decoded { fields: Fields::Object(d.fields), parse_error: d.parse_error, reply: d.reply }
    }
}

/// The parse error of a record whose decoder panicked.
pub const DECODER_PANIC: &str = "decoder_panic";

impl<F> Decoded<F> {
    /// Whether the decoder panicked on this input (and the panic was
    /// caught): what fuzz targets and property tests look for, since the
    /// pipeline's entry point no longer lets a panic through.
    pub fn panicked(&self) -> bool {
        self.parse_error.as_ref().is_some_and(|e| e.reason == DECODER_PANIC)
    }
}

/// Runs `decode` for `record`, turning a panic into a parse error: a bug
/// in a decoder or a parser crate must cost one record its fields, not the
/// agent its ingest stage (everything after it would stop being stored).
/// The decoders' state sits behind mutexes that are taken over when
/// poisoned, so the next record decodes as usual.
fn contain_panic(
    record: &crate::record::Record,
    decode: impl FnOnce() -> (Option<Decoded<Fields>>, flow::Sequence),
) -> (Option<Decoded<Fields>>, flow::Sequence) {
    let panic = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(decoded) => return decoded,
        Err(panic) => panic,
    };
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(stream = %record.stream, exporter = %record.src, panic = %message,
        reason = DECODER_PANIC, "a decoder panicked; the record is kept raw");
    let decoded = Decoded {
        fields: Fields::Object(Map::new()),
        parse_error: Some(ParseError::new(DECODER_PANIC, format!("decoder panicked: {message}"))),
        reply: None,
    };
    (Some(decoded), flow::Sequence::default())
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

    /// How the store keeps it beside the record: `reason: detail`.
    pub fn stored_form(&self) -> String {
        format!("{}: {}", self.reason, self.detail)
    }
}

/// The decoders of every stream, configured once.
pub struct Decoder {
    syslog: syslog::SyslogDecoder,
    /// Templates and sequence state change with every datagram.
    flow: std::sync::Mutex<flow::FlowDecoder>,
    exporters: std::sync::Arc<exporters::ExporterBook>,
    /// sFlow sequence state per agent.
    sflow: std::sync::Mutex<sflow::SflowDecoder>,
    /// USM users (keys derived once, here) and Raven's SNMP engine.
    snmp: snmp::SnmpDecoder,
}

impl Decoder {
    pub fn new(config: &crate::config::DecodeConfig) -> Decoder {
        let offset = syslog::parse_offset(&config.syslog_timezone)
            .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("UTC"));
        Decoder {
            syslog: syslog::SyslogDecoder::new(offset),
            flow: std::sync::Mutex::new(flow::FlowDecoder::default()),
            exporters: Default::default(),
            sflow: std::sync::Mutex::new(sflow::SflowDecoder::default()),
            snmp: snmp::SnmpDecoder::new(
                usm::Usm::new(
                    config.snmp_users.iter().filter_map(usm::User::from_config).collect(),
                ),
                usm::LocalEngine::ephemeral(&config.snmp_engine_id),
            ),
        }
    }

    /// Answers SNMPv3 informs as this engine (the persisted one of a
    /// running appliance) instead of an ephemeral one.
    pub fn with_snmp_engine(mut self, engine: usm::LocalEngine) -> Decoder {
        self.snmp.set_engine(engine);
        self
    }

    /// Decodes one record; also returns what its sequence number says
    /// about loss upstream (flows).
    pub fn decode(
        &self,
        record: &crate::record::Record,
    ) -> (Option<Decoded<Fields>>, flow::Sequence) {
        contain_panic(record, || self.decode_unguarded(record))
    }

    fn decode_unguarded(
        &self,
        record: &crate::record::Record,
    ) -> (Option<Decoded<Fields>>, flow::Sequence) {
        use crate::record::Stream;
        let none = flow::Sequence::default();
        match record.stream {
            Stream::Syslog => {
                (Some(self.syslog.decode(&record.payload, record.captured_at).into()), none)
            }
            Stream::Snmp => (Some(self.snmp.decode(&record.payload).into()), none),
            Stream::Windows => (Some(windows_event(&record.payload).into()), none),
            Stream::Netflow | Stream::Ipfix => {
                let mut flow = self.flow.lock().unwrap_or_else(|p| p.into_inner());
                let (decoded, sequence) = flow.decode(record.src, &record.payload);
                (Some(decoded), sequence)
            }
            Stream::Sflow => {
                let mut sflow = self.sflow.lock().unwrap_or_else(|p| p.into_inner());
                let (decoded, sequence) = sflow.decode(&record.payload);
                (Some(decoded.into()), sequence)
            }
        }
    }

    /// Keeps NetFlow v9/IPFIX templates in `journal` across restarts.
    pub fn with_template_journal(
        mut self,
        journal: std::sync::Arc<templates::TemplateJournal>,
    ) -> Decoder {
        self.flow = std::sync::Mutex::new(flow::FlowDecoder::new(Some(journal)));
        self
    }

    /// Publishes the flow decoder's template-cache counters.
    pub fn sample_metrics(&self) {
        let (_, grown) = self.flow.lock().unwrap_or_else(|p| p.into_inner()).sample();
        crate::metrics::emit(crate::metrics::FlowTemplatesSampled(grown));
    }

    /// What each exporter sent, as decoded so far.
    pub fn exporters(&self) -> std::sync::Arc<exporters::ExporterBook> {
        self.exporters.clone()
    }

    /// Decodes a batch; `None` where the stream has no decoder yet.
    pub fn decode_batch(&self, batch: &[crate::record::Record]) -> Vec<Option<Decoded<Fields>>> {
        let mut event = crate::metrics::DecodedBatch::default();
        let mut seen = Vec::with_capacity(batch.len());
        let decoded = batch
            .iter()
            .map(|record| {
                let (d, sequence) = self.decode(record);
                let parse_error = d.as_ref().and_then(|d| d.parse_error.as_ref().map(|e| e.reason));
                event.add(record.stream, d.as_ref().map(|_| parse_error));
                event.sequence(record.stream, record.src.ip(), sequence.lost, sequence.restarted);
                seen.push(exporters::Observation {
                    stream: record.stream,
                    exporter: record.src.ip(),
                    bytes: record.payload.len(),
                    parse_error,
                    sequence_lost: sequence.lost,
                    restarted: sequence.restarted,
                });
                d
            })
            .collect();
        crate::metrics::emit(event);
        self.exporters.add_batch(std::time::SystemTime::now(), seen);
        decoded
    }
}

/// How a decode result is stored beside the raw bytes: the fields as a
/// JSON object, the parse error as `reason: detail`.
pub fn stored_form<F: serde::Serialize>(
    decoded: Option<&Decoded<F>>,
) -> (Option<Bytes>, Option<String>) {
    match decoded {
        Some(d) => (
            serde_json::to_vec(&d.fields).ok().map(Bytes::from),
            d.parse_error.as_ref().map(ParseError::stored_form),
        ),
        None => (None, None),
    }
}

/// A Windows event as posted: one JSON object, kept whole under `event`.
pub fn windows_event(payload: &[u8]) -> Decoded {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(event)) => {
            let mut fields = Map::new();
            fields.insert("event".into(), Value::Object(event));
            Decoded { fields, parse_error: None, reply: None }
        }
        Ok(_) => Decoded {
            parse_error: Some(ParseError::new("not_an_object", "the event is not a JSON object")),
            ..Decoded::default()
        },
        Err(e) => Decoded {
            parse_error: Some(ParseError::new("bad_json", e.to_string())),
            ..Decoded::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Record, Stream, Via};

    fn record(stream: Stream, payload: &'static [u8]) -> Record {
        Record {
            captured_at: std::time::SystemTime::now(),
            stream,
            src: "192.0.2.9:2055".parse().unwrap(),
            dst_port: 2055,
            ifindex: 0,
            wire_len: payload.len() as u32,
            truncated: false,
            via: Via::Socket,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn a_panicking_decoder_costs_one_record_its_fields_and_nothing_else() {
        let decoder = Decoder::new(&crate::config::DecodeConfig::default());
        let flow = record(Stream::Netflow, &[0, 5, 0, 0]);
        // A panic with the flow decoder's lock held: the lock is poisoned.
        let (decoded, sequence) = contain_panic(&flow, || {
            let _held = decoder.flow.lock().unwrap();
            panic!("parser bug")
        });
        let decoded = decoded.expect("the record is kept");
        assert!(decoded.panicked());
        let error = decoded.parse_error.expect("with a parse error");
        assert!(error.detail.contains("parser bug"), "{}", error.detail);
        assert_eq!(sequence, flow::Sequence::default());
        assert!(decoder.flow.is_poisoned());

        // The next records decode as usual, through the poisoned lock too.
        let (next, _) = decoder.decode(&flow);
        assert_eq!(next.unwrap().parse_error.unwrap().reason, "bad_flow");
        let (line, _) = decoder.decode(&record(Stream::Syslog, b"<14>Nov 29 12:00:00 sw1 ok"));
        assert!(line.unwrap().parse_error.is_none());
    }
}

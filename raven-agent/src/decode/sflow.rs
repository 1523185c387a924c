//! sFlow version 5, with `flowparser-sflow`.
//!
//! Invariants:
//! - A datagram that does not fully parse is kept raw with a reason from a
//!   fixed set ([`REASONS`]); its header and the samples before the one that
//!   failed are still reported, so the agent's sequence keeps being tracked.
//!   Nothing panics.
//! - Memory is bounded: the parser refuses datagrams announcing more than
//!   [`MAX_SAMPLES`] samples (the header and the first [`MAX_SAMPLES`] are
//!   still reported), every allocation in the crate is capped by the bytes
//!   present, and the JSON is a constant factor of the datagram's size.
//! - Sequence gaps are counted per agent address and sub-agent id (not per
//!   UDP source: the agent address inside the datagram names the agent), with
//!   the NetFlow tracker ([`super::flow::SequenceTracker`]): the datagram
//!   sequence advances by one per datagram; a jump backwards, or forwards by
//!   2^24 or more, is an agent restart, not loss.
//!
//! Format (sflow.org/sflow_version_5.txt, XDR, big-endian): version (5),
//! agent address type (1 IPv4, 2 IPv6) and address, sub-agent id, datagram
//! sequence, uptime in ms, sample count, then samples, each tagged
//! `enterprise << 12 | format` with a length: 0:1 flow, 0:2 counter, 0:3
//! expanded flow, 0:4 expanded counter, 0:5 discarded packet (the drops
//! extension). Compact samples pack the source id (class in the top byte,
//! index below) and the interfaces (format in the top two bits: 0 ifIndex,
//! 1 discard reason, 2 number of output interfaces; value below). Flow
//! samples carry records (raw packet header, sampled IPv4/IPv6, extended
//! switch/router/gateway, …), counter samples counter records; the crate
//! decodes them and keeps unknown ones as bytes. Raw packet headers are not
//! decoded by the crate; `etherparse` reads their addresses and ports.
//!
//! Operations: [`SflowDecoder::decode`] per datagram. The JSON fields are
//! documented in `docs/records.md`.

use std::net::IpAddr;

use flowparser_sflow::{
    AddressType, FlowRecord, ParseContext, SflowDatagram, SflowError, SflowParser, SflowSample,
};
use serde_json::{Map, Value, json};

use super::{
    Decoded, ParseError,
    flow::{Sequence, SequenceTracker},
};

/// Samples one datagram may announce. An Ethernet-MTU datagram holds a
/// handful; a 64 KiB one cannot hold 256 of any real size.
pub const MAX_SAMPLES: u32 = 256;

/// Every `parse_error` reason this decoder reports (metric labels).
pub const REASONS: &[&str] = &[
    "truncated",
    "bad_version",
    "bad_agent_address",
    "bad_sample",
    "too_many_samples",
    "trailing_bytes",
];

pub struct SflowDecoder {
    parser: SflowParser,
    /// (agent address, sub-agent id) → the datagram sequence expected next.
    expected: SequenceTracker<(IpAddr, u32)>,
}

impl Default for SflowDecoder {
    fn default() -> Self {
        SflowDecoder {
            parser: SflowParser::builder().with_max_samples(MAX_SAMPLES).build(),
            expected: SequenceTracker::default(),
        }
    }
}

impl SflowDecoder {
    pub fn decode(&mut self, payload: &[u8]) -> (Decoded, Sequence) {
        let (datagram, declared, parse_error) = self.parse(payload);
        let mut fields = Map::new();
        let mut sequence = Sequence::default();
        let Some(datagram) = datagram else {
            // The header did not parse; its first word still says which
            // version was sent (sFlow v2/v4, or another protocol's header).
            if let Some(version) = payload.get(..4) {
                let version = u32::from_be_bytes(version.try_into().unwrap_or_default());
                fields.insert("version".into(), json!(version));
            }
            return (Decoded { fields, parse_error, reply: None }, sequence);
        };
        let agent = match datagram.agent_address {
            AddressType::IPv4(a) => IpAddr::V4(a),
            AddressType::IPv6(a) => IpAddr::V6(a),
        };
        fields.insert("version".into(), json!(datagram.version));
        fields.insert("agent".into(), json!(agent));
        fields.insert("sub_agent_id".into(), json!(datagram.sub_agent_id));
        fields.insert("sequence".into(), json!(datagram.sequence_number));
        fields.insert("uptime_ms".into(), json!(datagram.uptime));
        fields.insert("sample_count".into(), json!(declared));
        sequence = self.expected.check((agent, datagram.sub_agent_id), datagram.sequence_number, 1);
        if sequence.lost > 0 {
            fields.insert("sequence_gap".into(), json!(sequence.lost));
        }
        if sequence.restarted {
            fields.insert("exporter_restarted".into(), json!(true));
        }
        fields.insert("samples".into(), datagram.samples.iter().map(sample).collect());
        (Decoded { fields, parse_error, reply: None }, sequence)
    }

    /// The datagram (or as much of it as parses), the sample count its
    /// header announces, and why it did not fully parse.
    fn parse(&self, payload: &[u8]) -> (Option<SflowDatagram>, u32, Option<ParseError>) {
        let mut result = self.parser.parse_bytes(payload);
        if !result.datagrams.is_empty() {
            // One sFlow datagram per UDP datagram: anything after it is
            // extra (the crate tried to read it as another datagram).
            let extra = result.datagrams.len() - 1;
            let datagram = result.datagrams.swap_remove(0);
            let declared = datagram.samples.len() as u32;
            let error = (extra > 0 || result.error.is_some()).then(|| {
                ParseError::new(
                    "trailing_bytes",
                    match &result.error {
                        Some(e) => format!(
                            "bytes follow the datagram's {declared} samples (read as another \
                             datagram: {e})"
                        ),
                        None => format!("{extra} more datagram(s) after the first"),
                    },
                )
            });
            return (Some(datagram), declared, error);
        }
        let error = result.error.unwrap_or(SflowError::Incomplete {
            available: 0,
            expected: None,
            context: ParseContext::DatagramHeader,
        });
        let reason = match &error {
            SflowError::Incomplete { .. } => "truncated",
            SflowError::UnsupportedVersion { .. } => "bad_version",
            // The crate reports a cut address as a bad address type.
            SflowError::ParseError { context: ParseContext::AgentAddress, .. } => {
                match payload.get(4..8) {
                    Some([0, 0, 0, 1 | 2]) => "truncated",
                    _ => "bad_agent_address",
                }
            }
            SflowError::ParseError { .. } => "bad_sample",
            SflowError::TooManySamples { .. } => "too_many_samples",
        };
        // The header parsed if the failure is in the samples: ask the crate
        // again with the header's sample count lowered, to find how many
        // leading samples parse (at most log2(MAX_SAMPLES) + 1 more parses).
        let (datagram, declared) = match self.leading_samples(payload) {
            Some((datagram, declared)) => (Some(datagram), declared),
            None => (None, 0),
        };
        let detail = match &datagram {
            Some(d) => format!("{error}; {} of {declared} samples decoded", d.samples.len()),
            None => error.to_string(),
        };
        (datagram, declared, Some(ParseError::new(reason, detail)))
    }

    /// The datagram with as many of its leading samples as parse, and the
    /// sample count its header announces; `None` when the header itself does
    /// not parse.
    fn leading_samples(&self, payload: &[u8]) -> Option<(SflowDatagram, u32)> {
        // Where the sample count sits: after version, address type, the
        // address (4 or 16 bytes), sub-agent id, sequence and uptime.
        let at = match payload.get(4..8)? {
            [0, 0, 0, 1] => 24,
            [0, 0, 0, 2] => 36,
            _ => return None,
        };
        let declared = u32::from_be_bytes(payload.get(at..at + 4)?.try_into().ok()?);
        let mut patched = payload.to_vec();
        let mut with = |n: u32| {
            patched[at..at + 4].copy_from_slice(&n.to_be_bytes());
            self.parser.parse_bytes(&patched).datagrams.into_iter().next()
        };
        // Invariant: `good` leading samples parse (`best` is that datagram);
        // `bad` do not: the full count failed, and more than MAX_SAMPLES is
        // refused anyway.
        let mut best = with(0)?;
        let (mut good, mut bad) = (0, declared.min(MAX_SAMPLES + 1));
        while bad - good > 1 {
            let mid = good + (bad - good) / 2;
            match with(mid) {
                Some(d) => (good, best) = (mid, d),
                None => bad = mid,
            }
        }
        Some((best, declared))
    }
}

/// "class:index", as sflowtool prints a source id.
fn source_id(class: u32, index: u32) -> Value {
    json!(format!("{class}:{index}"))
}

/// A compact sample's interface: (format, value).
fn interface(raw: u32) -> (u32, u32) {
    (raw >> 30, raw & 0x3fff_ffff)
}

fn sample(s: &SflowSample) -> Value {
    match s {
        SflowSample::Flow(f) => {
            let ((in_format, input), (out_format, output)) =
                (interface(f.input), interface(f.output));
            json!({
                "type": "flow", "sequence": f.sequence_number,
                "source_id": source_id(f.source_id_type, f.source_id_index),
                "sampling_rate": f.sampling_rate, "sample_pool": f.sample_pool, "drops": f.drops,
                "input": input, "input_format": in_format,
                "output": output, "output_format": out_format,
                "records": f.records.iter().map(flow_record).collect::<Vec<_>>(),
            })
        }
        SflowSample::ExpandedFlow(f) => json!({
            "type": "expanded_flow", "sequence": f.sequence_number,
            "source_id": source_id(f.source_id_type, f.source_id_index),
            "sampling_rate": f.sampling_rate, "sample_pool": f.sample_pool, "drops": f.drops,
            "input": f.input_value, "input_format": f.input_format,
            "output": f.output_value, "output_format": f.output_format,
            "records": f.records.iter().map(flow_record).collect::<Vec<_>>(),
        }),
        SflowSample::Counter(c) => json!({
            "type": "counter", "sequence": c.sequence_number,
            "source_id": source_id(c.source_id_type, c.source_id_index),
            "records": c.records.iter().map(record).collect::<Vec<_>>(),
        }),
        SflowSample::ExpandedCounter(c) => json!({
            "type": "expanded_counter", "sequence": c.sequence_number,
            "source_id": source_id(c.source_id_type, c.source_id_index),
            "records": c.records.iter().map(record).collect::<Vec<_>>(),
        }),
        SflowSample::DiscardedPacket(d) => {
            let ((in_format, input), (out_format, output)) =
                (interface(d.input), interface(d.output));
            json!({
                "type": "discarded", "sequence": d.sequence_number,
                "source_id": source_id(d.ds_class, d.ds_index), "drops": d.drops,
                "input": input, "input_format": in_format,
                "output": output, "output_format": out_format, "reason": d.reason,
                "records": d.records.iter().map(flow_record).collect::<Vec<_>>(),
            })
        }
        SflowSample::Unknown { enterprise, format, data } => json!({
            "type": "unknown", "enterprise": enterprise, "format": format, "length": data.len(),
        }),
    }
}

/// A flow record; a raw packet header also gets its addresses and ports.
fn flow_record(r: &FlowRecord) -> Value {
    let mut value = record(r);
    if let (FlowRecord::RawPacketHeader(h), Value::Object(fields)) = (r, &mut value) {
        fields.extend(packet_header(h.header_protocol, &h.header));
    }
    value
}

/// A flow or counter record as the crate decodes it: `type` is the crate's
/// name for it in snake_case, its fields follow; bytes are hex.
fn record(r: &impl serde::Serialize) -> Value {
    // The crate's types serialize externally tagged: {"Variant": {fields}}.
    let Ok(Value::Object(tagged)) = serde_json::to_value(r) else { return Value::Null };
    let Some((variant, inner)) = tagged.into_iter().next() else { return Value::Null };
    let mut fields = Map::new();
    fields.insert("type".into(), json!(snake_case(&variant)));
    match inner {
        Value::Object(inner) => {
            for (key, value) in inner {
                let value = match (key.as_str(), value) {
                    ("header" | "data", Value::Array(bytes)) => json!(hex(&bytes)),
                    (_, value) => plain_addresses(value),
                };
                fields.insert(key, value);
            }
        }
        other => {
            fields.insert("value".into(), plain_addresses(other));
        }
    }
    Value::Object(fields)
}

/// `{"IPv4": "192.0.2.1"}` (the crate's address enum) → `"192.0.2.1"`.
fn plain_addresses(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(address) = map.get("IPv4").or_else(|| map.get("IPv6"))
            {
                return address.clone();
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, plain_addresses(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(plain_addresses).collect()),
        other => other,
    }
}

fn hex(bytes: &[Value]) -> String {
    bytes.iter().filter_map(Value::as_u64).map(|b| format!("{b:02x}")).collect()
}

/// `ExtendedIpv4TunnelEgress` → `extended_ipv4_tunnel_egress`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The sampled packet's MACs, VLAN, addresses, protocol and ports, as far as
/// the header (header protocol 1 Ethernet, 11 IPv4, 12 IPv6) holds them.
fn packet_header(protocol: u32, header: &[u8]) -> Map<String, Value> {
    use etherparse::{LaxLinkExtSlice, LaxNetSlice, LaxSlicedPacket, LinkSlice, TransportSlice};
    let mut out = Map::new();
    let packet = match protocol {
        1 => LaxSlicedPacket::from_ethernet(header).ok(),
        11 | 12 => LaxSlicedPacket::from_ip(header).ok(),
        _ => None,
    };
    let Some(packet) = packet else { return out };
    let mac =
        |m: [u8; 6]| json!(m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"));
    if let Some(LinkSlice::Ethernet2(eth)) = &packet.link {
        out.insert("src_mac".into(), mac(eth.source()));
        out.insert("dst_mac".into(), mac(eth.destination()));
    }
    if let Some(LaxLinkExtSlice::Vlan(vlan)) = packet.link_exts.first() {
        out.insert("vlan".into(), json!(vlan.vlan_identifier().value()));
    }
    let (src, dst, ip_number): (IpAddr, IpAddr, u8) = match &packet.net {
        Some(LaxNetSlice::Ipv4(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().ip_number.0,
        ),
        Some(LaxNetSlice::Ipv6(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().ip_number.0,
        ),
        _ => return out,
    };
    let (src_port, dst_port) = match &packet.transport {
        Some(TransportSlice::Tcp(t)) => (Some(t.source_port()), Some(t.destination_port())),
        Some(TransportSlice::Udp(u)) => (Some(u.source_port()), Some(u.destination_port())),
        _ => (None, None),
    };
    out.insert("src_addr".into(), json!(src));
    out.insert("dst_addr".into(), json!(dst));
    out.insert("protocol".into(), json!(ip_number));
    out.insert("src_port".into(), json!(src_port));
    out.insert("dst_port".into(), json!(dst_port));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An sFlow v5 datagram from agent 192.0.2.1 (sub-agent `sub`) with
    /// `sequence`, one flow sample holding a raw Ethernet/IPv4/TCP header and
    /// one counter sample holding a generic interface counter record.
    fn datagram(sub: u32, sequence: u32) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend([0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
        frame.extend([0x45, 0, 0, 40, 0, 1, 0, 0, 64, 6, 0, 0]);
        frame.extend([192, 0, 2, 10, 198, 18, 0, 20]);
        frame.extend(40000u16.to_be_bytes());
        frame.extend(443u16.to_be_bytes());
        frame.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0x20, 0, 0, 0, 0, 0]);
        let mut raw = Vec::new();
        raw.extend(1u32.to_be_bytes()); // header protocol: Ethernet
        raw.extend(64u32.to_be_bytes()); // frame length
        raw.extend(4u32.to_be_bytes()); // stripped
        raw.extend((frame.len() as u32).to_be_bytes());
        raw.extend(&frame);
        while raw.len() % 4 != 0 {
            raw.push(0);
        }
        let mut flow = Vec::new();
        flow.extend(7u32.to_be_bytes()); // sample sequence
        flow.extend(3u32.to_be_bytes()); // source id 0:3
        flow.extend(1000u32.to_be_bytes()); // sampling rate
        flow.extend(5000u32.to_be_bytes()); // pool
        flow.extend(2u32.to_be_bytes()); // drops
        flow.extend(3u32.to_be_bytes()); // input ifIndex 3
        flow.extend((0x8000_0002u32).to_be_bytes()); // output: 2 interfaces
        flow.extend(1u32.to_be_bytes()); // one record
        flow.extend(1u32.to_be_bytes()); // 0:1 raw packet header
        flow.extend((raw.len() as u32).to_be_bytes());
        flow.extend(&raw);
        let mut counter = Vec::new();
        counter.extend(9u32.to_be_bytes());
        counter.extend(3u32.to_be_bytes());
        counter.extend(1u32.to_be_bytes());
        counter.extend(1u32.to_be_bytes()); // 0:1 generic interface
        counter.extend(88u32.to_be_bytes());
        counter.extend(3u32.to_be_bytes()); // ifIndex
        counter.extend(6u32.to_be_bytes()); // ifType
        counter.extend(1_000_000_000u64.to_be_bytes());
        counter.extend([0u8; 88 - 16]);
        let mut d = Vec::new();
        d.extend(5u32.to_be_bytes());
        d.extend(1u32.to_be_bytes());
        d.extend([192, 0, 2, 1]);
        d.extend(sub.to_be_bytes());
        d.extend(sequence.to_be_bytes());
        d.extend(123_456u32.to_be_bytes());
        d.extend(2u32.to_be_bytes());
        d.extend(1u32.to_be_bytes());
        d.extend((flow.len() as u32).to_be_bytes());
        d.extend(&flow);
        d.extend(2u32.to_be_bytes());
        d.extend((counter.len() as u32).to_be_bytes());
        d.extend(&counter);
        d
    }

    #[test]
    fn header_samples_and_raw_packet_headers() {
        let mut decoder = SflowDecoder::default();
        let (d, s) = decoder.decode(&datagram(0, 100));
        assert_eq!(d.parse_error, None);
        assert_eq!(s, Sequence::default());
        let f = &d.fields;
        assert_eq!(f["version"], 5);
        assert_eq!(f["agent"], "192.0.2.1");
        assert_eq!(f["sub_agent_id"], 0);
        assert_eq!(f["sequence"], 100);
        assert_eq!(f["uptime_ms"], 123_456);
        assert_eq!(f["sample_count"], 2);
        let flow = &f["samples"][0];
        assert_eq!(flow["type"], "flow");
        assert_eq!(flow["source_id"], "0:3");
        assert_eq!(flow["sampling_rate"], 1000);
        assert_eq!(flow["sample_pool"], 5000);
        assert_eq!(flow["drops"], 2);
        assert_eq!((&flow["input"], &flow["input_format"]), (&json!(3), &json!(0)));
        assert_eq!((&flow["output"], &flow["output_format"]), (&json!(2), &json!(2)));
        let raw = &flow["records"][0];
        assert_eq!(raw["type"], "raw_packet_header");
        assert_eq!(raw["frame_length"], 64);
        assert_eq!(raw["src_addr"], "192.0.2.10");
        assert_eq!(raw["dst_addr"], "198.18.0.20");
        assert_eq!(raw["protocol"], 6);
        assert_eq!((&raw["src_port"], &raw["dst_port"]), (&json!(40000), &json!(443)));
        assert_eq!(raw["src_mac"], "02:00:00:00:00:01");
        assert!(raw["header"].as_str().unwrap().starts_with("020000000002"));
        let counter = &f["samples"][1];
        assert_eq!(counter["type"], "counter");
        assert_eq!(counter["sequence"], 9);
        assert_eq!(counter["records"][0]["type"], "generic_interface");
        assert_eq!(counter["records"][0]["if_index"], 3);
    }

    #[test]
    fn sequence_gaps_per_agent_and_sub_agent() {
        let mut decoder = SflowDecoder::default();
        assert_eq!(decoder.decode(&datagram(0, 100)).1, Sequence::default());
        assert_eq!(decoder.decode(&datagram(0, 101)).1, Sequence::default(), "one per datagram");
        // Sub-agent 1 has its own sequence.
        assert_eq!(decoder.decode(&datagram(1, 5000)).1, Sequence::default());
        let (d, s) = decoder.decode(&datagram(0, 105));
        assert_eq!(s, Sequence { lost: 3, restarted: false }, "102..=104 missing");
        assert_eq!(d.fields["sequence_gap"], 3);
        let (d, s) = decoder.decode(&datagram(0, 1));
        assert_eq!(s, Sequence { lost: 0, restarted: true }, "a reset counter is a restart");
        assert_eq!(d.fields["exporter_restarted"], true);
        assert_eq!(decoder.decode(&datagram(1, 5001)).1, Sequence::default());
    }

    #[test]
    fn malformed_datagrams_keep_what_parses_with_a_reason() {
        let mut decoder = SflowDecoder::default();
        let reason = |d: &Decoded| d.parse_error.as_ref().map(|e| e.reason);
        let good = datagram(0, 100);

        let mut v4 = good.clone();
        v4[3] = 4;
        let (d, _) = decoder.decode(&v4);
        assert_eq!(reason(&d), Some("bad_version"));
        assert_eq!(d.fields["version"], 4, "the version sent, for the operator");
        let mut address = good.clone();
        address[7] = 3;
        assert_eq!(reason(&decoder.decode(&address).0), Some("bad_agent_address"));
        assert_eq!(reason(&decoder.decode(&good[..20]).0), Some("truncated"));
        assert_eq!(reason(&decoder.decode(&good[..10]).0), Some("truncated"), "address cut");

        // The counter sample cut short: the header and the flow sample stay.
        let (d, s) = decoder.decode(&good[..good.len() - 8]);
        assert_eq!(reason(&d), Some("truncated"));
        assert_eq!(d.fields["sequence"], 100);
        assert_eq!(d.fields["sample_count"], 2);
        assert_eq!(d.fields["samples"].as_array().unwrap().len(), 1);
        assert_eq!(s, Sequence::default());
        assert_eq!(decoder.decode(&datagram(0, 101)).1, Sequence::default(), "still tracked");

        // A record length pointing past its sample: the sample is bad.
        let mut bad = good.clone();
        let at = 28 + 8 + 32 + 4; // first record's length
        bad[at..at + 4].copy_from_slice(&4000u32.to_be_bytes());
        let (d, _) = decoder.decode(&bad);
        assert_eq!(reason(&d), Some("bad_sample"));
        assert_eq!(d.fields["samples"].as_array().unwrap().len(), 0);

        let mut many = good.clone();
        many[24..28].copy_from_slice(&(MAX_SAMPLES + 1).to_be_bytes());
        let (d, _) = decoder.decode(&many);
        assert_eq!(reason(&d), Some("too_many_samples"));
        assert_eq!(d.fields["samples"].as_array().unwrap().len(), 2, "the two present");

        let mut trailing = good.clone();
        trailing.extend([0, 0, 0, 0]);
        let (d, _) = decoder.decode(&trailing);
        assert_eq!(reason(&d), Some("trailing_bytes"));
        assert_eq!(d.fields["samples"].as_array().unwrap().len(), 2);
        for d in [&v4, &address, &good[..20].to_vec(), &bad, &many, &trailing] {
            let r = reason(&decoder.decode(d).0).unwrap();
            assert!(REASONS.contains(&r), "{r}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_and_mutated_datagrams_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..800),
            flips in proptest::collection::vec((0usize..400, proptest::num::u8::ANY), 0..4),
            cut in 0usize..400,
        ) {
            let mut decoder = SflowDecoder::default();
            let (d, _) = decoder.decode(&bytes);
            if let Some(e) = &d.parse_error { proptest::prop_assert!(REASONS.contains(&e.reason)); }
            let mut v5 = vec![0u8, 0, 0, 5];
            v5.extend(&bytes);
            let _ = decoder.decode(&v5);
            let mut real = datagram(0, 7);
            for &(at, byte) in &flips {
                if at < real.len() { real[at] = byte; }
            }
            real.truncate(cut.min(real.len()));
            let (d, _) = decoder.decode(&real);
            if let Some(e) = &d.parse_error { proptest::prop_assert!(REASONS.contains(&e.reason)); }
        }
    }
}

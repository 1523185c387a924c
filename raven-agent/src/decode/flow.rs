//! NetFlow v5/v7/v9 and IPFIX, with `netflow_parser`.
//!
//! Invariants:
//! - Templates are scoped by exporter address and port and, for v9 and
//!   IPFIX, by source id / observation domain (`AutoScopedParser`), so two
//!   routers using template 256 never collide. The parser's caches are
//!   bounded (sources, templates per source).
//! - A datagram that does not parse (or whose data waits for a template)
//!   is kept raw with a reason; nothing panics.
//! - Sequence gaps are counted per exporter and domain: v5/v7 flow
//!   sequence (advances by the flows in each datagram), v9 package sequence
//!   (by one per datagram), IPFIX sequence (by the data records). A jump
//!   backwards, or forwards by more than half the number space, is an
//!   exporter restart, not loss.
//!
//! - Templates survive a restart: the parser writes them through to the
//!   [template journal](super::templates) in the data directory and asks
//!   it on a cache miss.
//! - Data that arrives before its template is held by the parser (bounded:
//!   [`PENDING_TEMPLATES`] template ids per source, [`PENDING_PER_TEMPLATE`]
//!   data sets each, [`PENDING_TTL`]) and decoded when the template comes:
//!   its flows are reported as `released_flows` of the datagram that
//!   carried the template.
//!   The datagram that was held is stored at once, raw, with
//!   `undecoded_data_set`; what expires or overflows is counted
//!   (`raven_decode_flow_pending_total{outcome="dropped"}`).

use std::{
    collections::{HashMap, hash_map::Entry},
    net::{IpAddr, SocketAddr},
};

use netflow_parser::{
    AutoScopedParser, CacheMetrics, FieldValue, NetflowPacket, NetflowParser, PendingFlowsConfig,
    TemplateStore, V9Field,
    variable_versions::ipfix::lookup::{IANAIPFixField, IPFixField},
};
use serde::Serialize;

use super::{Decoded, Fields, ParseError};

/// Exporters whose sequence state is kept (oldest forgotten beyond).
const MAX_SEQUENCE_SOURCES: usize = 10_000;

/// Held data: template ids per source, data sets per template id, and how
/// long they wait (exporters announce templates at least every few
/// minutes; Cisco's default is 30 minutes for v9, so some data is lost on
/// a fresh start with an empty journal — counted).
pub const PENDING_TEMPLATES: usize = 64;
pub const PENDING_PER_TEMPLATE: usize = 256;
pub const PENDING_TTL: std::time::Duration = std::time::Duration::from_secs(300);

pub struct FlowDecoder {
    parser: AutoScopedParser,
    /// (exporter, version, domain) → the sequence number expected next.
    expected: SequenceTracker<(IpAddr, u16, u32)>,
    /// Template cache totals at the last metrics sample.
    sampled: TemplateCacheTotals,
}

impl Default for FlowDecoder {
    fn default() -> Self {
        FlowDecoder::new(None)
    }
}

/// Template cache and held-data counters summed over every source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TemplateCacheTotals {
    pub pending_cached: u64,
    pub pending_replayed: u64,
    pub pending_dropped: u64,
    pub restored: u64,
    pub journal_errors: u64,
    /// Data sets held right now.
    pub pending_now: u64,
}

impl TemplateCacheTotals {
    fn add(&mut self, m: &CacheMetrics, pending_now: usize) {
        self.pending_cached += m.pending_cached;
        self.pending_replayed += m.pending_replayed;
        self.pending_dropped += m.pending_dropped + m.pending_replay_failed;
        self.restored += m.template_store_restored;
        self.journal_errors += m.template_store_codec_errors + m.template_store_backend_errors;
        self.pending_now += pending_now as u64;
    }
}

/// What the sequence says about one datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sequence {
    pub lost: u64,
    pub restarted: bool,
}

/// The sequence number each source should send next, keyed by whatever
/// identifies a sequence (NetFlow: exporter, version, domain; sFlow:
/// agent address and sub-agent id). Bounded: beyond
/// `MAX_SEQUENCE_SOURCES` keys it starts over.
pub struct SequenceTracker<K> {
    expected: HashMap<K, u32>,
}

impl<K> Default for SequenceTracker<K> {
    fn default() -> Self {
        SequenceTracker { expected: HashMap::new() }
    }
}

impl<K: std::hash::Hash + Eq> SequenceTracker<K> {
    /// Checks `sequence` against what the source's previous datagram
    /// announced, and remembers what to expect after this one (`advance`).
    pub fn check(&mut self, key: K, sequence: u32, advance: u32) -> Sequence {
        if self.expected.len() >= MAX_SEQUENCE_SOURCES && !self.expected.contains_key(&key) {
            self.expected.clear();
        }
        let mut out = Sequence::default();
        let next = sequence.wrapping_add(advance);
        // One hash per datagram (`entry`), not a lookup and an insert.
        match self.expected.entry(key) {
            Entry::Occupied(mut known) => {
                let ahead = sequence.wrapping_sub(*known.get());
                if ahead != 0 {
                    // Up to 16 M behind the expected number is loss; further
                    // (or backwards, which wraps to a huge value) is a restart.
                    if ahead < 1 << 24 {
                        out.lost = u64::from(ahead);
                    } else {
                        out.restarted = true;
                    }
                }
                known.insert(next);
            }
            Entry::Vacant(new) => {
                new.insert(next);
            }
        }
        out
    }
}

impl FlowDecoder {
    /// A decoder that holds data waiting for templates and, with a
    /// journal, keeps templates across restarts.
    pub fn new(journal: Option<std::sync::Arc<dyn TemplateStore>>) -> FlowDecoder {
        let mut pending = PendingFlowsConfig::with_ttl(PENDING_TEMPLATES, PENDING_TTL);
        pending.max_entries_per_template = PENDING_PER_TEMPLATE;
        let mut builder = NetflowParser::builder().with_pending_flows(pending);
        if let Some(journal) = journal {
            builder = builder.with_template_store(journal);
        }
        let parser = AutoScopedParser::try_with_builder(builder)
            .expect("the pending-flow settings above are valid");
        FlowDecoder { parser, expected: SequenceTracker::default(), sampled: Default::default() }
    }

    /// Totals now, and their growth since the last call (for counters).
    pub fn sample(&mut self) -> (TemplateCacheTotals, TemplateCacheTotals) {
        let mut now = TemplateCacheTotals::default();
        let infos = self.parser.v9_info().into_iter().map(|(_, info)| info);
        for info in infos.chain(self.parser.ipfix_info().into_iter().map(|(_, info)| info)) {
            now.add(&info.v9.metrics, info.v9.pending_flow_count);
            now.add(&info.ipfix.metrics, info.ipfix.pending_flow_count);
        }
        let last = std::mem::replace(&mut self.sampled, now);
        // Evicted sources take their counts with them: never go negative.
        let grown = TemplateCacheTotals {
            pending_cached: now.pending_cached.saturating_sub(last.pending_cached),
            pending_replayed: now.pending_replayed.saturating_sub(last.pending_replayed),
            pending_dropped: now.pending_dropped.saturating_sub(last.pending_dropped),
            restored: now.restored.saturating_sub(last.restored),
            journal_errors: now.journal_errors.saturating_sub(last.journal_errors),
            pending_now: now.pending_now,
        };
        (now, grown)
    }

    fn sequence(&mut self, key: (IpAddr, u16, u32), sequence: u32, advance: u32) -> Sequence {
        self.expected.check(key, sequence, advance)
    }

    pub fn decode(&mut self, exporter: SocketAddr, payload: &[u8]) -> (Decoded<Fields>, Sequence) {
        let result = self.parser.parse_from_source(exporter, payload);
        let mut sequence = Sequence::default();
        let mut parse_error = result.error.as_ref().map(|e| {
            let text = e.to_string();
            let reason = if text.contains("emplate") { "no_template" } else { "bad_flow" };
            ParseError::new(reason, text)
        });
        let Some(packet) = result.packets.first() else {
            return (
                Decoded {
                    fields: Fields::default(),
                    parse_error: parse_error
                        .or_else(|| Some(ParseError::new("bad_flow", "no NetFlow/IPFIX message"))),
                    reply: None,
                },
                sequence,
            );
        };
        let outline = Outline::of(packet);
        // A data set the parser kept without records (a template it could
        // not use): say so rather than report zero flows as if complete.
        if outline.undecoded > 0 && parse_error.is_none() {
            parse_error = Some(ParseError::new(
                "undecoded_data_set",
                format!("{} data set(s) not decoded with their template", outline.undecoded),
            ));
        }
        let version = outline.version;
        let mut message = Message {
            version,
            count: outline.count,
            sequence: outline.sequence,
            flows: flows(packet),
            ..Message::default()
        };
        if let Some(seq) = outline.sequence {
            let advance = match version {
                9 => 1,
                5 | 7 | 10 => message.flows.len() as u32,
                _ => 0,
            };
            let domain = outline.domain.unwrap_or(0);
            sequence = self.sequence((exporter.ip(), version, domain), seq, advance);
            message.sequence_gap = (sequence.lost > 0).then_some(sequence.lost);
            message.exporter_restarted = sequence.restarted;
        }
        match version {
            9 => message.source_id = outline.domain,
            10 => message.observation_domain = outline.domain,
            _ => {}
        }
        if matches!(version, 9 | 10) {
            // Data set ids from the datagram itself: the parser takes the
            // sets it holds for a missing template out of its output (and
            // adds the ones a template released).
            let data = raw_data_set_ids(version, payload);
            let held = data
                .iter()
                .filter(|&&id| {
                    !outline.sets.iter().any(|&(set, _)| set == id) && !outline.defines(id)
                })
                .count();
            if held > 0 {
                message.pending = Some(held);
                parse_error.get_or_insert_with(|| {
                    ParseError::new(
                        "no_template",
                        format!("{held} data set(s) held until their template arrives"),
                    )
                });
            }
            // Released data sets come last in the parser's output: their
            // records belong to earlier datagrams, reported apart.
            let own_sets = data.len() - held;
            let released: usize = outline.sets.iter().skip(own_sets).map(|&(_, n)| n).sum();
            if released > 0 && released <= message.flows.len() {
                message.released_flows = message.flows.split_off(message.flows.len() - released);
            }
            message.templates = Some(outline.templates);
            message.options_templates = Some(outline.options_templates);
            message.data_set_ids = Some(data);
        }
        if parse_error.is_none() && result.packets.len() > 1 {
            parse_error = Some(ParseError::new(
                "trailing_bytes",
                format!("{} messages in one datagram", result.packets.len()),
            ));
        }
        (Decoded { fields: Fields::Flow(message), parse_error, reply: None }, sequence)
    }
}

/// A NetFlow/IPFIX datagram's fields (`docs/records.md`). It serializes as
/// a JSON object with its keys in sorted order (the field order here) and
/// what is absent left out, as the map it replaced did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Message {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_set_ids: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exporter_restarted: bool,
    pub flows: Vec<Flow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observation_domain: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options_templates: Option<Vec<TemplateSummary>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub released_flows: Vec<Flow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence_gap: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub templates: Option<Vec<TemplateSummary>>,
    pub version: u16,
}

/// A template a datagram defines: its id and how many fields it lists
/// (an options template's scope fields included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TemplateSummary {
    pub fields: usize,
    pub id: u16,
}

impl TemplateSummary {
    fn v9(t: &netflow_parser::variable_versions::v9::Template) -> Self {
        TemplateSummary { id: t.template_id, fields: t.fields.len() }
    }

    fn v9_options(t: &netflow_parser::variable_versions::v9::OptionsTemplate) -> Self {
        TemplateSummary { id: t.template_id, fields: t.scope_fields.len() + t.option_fields.len() }
    }

    fn ipfix(t: &netflow_parser::variable_versions::ipfix::Template) -> Self {
        TemplateSummary { id: t.template_id, fields: t.fields.len() }
    }

    fn ipfix_options(t: &netflow_parser::variable_versions::ipfix::OptionsTemplate) -> Self {
        TemplateSummary { id: t.template_id, fields: t.fields.len() }
    }
}

/// One flow record: `null` for what the record lacks. Keys in sorted
/// order, as [`Message`]'s.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Flow {
    #[serde(serialize_with = "address_text")]
    pub dst_addr: Option<IpAddr>,
    pub dst_port: Option<u16>,
    pub first_seen: Option<u64>,
    pub last_seen: Option<u64>,
    pub octets: Option<u64>,
    pub packets: Option<u64>,
    pub protocol: Option<u8>,
    #[serde(serialize_with = "address_text")]
    pub src_addr: Option<IpAddr>,
    pub src_port: Option<u16>,
}

/// What the decoder reads of a message besides its flows, straight from
/// the parser's typed output. (It used to serialize the output to JSON —
/// first all of it, then an outline — and read that: most of the decode
/// time, docs/benchmarks.md.)
#[derive(Debug, Default)]
struct Outline {
    /// 5, 7, 9 or 10; 0 for a version this module does not know.
    version: u16,
    /// The header's record (v5/v7) or set (v9) count; IPFIX has none.
    count: Option<u32>,
    /// v5/v7 flow sequence, v9/IPFIX sequence number.
    sequence: Option<u32>,
    /// v9 source id, IPFIX observation domain.
    domain: Option<u32>,
    /// The templates and the options templates the message defines, in
    /// order.
    templates: Vec<TemplateSummary>,
    options_templates: Vec<TemplateSummary>,
    /// Each data set (id 256 and up) of the parser's output, in order,
    /// with its records: data and options data — what the flows are made
    /// of. (An IPFIX message's v9-style data sets count no records here
    /// although their flows are listed, as the JSON reading did; changing
    /// it would change which flows are reported as `released_flows`.)
    sets: Vec<(u16, usize)>,
    /// Data sets the parser kept without records although they have some
    /// bytes: a template it could not use.
    undecoded: usize,
}

impl Outline {
    /// Whether the message defines template `id` (either kind).
    fn defines(&self, id: u16) -> bool {
        self.templates.iter().chain(&self.options_templates).any(|t| t.id == id)
    }

    fn of(packet: &NetflowPacket) -> Outline {
        use netflow_parser::variable_versions::{ipfix, v9};
        let mut o = Outline::default();
        match packet {
            NetflowPacket::V5(p) => {
                o.version = 5;
                o.count = Some(p.header.count.into());
                o.sequence = Some(p.header.flow_sequence);
            }
            NetflowPacket::V7(p) => {
                o.version = 7;
                o.count = Some(p.header.count.into());
                o.sequence = Some(p.header.flow_sequence);
            }
            NetflowPacket::V9(p) => {
                o.version = 9;
                o.count = Some(p.header.count.into());
                o.sequence = Some(p.header.sequence_number);
                o.domain = Some(p.header.source_id);
                o.sets.reserve(p.flowsets.len());
                for set in &p.flowsets {
                    let records = match &set.body {
                        v9::FlowSetBody::Data(d) => {
                            if d.fields.is_empty() && set.header.length > 4 {
                                o.undecoded += 1;
                            }
                            d.fields.len()
                        }
                        v9::FlowSetBody::OptionsData(d) => d.fields.len(),
                        v9::FlowSetBody::Template(t) => {
                            o.templates.extend(t.templates.iter().map(TemplateSummary::v9));
                            0
                        }
                        v9::FlowSetBody::OptionsTemplate(t) => {
                            let options = t.templates.iter().map(TemplateSummary::v9_options);
                            o.options_templates.extend(options);
                            0
                        }
                        v9::FlowSetBody::NoTemplate(_) | v9::FlowSetBody::Empty => 0,
                    };
                    if set.header.flowset_id >= 256 {
                        o.sets.push((set.header.flowset_id, records));
                    }
                }
            }
            NetflowPacket::IPFix(p) => {
                o.version = 10;
                o.sequence = Some(p.header.sequence_number);
                o.domain = Some(p.header.observation_domain_id);
                o.sets.reserve(p.flowsets.len());
                let (templates, options) = (&mut o.templates, &mut o.options_templates);
                for set in &p.flowsets {
                    let records = match &set.body {
                        ipfix::FlowSetBody::Data(d) => {
                            if d.fields.is_empty() && set.header.length > 4 {
                                o.undecoded += 1;
                            }
                            d.fields.len()
                        }
                        ipfix::FlowSetBody::OptionsData(d) => d.fields.len(),
                        ipfix::FlowSetBody::V9Data(_) | ipfix::FlowSetBody::V9OptionsData(_) => 0,
                        ipfix::FlowSetBody::Template(t) => {
                            templates.push(TemplateSummary::ipfix(t));
                            0
                        }
                        ipfix::FlowSetBody::V9Template(t) => {
                            templates.push(TemplateSummary::v9(t));
                            0
                        }
                        ipfix::FlowSetBody::OptionsTemplate(t) => {
                            options.push(TemplateSummary::ipfix_options(t));
                            0
                        }
                        ipfix::FlowSetBody::V9OptionsTemplate(t) => {
                            options.push(TemplateSummary::v9_options(t));
                            0
                        }
                        ipfix::FlowSetBody::Templates(l) => {
                            templates.extend(l.iter().map(TemplateSummary::ipfix));
                            0
                        }
                        ipfix::FlowSetBody::V9Templates(l) => {
                            templates.extend(l.iter().map(TemplateSummary::v9));
                            0
                        }
                        ipfix::FlowSetBody::OptionsTemplates(l) => {
                            options.extend(l.iter().map(TemplateSummary::ipfix_options));
                            0
                        }
                        ipfix::FlowSetBody::V9OptionsTemplates(l) => {
                            options.extend(l.iter().map(TemplateSummary::v9_options));
                            0
                        }
                        ipfix::FlowSetBody::NoTemplate(_) | ipfix::FlowSetBody::Empty => 0,
                    };
                    if set.header.header_id >= 256 {
                        o.sets.push((set.header.header_id, records));
                    }
                }
            }
            _ => {}
        }
        o
    }
}

/// A v5 or v7 record as a flow: two types with the same field names.
macro_rules! fixed_format_flow {
    ($record:expr) => {{
        let f = $record;
        Flow {
            src_addr: Some(f.src_addr.into()),
            dst_addr: Some(f.dst_addr.into()),
            src_port: Some(f.src_port),
            dst_port: Some(f.dst_port),
            protocol: Some(f.protocol_number),
            first_seen: Some(f.first.into()),
            last_seen: Some(f.last.into()),
            octets: Some(f.d_octets.into()),
            packets: Some(f.d_pkts.into()),
        }
    }};
}

/// The flows of a message, one per data or options data record
/// (`docs/records.md`), in the parser's order. The fields are
/// picked as `netflow_parser`'s common view (`as_netflow_common`) picks
/// them — IPv4 address else IPv6, the last of a repeated port, protocol
/// or time — without the MAC address strings and protocol names it also
/// makes, which are not reported.
fn flows(packet: &NetflowPacket) -> Vec<Flow> {
    use netflow_parser::variable_versions::{ipfix, v9};
    let mut out = Vec::new();
    match packet {
        NetflowPacket::V5(p) => out.extend(p.flowsets.iter().map(|f| fixed_format_flow!(f))),
        NetflowPacket::V7(p) => out.extend(p.flowsets.iter().map(|f| fixed_format_flow!(f))),
        NetflowPacket::V9(p) => {
            let records = p.flowsets.iter().map(|s| match &s.body {
                v9::FlowSetBody::Data(d) => d.fields.len(),
                v9::FlowSetBody::OptionsData(d) => d.fields.len(),
                _ => 0,
            });
            out.reserve(records.sum());
            for set in &p.flowsets {
                match &set.body {
                    v9::FlowSetBody::Data(d) => {
                        out.extend(d.fields.iter().map(|r| Picked::v9(r).value()));
                    }
                    v9::FlowSetBody::OptionsData(d) => {
                        out.extend(d.fields.iter().map(|r| Picked::v9(&r.options_fields).value()));
                    }
                    _ => {}
                }
            }
        }
        NetflowPacket::IPFix(p) => {
            let records = p.flowsets.iter().map(|s| match &s.body {
                ipfix::FlowSetBody::Data(d) => d.fields.len(),
                ipfix::FlowSetBody::OptionsData(d) => d.fields.len(),
                ipfix::FlowSetBody::V9Data(d) => d.fields.len(),
                ipfix::FlowSetBody::V9OptionsData(d) => d.fields.len(),
                _ => 0,
            });
            out.reserve(records.sum());
            for set in &p.flowsets {
                match &set.body {
                    ipfix::FlowSetBody::Data(d) => {
                        out.extend(d.fields.iter().map(|r| Picked::ipfix(r).value()));
                    }
                    ipfix::FlowSetBody::OptionsData(d) => {
                        out.extend(d.fields.iter().map(|r| Picked::ipfix(r).value()));
                    }
                    ipfix::FlowSetBody::V9Data(d) => {
                        out.extend(d.fields.iter().map(|r| Picked::v9(r).value()));
                    }
                    ipfix::FlowSetBody::V9OptionsData(d) => {
                        out.extend(d.fields.iter().map(|r| Picked::v9(&r.options_fields).value()));
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    out
}

/// Writes an address as its text (`Display`'s, as serde would write it)
/// from a buffer on the stack, without the formatting machinery (IPv6
/// through `fmt` was a sixth of building an IPFIX flow). Property tests
/// compare it with `Display`.
fn address_text<S: serde::Serializer>(
    ip: &Option<IpAddr>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let Some(ip) = ip else { return serializer.serialize_none() };
    let mut text = Text::default();
    match ip {
        IpAddr::V4(v4) => text.ipv4(*v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            // `Display` writes a mapped address as ::ffff:a.b.c.d.
            Some(v4) => {
                text.push_str(b"::ffff:");
                text.ipv4(v4);
            }
            None => text.ipv6(&v6.segments()),
        },
    }
    serializer.serialize_str(text.as_str())
}

/// The longest address text: 8 groups of 4 hex digits and 7 colons.
const ADDRESS_TEXT: usize = 39;

/// An address's text on the stack (ASCII only).
struct Text {
    bytes: [u8; ADDRESS_TEXT],
    len: usize,
}

impl Default for Text {
    fn default() -> Self {
        Text { bytes: [0; ADDRESS_TEXT], len: 0 }
    }
}

impl Text {
    fn push(&mut self, byte: u8) {
        // Never full: the longest text fits (`ADDRESS_TEXT`); ignored
        // rather than a panic if it ever did not.
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    fn push_str(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&b| self.push(b));
    }

    fn ipv4(&mut self, v4: std::net::Ipv4Addr) {
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                self.push(b'.');
            }
            if octet >= 100 {
                self.push(b'0' + octet / 100);
            }
            if octet >= 10 {
                self.push(b'0' + octet / 10 % 10);
            }
            self.push(b'0' + octet % 10);
        }
    }

    /// Lower-case hex without leading zeros (`{:x}`).
    fn hex(&mut self, group: u16) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut started = false;
        for shift in [12, 8, 4, 0] {
            let digit = (group >> shift) & 0xf;
            if digit != 0 || started || shift == 0 {
                self.push(DIGITS[usize::from(digit)]);
                started = true;
            }
        }
    }

    fn groups(&mut self, groups: &[u16]) {
        for (i, &group) in groups.iter().enumerate() {
            if i > 0 {
                self.push(b':');
            }
            self.hex(group);
        }
    }

    /// RFC 5952 text as `Ipv6Addr`'s `Display` writes it: the first
    /// longest run of two or more zero groups becomes `::`.
    fn ipv6(&mut self, groups: &[u16; 8]) {
        let (mut best, mut best_len, mut run, mut run_len) = (0, 0, 0, 0);
        for (i, &group) in groups.iter().enumerate() {
            if group == 0 {
                if run_len == 0 {
                    run = i;
                }
                run_len += 1;
                if run_len > best_len {
                    (best, best_len) = (run, run_len);
                }
            } else {
                run_len = 0;
            }
        }
        if best_len > 1 {
            self.groups(&groups[..best]);
            self.push_str(b"::");
            self.groups(&groups[best + best_len..]);
        } else {
            self.groups(groups);
        }
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits, hex letters, '.' and ':' are ever pushed.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

/// What a v9 or IPFIX field is to a flow object: one of the values
/// it reports, or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    SrcAddr,
    DstAddr,
    SrcPort,
    DstPort,
    Protocol,
    FirstSeen,
    LastSeen,
    Octets,
    Packets,
}

/// The role of a NetFlow v9 field (also IPFIX messages' v9-style sets).
fn v9_role(field: &V9Field) -> Option<Role> {
    Some(match field {
        V9Field::Ipv4SrcAddr | V9Field::Ipv6SrcAddr => Role::SrcAddr,
        V9Field::Ipv4DstAddr | V9Field::Ipv6DstAddr => Role::DstAddr,
        V9Field::L4SrcPort => Role::SrcPort,
        V9Field::L4DstPort => Role::DstPort,
        V9Field::Protocol => Role::Protocol,
        V9Field::FirstSwitched => Role::FirstSeen,
        V9Field::LastSwitched => Role::LastSeen,
        V9Field::InBytes => Role::Octets,
        V9Field::InPkts => Role::Packets,
        _ => return None,
    })
}

/// The role of an IPFIX field: IANA elements only (an enterprise field of
/// the same number is another element).
fn ipfix_role(field: &IPFixField) -> Option<Role> {
    use IANAIPFixField as F;
    let IPFixField::IANA(field) = field else { return None };
    Some(match field {
        F::SourceIpv4address | F::SourceIpv6address => Role::SrcAddr,
        F::DestinationIpv4address | F::DestinationIpv6address => Role::DstAddr,
        F::SourceTransportPort => Role::SrcPort,
        F::DestinationTransportPort => Role::DstPort,
        F::ProtocolIdentifier => Role::Protocol,
        F::FlowStartSysUpTime => Role::FirstSeen,
        F::FlowEndSysUpTime => Role::LastSeen,
        F::OctetDeltaCount => Role::Octets,
        F::PacketDeltaCount => Role::Packets,
        _ => return None,
    })
}

/// The values of one v9/IPFIX record that make a flow, as
/// `netflow_parser`'s common view picks them (its `FieldCache`): the first
/// address of either family, the last of the other fields.
#[derive(Default)]
struct Picked<'a> {
    src_addr: Option<&'a FieldValue>,
    dst_addr: Option<&'a FieldValue>,
    src_port: Option<&'a FieldValue>,
    dst_port: Option<&'a FieldValue>,
    protocol: Option<&'a FieldValue>,
    first_seen: Option<&'a FieldValue>,
    last_seen: Option<&'a FieldValue>,
    octets: Option<&'a FieldValue>,
    packets: Option<&'a FieldValue>,
}

impl<'a> Picked<'a> {
    /// One loop for both field enums: `role` says what each field is.
    fn of<F>(record: &'a [(F, FieldValue)], role: impl Fn(&F) -> Option<Role>) -> Self {
        let mut p = Picked::default();
        for (field, value) in record {
            let slot = match role(field) {
                Some(Role::SrcAddr) => {
                    p.src_addr = p.src_addr.or(Some(value));
                    continue;
                }
                Some(Role::DstAddr) => {
                    p.dst_addr = p.dst_addr.or(Some(value));
                    continue;
                }
                Some(Role::SrcPort) => &mut p.src_port,
                Some(Role::DstPort) => &mut p.dst_port,
                Some(Role::Protocol) => &mut p.protocol,
                Some(Role::FirstSeen) => &mut p.first_seen,
                Some(Role::LastSeen) => &mut p.last_seen,
                Some(Role::Octets) => &mut p.octets,
                Some(Role::Packets) => &mut p.packets,
                None => continue,
            };
            *slot = Some(value);
        }
        p
    }

    fn v9(record: &'a [(V9Field, FieldValue)]) -> Self {
        Picked::of(record, v9_role)
    }

    fn ipfix(record: &'a [(IPFixField, FieldValue)]) -> Self {
        Picked::of(record, ipfix_role)
    }

    fn value(&self) -> Flow {
        let addr = |v: Option<&FieldValue>| v.and_then(|v| IpAddr::try_from(v).ok());
        Flow {
            src_addr: addr(self.src_addr),
            dst_addr: addr(self.dst_addr),
            src_port: self.src_port.and_then(FieldValue::as_u16),
            dst_port: self.dst_port.and_then(FieldValue::as_u16),
            protocol: self.protocol.and_then(FieldValue::as_u8),
            first_seen: self.first_seen.and_then(FieldValue::as_u64),
            last_seen: self.last_seen.and_then(FieldValue::as_u64),
            octets: self.octets.and_then(FieldValue::as_u64),
            packets: self.packets.and_then(FieldValue::as_u64),
        }
    }
}

/// The set id of each data set (id 256 and up) of a v9 or IPFIX message,
/// in order; a walk of the set headers that stops at the first one that
/// does not fit.
fn raw_data_set_ids(version: u16, payload: &[u8]) -> Vec<u16> {
    let be16 = |at: usize| payload.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (mut at, end) = match version {
        9 => (20, payload.len()),
        _ => (16, be16(2).map_or(0, usize::from).min(payload.len())),
    };
    let mut ids = Vec::new();
    while at + 4 <= end {
        let (Some(id), Some(len)) = (be16(at), be16(at + 2)) else { break };
        let len = usize::from(len);
        if len < 4 || at + len > end {
            break;
        }
        if id >= 256 {
            ids.push(id);
        }
        at += len;
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};

    /// An address as `address_text` writes it in JSON.
    fn address(ip: IpAddr) -> Value {
        #[derive(Serialize)]
        struct Text(#[serde(serialize_with = "address_text")] Option<IpAddr>);
        serde_json::to_value(Text(Some(ip))).unwrap()
    }

    /// A NetFlow v5 datagram with `count` flows and `flow_sequence`.
    fn v5(count: u16, flow_sequence: u32) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend(5u16.to_be_bytes());
        d.extend(count.to_be_bytes());
        d.extend(1000u32.to_be_bytes()); // sys_up_time
        d.extend(1_800_000_000u32.to_be_bytes());
        d.extend(0u32.to_be_bytes());
        d.extend(flow_sequence.to_be_bytes());
        d.extend([0, 0, 0, 0]); // engine type/id, sampling
        for i in 0..count {
            d.extend([192, 0, 2, 10]); // src
            d.extend([198, 18, 0, 20]); // dst
            d.extend([0, 0, 0, 0]); // nexthop
            d.extend(1u16.to_be_bytes());
            d.extend(2u16.to_be_bytes());
            d.extend(10u32.to_be_bytes()); // packets
            d.extend(1500u32.to_be_bytes()); // octets
            d.extend(100u32.to_be_bytes());
            d.extend(200u32.to_be_bytes());
            d.extend((40000 + i).to_be_bytes());
            d.extend(443u16.to_be_bytes());
            d.extend([0, 0x18, 6, 0]); // pad, flags, proto, tos
            d.extend([0, 0, 0, 0, 24, 24, 0, 0]); // as, masks, pad
        }
        d
    }

    #[test]
    fn v5_flows_and_sequence_gaps_and_restarts() {
        let mut decoder = FlowDecoder::default();
        let router: SocketAddr = "192.0.2.1:2055".parse().unwrap();
        let (d, s) = decoder.decode(router, &v5(2, 100));
        assert_eq!(d.parse_error, None, "{:?}", d.fields);
        assert_eq!(json_of(&d)["version"], 5);
        assert_eq!(json_of(&d)["count"], 2);
        let flow = &json_of(&d)["flows"][1];
        assert_eq!(flow["src_addr"], "192.0.2.10");
        assert_eq!(flow["dst_port"], 443);
        assert_eq!(flow["src_port"], 40001);
        assert_eq!(flow["protocol"], 6);
        assert_eq!((&flow["octets"], &flow["packets"]), (&json!(1500), &json!(10)));
        assert_eq!(s, Sequence::default());
        assert_eq!(decoder.decode(router, &v5(3, 102)).1, Sequence::default(), "102 follows 100+2");
        let (d, s) = decoder.decode(router, &v5(1, 110)).clone();
        assert_eq!(s.lost, 5, "105..=109 missing");
        assert_eq!(json_of(&d)["sequence_gap"], 5);
        let (_, s) = decoder.decode(router, &v5(1, 3));
        assert!(s.restarted && s.lost == 0, "a reset counter is a restart, not loss");
        // Another router has its own sequence.
        let other: SocketAddr = "192.0.2.2:2055".parse().unwrap();
        assert_eq!(decoder.decode(other, &v5(1, 9000)).1, Sequence::default());
    }

    /// A NetFlow v9 datagram of source id 7: template 256 (src, dst,
    /// ports, protocol) when `template`, then one data record of it (13
    /// bytes, padded to 16) from `port` when `data`.
    fn v9(template: bool, data: Option<u16>, sequence: u32) -> Vec<u8> {
        let mut d = Vec::new();
        let count = u16::from(template) + u16::from(data.is_some());
        for word in [9u16, count] {
            d.extend(word.to_be_bytes());
        }
        for word in [1000u32, 1_800_000_000, sequence, 7] {
            d.extend(word.to_be_bytes());
        }
        if template {
            // Addresses, ports, protocol, bytes, packets.
            let fields: [(u16, u16); 7] =
                [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4)];
            d.extend(0u16.to_be_bytes());
            d.extend((8 + 4 * fields.len() as u16).to_be_bytes());
            d.extend(256u16.to_be_bytes());
            d.extend((fields.len() as u16).to_be_bytes());
            for (kind, len) in fields {
                d.extend(kind.to_be_bytes());
                d.extend(len.to_be_bytes());
            }
        }
        if let Some(port) = data {
            d.extend(256u16.to_be_bytes());
            d.extend(28u16.to_be_bytes());
            d.extend([192, 0, 2, 10, 198, 18, 0, 20]);
            d.extend(53u16.to_be_bytes());
            d.extend(port.to_be_bytes());
            d.push(17);
            d.extend(1200u32.to_be_bytes());
            d.extend(3u32.to_be_bytes());
            d.extend([0, 0, 0]); // padding
        }
        d
    }

    /// The fields as the JSON object they serialize to.
    fn json_of(d: &Decoded<Fields>) -> Value {
        serde_json::to_value(&d.fields).unwrap()
    }

    fn ports(d: &Decoded<Fields>) -> Vec<u64> {
        json_of(d)["flows"].as_array().map_or(Vec::new(), |flows| {
            flows.iter().filter_map(|f| f["dst_port"].as_u64()).collect()
        })
    }

    #[test]
    fn v9_template_and_data_set_ids() {
        let mut decoder = FlowDecoder::default();
        let (d, _) = decoder.decode("192.0.2.1:2055".parse().unwrap(), &v9(true, Some(5353), 41));
        assert_eq!(d.parse_error, None, "{:?}", d.fields);
        assert_eq!(json_of(&d)["templates"], json!([{ "id": 256, "fields": 7 }]));
        assert_eq!(json_of(&d)["options_templates"], json!([]));
        assert_eq!(json_of(&d)["data_set_ids"], json!([256]));
        assert_eq!(json_of(&d)["source_id"], 7);
        let flow = &json_of(&d)["flows"][0];
        assert_eq!((&flow["src_addr"], &flow["dst_port"]), (&json!("192.0.2.10"), &json!(5353)));
        assert_eq!((&flow["octets"], &flow["packets"]), (&json!(1200), &json!(3)));
    }

    #[test]
    fn data_before_its_template_is_held_and_released_with_the_template() {
        let mut decoder = FlowDecoder::default();
        let router: SocketAddr = "192.0.2.1:2055".parse().unwrap();
        let (early, _) = decoder.decode(router, &v9(false, Some(1001), 1));
        assert!(early.parse_error.is_some(), "no template yet: {:?}", early.fields);
        assert!(ports(&early).is_empty());
        let (_, grown) = decoder.sample();
        assert_eq!(grown.pending_cached, 1, "{grown:?}");
        assert_eq!(grown.pending_now, 1);
        let (late, _) = decoder.decode(router, &v9(true, None, 2));
        assert!(ports(&late).is_empty(), "{:?}", late.fields);
        let late = json_of(&late);
        let released = late["released_flows"].as_array().expect("released_flows");
        assert_eq!(released[0]["dst_port"], 1001, "released with the template");
        let (_, grown) = decoder.sample();
        assert_eq!((grown.pending_replayed, grown.pending_now), (1, 0), "{grown:?}");
    }

    #[test]
    fn templates_survive_a_restart_through_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("raven.db");
        drop(crate::store::index::Index::open(&db).unwrap()); // migrations
        let journal = || -> std::sync::Arc<dyn TemplateStore> {
            std::sync::Arc::new(super::super::templates::TemplateJournal::open(&db).unwrap())
        };
        let router: SocketAddr = "192.0.2.1:2055".parse().unwrap();
        let mut before = FlowDecoder::new(Some(journal()));
        assert_eq!(ports(&before.decode(router, &v9(true, Some(1), 1)).0), [1]);
        drop(before);
        // A new process: only the journal remembers template 256.
        let mut after = FlowDecoder::new(Some(journal()));
        let (d, _) = after.decode(router, &v9(false, Some(2), 2));
        assert_eq!(d.parse_error, None, "{:?}", d.fields);
        assert_eq!(ports(&d), [2]);
        assert_eq!(after.sample().1.restored, 1);
        // Another exporter's template 256 is not this one's.
        let mut other = FlowDecoder::new(Some(journal()));
        let (d, _) = other.decode("192.0.2.2:2055".parse().unwrap(), &v9(false, Some(3), 1));
        assert!(ports(&d).is_empty() && d.parse_error.is_some(), "{:?}", d.fields);
    }

    /// The decoder as it was before it read the parser's typed output,
    /// unchanged: it built a JSON outline of the message (`skeleton`: the
    /// serialization less record values and template fields, checked
    /// against the full serialization below) and read the header, template
    /// ids, data set record counts and undecoded sets from that, and took
    /// the flows from the parser's common view (`as_netflow_common`). Kept
    /// here as the reference the typed reading must equal, byte for byte.
    mod reference {
        use super::super::*;
        use serde_json::{Map, Value, json};

        fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
            path.iter().try_fold(value, |v, key| v.get(key))
        }

        pub fn variant_name(packet: &NetflowPacket) -> &'static str {
            match packet {
                NetflowPacket::V5(_) => "V5",
                NetflowPacket::V7(_) => "V7",
                NetflowPacket::V9(_) => "V9",
                NetflowPacket::IPFix(_) => "IPFix",
                _ => "",
            }
        }

        /// What this module reads of the parser's output, as the JSON
        /// `serde_json::to_value(packet)` would give, without what it never reads:
        /// a data set's `fields` holds one `null` per record, a template only its
        /// `template_id`, and v5/v7 keep only their header. Serializing every
        /// record and template field (to read a header, count records and list
        /// template ids) was most of the decode time (`cargo xtask bench decode`,
        /// docs/benchmarks.md); the flows themselves come from `as_netflow_common`.
        pub fn skeleton(packet: &NetflowPacket) -> Value {
            use netflow_parser::variable_versions::{ipfix, v9};
            fn value<T: serde::Serialize>(v: &T) -> Value {
                serde_json::to_value(v).unwrap_or(Value::Null)
            }
            // Built as maps, not with `json!`, which would serialize (deep-copy)
            // every `Value` put into it.
            fn object<const N: usize>(entries: [(&str, Value); N]) -> Value {
                Value::Object(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }
            let records = |kind: &str, n: usize| {
                object([(kind, object([("fields", Value::Array(vec![Value::Null; n]))]))])
            };
            let id = |template_id: u16| object([("template_id", Value::from(template_id))]);
            let ids = |list: &mut dyn Iterator<Item = u16>| Value::Array(list.map(id).collect());
            let packet_of = |name: &str, header: Value, sets: Option<Vec<Value>>| {
                let inner = match sets {
                    Some(sets) => object([("header", header), ("flowsets", Value::Array(sets))]),
                    None => object([("header", header)]),
                };
                object([(name, inner)])
            };
            match packet {
                NetflowPacket::V5(p) => packet_of("V5", value(&p.header), None),
                NetflowPacket::V7(p) => packet_of("V7", value(&p.header), None),
                NetflowPacket::V9(p) => {
                    let sets = p.flowsets.iter().map(|s| {
                        let body = match &s.body {
                            v9::FlowSetBody::Data(d) => records("Data", d.fields.len()),
                            v9::FlowSetBody::OptionsData(d) => {
                                records("OptionsData", d.fields.len())
                            }
                            v9::FlowSetBody::Template(t) => object([(
                                "Template",
                                object([(
                                    "templates",
                                    ids(&mut t.templates.iter().map(|t| t.template_id)),
                                )]),
                            )]),
                            v9::FlowSetBody::OptionsTemplate(t) => object([(
                                "OptionsTemplate",
                                object([(
                                    "templates",
                                    ids(&mut t.templates.iter().map(|t| t.template_id)),
                                )]),
                            )]),
                            other => value(other),
                        };
                        object([("header", value(&s.header)), ("body", body)])
                    });
                    packet_of("V9", value(&p.header), Some(sets.collect()))
                }
                NetflowPacket::IPFix(p) => {
                    let sets = p.flowsets.iter().map(|s| {
                        let body = match &s.body {
                            ipfix::FlowSetBody::Data(d) => records("Data", d.fields.len()),
                            ipfix::FlowSetBody::OptionsData(d) => {
                                records("OptionsData", d.fields.len())
                            }
                            ipfix::FlowSetBody::V9Data(d) => records("V9Data", d.fields.len()),
                            ipfix::FlowSetBody::V9OptionsData(d) => {
                                records("V9OptionsData", d.fields.len())
                            }
                            ipfix::FlowSetBody::Template(t) => {
                                object([("Template", id(t.template_id))])
                            }
                            ipfix::FlowSetBody::V9Template(t) => {
                                object([("V9Template", id(t.template_id))])
                            }
                            ipfix::FlowSetBody::OptionsTemplate(t) => {
                                object([("OptionsTemplate", id(t.template_id))])
                            }
                            ipfix::FlowSetBody::V9OptionsTemplate(t) => {
                                object([("V9OptionsTemplate", id(t.template_id))])
                            }
                            ipfix::FlowSetBody::Templates(l) => {
                                object([("Templates", ids(&mut l.iter().map(|t| t.template_id)))])
                            }
                            ipfix::FlowSetBody::V9Templates(l) => {
                                object([("V9Templates", ids(&mut l.iter().map(|t| t.template_id)))])
                            }
                            ipfix::FlowSetBody::OptionsTemplates(l) => object([(
                                "OptionsTemplates",
                                ids(&mut l.iter().map(|t| t.template_id)),
                            )]),
                            ipfix::FlowSetBody::V9OptionsTemplates(l) => object([(
                                "V9OptionsTemplates",
                                ids(&mut l.iter().map(|t| t.template_id)),
                            )]),
                            other => value(other),
                        };
                        object([("header", value(&s.header)), ("body", body)])
                    });
                    packet_of("IPFix", value(&p.header), Some(sets.collect()))
                }
                other => value(other),
            }
        }

        pub fn data_set_records(packet: Option<&Value>) -> Vec<usize> {
            let sets = packet.and_then(|p| p.get("flowsets")).and_then(Value::as_array);
            sets.into_iter()
                .flatten()
                .filter(|set| {
                    let id = set
                        .get("header")
                        .and_then(|h| h.get("flowset_id").or_else(|| h.get("header_id")));
                    id.and_then(Value::as_u64).is_some_and(|id| id >= 256)
                })
                .map(|set| {
                    [["body", "Data", "fields"], ["body", "OptionsData", "fields"]]
                        .iter()
                        .find_map(|path| at(set, path).and_then(Value::as_array))
                        .map_or(0, Vec::len)
                })
                .collect()
        }

        fn template_ids(packet: Option<&Value>) -> (Vec<u64>, Vec<u64>) {
            let (mut defined, mut data) = (Vec::new(), Vec::new());
            let sets = packet.and_then(|p| p.get("flowsets")).and_then(Value::as_array);
            for set in sets.into_iter().flatten() {
                let id = set
                    .get("header")
                    .and_then(|h| h.get("flowset_id").or_else(|| h.get("header_id")));
                if let Some(id) = id.and_then(Value::as_u64).filter(|&id| id >= 256) {
                    data.push(id);
                }
                let Some(Value::Object(body)) = set.get("body") else { continue };
                for (kind, body) in body {
                    if kind.contains("Template") && !kind.starts_with("NoTemplate") {
                        let templates = match body {
                            Value::Array(list) => list.iter().collect(),
                            Value::Object(_) => match body.get("templates") {
                                Some(Value::Array(list)) => list.iter().collect(),
                                _ => vec![body],
                            },
                            _ => Vec::new(),
                        };
                        defined.extend(
                            templates.iter().filter_map(|t| t.get("template_id")?.as_u64()),
                        );
                    }
                }
            }
            (defined, data)
        }

        pub fn decode(
            decoder: &mut FlowDecoder,
            exporter: SocketAddr,
            payload: &[u8],
        ) -> (Decoded, Sequence) {
            let result = decoder.parser.parse_from_source(exporter, payload);
            let mut fields = Map::new();
            let mut sequence = Sequence::default();
            let mut parse_error = result.error.as_ref().map(|e| {
                let text = e.to_string();
                let reason = if text.contains("emplate") { "no_template" } else { "bad_flow" };
                ParseError::new(reason, text)
            });
            let Some(packet) = result.packets.first() else {
                return (
                    Decoded {
                        fields,
                        parse_error: parse_error.or_else(|| {
                            Some(ParseError::new("bad_flow", "no NetFlow/IPFIX message"))
                        }),
                        reply: None,
                    },
                    sequence,
                );
            };
            let raw = skeleton(packet);
            let header = &raw.get(variant_name(packet)).and_then(|v| v.get("header")).cloned();
            let header_u32 = |key: &str| {
                header.as_ref().and_then(|h| h.get(key)).and_then(Value::as_u64).map(|v| v as u32)
            };
            let common = packet.as_netflow_common().ok();
            let undecoded = raw
                .get(variant_name(packet))
                .and_then(|p| p.get("flowsets"))
                .and_then(Value::as_array)
                .map_or(0, |sets| {
                    sets.iter()
                        .filter(|set| {
                            let fields =
                                at(set, &["body", "Data", "fields"]).and_then(Value::as_array);
                            let length = at(set, &["header", "length"]).and_then(Value::as_u64);
                            fields.is_some_and(Vec::is_empty) && length.is_some_and(|l| l > 4)
                        })
                        .count()
                });
            if undecoded > 0 && parse_error.is_none() {
                parse_error = Some(ParseError::new(
                    "undecoded_data_set",
                    format!("{undecoded} data set(s) not decoded with their template"),
                ));
            }
            let mut flows: Vec<Value> = common
                .as_ref()
                .map(|c| {
                    c.flowsets
                        .iter()
                        .map(|f| {
                            json!({
                                "src_addr": f.src_addr, "dst_addr": f.dst_addr,
                                "src_port": f.src_port, "dst_port": f.dst_port,
                                "protocol": f.protocol_number,
                                "first_seen": f.first_seen, "last_seen": f.last_seen,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let (version, seq_key, domain, advance) = match packet {
                NetflowPacket::V5(_) => (5, "flow_sequence", None, flows.len() as u32),
                NetflowPacket::V7(_) => (7, "flow_sequence", None, flows.len() as u32),
                NetflowPacket::V9(_) => (9, "sequence_number", header_u32("source_id"), 1),
                NetflowPacket::IPFix(_) => {
                    (10, "sequence_number", header_u32("observation_domain_id"), flows.len() as u32)
                }
                _ => (0, "", None, 0),
            };
            fields.insert("version".into(), json!(version));
            if let Some(count) = header_u32("count") {
                fields.insert("count".into(), json!(count));
            }
            if let Some(seq) = header_u32(seq_key) {
                fields.insert("sequence".into(), json!(seq));
                sequence =
                    decoder.sequence((exporter.ip(), version, domain.unwrap_or(0)), seq, advance);
                if sequence.lost > 0 {
                    fields.insert("sequence_gap".into(), json!(sequence.lost));
                }
                if sequence.restarted {
                    fields.insert("exporter_restarted".into(), json!(true));
                }
            }
            match (version, domain) {
                (9, Some(d)) => fields.insert("source_id".into(), json!(d)),
                (10, Some(d)) => fields.insert("observation_domain".into(), json!(d)),
                _ => None,
            };
            if matches!(version, 9 | 10) {
                let (defined, decoded_sets) = template_ids(raw.get(variant_name(packet)));
                let data: Vec<u64> =
                    raw_data_set_ids(version, payload).into_iter().map(u64::from).collect();
                let held = data
                    .iter()
                    .filter(|id| !decoded_sets.contains(id) && !defined.contains(id))
                    .count();
                if held > 0 {
                    fields.insert("pending".into(), json!(held));
                    parse_error.get_or_insert_with(|| {
                        ParseError::new(
                            "no_template",
                            format!("{held} data set(s) held until their template arrives"),
                        )
                    });
                }
                let own_sets = data.len() - held;
                let released: usize = data_set_records(raw.get(variant_name(packet)))
                    .into_iter()
                    .skip(own_sets)
                    .sum();
                if released > 0 && released <= flows.len() {
                    let earlier = flows.split_off(flows.len() - released);
                    fields.insert("released_flows".into(), Value::Array(earlier));
                }
                fields.insert("template_ids".into(), json!(defined));
                fields.insert("data_set_ids".into(), json!(data));
            }
            fields.insert("flows".into(), Value::Array(flows));
            if parse_error.is_none() && result.packets.len() > 1 {
                parse_error = Some(ParseError::new(
                    "trailing_bytes",
                    format!("{} messages in one datagram", result.packets.len()),
                ));
            }
            (Decoded { fields, parse_error, reply: None }, sequence)
        }
    }

    /// `skeleton` is the parser's full serialization with the data
    /// records' values and the templates' fields left out, on every shared
    /// NetFlow/IPFIX datagram (templates learned in capture order, so data
    /// sets are decoded).
    #[test]
    fn the_skeleton_is_the_full_serialization_less_records_and_template_fields() {
        use crate::{decode::samples::testing, record::Stream};
        fn only_id(template: &mut Value) {
            let id = template["template_id"].clone();
            assert!(id.is_u64(), "{template}");
            *template = json!({ "template_id": id });
        }
        fn blank_records(full: &mut Value, templates: &mut usize) {
            let Some(sets) = full.get_mut("flowsets").and_then(Value::as_array_mut) else {
                return;
            };
            for set in sets {
                let Some(Value::Object(body)) = set.get_mut("body") else { continue };
                for (kind, data) in body.iter_mut() {
                    if kind.contains("Template") && !kind.starts_with("NoTemplate") {
                        *templates += 1;
                        match data {
                            Value::Array(list) => list.iter_mut().for_each(only_id),
                            _ if data.get("templates").is_some() => {
                                let list = data["templates"].as_array_mut().unwrap();
                                list.iter_mut().for_each(only_id);
                            }
                            _ => only_id(data),
                        }
                    }
                    let records = data.get_mut("fields").and_then(Value::as_array_mut);
                    if kind.ends_with("Data")
                        && let Some(records) = records
                    {
                        records.iter_mut().for_each(|r| *r = Value::Null);
                    }
                }
            }
        }
        let mut parser = AutoScopedParser::new();
        let (mut packets, mut data_sets, mut templates) = (0, 0, 0);
        let flows = testing::shared()
            .iter()
            .filter(|s| matches!(s.stream, Stream::Netflow | Stream::Ipfix));
        for sample in flows {
            for packet in parser.parse_from_source(sample.src, &sample.payload).packets {
                let mut full = serde_json::to_value(&packet).unwrap();
                let inner = full.get_mut(reference::variant_name(&packet)).unwrap();
                if matches!(packet, NetflowPacket::V5(_) | NetflowPacket::V7(_)) {
                    inner.as_object_mut().unwrap().remove("flowsets");
                }
                blank_records(inner, &mut templates);
                assert_eq!(reference::skeleton(&packet), full, "{}", sample.file);
                packets += 1;
                data_sets += reference::data_set_records(
                    reference::skeleton(&packet).get(reference::variant_name(&packet)),
                )
                .into_iter()
                .filter(|&n| n > 0)
                .count();
            }
        }
        assert!(
            packets > 500 && data_sets > 500 && templates > 50,
            "{packets} packets, {data_sets} data sets, {templates} template sets"
        );
    }

    /// Ours in the reference's schema: flows without the octets and
    /// packets it did not report, the templates' ids where it listed ids
    /// (sorted: it listed both kinds in one list).
    fn as_reference(d: &Decoded<Fields>) -> Map<String, Value> {
        let Value::Object(mut ours) = json_of(d) else { panic!("not an object") };
        for key in ["flows", "released_flows"] {
            for flow in ours.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten() {
                let flow = flow.as_object_mut().unwrap();
                assert!(flow.remove("octets").is_some() && flow.remove("packets").is_some());
            }
        }
        let mut ids = Vec::new();
        for key in ["templates", "options_templates"] {
            if let Some(Value::Array(list)) = ours.remove(key) {
                ids.extend(list.iter().map(|t| t["id"].as_u64().unwrap()));
            }
        }
        if ours.contains_key("data_set_ids") {
            ids.sort_unstable();
            ours.insert("template_ids".into(), json!(ids));
        }
        ours
    }

    /// The reference's fields with its template ids sorted.
    fn as_reference_ids(mut fields: Map<String, Value>) -> Map<String, Value> {
        if let Some(Value::Array(ids)) = fields.get_mut("template_ids") {
            ids.sort_unstable_by_key(|id| id.as_u64());
        }
        fields
    }

    /// Decodes `payloads` in order with the decoder and, on a decoder of
    /// its own, with the JSON-reading reference (the decoder before it read
    /// typed output); the fields it reported, parse errors and sequences
    /// must be identical. Returns how many payloads had flows, released
    /// flows, templates, held data.
    fn same_as_reference<'a>(
        payloads: impl Iterator<Item = (SocketAddr, &'a [u8])>,
        what: &str,
    ) -> [usize; 4] {
        let (mut typed, mut json) = (FlowDecoder::default(), FlowDecoder::default());
        let mut seen = [0; 4];
        for (i, (src, payload)) in payloads.enumerate() {
            let (d, s) = typed.decode(src, payload);
            let (r, rs) = reference::decode(&mut json, src, payload);
            assert_eq!(as_reference(&d), as_reference_ids(r.fields), "{what}, payload {i}");
            assert_eq!(
                (&d.parse_error, &d.reply),
                (&r.parse_error, &r.reply),
                "{what}, payload {i}"
            );
            assert_eq!(s, rs, "{what}, payload {i}");
            let present = |key: &str| {
                json_of(&d).get(key).is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
            };
            for (n, key) in ["flows", "released_flows", "templates", "pending"].iter().enumerate() {
                seen[n] += usize::from(present(key));
            }
        }
        seen
    }

    /// The typed reading gives exactly what reading the parser's JSON
    /// serialization gave, on every shared NetFlow/IPFIX datagram in
    /// capture order (templates learned, data held and released as the
    /// exporters sent them), and the same datagrams again with templates
    /// now known.
    #[test]
    fn typed_reading_equals_the_json_reading_on_every_shared_datagram() {
        use crate::{decode::samples::testing, record::Stream};
        let flows: Vec<_> = testing::shared()
            .iter()
            .filter(|s| matches!(s.stream, Stream::Netflow | Stream::Ipfix))
            .collect();
        let twice = flows.iter().chain(flows.iter()).map(|s| (s.src, &s.payload[..]));
        let [with_flows, released, templates, held] = same_as_reference(twice, "shared");
        assert!(
            flows.len() > 500 && with_flows > 1000 && released > 0 && templates > 100 && held > 0,
            "{} datagrams: {with_flows} with flows, {released} releasing, {templates} with \
             templates, {held} holding",
            flows.len()
        );
        // Built datagrams: held and released, v5 sequences.
        let router: SocketAddr = "192.0.2.1:2055".parse().unwrap();
        let built = [v9(false, Some(1001), 1), v9(true, None, 2), v5(2, 100), v5(1, 110)];
        let [_, released, _, held] =
            same_as_reference(built.iter().map(|d| (router, &d[..])), "built");
        assert_eq!((released, held), (1, 1));
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let texts = [
            "0.0.0.0",
            "192.0.2.10",
            "198.18.255.100",
            "255.255.255.255",
            "2001:db8::1",
            "::",
            "::1",
            "1::",
            "::ffff:192.0.2.1",
            "::ffff:0.0.0.0",
            "::192.0.2.1",
            "64:ff9b::c000:201",
            "2001:db8:0:1:0:0:1:0",
            "2001:db8::1:0:0:1",
            "2001:0:0:1::1",
            "1:0:1:0:1:0:1:0",
            "fe80::a:bc:def:1234",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ];
        for ip in texts {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(address(ip), Value::String(ip.to_string()));
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_and_mutated_datagrams_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            flip in 0usize..120, byte in proptest::num::u8::ANY, cut in 0usize..120,
        ) {
            let mut decoder = FlowDecoder::default();
            let exporter: SocketAddr = "192.0.2.1:2055".parse().unwrap();
            let _ = decoder.decode(exporter, &bytes);
            let mut d = v5(2, 7);
            if flip < d.len() { d[flip] = byte; }
            d.truncate(cut.min(d.len()));
            let _ = decoder.decode(exporter, &d);
            let mut v9 = vec![0u8, 9];
            v9.extend(&bytes);
            let _ = decoder.decode(exporter, &v9);
            let mut ipfix = vec![0u8, 10];
            ipfix.extend(&bytes);
            let _ = decoder.decode(exporter, &ipfix);
        }

        /// A real capture's datagrams in order (templates first, as the
        /// exporter sent them) with one of them mutated, through one decoder.
        #[test]
        fn mutated_shared_flows_never_panic(m in crate::decode::samples::testing::mutation()) {
            use crate::{decode::samples::testing, record::Stream};
            let mut flows = testing::of(Stream::Netflow);
            flows.extend(testing::of(Stream::Ipfix));
            let target = flows[m.pick % flows.len()];
            let mut decoder = FlowDecoder::default();
            for sample in testing::shared().iter().filter(|s| s.file == target.file) {
                if std::ptr::eq(sample, target) {
                    let _ = decoder.decode(sample.src, &m.apply(&sample.payload));
                } else {
                    let _ = decoder.decode(sample.src, &sample.payload);
                }
            }
        }

        /// The same with the typed reading checked against the JSON one on
        /// every datagram of the capture, the mutated one included (errors,
        /// undecoded and held sets, trailing messages).
        #[test]
        fn mutated_shared_flows_read_as_the_json_reading(
            m in crate::decode::samples::testing::mutation(),
        ) {
            use crate::{decode::samples::testing, record::Stream};
            let mut flows = testing::of(Stream::Netflow);
            flows.extend(testing::of(Stream::Ipfix));
            let target = flows[m.pick % flows.len()];
            let mutated = m.apply(&target.payload);
            let capture = testing::shared().iter().filter(|s| s.file == target.file).map(|s| {
                let payload = if std::ptr::eq(s, target) { &mutated[..] } else { &s.payload[..] };
                (s.src, payload)
            });
            same_as_reference(capture, &target.file);
        }

        #[test]
        fn arbitrary_datagrams_read_as_the_json_reading(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            version in proptest::sample::select(vec![5u16, 7, 9, 10]),
        ) {
            let mut d = version.to_be_bytes().to_vec();
            d.extend(&bytes);
            same_as_reference(std::iter::once(("192.0.2.1:2055".parse().unwrap(), &d[..])), "arbitrary");
        }

        #[test]
        fn any_address_is_written_as_display_writes_it(v4: u32, v6: u128) {
            for ip in [IpAddr::from(v4.to_be_bytes()), IpAddr::from(v6.to_be_bytes())] {
                proptest::prop_assert_eq!(address(ip), Value::String(ip.to_string()));
            }
        }

        /// IPv6 addresses with runs of zero groups (where `::` goes) and
        /// the IPv4-mapped and -compatible forms, which random 128-bit
        /// values almost never are.
        #[test]
        fn sparse_ipv6_addresses_are_written_as_display_writes_them(
            groups in proptest::array::uniform8(proptest::prop_oneof![
                3 => proptest::strategy::Just(0u16),
                1 => 1u16..16,
                1 => proptest::num::u16::ANY,
            ]),
            mapped: bool,
        ) {
            let mut groups = groups;
            if mapped {
                groups[..5].fill(0);
                groups[5] = 0xffff;
            }
            let ip = IpAddr::from(std::net::Ipv6Addr::from(groups));
            proptest::prop_assert_eq!(address(ip), Value::String(ip.to_string()));
        }
    }
}

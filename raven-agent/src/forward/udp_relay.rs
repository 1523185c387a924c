//! UDP relay sink: NetFlow v5/v9, IPFIX and sFlow datagrams re-sent to a
//! collector.
//!
//! Invariants:
//! - A datagram goes out as it came in except for the exporter's domain
//!   field, which is rewritten (when `rewrite_domains` is on) so every
//!   (exporter address, original domain) pair has its own id at the
//!   collector even though all datagrams now come from Raven's address:
//!   NetFlow v9 `source_id`, IPFIX `observation domain id`, NetFlow v5
//!   `engine_type`/`engine_id` (as one 16-bit value). sFlow carries the
//!   agent address and sub-agent id inside the datagram, which collectors
//!   already key on, so sFlow is never rewritten. Anything else (other
//!   versions, datagrams too short to have the field) goes unchanged and is
//!   counted as `unparsed`.
//! - The mapping (`BTreeMap<(exporter, original domain), relayed domain>`)
//!   only grows; relayed ids are allocated from 1 upwards
//!   ([`UdpRelaySink::mapping`]).
//! - Templates and options templates (v9 and IPFIX) seen in passing
//!   datagrams, or fed with [`UdpRelaySink::learn`], are remembered per
//!   (exporter, version, original domain). They are re-sent, in their own
//!   datagrams ahead of the data, (a) before the first data datagram of that
//!   exporter domain after the sink was created, reset (reconnect, replay)
//!   or primed, and (b) whenever `template_resend_interval_s` has passed
//!   since they were last sent. An IPFIX withdrawal removes the template.
//! - The mapping and the template records survive restarts: the forwarder
//!   [`prepare`](UdpRelaySink::prepare)s each batch (allocating ids and
//!   learning templates without sending), persists the
//!   [`RelayState`] in the store's index when it changed, and only then
//!   sends. After a restart the state is restored and every template is
//!   due again, so the first data after a restart (replayed or live) is
//!   preceded by its templates even when the collector restarted too.
//! - Acknowledged: the kernel accepted the datagram (UDP has no receipt).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use tokio::{net::UdpSocket, time::Instant};

use super::{Delivered, Outgoing, SinkError, SinkFailure};
use crate::config::SinkConfig;

/// Largest template datagram Raven builds (fits a 1500-byte path with room
/// for a VPN's overhead).
const TEMPLATE_DATAGRAM_MAX: usize = 1200;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Flavor {
    NetflowV5,
    NetflowV9,
    Ipfix,
    Sflow,
}

impl Flavor {
    pub fn of(datagram: &[u8]) -> Option<Flavor> {
        let version = u16::from_be_bytes(datagram.get(..2)?.try_into().ok()?);
        match version {
            5 if datagram.len() >= 24 => Some(Flavor::NetflowV5),
            9 if datagram.len() >= 20 => Some(Flavor::NetflowV9),
            10 if datagram.len() >= 16 => Some(Flavor::Ipfix),
            0 if datagram.get(..4) == Some(&[0, 0, 0, 5]) => Some(Flavor::Sflow),
            _ => None,
        }
    }

    /// Header length and the byte range of the domain field.
    fn header(self) -> (usize, std::ops::Range<usize>) {
        match self {
            Flavor::NetflowV5 => (24, 20..22),
            Flavor::NetflowV9 => (20, 16..20),
            Flavor::Ipfix => (16, 12..16),
            Flavor::Sflow => (0, 0..0),
        }
    }

    /// Set ids of (templates, options templates).
    fn template_sets(self) -> Option<(u16, u16)> {
        match self {
            Flavor::NetflowV9 => Some((0, 1)),
            Flavor::Ipfix => Some((2, 3)),
            _ => None,
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
enum Kind {
    Template,
    Options,
}

#[derive(Default)]
struct Templates {
    /// (kind, template id) → the template record's bytes.
    records: BTreeMap<(Kind, u16), Vec<u8>>,
    last_sent: Option<Instant>,
    resend_needed: bool,
}

/// A template record seen in a datagram: its key and bytes (None: withdrawn).
type LearnedTemplate = ((Kind, u16), Option<Vec<u8>>);

/// What parsing found in one datagram.
struct Parsed {
    flavor: Flavor,
    domain: u32,
    has_data: bool,
    learned: Vec<LearnedTemplate>,
    malformed: bool,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn parse(datagram: &[u8]) -> Option<Parsed> {
    let flavor = Flavor::of(datagram)?;
    let (header_len, domain_at) = flavor.header();
    let domain = match flavor {
        Flavor::NetflowV5 => u32::from(be16(datagram, domain_at.start)?),
        Flavor::NetflowV9 | Flavor::Ipfix => be32(datagram, domain_at.start)?,
        Flavor::Sflow => 0,
    };
    let mut parsed =
        Parsed { flavor, domain, has_data: true, learned: Vec::new(), malformed: false };
    let Some((template_set, options_set)) = flavor.template_sets() else { return Some(parsed) };
    parsed.has_data = false;
    let end = if flavor == Flavor::Ipfix {
        usize::from(be16(datagram, 2)?).min(datagram.len())
    } else {
        datagram.len()
    };
    let mut at = header_len;
    while at + 4 <= end {
        let (set_id, set_len) = (be16(datagram, at)?, usize::from(be16(datagram, at + 2)?));
        if set_len < 4 || at + set_len > end {
            parsed.malformed = true;
            break;
        }
        let body = &datagram[at + 4..at + set_len];
        if set_id == template_set || set_id == options_set {
            let kind = if set_id == template_set { Kind::Template } else { Kind::Options };
            if !template_records(flavor, kind, body, &mut parsed.learned) {
                parsed.malformed = true;
            }
        } else if set_id >= 256 {
            parsed.has_data = true;
        }
        at += set_len;
    }
    Some(parsed)
}

/// Splits a template (or options template) set body into its records;
/// `None` bytes mark a withdrawal. Returns false when the set is malformed.
fn template_records(
    flavor: Flavor,
    kind: Kind,
    body: &[u8],
    out: &mut Vec<LearnedTemplate>,
) -> bool {
    let mut at = 0;
    loop {
        let left = body.len() - at;
        let min = if flavor == Flavor::NetflowV9 && kind == Kind::Options { 6 } else { 4 };
        if left < min {
            return true; // padding
        }
        let Some(id) = be16(body, at) else { return false };
        let len = match (flavor, kind) {
            (Flavor::NetflowV9, Kind::Template) => {
                let Some(count) = be16(body, at + 2) else { return false };
                4 + 4 * usize::from(count)
            }
            (Flavor::NetflowV9, Kind::Options) => {
                let (Some(scope), Some(options)) = (be16(body, at + 2), be16(body, at + 4)) else {
                    return false;
                };
                6 + usize::from(scope) + usize::from(options)
            }
            _ => {
                let Some(count) = be16(body, at + 2) else { return false };
                if count == 0 {
                    // Withdrawal (RFC 7011 8.1); id 2/3 withdraws them all.
                    out.push(((kind, id), None));
                    at += 4;
                    continue;
                }
                let mut len = if kind == Kind::Options { 6 } else { 4 };
                for _ in 0..count {
                    let Some(element) = be16(body, at + len) else { return false };
                    len += if element & 0x8000 != 0 { 8 } else { 4 };
                }
                len
            }
        };
        if id < 256 {
            return true; // padding that happened to be long enough
        }
        let Some(record) = body.get(at..at + len) else { return false };
        out.push(((kind, id), Some(record.to_vec())));
        at += len;
    }
}

/// What a relay must remember across restarts (JSON in the index).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RelayState {
    /// (exporter, original domain, relayed domain)
    pub domains: Vec<(IpAddr, u32, u32)>,
    /// (exporter, flavor, original domain, kind, template id, record bytes)
    templates: Vec<(IpAddr, Flavor, u32, Kind, u16, Vec<u8>)>,
}

pub struct UdpRelaySink {
    /// The mapping or the templates changed since the last [`Self::take_state`].
    changed: bool,
    endpoint: String,
    rewrite: bool,
    resend_interval: Duration,
    socket: Option<UdpSocket>,
    mapping: BTreeMap<(IpAddr, u32), u32>,
    templates: HashMap<(IpAddr, Flavor, u32), Templates>,
    unparsed: u64,
    template_datagrams_sent: u64,
}

impl UdpRelaySink {
    pub fn from_config(config: &SinkConfig) -> UdpRelaySink {
        UdpRelaySink {
            changed: false,
            endpoint: config.endpoint.clone(),
            rewrite: config.rewrite_domains,
            resend_interval: Duration::from_secs(config.template_resend_interval_s),
            socket: None,
            mapping: BTreeMap::new(),
            templates: HashMap::new(),
            unparsed: 0,
            template_datagrams_sent: 0,
        }
    }

    /// (exporter address, original source id / domain) → relayed id.
    pub fn mapping(&self) -> &BTreeMap<(IpAddr, u32), u32> {
        &self.mapping
    }

    /// Restores a persisted mapping (ids already handed out stay valid).
    pub fn set_mapping(&mut self, mapping: BTreeMap<(IpAddr, u32), u32>) {
        self.mapping = mapping;
    }

    /// Allocates relayed ids and learns the templates of `batch` without
    /// sending anything (so the state can be persisted first).
    pub fn prepare(&mut self, batch: &[Outgoing]) {
        for record in batch {
            let Some(parsed) = parse(&record.payload) else { continue };
            if self.rewrite && parsed.flavor != Flavor::Sflow {
                self.relayed_domain(record.src.ip(), parsed.domain);
            }
            self.remember(record.src.ip(), &parsed);
        }
    }

    /// The state to persist, when it changed since the last call.
    pub fn take_state(&mut self) -> Option<RelayState> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        let domains = self.mapping.iter().map(|(&(ip, from), &to)| (ip, from, to)).collect();
        let mut templates = Vec::new();
        for (&(ip, flavor, domain), cache) in &self.templates {
            for (&(kind, id), record) in &cache.records {
                templates.push((ip, flavor, domain, kind, id, record.clone()));
            }
        }
        templates.sort();
        Some(RelayState { domains, templates })
    }

    /// Restores a persisted state; every template is due before the next
    /// data of its exporter domain.
    pub fn restore(&mut self, state: RelayState) {
        self.mapping = state.domains.into_iter().map(|(ip, from, to)| ((ip, from), to)).collect();
        for (ip, flavor, domain, kind, id, record) in state.templates {
            let cache = self.templates.entry((ip, flavor, domain)).or_default();
            cache.records.insert((kind, id), record);
            cache.resend_needed = true;
        }
    }

    /// Datagrams relayed without rewriting because they did not parse.
    pub fn unparsed(&self) -> u64 {
        self.unparsed
    }

    /// Template-only datagrams Raven built and sent so far.
    pub fn template_datagrams_sent(&self) -> u64 {
        self.template_datagrams_sent
    }

    /// Remembers the templates in `records` without sending anything, and
    /// schedules them to go ahead of the next data (after a restart: feed
    /// the datagrams before the cursor that carried templates).
    pub fn learn(&mut self, records: &[Outgoing]) {
        for record in records {
            if let Some(parsed) = parse(&record.payload) {
                let cache = self.remember(record.src.ip(), &parsed);
                cache.resend_needed = true;
            }
        }
    }

    pub fn reset(&mut self) {
        self.socket = None;
        for cache in self.templates.values_mut() {
            cache.resend_needed = true;
        }
    }

    fn remember(&mut self, exporter: IpAddr, parsed: &Parsed) -> &mut Templates {
        let cache = self.templates.entry((exporter, parsed.flavor, parsed.domain)).or_default();
        for (key, record) in &parsed.learned {
            let before = cache.records.len();
            match record {
                // Exporters re-announce templates all the time: only a new
                // or different one is a change worth persisting.
                Some(bytes) => {
                    if cache.records.get(key) != Some(bytes) {
                        cache.records.insert(*key, bytes.clone());
                        self.changed = true;
                    }
                }
                None if key.1 == 2 || key.1 == 3 => cache.records.retain(|k, _| k.0 != key.0),
                None => {
                    cache.records.remove(key);
                }
            }
            if cache.records.len() < before {
                self.changed = true;
            }
        }
        cache
    }

    fn relayed_domain(&mut self, exporter: IpAddr, domain: u32) -> u32 {
        if let Some(&relayed) = self.mapping.get(&(exporter, domain)) {
            return relayed;
        }
        let next = self.mapping.values().max().map_or(1, |m| m.saturating_add(1));
        self.changed = true;
        *self.mapping.entry((exporter, domain)).or_insert(next)
    }

    /// The datagrams to send for one record: template datagrams when due,
    /// then the record's own (rewritten) datagram.
    pub fn datagrams_for(&mut self, record: &Outgoing, now: Instant) -> Vec<Vec<u8>> {
        let mut datagram = record.payload.to_vec();
        let Some(parsed) = parse(&datagram) else {
            self.unparsed += 1;
            return vec![datagram];
        };
        if parsed.malformed {
            self.unparsed += 1;
        }
        let exporter = record.src.ip();
        let domain = if self.rewrite && parsed.flavor != Flavor::Sflow {
            self.relayed_domain(exporter, parsed.domain)
        } else {
            parsed.domain
        };
        let flavor = parsed.flavor;
        let carries_templates = parsed.learned.iter().any(|(_, r)| r.is_some());
        let resend_interval = self.resend_interval;
        let cache = self.remember(exporter, &parsed);
        let mut out = Vec::new();
        let due = cache.resend_needed
            || cache.last_sent.is_some_and(|t| now.saturating_duration_since(t) >= resend_interval);
        if parsed.has_data && due && !cache.records.is_empty() {
            out = template_datagrams(flavor, &datagram, domain, &cache.records);
            cache.resend_needed = false;
            cache.last_sent = Some(now);
        } else if carries_templates && cache.last_sent.is_none() {
            cache.last_sent = Some(now);
        }
        self.template_datagrams_sent += out.len() as u64;
        write_domain(flavor, &mut datagram, domain);
        out.push(datagram);
        out
    }

    async fn socket(&mut self) -> Result<&UdpSocket, SinkError> {
        super::connected_udp(&mut self.socket, &self.endpoint).await
    }

    pub async fn probe(&mut self) -> Result<(), SinkError> {
        self.socket().await.map(|_| ())
    }

    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<Delivered, SinkFailure> {
        self.socket().await.map_err(SinkFailure::none_acknowledged)?;
        let now = Instant::now();
        let mut delivered = Delivered::default();
        for record in batch {
            let datagrams = self.datagrams_for(record, now);
            let socket = self.socket.as_ref().expect("connected above");
            for datagram in &datagrams {
                match socket.send(datagram).await {
                    Ok(n) => delivered.bytes += n as u64,
                    Err(e) => {
                        // Templates must go again ahead of the retry.
                        self.reset();
                        return Err(SinkFailure {
                            acknowledged: delivered.acknowledged,
                            error: SinkError::Write(e),
                        });
                    }
                }
            }
            delivered.acknowledged += 1;
        }
        Ok(delivered)
    }
}

fn write_domain(flavor: Flavor, datagram: &mut [u8], domain: u32) {
    let (_, at) = flavor.header();
    match flavor {
        Flavor::NetflowV5 => {
            if let Ok(id) = u16::try_from(domain) {
                datagram[at].copy_from_slice(&id.to_be_bytes());
            }
        }
        Flavor::NetflowV9 | Flavor::Ipfix => datagram[at].copy_from_slice(&domain.to_be_bytes()),
        Flavor::Sflow => {}
    }
}

/// Template-only datagrams for `records`, with the header of `current` (so
/// times and sequence match the data they precede) and the relayed domain.
/// IPFIX sequence numbers count data records only, so reusing the current
/// one is exact; a NetFlow v9 collector sees the sequence number twice.
fn template_datagrams(
    flavor: Flavor,
    current: &[u8],
    domain: u32,
    records: &BTreeMap<(Kind, u16), Vec<u8>>,
) -> Vec<Vec<u8>> {
    let Some((template_set, options_set)) = flavor.template_sets() else { return Vec::new() };
    let (header_len, _) = flavor.header();
    // One set per template record keeps the sets simple to pad (v9 options
    // templates are not multiples of 4 long).
    let sets = records.iter().map(|((kind, _), record)| {
        let set_id = if *kind == Kind::Template { template_set } else { options_set };
        let padded = record.len().div_ceil(4) * 4;
        let mut set = Vec::with_capacity(4 + padded);
        set.extend_from_slice(&set_id.to_be_bytes());
        set.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
        set.extend_from_slice(record);
        set.resize(4 + padded, 0);
        set
    });
    let mut out: Vec<(Vec<u8>, u16)> = Vec::new();
    for set in sets {
        let fits = out.last().is_some_and(|(d, _)| d.len() + set.len() <= TEMPLATE_DATAGRAM_MAX);
        if !fits {
            let mut header = current[..header_len].to_vec();
            write_domain(flavor, &mut header, domain);
            out.push((header, 0));
        }
        let (datagram, count) = out.last_mut().expect("pushed above");
        datagram.extend_from_slice(&set);
        *count += 1;
    }
    out.into_iter()
        .map(|(mut datagram, count)| {
            match flavor {
                // v9 header count: records (here template records) in the packet.
                Flavor::NetflowV9 => datagram[2..4].copy_from_slice(&count.to_be_bytes()),
                // IPFIX header length: the whole message.
                _ => {
                    let len = datagram.len() as u16;
                    datagram[2..4].copy_from_slice(&len.to_be_bytes());
                }
            }
            datagram
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{forward::RecordId, record::Stream};

    fn v9(source_id: u32, sets: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut d = vec![0, 9, 0, sets.len() as u8];
        d.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
        d.extend_from_slice(&source_id.to_be_bytes());
        for (id, body) in sets {
            d.extend_from_slice(&id.to_be_bytes());
            d.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
            d.extend_from_slice(body);
        }
        d
    }

    fn template_260() -> Vec<u8> {
        // id 260, 2 fields: IN_BYTES(1) len 4, IPV4_SRC_ADDR(8) len 4
        vec![1, 4, 0, 2, 0, 1, 0, 4, 0, 8, 0, 4]
    }

    fn options_257() -> Vec<u8> {
        // id 257, scope len 4, option len 8, + 2 bytes padding
        vec![1, 1, 0, 4, 0, 8, 0, 1, 0, 4, 0, 34, 0, 4, 0, 35, 0, 1, 0, 0]
    }

    fn outgoing(src: &str, payload: Vec<u8>, seq: u64) -> Outgoing {
        Outgoing {
            id: RecordId { appliance: "t".into(), stream: Stream::Netflow, seq },
            captured_at: std::time::SystemTime::UNIX_EPOCH,
            src: src.parse().unwrap(),
            dst_port: 2055,
            payload: payload.into(),
            decoded: None,
        }
    }

    fn sink() -> UdpRelaySink {
        UdpRelaySink::from_config(&crate::config::SinkConfig::new(
            "r",
            crate::config::SinkProtocol::UdpRelay,
            "192.0.2.1:2055",
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn domains_are_mapped_per_exporter_and_original_id() {
        let mut s = sink();
        let now = Instant::now();
        let data = |id| v9(id, &[(260, vec![0; 8])]);
        let a = s.datagrams_for(&outgoing("198.18.0.2:1000", data(0), 1), now);
        let b = s.datagrams_for(&outgoing("198.18.0.3:1000", data(0), 2), now);
        let c = s.datagrams_for(&outgoing("198.18.0.2:1000", data(7), 3), now);
        let d = s.datagrams_for(&outgoing("198.18.0.2:1000", data(0), 4), now);
        let id = |d: &Vec<Vec<u8>>| be32(&d[0], 16).unwrap();
        assert_eq!([id(&a), id(&b), id(&c), id(&d)], [1, 2, 3, 1]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let want: BTreeMap<_, _> =
            [((ip("198.18.0.2"), 0), 1), ((ip("198.18.0.3"), 0), 2), ((ip("198.18.0.2"), 7), 3)]
                .into();
        assert_eq!(s.mapping(), &want);
        // Everything but the source id is untouched.
        assert_eq!(a[0][..16], data(0)[..16]);
        assert_eq!(a[0][20..], data(0)[20..]);
    }

    #[tokio::test(start_paused = true)]
    async fn state_survives_a_restart_and_templates_lead_the_first_data() {
        let mut before = sink();
        let (a, b) = ("198.18.0.2:1000", "198.18.0.3:1000");
        let batch = [
            outgoing(b, v9(9, &[(260, vec![0; 8])]), 1),
            outgoing(a, v9(42, &[(0, template_260()), (260, vec![0; 8])]), 2),
        ];
        before.prepare(&batch);
        let state = before.take_state().expect("new ids and a template: changed");
        assert_eq!(state.domains.len(), 2);
        assert!(before.take_state().is_none(), "nothing new since");
        // The same template announced again is no change.
        before.prepare(&[outgoing(a, v9(42, &[(0, template_260())]), 3)]);
        assert!(before.take_state().is_none());
        let json = serde_json::to_string(&state).unwrap();

        let mut after = sink();
        after.restore(serde_json::from_str(&json).unwrap());
        let data = outgoing(a, v9(42, &[(260, vec![0; 8])]), 4);
        let out = after.datagrams_for(&data, Instant::now());
        assert_eq!(out.len(), 2, "the template first, then the data");
        let exporter: IpAddr = "198.18.0.2".parse().unwrap();
        assert_eq!(be32(&out[0], 16), before.mapping().get(&(exporter, 42)).copied());
        assert_eq!(be32(&out[1], 16), be32(&out[0], 16), "the same relayed id as before");
        assert_eq!(after.mapping(), before.mapping());
    }

    #[tokio::test(start_paused = true)]
    async fn templates_are_resent_ahead_of_data_after_a_reset_and_periodically() {
        let mut s = sink();
        let src = "198.18.0.2:1000";
        let now = Instant::now();
        let first = v9(42, &[(0, template_260()), (1, options_257()), (260, vec![0; 8])]);
        let out = s.datagrams_for(&outgoing(src, first.clone(), 1), now);
        assert_eq!(out.len(), 1, "templates travel in the datagram itself");
        let data = v9(42, &[(260, vec![0; 8])]);
        assert_eq!(s.datagrams_for(&outgoing(src, data.clone(), 2), now).len(), 1);
        s.reset();
        let out = s.datagrams_for(&outgoing(src, data.clone(), 3), now);
        assert_eq!(out.len(), 2, "one template datagram, then the data");
        let t = &out[0];
        assert_eq!(be16(t, 0), Some(9));
        assert_eq!(be16(t, 2), Some(2), "count = template records");
        assert_eq!(be32(t, 16), Some(1), "relayed source id");
        // Sets: options 257 (kind order: templates first), padded.
        let mut want = vec![0, 0, 0, 16];
        want.extend(template_260());
        want.extend([0, 1, 0, 24]);
        want.extend(options_257());
        assert_eq!(t[20..], want[..]);
        assert_eq!(s.datagrams_for(&outgoing(src, data.clone(), 4), now).len(), 1);
        let later = now + Duration::from_secs(300);
        assert_eq!(s.datagrams_for(&outgoing(src, data, 5), later).len(), 2, "periodic re-send");
    }

    #[tokio::test(start_paused = true)]
    async fn learned_templates_go_first_and_withdrawals_forget() {
        let mut s = sink();
        let src = "198.18.0.9:1000";
        // IPFIX: template 300 with an enterprise field (8 bytes) and a plain one.
        let mut t = vec![1, 44, 0, 2, 0x80, 1, 0, 4, 0, 0, 0x72, 0x39, 0, 8, 0, 4];
        let ipfix = |sets: &[(u16, Vec<u8>)]| {
            let mut d = vec![0, 10, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 9];
            for (id, body) in sets {
                d.extend_from_slice(&id.to_be_bytes());
                d.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
                d.extend_from_slice(body);
            }
            let len = d.len() as u16;
            d[2..4].copy_from_slice(&len.to_be_bytes());
            d
        };
        s.learn(&[outgoing(src, ipfix(&[(2, t.clone())]), 1)]);
        let out = s.datagrams_for(&outgoing(src, ipfix(&[(300, vec![0; 12])]), 2), Instant::now());
        assert_eq!(out.len(), 2);
        assert_eq!(usize::from(be16(&out[0], 2).unwrap()), out[0].len(), "IPFIX length");
        assert_eq!(out[0][16..20], [0, 2, 0, 20]);
        assert_eq!(out[0][20..], t[..]);
        // Withdraw template 300, reset: nothing left to re-send.
        t.truncate(2);
        t.extend([0, 0]);
        s.datagrams_for(&outgoing(src, ipfix(&[(2, t)]), 3), Instant::now());
        s.reset();
        let out = s.datagrams_for(&outgoing(src, ipfix(&[(300, vec![0; 12])]), 4), Instant::now());
        assert_eq!(out.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn v5_engine_ids_are_rewritten_and_sflow_is_left_alone() {
        let mut s = sink();
        let now = Instant::now();
        let mut v5 = vec![0u8; 24 + 48];
        v5[1] = 5;
        v5[3] = 1;
        v5[20] = 3; // engine type
        v5[21] = 9; // engine id
        let a = s.datagrams_for(&outgoing("198.18.0.2:1", v5.clone(), 1), now);
        let b = s.datagrams_for(&outgoing("198.18.0.3:1", v5.clone(), 2), now);
        assert_eq!((a.len(), b.len()), (1, 1));
        assert_eq!(a[0][20..22], [0, 1]);
        assert_eq!(b[0][20..22], [0, 2]);
        assert_eq!(a[0][..20], v5[..20]);
        assert_eq!(a[0][22..], v5[22..]);
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        assert_eq!(s.mapping().get(&(ip, 0x0309)), Some(&1));
        // sFlow v5: agent address and sub-agent id are inside; unchanged.
        let mut sflow = vec![0, 0, 0, 5, 0, 0, 0, 1, 198, 18, 0, 2, 0, 0, 0, 7];
        sflow.extend([0u8; 12]);
        let out = s.datagrams_for(&outgoing("198.18.0.2:1", sflow.clone(), 3), now);
        assert_eq!(out, [sflow]);
        assert_eq!(s.mapping().len(), 2, "sFlow takes no mapping entry");
        assert_eq!(s.unparsed(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_rewriting_domains_pass_unchanged() {
        let mut config = crate::config::SinkConfig::new(
            "r",
            crate::config::SinkProtocol::UdpRelay,
            "192.0.2.1:2055",
        );
        config.rewrite_domains = false;
        let mut s = UdpRelaySink::from_config(&config);
        let data = v9(77, &[(260, vec![0; 8])]);
        let out = s.datagrams_for(&outgoing("198.18.0.2:1", data.clone(), 1), Instant::now());
        assert_eq!(out, [data]);
        assert!(s.mapping().is_empty());
    }

    #[test]
    fn garbage_and_truncated_datagrams_never_panic() {
        let mut s = sink();
        let now = Instant::now();
        let mut cases: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 9], vec![0, 10, 0xff, 0xff]];
        let mut full = v9(1, &[(0, template_260()), (1, options_257()), (260, vec![0; 8])]);
        for cut in 0..full.len() {
            cases.push(full[..cut].to_vec());
        }
        full[22] = 0xff; // template set length beyond the datagram
        cases.push(full);
        for payload in cases {
            let out = s.datagrams_for(&outgoing("198.18.0.2:1", payload.clone(), 1), now);
            assert_eq!(out.last().unwrap().len(), payload.len());
        }
    }
}

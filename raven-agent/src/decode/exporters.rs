//! Exporters as the decoders see them: per (stream, source address) the
//! datagrams and bytes decoded, parse errors by reason, sequence loss and
//! restarts, and when it was first and last heard — the rows behind
//! `GET /api/buffer/stats/{stream}`.
//!
//! Invariants:
//! - Bounded: at most [`MAX_EXPORTERS`] rows. Datagrams from further
//!   exporters are still decoded, stored and counted in the metrics; here
//!   they are added to one overflow row (address `0.0.0.0`, `overflow:
//!   true`) so the totals stay right and the table cannot grow without end.
//! - Counts since the agent started (the metrics carry the same totals for
//!   Prometheus); what is stored per exporter comes from the store's index.
//!
//! Operations: the decoder [`ExporterBook::add_batch`]es once per captured
//! batch; the API takes a [`ExporterBook::rows`] snapshot.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
    sync::Mutex,
    time::SystemTime,
};

use serde::Serialize;

use crate::record::Stream;

pub const MAX_EXPORTERS: usize = 4096;

/// One exporter of one stream.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ExporterTally {
    /// Datagrams (messages for TCP syslog, events for Windows) decoded.
    pub records: u64,
    /// Payload bytes of those records.
    pub bytes: u64,
    /// Records kept raw with a parse error, by reason.
    pub parse_errors: BTreeMap<String, u64>,
    /// Records the exporter's own sequence numbers say were lost before
    /// they reached Raven (NetFlow, IPFIX, sFlow).
    pub sequence_lost: u64,
    /// Times the exporter's sequence restarted (a reboot, not loss).
    pub restarts: u64,
    /// RFC 3339.
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// This row sums every exporter beyond the table's bound.
    pub overflow: bool,
}

/// What one decoded record adds to its exporter's row.
pub struct Observation {
    pub stream: Stream,
    pub exporter: IpAddr,
    pub bytes: usize,
    pub parse_error: Option<&'static str>,
    pub sequence_lost: u64,
    pub restarted: bool,
}

/// A row and when its exporter was first and last heard.
type Row = (ExporterTally, SystemTime, SystemTime);

#[derive(Default)]
pub struct ExporterBook {
    rows: Mutex<HashMap<(Stream, IpAddr), Row>>,
}

impl ExporterBook {
    pub fn add_batch(&self, now: SystemTime, observations: impl IntoIterator<Item = Observation>) {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        for o in observations {
            let mut key = (o.stream, o.exporter);
            if !rows.contains_key(&key) && rows.len() >= MAX_EXPORTERS {
                key.1 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            }
            let (tally, _, last) = rows.entry(key).or_insert_with(|| {
                let overflow = key.1 == IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                (ExporterTally { overflow, ..ExporterTally::default() }, now, now)
            });
            tally.records += 1;
            tally.bytes += o.bytes as u64;
            if let Some(reason) = o.parse_error {
                *tally.parse_errors.entry(reason.to_string()).or_default() += 1;
            }
            tally.sequence_lost += o.sequence_lost;
            tally.restarts += u64::from(o.restarted);
            *last = now;
        }
    }

    /// The rows of one stream, busiest first.
    pub fn rows(&self, stream: Stream) -> Vec<(IpAddr, ExporterTally)> {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = rows
            .iter()
            .filter(|((s, _), _)| *s == stream)
            .map(|((_, ip), (tally, first, last))| {
                let mut tally = tally.clone();
                tally.first_seen = Some(crate::record::rfc3339(*first));
                tally.last_seen = Some(crate::record::rfc3339(*last));
                (*ip, tally)
            })
            .collect();
        out.sort_by(|a, b| b.1.records.cmp(&a.1.records).then(a.0.cmp(&b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(ip: [u8; 4], error: Option<&'static str>, lost: u64) -> Observation {
        Observation {
            stream: Stream::Netflow,
            exporter: IpAddr::from(ip),
            bytes: 100,
            parse_error: error,
            sequence_lost: lost,
            restarted: false,
        }
    }

    #[test]
    fn tallies_per_exporter_and_stream() {
        let book = ExporterBook::default();
        let now = SystemTime::now();
        book.add_batch(
            now,
            [seen([192, 0, 2, 1], None, 0), seen([192, 0, 2, 1], Some("truncated"), 3)],
        );
        book.add_batch(now, [seen([192, 0, 2, 2], None, 0)]);
        let rows = book.rows(Stream::Netflow);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, IpAddr::from([192, 0, 2, 1]));
        assert_eq!(rows[0].1.records, 2);
        assert_eq!(rows[0].1.bytes, 200);
        assert_eq!(rows[0].1.parse_errors["truncated"], 1);
        assert_eq!(rows[0].1.sequence_lost, 3);
        assert!(book.rows(Stream::Syslog).is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_overflow_keeps_the_totals() {
        let book = ExporterBook::default();
        let now = SystemTime::now();
        let n = MAX_EXPORTERS as u32 + 10;
        book.add_batch(now, (0..n).map(|i| seen((0xC612_0000u32 + i).to_be_bytes(), None, 0)));
        let rows = book.rows(Stream::Netflow);
        assert_eq!(rows.len(), MAX_EXPORTERS + 1);
        let overflow: Vec<_> = rows.iter().filter(|r| r.1.overflow).collect();
        assert_eq!(overflow.len(), 1);
        assert_eq!(overflow[0].1.records, 10);
        assert_eq!(rows.iter().map(|r| r.1.records).sum::<u64>(), u64::from(n));
    }
}

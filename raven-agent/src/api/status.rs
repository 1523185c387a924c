//! The status page: one self-contained HTML page (no external assets, the
//! appliance has no internet) that polls `/api/status` and draws streams,
//! exporters, and per-stream rate charts of the last hour.
//!
//! Invariants:
//! - Read-only. With `api.status_page_public` the page and its data answer
//!   without a token; otherwise the page takes the token from the URL
//!   fragment (`/#token=...`, never sent to the server in the URL) and sends
//!   it as a bearer header.
//! - The history is bounded: 60 one-minute samples per stream, and the
//!   per-second samples of the last minute behind the current rates.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::{
    metrics::{Rate, StreamTotals},
    record::Stream,
};

pub const PAGE: &str = include_str!("status.html");

/// Records per minute per stream, for the last hour.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RateHistory {
    /// (minute start, unix seconds; records per stream in `Stream::ALL` order)
    pub minutes: VecDeque<(u64, [u64; Stream::ALL.len()])>,
    #[serde(skip)]
    last_totals: Option<[u64; Stream::ALL.len()]>,
    /// (unix seconds, totals per stream) of the last [`RATE_WINDOW_SECS`].
    #[serde(skip)]
    recent: VecDeque<(f64, [StreamTotals; Stream::ALL.len()])>,
}

pub const HISTORY_MINUTES: usize = 60;
/// Rates are averaged over this window: long enough to smooth bursts of
/// batched capture, short enough that an exporter going quiet shows.
pub const RATE_WINDOW_SECS: f64 = 60.0;

impl RateHistory {
    /// Adds the growth of the cumulative per-stream totals since the last call.
    pub fn sample(&mut self, now: SystemTime, totals: [(Stream, StreamTotals); Stream::ALL.len()]) {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        self.recent.push_back((secs, totals.map(|(_, t)| t)));
        while self.recent.front().is_some_and(|(t, _)| secs - t > RATE_WINDOW_SECS) {
            self.recent.pop_front();
        }
        let totals = totals.map(|(_, t)| t.records);
        let previous = self.last_totals.replace(totals).unwrap_or(totals);
        let minute = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60 * 60;
        let mut grew = [0u64; Stream::ALL.len()];
        for (i, slot) in grew.iter_mut().enumerate() {
            *slot = totals[i].saturating_sub(previous[i]);
        }
        match self.minutes.back_mut() {
            Some((start, counts)) if *start == minute => {
                for (count, g) in counts.iter_mut().zip(grew) {
                    *count += g;
                }
            }
            _ => {
                self.minutes.push_back((minute, grew));
                while self.minutes.len() > HISTORY_MINUTES {
                    self.minutes.pop_front();
                }
            }
        }
    }
}

impl RateHistory {
    /// Per stream (in `Stream::ALL` order), the rate over the samples of
    /// the last minute; zero until two samples exist.
    pub fn rates(&self) -> [Rate; Stream::ALL.len()] {
        let (Some((t0, first)), Some((t1, last))) = (self.recent.front(), self.recent.back())
        else {
            return Default::default();
        };
        let dt = t1 - t0;
        if dt <= 0.0 {
            return Default::default();
        }
        std::array::from_fn(|i| Rate {
            records_per_second: last[i].records.saturating_sub(first[i].records) as f64 / dt,
            wire_bytes_per_second: last[i].wire_bytes.saturating_sub(first[i].wire_bytes) as f64
                / dt,
        })
    }

    pub fn rate(&self, stream: Stream) -> Rate {
        let i = Stream::ALL.iter().position(|s| *s == stream).expect("ALL lists every stream");
        self.rates()[i]
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn totals(n: u64) -> [(Stream, StreamTotals); Stream::ALL.len()] {
        Stream::ALL.map(|s| {
            let n = if s == Stream::Syslog { n } else { 0 };
            (s, StreamTotals { records: n, wire_bytes: n * 100 })
        })
    }

    #[test]
    fn rates_come_from_the_last_minute() {
        let mut h = RateHistory::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(h.rate(Stream::Syslog), Rate::default());
        for s in 0..=120u64 {
            // 10/s for the first minute, then 50/s
            let n = if s <= 60 { s * 10 } else { 600 + (s - 60) * 50 };
            h.sample(t0 + Duration::from_secs(s), totals(n));
        }
        let rate = h.rate(Stream::Syslog);
        assert_eq!(rate.records_per_second, 50.0);
        assert_eq!(rate.wire_bytes_per_second, 5000.0);
        assert_eq!(h.rate(Stream::Netflow).records_per_second, 0.0);
    }

    #[test]
    fn samples_fold_into_minutes_and_the_hour_is_bounded() {
        let mut h = RateHistory::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000 / 60 * 60);
        h.sample(t0, totals(100));
        h.sample(t0 + Duration::from_secs(10), totals(130));
        h.sample(t0 + Duration::from_secs(70), totals(200));
        assert_eq!(h.minutes.len(), 2);
        assert_eq!(h.minutes[0].1[0], 30, "the first sample only sets the baseline");
        assert_eq!(h.minutes[1].1[0], 70);
        for m in 0..200 {
            h.sample(t0 + Duration::from_secs(120 + m * 60), totals(300 + m));
        }
        assert_eq!(h.minutes.len(), HISTORY_MINUTES);
    }
}

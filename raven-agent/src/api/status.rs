//! The status page: one self-contained HTML page (no external assets, the
//! appliance has no internet) that polls `/api/status` and draws streams,
//! exporters, and per-stream rate charts of the last hour.
//!
//! Invariants:
//! - Read-only. With `api.status_page_public` the page and its data answer
//!   without a token; otherwise the page takes the token from the URL
//!   fragment (`/#token=...`, never sent to the server in the URL) and sends
//!   it as a bearer header.
//! - The history is bounded: 60 one-minute samples per stream.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::record::Stream;

pub const PAGE: &str = include_str!("status.html");

/// Records per minute per stream, for the last hour.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RateHistory {
    /// (minute start, unix seconds; records per stream in `Stream::ALL` order)
    pub minutes: VecDeque<(u64, [u64; Stream::ALL.len()])>,
    #[serde(skip)]
    last_totals: Option<[u64; Stream::ALL.len()]>,
}

pub const HISTORY_MINUTES: usize = 60;

impl RateHistory {
    /// Adds the growth of the cumulative per-stream totals since the last call.
    pub fn sample(&mut self, now: SystemTime, totals: [(Stream, u64); Stream::ALL.len()]) {
        let totals = totals.map(|(_, n)| n);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn totals(n: u64) -> [(Stream, u64); Stream::ALL.len()] {
        Stream::ALL.map(|s| (s, if s == Stream::Syslog { n } else { 0 }))
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

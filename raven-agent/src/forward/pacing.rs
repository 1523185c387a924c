//! Pacing: a token bucket per sink for records/s and bytes/s, so a replay
//! after an outage does not flood the NOC's collectors.
//!
//! Invariants:
//! - A limit of 0 means unlimited.
//! - A bucket holds at most one second of its rate (the burst).
//! - A batch larger than the burst is let through once the bucket is full
//!   and drives it negative; the next batch waits for the debt to be
//!   repaid. Over any long interval the rate therefore holds exactly.
//! - Time is `tokio::time::Instant` (paused-time tests).

use std::time::Duration;

use tokio::time::Instant;

struct Bucket {
    rate: f64,
    tokens: f64,
}

impl Bucket {
    fn new(rate: u64) -> Option<Bucket> {
        (rate > 0).then_some(Bucket { rate: rate as f64, tokens: rate as f64 })
    }

    fn refill(&mut self, elapsed: Duration) {
        self.tokens = (self.tokens + self.rate * elapsed.as_secs_f64()).min(self.rate);
    }

    /// How long until `amount` (capped at the burst) is available.
    fn wait_for(&self, amount: f64) -> Duration {
        let need = amount.min(self.rate) - self.tokens;
        if need <= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(need / self.rate) }
    }
}

pub struct Pacer {
    records: Option<Bucket>,
    bytes: Option<Bucket>,
    last: Instant,
}

impl Pacer {
    pub fn new(records_per_second: u64, bytes_per_second: u64, now: Instant) -> Pacer {
        Pacer {
            records: Bucket::new(records_per_second),
            bytes: Bucket::new(bytes_per_second),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        for bucket in [&mut self.records, &mut self.bytes].into_iter().flatten() {
            bucket.refill(elapsed);
        }
    }

    /// How long to wait before sending `records` records of `bytes` bytes.
    pub fn delay(&mut self, records: u64, bytes: u64, now: Instant) -> Duration {
        self.refill(now);
        let r = self.records.as_ref().map_or(Duration::ZERO, |b| b.wait_for(records as f64));
        let b = self.bytes.as_ref().map_or(Duration::ZERO, |b| b.wait_for(bytes as f64));
        r.max(b)
    }

    /// Takes the tokens (possibly into debt); call when `delay` is zero.
    pub fn take(&mut self, records: u64, bytes: u64) {
        if let Some(b) = &mut self.records {
            b.tokens -= records as f64;
        }
        if let Some(b) = &mut self.bytes {
            b.tokens -= bytes as f64;
        }
    }

    /// Waits until the batch may go, then takes its tokens.
    pub async fn acquire(&mut self, records: u64, bytes: u64) {
        loop {
            let delay = self.delay(records, bytes, Instant::now());
            if delay.is_zero() {
                break;
            }
            tokio::time::sleep(delay).await;
        }
        self.take(records, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let mut p = Pacer::new(0, 0, Instant::now());
        let start = Instant::now();
        for _ in 0..1000 {
            p.acquire(1_000_000, 1 << 30).await;
        }
        assert_eq!(Instant::now(), start);
    }

    #[tokio::test(start_paused = true)]
    async fn records_per_second_hold_over_time() {
        let mut p = Pacer::new(100, 0, Instant::now());
        let start = Instant::now();
        // 1000 records in batches of 10: the first 100 are the burst, the
        // other 900 take 9 s.
        for _ in 0..100 {
            p.acquire(10, 0).await;
        }
        let took = Instant::now() - start;
        assert!((took.as_secs_f64() - 9.0).abs() < 0.05, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_limit_and_oversized_batches_go_into_debt() {
        let mut p = Pacer::new(0, 1000, Instant::now());
        let start = Instant::now();
        p.acquire(1, 5000).await; // burst full: goes, 4000 in debt
        assert_eq!(Instant::now(), start);
        p.acquire(1, 500).await; // waits for debt + 500 → 4.5 s
        let took = Instant::now() - start;
        assert!((took.as_secs_f64() - 4.5).abs() < 0.05, "{took:?}");
    }
}

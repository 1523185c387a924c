//! Link health of one sink: state, backoff and circuit breaker.
//!
//! Invariants:
//! - The state follows the outcome of real attempts (sends, connects, the
//!   periodic probe), never a guess: `Up` after a success, `Degraded` after
//!   1 ..= `breaker_failures - 1` consecutive failures, `Down` (breaker open)
//!   from `breaker_failures` consecutive failures on, and before the first
//!   attempt.
//! - After a failure the next attempt waits a *full-jitter* exponential
//!   backoff: uniform in `[0, min(max, min · 2^(failures-1))]`. The cap
//!   keeps a long outage from stretching the retry period beyond `max`.
//! - Circuit breaker: while open, nothing is attempted before `ready_at`;
//!   at `ready_at` it is half-open and one attempt (a send or probe) decides:
//!   success closes it (`Up`), failure re-opens it with the next backoff.
//! - Time uses `tokio::time::Instant`, so tests drive it with paused time;
//!   jitter comes from a seedable generator.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::ForwardConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkState {
    Down,
    Degraded,
    Up,
}

impl LinkState {
    pub const ALL: [LinkState; 3] = [LinkState::Down, LinkState::Degraded, LinkState::Up];

    pub fn name(self) -> &'static str {
        match self {
            LinkState::Down => "down",
            LinkState::Degraded => "degraded",
            LinkState::Up => "up",
        }
    }

    /// Gauge value: 0 down, 1 degraded, 2 up.
    pub fn value(self) -> i64 {
        self as i64
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The circuit breaker as seen at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breaker {
    /// Attempts go ahead (after the backoff delay, if any).
    Closed,
    /// No attempts until the given instant.
    Open { until: Instant },
    /// One trial attempt may go now.
    HalfOpen,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HealthPolicy {
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Consecutive failures that open the breaker (at least 1).
    pub breaker_failures: u32,
    /// Seed of the jitter generator (None: random).
    pub seed: Option<u64>,
}

impl HealthPolicy {
    pub fn from_config(forward: &ForwardConfig) -> HealthPolicy {
        HealthPolicy {
            backoff_min: Duration::from_millis(forward.backoff_min_ms),
            backoff_max: Duration::from_millis(forward.backoff_max_ms),
            breaker_failures: forward.breaker_failures.max(1),
            seed: None,
        }
    }

    /// The backoff ceiling after `failures` consecutive failures (≥ 1):
    /// `min(max, min · 2^(failures-1))`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        self.backoff_min.saturating_mul(1u32 << shift).min(self.backoff_max)
    }
}

pub struct LinkHealth {
    policy: HealthPolicy,
    state: LinkState,
    since: Instant,
    /// Time spent in each state before `since`.
    accumulated: [Duration; 3],
    consecutive_failures: u32,
    ready_at: Instant,
    transitions: u64,
    rng: fastrand::Rng,
}

impl LinkHealth {
    pub fn new(policy: HealthPolicy, now: Instant) -> LinkHealth {
        let rng = policy.seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        LinkHealth {
            policy,
            state: LinkState::Down,
            since: now,
            accumulated: [Duration::ZERO; 3],
            consecutive_failures: 0,
            ready_at: now,
            transitions: 0,
            rng,
        }
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When the next attempt may start.
    pub fn ready_at(&self) -> Instant {
        self.ready_at
    }

    /// State changes so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    pub fn breaker(&self, now: Instant) -> Breaker {
        if self.consecutive_failures < self.policy.breaker_failures {
            Breaker::Closed
        } else if now < self.ready_at {
            Breaker::Open { until: self.ready_at }
        } else {
            Breaker::HalfOpen
        }
    }

    /// Whether an attempt may go now.
    pub fn may_attempt(&self, now: Instant) -> bool {
        now >= self.ready_at
    }

    pub fn record_success(&mut self, now: Instant) {
        self.consecutive_failures = 0;
        self.ready_at = now;
        self.set_state(LinkState::Up, now);
    }

    /// Lets the next attempt go now (an operator's flush), without
    /// forgetting the failures: the breaker still counts them.
    pub fn skip_backoff(&mut self, now: Instant) {
        self.ready_at = self.ready_at.min(now);
    }

    /// Records a failed attempt; returns the delay before the next one.
    pub fn record_failure(&mut self, now: Instant) -> Duration {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let ceiling = self.policy.ceiling(self.consecutive_failures);
        let delay = self.jitter(ceiling);
        self.ready_at = now + delay;
        let state = if self.consecutive_failures >= self.policy.breaker_failures {
            LinkState::Down
        } else {
            LinkState::Degraded
        };
        self.set_state(state, now);
        delay
    }

    /// Uniform in `[0, ceiling]` (full jitter), at millisecond resolution.
    fn jitter(&mut self, ceiling: Duration) -> Duration {
        let ms = ceiling.as_millis().min(u128::from(u64::MAX)) as u64;
        Duration::from_millis(self.rng.u64(0..=ms))
    }

    fn set_state(&mut self, state: LinkState, now: Instant) {
        if state == self.state {
            return;
        }
        self.accumulated[self.state.index()] += now.saturating_duration_since(self.since);
        self.since = now;
        self.state = state;
        self.transitions += 1;
    }

    /// Total seconds spent in each state up to `now`.
    pub fn seconds_in_states(&self, now: Instant) -> [(LinkState, f64); 3] {
        LinkState::ALL.map(|state| {
            let mut total = self.accumulated[state.index()];
            if state == self.state {
                total += now.saturating_duration_since(self.since);
            }
            (state, total.as_secs_f64())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            breaker_failures: 3,
            seed: Some(7),
        }
    }

    #[test]
    fn the_ceiling_doubles_and_is_capped() {
        let p = policy();
        let ceilings: Vec<u64> = (1..=9).map(|n| p.ceiling(n).as_millis() as u64).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(p.ceiling(1000), Duration::from_secs(5), "no overflow on long outages");
    }

    #[tokio::test(start_paused = true)]
    async fn states_follow_failures_and_success() {
        let start = Instant::now();
        let mut h = LinkHealth::new(policy(), start);
        assert_eq!(h.state(), LinkState::Down, "unproven at start");
        h.record_success(Instant::now());
        assert_eq!(h.state(), LinkState::Up);
        h.record_failure(Instant::now());
        assert_eq!(h.state(), LinkState::Degraded);
        assert_eq!(h.breaker(Instant::now()), Breaker::Closed);
        h.record_failure(Instant::now());
        assert_eq!(h.state(), LinkState::Degraded);
        h.record_failure(Instant::now());
        assert_eq!(h.state(), LinkState::Down, "third consecutive failure opens the breaker");
        h.record_success(Instant::now());
        assert_eq!(h.state(), LinkState::Up);
        assert_eq!(h.consecutive_failures(), 0);
        assert_eq!(h.transitions(), 4); // down→up→degraded→down→up
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_then_half_opens_at_ready_time() {
        let mut h = LinkHealth::new(policy(), Instant::now());
        for _ in 0..3 {
            h.record_failure(Instant::now());
        }
        let until = h.ready_at();
        if until > Instant::now() {
            assert_eq!(h.breaker(Instant::now()), Breaker::Open { until });
            assert!(!h.may_attempt(Instant::now()));
        }
        tokio::time::sleep_until(until).await;
        assert_eq!(h.breaker(Instant::now()), Breaker::HalfOpen);
        assert!(h.may_attempt(Instant::now()));
        // The half-open trial fails: open again, with a later ready time.
        h.record_failure(Instant::now());
        assert_eq!(h.state(), LinkState::Down);
        assert!(h.ready_at() >= Instant::now());
        tokio::time::sleep_until(h.ready_at()).await;
        h.record_success(Instant::now());
        assert_eq!(h.breaker(Instant::now()), Breaker::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_the_ceiling_and_spreads() {
        let mut h = LinkHealth::new(policy(), Instant::now());
        let mut delays = Vec::new();
        for n in 1..=200u32 {
            let delay = h.record_failure(Instant::now());
            assert!(delay <= policy().ceiling(n), "failure {n}: {delay:?}");
            if n > 10 {
                delays.push(delay);
            }
        }
        // At the cap the delays are spread over [0, 5 s], not all equal.
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        assert!(*min < Duration::from_secs(1) && *max > Duration::from_secs(4), "{min:?} {max:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_seed_gives_the_same_delays() {
        let run = || {
            let mut h = LinkHealth::new(policy(), Instant::now());
            (0..20).map(|_| h.record_failure(Instant::now())).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[tokio::test(start_paused = true)]
    async fn time_in_each_state_is_accounted() {
        let mut h = LinkHealth::new(policy(), Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        h.record_success(Instant::now());
        tokio::time::advance(Duration::from_secs(10)).await;
        h.record_failure(Instant::now());
        tokio::time::advance(Duration::from_secs(3)).await;
        let times = h.seconds_in_states(Instant::now());
        assert_eq!(
            times,
            [(LinkState::Down, 2.0), (LinkState::Degraded, 3.0), (LinkState::Up, 10.0)]
        );
    }
}

//! The retry budget (as Finagle's and Linkerd's): over the last 10 seconds,
//! retries may add at most `percent` of the requests, plus `min_per_second`
//! so that a quiet route can still retry. A failing upstream therefore sees
//! at most (1 + percent/100) times the load, not (1 + attempts) times.
//!
//! Ten one-second buckets of atomic counters: no lock on the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use metrics::Counter;

const WINDOW_SECONDS: u64 = 10;

#[derive(Debug)]
pub struct RetryBudget {
    percent: f64,
    min_per_second: u32,
    start: Instant,
    buckets: [Bucket; WINDOW_SECONDS as usize],
    exhausted: Counter,
}

#[derive(Debug, Default)]
struct Bucket {
    /// The second (since `start`) this bucket counts, plus one (0: unused).
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    pub fn new(percent: f64, min_per_second: u32, exhausted: Counter) -> RetryBudget {
        RetryBudget {
            percent,
            min_per_second,
            start: Instant::now(),
            buckets: Default::default(),
            exhausted,
        }
    }

    pub fn record_request(&self) {
        self.record_request_at(Instant::now());
    }

    /// Takes one retry from the budget, or counts that it is spent.
    pub fn try_retry(&self) -> bool {
        self.try_retry_at(Instant::now())
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() + 1
    }

    fn bucket(&self, second: u64) -> &Bucket {
        let bucket = &self.buckets[(second % WINDOW_SECONDS) as usize];
        let seen = bucket.second.load(Ordering::Acquire);
        if seen != second
            && bucket
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.requests.store(0, Ordering::Release);
            bucket.retries.store(0, Ordering::Release);
        }
        bucket
    }

    fn record_request_at(&self, now: Instant) {
        self.bucket(self.second(now))
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    fn try_retry_at(&self, now: Instant) -> bool {
        let second = self.second(now);
        let (mut requests, mut retries) = (0u64, 0u64);
        for bucket in &self.buckets {
            let at = bucket.second.load(Ordering::Acquire);
            if at + WINDOW_SECONDS > second && at <= second {
                requests += bucket.requests.load(Ordering::Relaxed);
                retries += bucket.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = requests as f64 * self.percent / 100.0
            + f64::from(self.min_per_second) * WINDOW_SECONDS as f64;
        if (retries as f64) < allowed {
            self.bucket(second).retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.exhausted.increment(1);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retries_stay_within_the_percentage_plus_the_reserve() {
        let budget = RetryBudget::new(20.0, 1, Counter::noop());
        let start = budget.start;
        let mut retried = 0;
        // 100 requests a second for 30 s, every one of them wanting a retry.
        for ms in (0..30_000).step_by(10) {
            let now = start + Duration::from_millis(ms);
            budget.record_request_at(now);
            if budget.try_retry_at(now) {
                retried += 1;
            }
        }
        // 20 % of 3,000 requests, plus the reserve of 1 per second for 30 s.
        assert!((620..=640).contains(&retried), "{retried} retries");
    }

    #[test]
    fn a_quiet_route_can_still_retry_a_little() {
        let budget = RetryBudget::new(20.0, 10, Counter::noop());
        let now = budget.start;
        let allowed = (0..1000).filter(|_| budget.try_retry_at(now)).count();
        assert_eq!(allowed, 100, "10 per second over the 10 s window");
    }
}

//! The retry budget (as Finagle's and Linkerd's): over the last 10 seconds,
//! retries may add at most `percent` of the requests, plus `min_per_second`
//! so that a quiet route can still retry. A failing upstream therefore sees
//! at most (1 + percent/100) times the load, not (1 + attempts) times.
//!
//! Ten one-second buckets of atomic counters: no lock on the request path.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;
use tokio::time::Instant;

const WINDOW_SECONDS: u64 = 10;

#[derive(Debug)]
pub(crate) struct RetryBudget {
    percent: f64,
    min_per_second: u32,
    start: Instant,
    requests: [Slot; WINDOW_SECONDS as usize],
    retries: [Slot; WINDOW_SECONDS as usize],
    exhausted: Counter,
}

/// A count for one second of the window, packed with the second it counts
/// (high 24 bits) so that moving to a new second and counting are one
/// atomic step and no count is lost at the boundary.
#[derive(Debug, Default)]
struct Slot(AtomicU64);

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const SECOND_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

impl Slot {
    fn add(&self, second: u64, delta: i64) {
        let tag = second & SECOND_MASK;
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
                let count = if packed >> COUNT_BITS == tag {
                    packed & COUNT_MASK
                } else {
                    0
                };
                Some(tag << COUNT_BITS | (count as i64 + delta).max(0) as u64 & COUNT_MASK)
            });
    }

    /// The count, if the slot holds a second within the window ending at `second`.
    fn within(&self, second: u64) -> u64 {
        let packed = self.0.load(Ordering::Acquire);
        let tag = packed >> COUNT_BITS;
        let age = (second & SECOND_MASK).wrapping_sub(tag) & SECOND_MASK;
        if packed != 0 && age < WINDOW_SECONDS {
            packed & COUNT_MASK
        } else {
            0
        }
    }
}

impl RetryBudget {
    pub(crate) fn new(percent: f64, min_per_second: u32, exhausted: Counter) -> RetryBudget {
        RetryBudget {
            percent,
            min_per_second,
            start: Instant::now(),
            requests: Default::default(),
            retries: Default::default(),
            exhausted,
        }
    }

    pub(crate) fn record_request(&self) {
        self.record_request_at(Instant::now());
    }

    /// Takes one retry from the budget, or counts that it is spent.
    pub(crate) fn try_retry(&self) -> bool {
        self.try_retry_at(Instant::now())
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() + 1
    }

    fn slot(slots: &[Slot], second: u64) -> &Slot {
        &slots[(second % WINDOW_SECONDS) as usize]
    }

    fn record_request_at(&self, now: Instant) {
        let second = self.second(now);
        Self::slot(&self.requests, second).add(second, 1);
    }

    fn try_retry_at(&self, now: Instant) -> bool {
        let second = self.second(now);
        // Take the retry first, then check: concurrent retries each see the
        // others' and cannot together overdraw the budget.
        let slot = Self::slot(&self.retries, second);
        slot.add(second, 1);
        let requests: u64 = self.requests.iter().map(|s| s.within(second)).sum();
        let retries: u64 = self.retries.iter().map(|s| s.within(second)).sum();
        let allowed = requests as f64 * self.percent / 100.0
            + f64::from(self.min_per_second) * WINDOW_SECONDS as f64;
        if retries as f64 <= allowed {
            true
        } else {
            slot.add(second, -1);
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

    /// The window slides in real (here: virtual) time: retries spent now
    /// come back once their second has left the 10 s window.
    #[tokio::test(start_paused = true)]
    async fn spent_retries_come_back_when_they_leave_the_window() {
        let budget = RetryBudget::new(20.0, 0, Counter::noop());
        for _ in 0..100 {
            budget.record_request();
        }
        let granted = (0..50).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 20, "20 % of 100 requests");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!budget.try_retry(), "still inside the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            !budget.try_retry(),
            "the requests left the window with the retries: nothing to retry against"
        );
        for _ in 0..10 {
            budget.record_request();
        }
        assert_eq!((0..10).filter(|_| budget.try_retry()).count(), 2);
    }
}

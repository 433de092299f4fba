//! The peak-EWMA latency estimate of an endpoint (Finagle's, as Linkerd uses
//! through tower): a slower response raises the estimate at once (the
//! peak), a faster one pulls it down gradually, and with no responses it
//! decays toward zero, so an idle endpoint is tried again.

use crate::sync::lock;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct PeakEwma {
    state: Mutex<Estimate>,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    rtt_ns: f64,
    updated: Instant,
}

impl PeakEwma {
    pub fn new(default_rtt: Duration) -> PeakEwma {
        PeakEwma {
            state: Mutex::new(Estimate {
                rtt_ns: default_rtt.as_nanos() as f64,
                updated: Instant::now(),
            }),
        }
    }

    /// Folds in one observed round trip ending `now`.
    pub fn observe(&self, rtt: Duration, now: Instant, decay: Duration) {
        let mut estimate = lock(&self.state);
        estimate.update(rtt.as_nanos() as f64, now, decay);
    }

    /// The current estimate in nanoseconds, decayed to `now`.
    pub fn cost(&self, now: Instant, decay: Duration) -> f64 {
        let mut estimate = lock(&self.state);
        estimate.update(0.0, now, decay);
        estimate.rtt_ns
    }
}

impl Estimate {
    fn update(&mut self, rtt_ns: f64, now: Instant, decay: Duration) {
        if rtt_ns > self.rtt_ns {
            self.rtt_ns = rtt_ns;
        } else {
            let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
            let weight = (-elapsed / decay.as_nanos().max(1) as f64).exp();
            self.rtt_ns = self.rtt_ns * weight + rtt_ns * (1.0 - weight);
        }
        self.updated = self.updated.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(10);

    #[test]
    fn a_slow_response_raises_the_estimate_at_once() {
        let ewma = PeakEwma::new(Duration::from_millis(1));
        let now = Instant::now();
        ewma.observe(Duration::from_millis(200), now, DECAY);
        assert!((ewma.cost(now, DECAY) - 200e6).abs() < 1.0);
    }

    #[test]
    fn fast_responses_pull_it_down_gradually_and_idleness_decays_it() {
        let ewma = PeakEwma::new(Duration::from_millis(100));
        let start = Instant::now();
        ewma.observe(
            Duration::from_millis(1),
            start + Duration::from_secs(1),
            DECAY,
        );
        let after_one = ewma.cost(start + Duration::from_secs(1), DECAY);
        assert!(after_one < 100e6 && after_one > 80e6, "{after_one}");
        let later = ewma.cost(start + Duration::from_secs(60), DECAY);
        assert!(later < 1e6, "decays toward zero when idle: {later}");
    }
}

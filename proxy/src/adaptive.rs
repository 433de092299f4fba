//! Adaptive concurrency: the gradient controller of Envoy's adaptive
//! concurrency filter (and Netflix's concurrency-limits).
//!
//! A cluster lets at most `limit` requests be outstanding; a request over
//! it is answered 503 at once. The limit follows the upstream's latency:
//!
//! - **minRTT**: every `min_rtt_interval` (jittered) the limit is pinned to
//!   `min_concurrency` until `min_rtt_requests` requests have completed; the
//!   `percentile` of their latencies is the ideal round trip, minRTT. It is
//!   measured again early when the limit sat at `min_concurrency` for five
//!   sample windows in a row.
//! - **Sample windows**: every `sample_interval` the `percentile` of the
//!   window's latencies is sampleRTT, and
//!   `gradient = clamp(minRTT × (1 + buffer) / sampleRTT, 0.5, 2)`,
//!   `limit = gradient × limit + √(gradient × limit)`, within
//!   `[min_concurrency, max_concurrency]`.
//!
//! Latency is from the request's admission to the upstream's response
//! headers. On the request path: an atomic add to admit, one to a
//! histogram bucket when the headers arrive, one to release; the window's
//! arithmetic runs in the cluster's background task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};

use crate::config::AdaptiveConcurrencyConfig;
use std::sync::Mutex;

/// Log-linear buckets: 16 per power of two of microseconds (6 % apart),
/// from 1 µs to about 2^40 µs.
const SUB_BUCKETS: usize = 16;
const BUCKETS: usize = 40 * SUB_BUCKETS;

fn bucket_of(micros: u64) -> usize {
    let v = micros.max(1);
    let msb = 63 - v.leading_zeros() as usize;
    let sub = if msb >= 4 {
        ((v >> (msb - 4)) & 0xf) as usize
    } else {
        ((v << (4 - msb)) & 0xf) as usize
    };
    (msb * SUB_BUCKETS + sub).min(BUCKETS - 1)
}

/// The smallest latency of a bucket, in microseconds.
fn bucket_floor(bucket: usize) -> u64 {
    let msb = bucket / SUB_BUCKETS;
    let sub = (bucket % SUB_BUCKETS) as u64;
    if msb >= 4 {
        (16 + sub) << (msb - 4)
    } else {
        (16 + sub) >> (4 - msb)
    }
}

/// Latency counts of one window, filled lock-free.
struct Histogram {
    buckets: Box<[AtomicU32]>,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the window's counts, leaving it empty.
    fn drain_into(&self, into: &mut [u64]) -> u64 {
        let mut total = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            let n = u64::from(bucket.swap(0, Ordering::Relaxed));
            into[i] += n;
            total += n;
        }
        total
    }
}

/// The `percentile` (0–100) of counts, as a latency.
fn percentile(counts: &[u64], total: u64, percentile: f64) -> Duration {
    let rank = ((total as f64) * percentile / 100.0).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Duration::from_micros(bucket_floor(i));
        }
    }
    Duration::ZERO
}

/// One cluster's limiter.
pub(crate) struct Adaptive {
    config: AdaptiveConcurrencyConfig,
    outstanding: AtomicU32,
    limit: AtomicU32,
    window: Histogram,
    /// minRTT in microseconds; 0 while the first is measured.
    min_rtt_micros: AtomicU64,
    state: Mutex<State>,
    rejected: Counter,
    limit_gauge: Gauge,
    min_rtt_gauge: Gauge,
}

impl std::fmt::Debug for Adaptive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adaptive")
            .field("limit", &self.limit)
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

/// What the background task keeps between windows.
struct State {
    phase: Phase,
    /// Counts gathered for a minRTT measurement.
    counts: Vec<u64>,
    total: u64,
    /// Windows in a row that ended at `min_concurrency`.
    at_minimum: u32,
    next_min_rtt: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    MeasuringMinRtt,
    Adapting,
}

/// An admitted request's place under the limit, given back when dropped.
pub(crate) struct Permit {
    adaptive: Arc<Adaptive>,
    admitted: Instant,
    recorded: bool,
}

impl Permit {
    /// The upstream's response headers arrived: one latency sample.
    pub(crate) fn record(&mut self) {
        if !self.recorded {
            self.recorded = true;
            self.adaptive.window.record(self.admitted.elapsed());
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.adaptive.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What `/clusters` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct AdaptiveView {
    pub(crate) limit: u32,
    pub(crate) outstanding: u32,
    /// None while the first minRTT is measured.
    pub(crate) min_rtt_ms: Option<f64>,
    pub(crate) measuring_min_rtt: bool,
}

impl Adaptive {
    pub(crate) fn new(
        config: &AdaptiveConcurrencyConfig,
        rejected: Counter,
        limit_gauge: Gauge,
        min_rtt_gauge: Gauge,
    ) -> Arc<Adaptive> {
        limit_gauge.set(f64::from(config.min_concurrency));
        let fixed = config.fixed_min_rtt.map(|d| d.as_micros().max(1) as u64);
        if let Some(micros) = fixed {
            min_rtt_gauge.set(micros as f64 / 1e6);
        }
        let adaptive = Arc::new(Adaptive {
            config: config.clone(),
            outstanding: AtomicU32::new(0),
            limit: AtomicU32::new(config.min_concurrency),
            window: Histogram::new(),
            min_rtt_micros: AtomicU64::new(fixed.unwrap_or(0)),
            state: Mutex::new(State {
                phase: if fixed.is_some() {
                    Phase::Adapting
                } else {
                    Phase::MeasuringMinRtt
                },
                counts: vec![0; BUCKETS],
                total: 0,
                at_minimum: 0,
                next_min_rtt: Instant::now(),
            }),
            rejected,
            limit_gauge,
            min_rtt_gauge,
        });
        // The sample windows run while the limiter lives (none outside a
        // runtime: `remora-proxy check` only compiles).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(windows(Arc::downgrade(&adaptive), config.sample_interval));
        }
        adaptive
    }

    /// Admits a request under the limit, or counts it rejected.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let limit = self.limit.load(Ordering::Acquire);
        let before = self.outstanding.fetch_add(1, Ordering::AcqRel);
        if before >= limit {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            self.rejected.increment(1);
            return None;
        }
        Some(Permit {
            adaptive: self.clone(),
            admitted: Instant::now(),
            recorded: false,
        })
    }

    pub(crate) fn view(&self) -> AdaptiveView {
        let min_rtt = self.min_rtt_micros.load(Ordering::Relaxed);
        AdaptiveView {
            limit: self.limit.load(Ordering::Relaxed),
            outstanding: self.outstanding.load(Ordering::Relaxed),
            min_rtt_ms: (min_rtt > 0).then(|| min_rtt as f64 / 1000.0),
            measuring_min_rtt: crate::sync::lock(&self.state).phase == Phase::MeasuringMinRtt,
        }
    }

    /// The end of a sample window (the background task, every
    /// `sample_interval`).
    pub(crate) fn update(&self, now: Instant) {
        let config = &self.config;
        let mut state = crate::sync::lock(&self.state);
        match state.phase {
            Phase::MeasuringMinRtt => {
                let State { counts, total, .. } = &mut *state;
                *total += self.window.drain_into(counts);
                if *total < u64::from(config.min_rtt_requests) {
                    return;
                }
                let min_rtt = percentile(counts, *total, config.percentile);
                counts.fill(0);
                *total = 0;
                let min_rtt = min_rtt.max(Duration::from_micros(1));
                self.min_rtt_micros
                    .store(min_rtt.as_micros() as u64, Ordering::Relaxed);
                self.min_rtt_gauge.set(min_rtt.as_secs_f64());
                state.phase = Phase::Adapting;
                state.at_minimum = 0;
                let jitter = config
                    .min_rtt_interval
                    .mul_f64(config.min_rtt_jitter / 100.0 * crate::rand::unit());
                state.next_min_rtt = now + config.min_rtt_interval + jitter;
                tracing::debug!(?min_rtt, "adaptive concurrency: minRTT measured");
            }
            Phase::Adapting => {
                let mut counts = vec![0; BUCKETS];
                let total = self.window.drain_into(&mut counts);
                let limit = self.limit.load(Ordering::Relaxed);
                if total > 0 {
                    let sample = percentile(&counts, total, config.percentile);
                    let min_rtt =
                        Duration::from_micros(self.min_rtt_micros.load(Ordering::Relaxed));
                    let new = next_limit(config, limit, min_rtt, sample);
                    self.set_limit(new);
                    if new <= config.min_concurrency {
                        state.at_minimum += 1;
                    } else {
                        state.at_minimum = 0;
                    }
                }
                if self.config.fixed_min_rtt.is_none()
                    && (now >= state.next_min_rtt || state.at_minimum >= 5)
                {
                    state.phase = Phase::MeasuringMinRtt;
                    self.set_limit(config.min_concurrency);
                }
            }
        }
    }

    fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
        self.limit_gauge.set(f64::from(limit));
    }
}

/// Closes a sample window every `every`, until the limiter is dropped.
async fn windows(adaptive: std::sync::Weak<Adaptive>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(adaptive) = adaptive.upgrade() else {
            return;
        };
        adaptive.update(Instant::now());
    }
}

/// The gradient step.
fn next_limit(
    config: &AdaptiveConcurrencyConfig,
    limit: u32,
    min_rtt: Duration,
    sample: Duration,
) -> u32 {
    let ideal = min_rtt.as_secs_f64() * (1.0 + config.buffer / 100.0);
    let sample = sample.as_secs_f64().max(1e-6);
    let gradient = (ideal / sample).clamp(0.5, 2.0);
    let scaled = gradient * f64::from(limit);
    let next = scaled + scaled.sqrt();
    (next.round() as u32).clamp(config.min_concurrency, config.max_concurrency)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AdaptiveConcurrencyConfig {
        crate::config::parse_yaml_as::<AdaptiveConcurrencyConfig>("{}").unwrap()
    }

    fn adaptive(config: &AdaptiveConcurrencyConfig) -> Arc<Adaptive> {
        Adaptive::new(config, Counter::noop(), Gauge::noop(), Gauge::noop())
    }

    #[test]
    fn buckets_are_ordered_and_about_six_percent_apart() {
        let mut last = 0;
        for micros in [1, 2, 15, 16, 17, 100, 1_000, 12_345, 1_000_000, 60_000_000] {
            let b = bucket_of(micros);
            assert!(b >= last, "{micros}");
            last = b;
            let floor = bucket_floor(b);
            assert!(floor <= micros.max(1), "{micros}: floor {floor}");
            assert!(
                micros as f64 <= floor as f64 * 1.07 + 1.0,
                "{micros}: floor {floor}"
            );
        }
    }

    #[test]
    fn the_limit_grows_when_latency_is_ideal_and_shrinks_when_it_doubles() {
        let c = config();
        let rtt = Duration::from_millis(10);
        assert!(next_limit(&c, 10, rtt, rtt) > 10);
        assert!(next_limit(&c, 100, rtt, rtt * 4) < 100);
        assert_eq!(next_limit(&c, 3, rtt, rtt * 100), c.min_concurrency);
        assert_eq!(next_limit(&c, 1000, rtt, rtt), c.max_concurrency);
    }

    #[test]
    fn min_rtt_then_adaptation_then_rejections_over_the_limit() {
        let c = config();
        let a = adaptive(&c);
        // Measuring minRTT: the limit is min_concurrency.
        let held: Vec<_> = (0..c.min_concurrency)
            .map(|_| a.try_acquire().unwrap())
            .collect();
        assert!(a.try_acquire().is_none(), "over the limit");
        drop(held);
        for _ in 0..c.min_rtt_requests {
            a.window.record(Duration::from_millis(5));
        }
        let now = Instant::now();
        a.update(now);
        let view = a.view();
        assert!(!view.measuring_min_rtt);
        let min_rtt = view.min_rtt_ms.unwrap();
        assert!((4.5..=5.0).contains(&min_rtt), "{min_rtt}");
        // Ideal latency: the limit grows window by window.
        let mut limit = a.view().limit;
        for _ in 0..5 {
            a.window.record(Duration::from_millis(5));
            a.update(now);
            let next = a.view().limit;
            assert!(next > limit, "{next} after {limit}");
            limit = next;
        }
        // Latency far above minRTT: it falls to the minimum, and after five
        // windows there minRTT is measured again.
        for _ in 0..20 {
            a.window.record(Duration::from_millis(500));
            a.update(now);
        }
        assert!(a.view().measuring_min_rtt);
        assert_eq!(a.view().limit, c.min_concurrency);
    }
}

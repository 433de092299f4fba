//! Outlier detection (passive health): endpoints that keep failing real
//! requests are ejected from the balancer for a while, as Envoy does.
//!
//! Each try's outcome is folded into its endpoint's counters. A run of
//! `consecutive_5xx` (5xx responses or failures to get one),
//! `consecutive_gateway_failure` (502/503/504 or no response) or
//! `consecutive_local_origin_failure` (no response: connect failure, reset,
//! timeout) ejects at once. Every `interval`, the success-rate and
//! failure-percentage detectors look at the interval's counts, and ejected
//! endpoints whose time is up return.
//!
//! An ejection lasts `base_ejection_time` × (the endpoint's ejection count),
//! capped at `max_ejection_time`; the count falls by one for every interval
//! the endpoint stays in. At most `max_ejection_percent` of the endpoints are
//! ejected at once, but always at least one, so a single bad endpoint is cut
//! off even in a small cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use metrics::{Counter, Gauge};

use crate::config::{ConfigError, OutlierDetectionConfig};
use crate::endpoint::{Endpoint, OutlierState};
use crate::telemetry::{self, Telemetry};

/// How one try went, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    /// A 5xx other than 502, 503, 504.
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// No response: connect failure, reset, timeout.
    LocalOrigin,
}

impl Outcome {
    pub(crate) fn of_status(status: u16) -> Outcome {
        match status {
            502..=504 => Outcome::GatewayError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        }
    }

    fn failed(self) -> bool {
        self != Outcome::Success
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    FailurePercentage,
}

impl Reason {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Reason::Consecutive5xx => "consecutive_5xx",
            Reason::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Reason::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            Reason::SuccessRate => "success_rate",
            Reason::FailurePercentage => "failure_percentage",
        }
    }

    const ALL: [Reason; 5] = [
        Reason::Consecutive5xx,
        Reason::ConsecutiveGatewayFailure,
        Reason::ConsecutiveLocalOriginFailure,
        Reason::SuccessRate,
        Reason::FailurePercentage,
    ];
}

#[derive(Debug)]
struct SuccessRate {
    minimum_hosts: usize,
    request_volume: u32,
    stdev_factor: f64,
}

#[derive(Debug)]
struct FailurePercentage {
    threshold: f64,
    minimum_hosts: usize,
    request_volume: u32,
}

#[derive(Debug)]
pub(crate) struct OutlierDetector {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    success_rate: Option<SuccessRate>,
    failure_percentage: Option<FailurePercentage>,
    pub interval: Duration,
    base: Duration,
    max: Duration,
    max_percent: u32,
    epoch: Instant,
    ejected_total: [Counter; 5],
    pub ejected: Gauge,
}

/// What a periodic pass decided.
#[derive(Debug, Default)]
pub(crate) struct Sweep {
    pub eject: Vec<(SocketAddr, Reason)>,
    pub restore: Vec<SocketAddr>,
}

impl OutlierDetector {
    pub(crate) fn compile(
        config: &OutlierDetectionConfig,
        path: &str,
        cluster: &str,
        telemetry: &Telemetry,
        errors: &mut Vec<ConfigError>,
    ) -> Option<OutlierDetector> {
        let before = errors.len();
        if config.interval.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.interval"),
                "must be greater than 0",
            ));
        }
        if config.base_ejection_time.is_zero()
            || config.base_ejection_time > config.max_ejection_time
        {
            errors.push(ConfigError::new(
                format!("{path}.base_ejection_time"),
                "must be greater than 0 and at most max_ejection_time",
            ));
        }
        if config.max_ejection_percent > 100 {
            errors.push(ConfigError::new(
                format!("{path}.max_ejection_percent"),
                format!("{} is outside 0..=100", config.max_ejection_percent),
            ));
        }
        if let Some(sr) = &config.success_rate
            && !(sr.stdev_factor.is_finite() && sr.stdev_factor > 0.0)
        {
            errors.push(ConfigError::new(
                format!("{path}.success_rate.stdev_factor"),
                format!("{} must be a number above 0 (such as 1.9)", sr.stdev_factor),
            ));
        }
        if let Some(fp) = &config.failure_percentage
            && fp.threshold > 100
        {
            errors.push(ConfigError::new(
                format!("{path}.failure_percentage.threshold"),
                format!("{} is outside 0..=100", fp.threshold),
            ));
        }
        if errors.len() > before {
            return None;
        }
        Some(OutlierDetector {
            consecutive_5xx: config.consecutive_5xx,
            consecutive_gateway: config.consecutive_gateway_failure.unwrap_or(0),
            consecutive_local: config.consecutive_local_origin_failure.unwrap_or(0),
            success_rate: config.success_rate.as_ref().map(|sr| SuccessRate {
                minimum_hosts: sr.minimum_hosts as usize,
                request_volume: sr.request_volume,
                stdev_factor: sr.stdev_factor,
            }),
            failure_percentage: config
                .failure_percentage
                .as_ref()
                .map(|fp| FailurePercentage {
                    threshold: f64::from(fp.threshold),
                    minimum_hosts: fp.minimum_hosts as usize,
                    request_volume: fp.request_volume,
                }),
            interval: config.interval,
            base: config.base_ejection_time,
            max: config.max_ejection_time,
            max_percent: config.max_ejection_percent,
            epoch: Instant::now(),
            ejected_total: Reason::ALL.map(|reason| {
                telemetry.counter(
                    telemetry::OUTLIER_EJECTIONS_TOTAL,
                    &[("cluster", cluster), ("reason", reason.name())],
                )
            }),
            ejected: telemetry.gauge(telemetry::ENDPOINTS_EJECTED, &[("cluster", cluster)]),
        })
    }

    /// Folds in one try's outcome; returns why to eject, if a run of
    /// failures just reached its threshold.
    pub(crate) fn record(&self, state: &OutlierState, outcome: Outcome) -> Option<Reason> {
        let count = if outcome.failed() {
            &state.failures
        } else {
            &state.successes
        };
        count.fetch_add(1, Ordering::Relaxed);
        let run = |counter: &AtomicU32, hit: bool, threshold: u32| {
            if !hit {
                counter.store(0, Ordering::Relaxed);
                return false;
            }
            threshold > 0 && counter.fetch_add(1, Ordering::Relaxed) + 1 == threshold
        };
        let tripped_5xx = run(
            &state.consecutive_5xx,
            outcome.failed(),
            self.consecutive_5xx,
        );
        let tripped_gateway = run(
            &state.consecutive_gateway,
            matches!(outcome, Outcome::GatewayError | Outcome::LocalOrigin),
            self.consecutive_gateway,
        );
        let tripped_local = run(
            &state.consecutive_local,
            outcome == Outcome::LocalOrigin,
            self.consecutive_local,
        );
        if tripped_5xx {
            Some(Reason::Consecutive5xx)
        } else if tripped_gateway {
            Some(Reason::ConsecutiveGatewayFailure)
        } else if tripped_local {
            Some(Reason::ConsecutiveLocalOriginFailure)
        } else {
            None
        }
    }

    /// Whether another endpoint may be ejected when `ejected` of `total` are.
    pub(crate) fn may_eject(&self, ejected: usize, total: usize) -> bool {
        let allowed = (total * self.max_percent as usize / 100).max(1);
        ejected < allowed
    }

    /// Marks `endpoint` ejected from `now`; returns for how long.
    pub(crate) fn ejecting(&self, endpoint: &Endpoint, reason: Reason, now: Instant) -> Duration {
        let state = &endpoint.outlier;
        let ejections = state.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let time = self.base.saturating_mul(ejections).min(self.max);
        let until = now.saturating_duration_since(self.epoch) + time;
        state
            .ejected_until_ms
            .store(until.as_millis().max(1) as u64, Ordering::Relaxed);
        for counter in [
            &state.consecutive_5xx,
            &state.consecutive_gateway,
            &state.consecutive_local,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.ejected_total[reason as usize].increment(1);
        self.ejected.increment(1.0);
        time
    }

    pub(crate) fn restored(&self, endpoint: &Endpoint) {
        endpoint
            .outlier
            .ejected_until_ms
            .store(0, Ordering::Relaxed);
        self.ejected.decrement(1.0);
    }

    /// The periodic pass: endpoints whose ejection is over return; the
    /// interval's counts feed the success-rate and failure-percentage
    /// detectors; then the counts start again.
    pub(crate) fn sweep(&self, endpoints: &[Arc<Endpoint>], now: Instant) -> Sweep {
        let mut sweep = Sweep::default();
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let mut samples = Vec::new();
        for endpoint in endpoints {
            let state = &endpoint.outlier;
            let successes = state.successes.swap(0, Ordering::Relaxed);
            let failures = state.failures.swap(0, Ordering::Relaxed);
            let until = state.ejected_until_ms.load(Ordering::Relaxed);
            if endpoint.is_ejected() {
                if until != 0 && until <= now_ms {
                    sweep.restore.push(endpoint.address);
                }
                continue;
            }
            if state.ejections.load(Ordering::Relaxed) > 0 && failures == 0 {
                state.ejections.fetch_sub(1, Ordering::Relaxed);
            }
            samples.push((endpoint.address, successes, failures));
        }
        if let Some(sr) = &self.success_rate {
            let rates: Vec<(SocketAddr, f64)> = samples
                .iter()
                .filter(|(_, s, f)| s + f >= sr.request_volume)
                .map(|&(a, s, f)| (a, f64::from(s) / f64::from(s + f)))
                .collect();
            if rates.len() >= sr.minimum_hosts && !rates.is_empty() {
                let mean = rates.iter().map(|r| r.1).sum::<f64>() / rates.len() as f64;
                let variance =
                    rates.iter().map(|r| (r.1 - mean).powi(2)).sum::<f64>() / rates.len() as f64;
                let floor = mean - sr.stdev_factor * variance.sqrt();
                sweep.eject.extend(
                    rates
                        .iter()
                        .filter(|r| r.1 < floor)
                        .map(|r| (r.0, Reason::SuccessRate)),
                );
            }
        }
        if let Some(fp) = &self.failure_percentage {
            let eligible: Vec<&(SocketAddr, u32, u32)> = samples
                .iter()
                .filter(|(_, s, f)| s + f >= fp.request_volume)
                .collect();
            if eligible.len() >= fp.minimum_hosts {
                for &&(address, s, f) in &eligible {
                    if f64::from(f) * 100.0 / f64::from(s + f) >= fp.threshold
                        && !sweep.eject.iter().any(|e| e.0 == address)
                    {
                        sweep.eject.push((address, Reason::FailurePercentage));
                    }
                }
            }
        }
        sweep
    }

    /// When an ejected endpoint's time is up, as milliseconds from now (for the admin view).
    pub(crate) fn remaining(&self, endpoint: &Endpoint, now: Instant) -> Option<Duration> {
        let until = endpoint.outlier.ejected_until_ms.load(Ordering::Relaxed);
        (until != 0).then(|| {
            Duration::from_millis(until).saturating_sub(now.saturating_duration_since(self.epoch))
        })
    }
}

#[cfg(test)]
mod tests;

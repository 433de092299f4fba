//! Circuit breakers: cluster-wide caps on connections, requests waiting for a
//! connection, requests in flight and retries in flight. Taking a unit over a
//! cap fails at once (the request gets 503 with `x-remora-overloaded: true`,
//! or the retry is not made) and is counted in
//! `remora_circuit_open_total{cluster,limit}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use metrics::Counter;

use crate::config::CircuitBreakersConfig;
use crate::telemetry::{self, LabelValue, Telemetry, label_values};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Connections,
    Pending,
    Requests,
    Retries,
}

// The `limit` label of `remora_circuit_open_total`: the config field's name.
label_values!(Limit {
    Connections => "max_connections",
    Pending => "max_pending_requests",
    Requests => "max_requests",
    Retries => "max_retries",
});

#[derive(Debug)]
struct Gauge {
    max: Option<usize>,
    current: AtomicUsize,
    tripped: Counter,
}

#[derive(Debug)]
pub struct Limits {
    gauges: [Gauge; 4],
}

/// One unit of a limit, given back when dropped.
#[derive(Debug)]
pub struct Held {
    limits: Arc<Limits>,
    limit: Limit,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.limits.gauges[self.limit.index()]
            .current
            .fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limits {
    pub fn new(config: &CircuitBreakersConfig, cluster: &str, telemetry: &Telemetry) -> Limits {
        let maxima = [
            config.max_connections,
            config.max_pending_requests,
            config.max_requests,
            config.max_retries,
        ];
        let gauges = [
            Limit::Connections,
            Limit::Pending,
            Limit::Requests,
            Limit::Retries,
        ]
        .map(|limit| Gauge {
            max: maxima[limit.index()].map(|m| m as usize),
            current: AtomicUsize::new(0),
            tripped: telemetry.counter(
                telemetry::CIRCUIT_OPEN_TOTAL,
                &[("cluster", cluster), ("limit", limit.label())],
            ),
        });
        Limits { gauges }
    }

    /// Takes one unit of `limit`, or fails (and counts the trip) if it is at
    /// its maximum.
    pub fn take(self: &Arc<Self>, limit: Limit) -> Result<Held, Limit> {
        self.take_quietly(limit).ok_or_else(|| {
            self.gauges[limit.index()].tripped.increment(1);
            limit
        })
    }

    /// As [`take`](Self::take) without counting a trip: for a request that
    /// will wait for a unit rather than fail.
    pub fn take_quietly(self: &Arc<Self>, limit: Limit) -> Option<Held> {
        let gauge = &self.gauges[limit.index()];
        match gauge.max {
            None => {
                gauge.current.fetch_add(1, Ordering::AcqRel);
            }
            Some(max) => {
                gauge
                    .current
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < max).then_some(n + 1)
                    })
                    .ok()?;
            }
        }
        Some(Held {
            limits: self.clone(),
            limit,
        })
    }

    /// Takes one unit of `limit` even over its maximum: for an endpoint
    /// with no connection at all, which may always open one (as in Envoy),
    /// so that its requests cannot wait forever for connections that other
    /// endpoints hold.
    pub fn take_beyond(self: &Arc<Self>, limit: Limit) -> Held {
        self.gauges[limit.index()]
            .current
            .fetch_add(1, Ordering::AcqRel);
        Held {
            limits: self.clone(),
            limit,
        }
    }

    pub fn current(&self, limit: Limit) -> usize {
        self.gauges[limit.index()].current.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_trips_at_exactly_its_maximum_and_frees_on_drop() {
        let telemetry = Telemetry::new();
        let config = CircuitBreakersConfig {
            max_requests: Some(3),
            ..CircuitBreakersConfig::default()
        };
        let limits = Arc::new(Limits::new(&config, "c", &telemetry));
        let held: Vec<Held> = (0..3)
            .map(|_| limits.take(Limit::Requests).unwrap())
            .collect();
        assert_eq!(limits.take(Limit::Requests).unwrap_err(), Limit::Requests);
        drop(held);
        assert!(limits.take(Limit::Requests).is_ok());
        assert!(
            telemetry
                .render()
                .contains(r#"remora_circuit_open_total{cluster="c",limit="max_requests"} 1"#)
        );
        // No maximum: never trips, but still counts.
        let unlimited: Vec<Held> = (0..100)
            .map(|_| limits.take(Limit::Retries).unwrap())
            .collect();
        assert_eq!(limits.current(Limit::Retries), unlimited.len());
    }
}

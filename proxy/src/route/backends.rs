//! A route's backends and the weighted choice between them (traffic split).

use std::collections::HashMap;
use std::sync::Arc;

use crate::cluster::Cluster;
use crate::config::{ConfigError, RouteConfig};
use crate::retry::{RetryBudget, RetryPolicy};
use crate::telemetry::{self, RequestStats, Telemetry};

/// Largest weight a single backend may have; keeps sums far from overflow.
const MAX_WEIGHT: u32 = 1_000_000;

#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) cluster: Arc<Cluster>,
    /// Stats for requests this route sends to this cluster.
    pub(crate) stats: RequestStats,
    /// The route's retry budget for this cluster (when the route retries).
    pub(crate) budget: Option<RetryBudget>,
}

#[derive(Debug)]
pub(crate) struct WeightedBackends {
    backends: Box<[Backend]>,
    /// Running sums of the weights; a random number below the total picks the
    /// first backend whose running sum exceeds it.
    cumulative: Box<[u64]>,
}

impl WeightedBackends {
    /// Compiles `route`'s backends (at `path`), with a retry budget each
    /// when the route retries.
    pub(crate) fn compile(
        route: &RouteConfig,
        listener: &str,
        path: &str,
        clusters: &HashMap<&str, Arc<Cluster>>,
        retry: Option<&RetryPolicy>,
        telemetry: &Telemetry,
        errors: &mut Vec<ConfigError>,
    ) -> Option<WeightedBackends> {
        let refs = &route.backends;
        let mut backends = Vec::with_capacity(refs.len());
        let mut cumulative = Vec::with_capacity(refs.len());
        let mut total = 0u64;
        let errors_before = errors.len();
        for (i, backend) in refs.iter().enumerate() {
            if backend.weight > MAX_WEIGHT {
                errors.push(ConfigError::new(
                    format!("{path}[{i}].weight"),
                    format!(
                        "{} is larger than the maximum of {MAX_WEIGHT}",
                        backend.weight
                    ),
                ));
            }
            let Some(cluster) = clusters.get(backend.cluster.as_str()) else {
                errors.push(ConfigError::new(
                    format!("{path}[{i}].cluster"),
                    format!("no cluster named {:?}", backend.cluster),
                ));
                continue;
            };
            total += u64::from(backend.weight);
            cumulative.push(total);
            let budget = retry.map(|policy| {
                let exhausted = telemetry.counter(
                    telemetry::RETRY_BUDGET_EXHAUSTED_TOTAL,
                    &[("cluster", backend.cluster.as_str())],
                );
                RetryBudget::new(
                    policy.budget_percent,
                    policy.budget_min_per_second,
                    exhausted,
                )
            });
            backends.push(Backend {
                cluster: cluster.clone(),
                stats: RequestStats::new(telemetry, listener, &route.name, &backend.cluster),
                budget,
            });
        }
        if total == 0 && errors.len() == errors_before {
            errors.push(ConfigError::new(
                path,
                "at least one backend needs a weight above 0",
            ));
        }
        (errors.len() == errors_before).then(|| WeightedBackends {
            backends: backends.into(),
            cumulative: cumulative.into(),
        })
    }

    pub(crate) fn pick(&self) -> (usize, &Backend) {
        if self.backends.len() == 1 {
            return (0, &self.backends[0]);
        }
        let total = *self.cumulative.last().unwrap_or(&1);
        let roll = crate::rand::below(total);
        let index = self.cumulative.partition_point(|&sum| sum <= roll);
        (index, &self.backends[index])
    }

    pub(crate) fn get(&self, index: usize) -> &Backend {
        &self.backends[index]
    }

    pub(crate) fn backends(&self) -> &[Backend] {
        &self.backends
    }
}

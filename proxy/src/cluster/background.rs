//! What a serving cluster runs in the background, each loop until the
//! cluster is dropped: DNS lookups, active health checks, outlier
//! detection's periodic pass, and the sweep of idle and over-age
//! connections. Each loop holds the cluster weakly, so a cluster that a
//! reload dropped stops its loops at their next turn.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::Cluster;
use crate::discovery::{DnsTarget, ResolverHandle};
use crate::sync::lock;

/// Starts the loops `cluster`'s config asks for.
pub(super) fn spawn(cluster: &Arc<Cluster>, resolver: &ResolverHandle) {
    let weak = Arc::downgrade(cluster);
    if let Some(target) = &cluster.dns {
        tokio::spawn(resolve(weak.clone(), target.clone(), resolver.clone()));
    }
    if let Some(idle) = cluster.pool.idle_timeout.or(cluster.pool.max_age) {
        tokio::spawn(sweep(weak.clone(), idle));
    }
    if let Some(outlier) = &cluster.outlier {
        tokio::spawn(outlier_sweeps(weak.clone(), outlier.interval));
    }
    if cluster.health.is_some() {
        tokio::spawn(health_checks(weak));
    }
}

/// Resolves `target` again whenever its answer runs out.
async fn resolve(cluster: Weak<Cluster>, target: DnsTarget, resolvers: ResolverHandle) {
    loop {
        let delay = match resolvers.get() {
            Some(resolver) => {
                let result = target.lookup(&resolver).await;
                let Some(cluster) = cluster.upgrade() else {
                    return;
                };
                cluster.apply_lookup(&target, result)
            }
            None => target.min_refresh,
        };
        tokio::time::sleep(delay).await;
    }
}

impl Cluster {
    /// Applies one DNS answer (or keeps the last good endpoints on a
    /// failure) and records it for the admin view; returns when to look
    /// again.
    fn apply_lookup(
        &self,
        target: &DnsTarget,
        result: Result<(crate::endpoint::EndpointList, Duration), String>,
    ) -> Duration {
        let delay = match result {
            Ok((endpoints, delay)) => {
                lock(&self.dns_status).last_error = None;
                if self.replace_endpoints(&endpoints) {
                    let addresses: Vec<String> =
                        endpoints.iter().map(|(a, _)| a.to_string()).collect();
                    tracing::info!(cluster = %self.name, name = %target.host, endpoints = ?addresses, "DNS answer changed the endpoints");
                }
                delay
            }
            Err(error) => {
                tracing::warn!(
                    cluster = %self.name, name = %target.host, %error,
                    kept = self.endpoints().all().len(),
                    "DNS lookup failed; keeping the last good endpoints"
                );
                let mut status = lock(&self.dns_status);
                status.failures += 1;
                status.last_error = Some(error);
                target.min_refresh
            }
        };
        let mut status = lock(&self.dns_status);
        status.resolutions += 1;
        status.next_refresh_secs = delay.as_secs_f64();
        delay
    }
}

/// Checks every endpoint, waits the interval (with jitter), and again.
async fn health_checks(cluster: Weak<Cluster>) {
    loop {
        let endpoints = {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            cluster.endpoints().all().to_vec()
        };
        let checks = endpoints.iter().map(|endpoint| {
            let cluster = cluster.clone();
            async move {
                let Some(cluster) = cluster.upgrade() else {
                    return;
                };
                if let Some(checker) = &cluster.health {
                    checker
                        .check_one(&cluster.name, endpoint, |healthy| {
                            cluster.set_health(endpoint.address, healthy)
                        })
                        .await;
                }
            }
        });
        futures_util::future::join_all(checks).await;
        let Some(wait) = cluster
            .upgrade()
            .and_then(|c| c.health.as_ref().map(|h| h.next_wait()))
        else {
            return;
        };
        tokio::time::sleep(wait).await;
    }
}

/// Outlier detection's periodic pass: ejection times that ran out, and the
/// success-rate and failure-percentage verdicts.
async fn outlier_sweeps(cluster: Weak<Cluster>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let Some(detector) = &cluster.outlier else {
            return;
        };
        let sweep = detector.sweep(cluster.endpoints().all(), Instant::now());
        for address in sweep.restore {
            cluster.restore(address);
        }
        for (address, reason) in sweep.eject {
            cluster.eject(address, reason);
        }
    }
}

/// Closes idle and over-age connections of every endpoint.
async fn sweep(cluster: Weak<Cluster>, every: Duration) {
    let period = (every / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let now = Instant::now();
        for endpoint in cluster.endpoints().all() {
            endpoint.pool.evict_idle(now);
        }
    }
}

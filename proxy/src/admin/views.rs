//! JSON shapes of the admin endpoints.

use serde::Serialize;

use tokio::time::Instant;

use crate::breaker::Limit;
use crate::config::{Config, LbPolicy, UpstreamProtocol};
use crate::discovery::DnsStatus;
use crate::pool::PoolSizes;
use crate::snapshot::Snapshot;
use crate::sync::lock;
use crate::telemetry::access_log::format_rfc3339_millis;

#[derive(Serialize)]
pub(super) struct ConfigDump<'a> {
    pub(crate) version: u64,
    pub(crate) loaded_at: String,
    pub(crate) config: &'a Config,
}

pub(super) fn config_dump(snapshot: &Snapshot) -> ConfigDump<'_> {
    ConfigDump {
        version: snapshot.version,
        loaded_at: format_rfc3339_millis(snapshot.loaded_at),
        config: &snapshot.config,
    }
}

#[derive(Serialize)]
pub(super) struct ClusterView<'a> {
    pub(crate) name: &'a str,
    pub(crate) protocol: UpstreamProtocol,
    pub(crate) policy: &'static str,
    /// Endpoints counted healthy, and whether too few are (all are used then).
    pub(crate) healthy: usize,
    pub(crate) panic: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dns: Option<DnsView>,
    /// What the circuit breakers count now.
    pub(crate) in_flight: InFlightView,
    /// The adaptive concurrency limit, if the cluster has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) adaptive_concurrency: Option<crate::adaptive::AdaptiveView>,
    pub(crate) endpoints: Vec<EndpointView>,
}

#[derive(Serialize)]
pub(super) struct InFlightView {
    pub(crate) requests: usize,
    pub(crate) pending: usize,
    pub(crate) connections: usize,
    pub(crate) retries: usize,
}

#[derive(Serialize)]
pub(super) struct HealthView {
    /// Failing its active health checks.
    pub(crate) check_failed: bool,
    pub(crate) check_failures_in_a_row: u32,
    pub(crate) check_passes_in_a_row: u32,
    /// Ejected by outlier detection, and for how much longer.
    pub(crate) ejected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ejected_for_secs: Option<f64>,
    pub(crate) ejections: u32,
}

#[derive(Serialize)]
pub(super) struct DnsView {
    pub(crate) name: String,
    #[serde(flatten)]
    pub(crate) status: DnsStatus,
}

#[derive(Serialize)]
pub(super) struct EndpointView {
    pub(crate) address: String,
    pub(crate) weight: u32,
    pub(crate) healthy: bool,
    pub(crate) active_requests: usize,
    /// Share of its weight the endpoint gets now (below 1 during slow start).
    pub(crate) weight_factor: f64,
    /// Peak-EWMA latency estimate (policy `peak_ewma` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ewma_ms: Option<f64>,
    pub(crate) health: HealthView,
    pub(crate) pool: PoolSizes,
}

pub(super) fn clusters(snapshot: &Snapshot) -> Vec<ClusterView<'_>> {
    let now = Instant::now();
    snapshot
        .clusters
        .iter()
        .map(|cluster| {
            let set = cluster.endpoints();
            let lb = &cluster.lb;
            ClusterView {
                name: &cluster.name,
                protocol: cluster.protocol,
                policy: lb.policy.name(),
                healthy: set.healthy(),
                panic: set.is_panic(),
                in_flight: {
                    let limits = cluster.limits();
                    InFlightView {
                        requests: limits.current(Limit::Requests),
                        pending: limits.current(Limit::Pending),
                        connections: limits.current(Limit::Connections),
                        retries: limits.current(Limit::Retries),
                    }
                },
                adaptive_concurrency: cluster.adaptive.as_ref().map(|a| a.view()),
                dns: cluster.dns.as_ref().map(|target| DnsView {
                    name: format!("{}:{}", target.host, target.port),
                    status: lock(&cluster.dns_status).clone(),
                }),
                endpoints: set
                    .all()
                    .iter()
                    .map(|e| EndpointView {
                        address: e.address.to_string(),
                        weight: e.weight.get(),
                        healthy: e.is_healthy(),
                        active_requests: e.active_requests(),
                        weight_factor: lb.slow_start.as_ref().map_or(1.0, |s| s.factor(e)),
                        ewma_ms: (lb.policy == LbPolicy::PeakEwma)
                            .then(|| e.ewma.cost(now, lb.decay) / 1e6),
                        health: HealthView {
                            check_failed: e.is_check_failed(),
                            check_failures_in_a_row: e.checks.failures(),
                            check_passes_in_a_row: e.checks.passes(),

                            ejected: e.is_ejected(),
                            ejected_for_secs: cluster
                                .outlier
                                .as_ref()
                                .filter(|_| e.is_ejected())
                                .and_then(|d| d.remaining(e, now))
                                .map(|d| d.as_secs_f64()),
                            ejections: e.outlier.ejections(),
                        },
                        pool: e.pool.sizes(),
                    })
                    .collect(),
            }
        })
        .collect()
}

#[derive(Serialize)]
pub(super) struct CacheView<'a> {
    pub(crate) listener: &'a str,
    pub(crate) route: &'a str,
    pub(crate) entries: i64,
    pub(crate) bytes: i64,
    pub(crate) config: &'a crate::config::CacheConfig,
}

/// Every route's response cache.
pub(super) fn caches(snapshot: &Snapshot) -> Vec<CacheView<'_>> {
    cached_routes(snapshot)
        .map(|(listener, route, cache)| {
            let (entries, bytes) = cache.usage();
            CacheView {
                listener,
                route,
                entries,
                bytes,
                config: &cache.config,
            }
        })
        .collect()
}

#[derive(Serialize)]
pub(super) struct PurgeView<'a> {
    pub(crate) key_prefix: &'a str,
    pub(crate) purged: usize,
    pub(crate) routes: Vec<(&'a str, &'a str)>,
}

/// Removes the entries under `prefix` from the caches of the routes that
/// match `listener` and `route` (absent: any); `None` when none does.
pub(super) fn purge<'a>(
    snapshot: &'a Snapshot,
    listener: Option<&str>,
    route: Option<&str>,
    prefix: &'a str,
) -> Option<PurgeView<'a>> {
    let mut view = PurgeView {
        key_prefix: prefix,
        purged: 0,
        routes: Vec::new(),
    };
    for (l, r, cache) in cached_routes(snapshot) {
        if listener.is_some_and(|name| name != l) || route.is_some_and(|name| name != r) {
            continue;
        }
        view.purged += cache.purge(prefix);
        view.routes.push((l, r));
    }
    (!view.routes.is_empty()).then_some(view)
}

fn cached_routes(
    snapshot: &Snapshot,
) -> impl Iterator<Item = (&str, &str, &std::sync::Arc<crate::cache::ResponseCache>)> {
    snapshot
        .listeners
        .iter()
        .filter_map(|l| Some((&*l.name, l.http_routes()?)))
        .flat_map(|(listener, http)| {
            http.table
                .routes()
                .iter()
                .filter_map(move |r| Some((listener, &*r.name, r.cache.as_ref()?)))
        })
}

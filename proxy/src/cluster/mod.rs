//! Clusters: a named set of upstream endpoints, how to balance across them
//! and how to connect to them. The endpoints live in an [`EndpointSet`]
//! swapped atomically when DNS answers change or an endpoint's health
//! changes; endpoints that stay keep their pools and state. A cluster whose
//! config is unchanged survives a reload as the same object, and so does one
//! whose only change is its static endpoint list (an xDS endpoint update, an
//! edited file): the new list is applied to it when the new snapshot goes
//! live, and the endpoints that stay keep their connections, outlier and
//! health state, as with DNS.

mod background;
mod set;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use arc_swap::{ArcSwap, Guard};
use metrics::Counter;

use crate::balance::{HashPolicy, LbSettings};
use crate::breaker::Limits;
use crate::config::{ClusterConfig, ConfigError, LbPolicy, RetryOn, UpstreamProtocol};
use crate::discovery::{DnsStatus, DnsTarget, ResolverHandle};
use crate::endpoint::ewma::PeakEwma;
use crate::health::HealthChecker;
use crate::outlier::{Outcome, OutlierDetector, Reason};
use crate::pool::{ConnStats, EndpointPool, PoolSettings};
use crate::telemetry::{self, CountersBy, Telemetry, label_values};
use crate::worker::Workers;

use crate::endpoint::{ActiveRequest, Endpoint, EndpointList};
use crate::sync::lock;
pub(crate) use set::EndpointSet;

#[derive(Debug)]
pub struct Cluster {
    pub(crate) name: Arc<str>,
    /// The config it was built from, less its static endpoints (which
    /// change in place): what decides whether a reload can take it over.
    shape: ClusterConfig,
    pub(crate) protocol: UpstreamProtocol,
    pub(crate) lb: LbSettings,
    set: ArcSwap<EndpointSet>,
    /// Serializes rebuilds of the set (DNS answers, health changes).
    rebuild: Mutex<()>,
    pool: Arc<PoolSettings>,
    pub(crate) dns: Option<DnsTarget>,
    pub(crate) dns_status: Mutex<DnsStatus>,
    pub(crate) outlier: Option<OutlierDetector>,
    pub(crate) health: Option<HealthChecker>,
    /// `adaptive_concurrency:`: the limit that follows the latency.
    pub(crate) adaptive: Option<Arc<crate::adaptive::Adaptive>>,
    stats: LbStats,
    /// Set once the cluster serves: the workers that warm its connections.
    workers: OnceLock<Workers>,
}

/// Which timeout fired, for `remora_timeouts_total{cluster,kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeoutKind {
    Route,
    PerTry,
    Connect,
    StreamIdle,
    Grpc,
}

/// Who caused a request to fail, for `remora_request_failures_total` and
/// the access log's `failed_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailedBy {
    /// A broken request body, or a client gone before its response ended.
    Client,
    /// The proxy's own limits: a circuit breaker, no endpoint to pick, a
    /// body too large to retry.
    Proxy,
    /// No usable response from the upstream: connect failure, reset,
    /// timeout.
    Upstream,
}

label_values!(FailedBy {
    Client => "client",
    Proxy => "proxy",
    Upstream => "upstream",
});

label_values!(TimeoutKind {
    Route => "route",
    PerTry => "per_try",
    Connect => "connect",
    StreamIdle => "stream_idle",
    Grpc => "grpc",
});

#[derive(Debug)]
struct LbStats {
    panic: Counter,
    no_hash_key: Counter,
    timeouts: CountersBy<TimeoutKind>,
    retries: CountersBy<RetryOn>,
    failures: CountersBy<FailedBy>,
}

impl Cluster {
    /// Builds a cluster, or takes `previous` over when its config is the
    /// same but perhaps for its static `endpoints`. A static cluster taken
    /// over comes back with its endpoint list, for [`replace_endpoints`]
    /// once the snapshot goes live (not before: the snapshot may still be
    /// refused); that changes nothing when the list is the same.
    ///
    /// [`replace_endpoints`]: Self::replace_endpoints
    pub(crate) fn compile(
        config: &ClusterConfig,
        path: &str,
        previous: Option<&Arc<Cluster>>,
        telemetry: &Telemetry,
        identity: &Arc<crate::identity::IdentityState>,
        errors: &mut Vec<ConfigError>,
    ) -> (Arc<Cluster>, Option<EndpointList>) {
        let reusable = |previous: &&Arc<Cluster>| {
            // (Both `dns` and `endpoints` is an error `build` reports.)
            (config.dns.is_none() || config.endpoints.is_empty())
                && previous.shape.name == config.name
                && previous.shape == shape(config)
        };
        match previous.filter(reusable) {
            Some(previous) if previous.dns.is_some() => (previous.clone(), None),
            Some(previous) => {
                check_endpoints(config, path, errors);
                let wanted = config
                    .endpoints
                    .iter()
                    .map(|e| (e.address, e.weight))
                    .collect();
                (previous.clone(), Some(wanted))
            }
            None => (
                Cluster::build(config, path, telemetry, identity, errors),
                None,
            ),
        }
    }

    fn build(
        config: &ClusterConfig,
        path: &str,
        telemetry: &Telemetry,
        identity: &Arc<crate::identity::IdentityState>,
        errors: &mut Vec<ConfigError>,
    ) -> Arc<Cluster> {
        let lb = LbSettings::compile(
            &config.load_balancer,
            &format!("{path}.load_balancer"),
            errors,
        );
        check_pool(config, path, errors);
        let dns = match (&config.dns, config.endpoints.is_empty()) {
            (Some(_), false) => {
                errors.push(ConfigError::new(
                    path,
                    "set either endpoints or dns, not both",
                ));
                None
            }
            (Some(dns), true) => {
                DnsTarget::parse(dns, &format!("{path}.dns"), &config.name, telemetry, errors)
            }
            (None, _) => None,
        };
        check_endpoints(config, path, errors);
        let name = &config.name;
        let conn_stats = ConnStats {
            active: telemetry.gauge(telemetry::UPSTREAM_CONNECTIONS_ACTIVE, &[("cluster", name)]),
            created: telemetry.counter(
                telemetry::UPSTREAM_CONNECTIONS_CREATED,
                &[("cluster", name)],
            ),
            connect_failures: telemetry
                .counter(telemetry::UPSTREAM_CONNECT_FAILURES, &[("cluster", name)]),
        };
        let stats = LbStats {
            panic: telemetry.counter(
                telemetry::LB_FALLBACK_TOTAL,
                &[("cluster", name), ("reason", "panic")],
            ),
            no_hash_key: telemetry.counter(
                telemetry::LB_FALLBACK_TOTAL,
                &[("cluster", name), ("reason", "no_hash_key")],
            ),
            timeouts: CountersBy::register(
                telemetry,
                telemetry::TIMEOUTS_TOTAL,
                &[("cluster", name)],
                "kind",
            ),
            failures: CountersBy::register(
                telemetry,
                telemetry::REQUEST_FAILURES_TOTAL,
                &[("cluster", name)],
                "failed_by",
            ),
            retries: CountersBy::register(
                telemetry,
                telemetry::UPSTREAM_RETRIES_TOTAL,
                &[("cluster", name)],
                "reason",
            ),
        };
        let outlier = config.outlier_detection.as_ref().and_then(|od| {
            OutlierDetector::compile(
                od,
                &format!("{path}.outlier_detection"),
                name,
                telemetry,
                errors,
            )
        });
        let health = config.health_check.as_ref().and_then(|hc| {
            HealthChecker::compile(
                hc,
                name,
                config.protocol,
                &format!("{path}.health_check"),
                telemetry,
                errors,
            )
        });
        let adaptive = config.adaptive_concurrency.as_ref().map(|ac| {
            ac.check(&format!("{path}.adaptive_concurrency"), errors);
            crate::adaptive::Adaptive::new(
                ac,
                telemetry.counter(telemetry::ADAPTIVE_REJECTED_TOTAL, &[("cluster", name)]),
                telemetry.gauge(telemetry::ADAPTIVE_LIMIT, &[("cluster", name)]),
                telemetry.gauge(telemetry::ADAPTIVE_MIN_RTT, &[("cluster", name)]),
            )
        });
        for (field, value) in [
            ("max_connections", config.circuit_breakers.max_connections),
            ("max_requests", config.circuit_breakers.max_requests),
        ] {
            if value == Some(0) {
                errors.push(ConfigError::new(
                    format!("{path}.circuit_breakers.{field}"),
                    "must be at least 1 (0 would refuse every request; leave it out for no limit)",
                ));
            }
        }
        let limits = Arc::new(Limits::new(&config.circuit_breakers, name, telemetry));
        let tls = tls_of(config, path, identity, errors);
        let pool = Arc::new(PoolSettings::new(config, conn_stats, limits, tls));
        let endpoints: Box<[Arc<Endpoint>]> = config
            .endpoints
            .iter()
            .map(|e| new_endpoint(e.address, e.weight, None, &lb, &pool))
            .collect();
        let set = EndpointSet::build(endpoints, &lb);
        Arc::new(Cluster {
            name: Arc::from(name.as_str()),
            shape: shape(config),
            protocol: config.protocol,
            lb,
            set: ArcSwap::from_pointee(set),
            rebuild: Mutex::new(()),
            pool,
            dns,
            dns_status: Mutex::new(DnsStatus::default()),
            outlier,
            health,
            adaptive,
            stats,
            workers: OnceLock::new(),
        })
    }

    /// Starts what a serving cluster runs in the background (once): DNS
    /// resolution, the idle-connection sweeper, and warm-up connections.
    pub(crate) fn activate(self: &Arc<Self>, resolver: &ResolverHandle, workers: &Workers) {
        if self.workers.set(workers.clone()).is_err() {
            return;
        }
        background::spawn(self, resolver);
        self.warm(self.endpoints().all());
    }

    pub(crate) fn count_timeout(&self, kind: TimeoutKind) {
        self.stats.timeouts.increment(kind);
    }

    pub(crate) fn count_failure(&self, by: FailedBy) {
        self.stats.failures.increment(by);
    }

    pub(crate) fn count_retry(&self, reason: RetryOn) {
        self.stats.retries.increment(reason);
    }

    /// Folds one try's outcome into outlier detection, ejecting the
    /// endpoint if a run of failures just reached its threshold.
    pub(crate) fn record_outcome(&self, endpoint: &Endpoint, outcome: Outcome) {
        if let Some(reason) = self
            .outlier
            .as_ref()
            .and_then(|d| d.record(&endpoint.outlier, outcome))
        {
            self.eject(endpoint.address, reason);
        }
    }

    /// Ejects the endpoint at `address`, unless it is out already or
    /// `max_ejection_percent` of the endpoints are.
    fn eject(&self, address: SocketAddr, reason: Reason) {
        let Some(detector) = &self.outlier else {
            return;
        };
        self.change_endpoint(address, |all, endpoint| {
            let ejected = all.iter().filter(|e| e.is_ejected()).count();
            if endpoint.is_ejected() || !detector.may_eject(ejected, all.len()) {
                return false;
            }
            let time = detector.ejecting(endpoint, reason, Instant::now());
            endpoint.swap_ejected(true);
            tracing::warn!(
                cluster = %self.name, endpoint = %address, reason = reason.name(),
                ejection = %crate::config::scalar::format_duration(time),
                "endpoint ejected by outlier detection"
            );
            true
        });
    }

    fn restore(&self, address: SocketAddr) {
        let Some(detector) = &self.outlier else {
            return;
        };
        self.change_endpoint(address, |_, endpoint| {
            if !endpoint.swap_ejected(false) {
                return false;
            }
            detector.restored(endpoint);
            tracing::info!(cluster = %self.name, endpoint = %address, "ejected endpoint returns to the balancer");
            true
        });
    }

    /// Runs `change` on the endpoint at `address` under the rebuild lock;
    /// when it reports a change, the balancer's set is rebuilt. `None` when
    /// there is no such endpoint.
    fn change_endpoint(
        &self,
        address: SocketAddr,
        change: impl FnOnce(&[Arc<Endpoint>], &Arc<Endpoint>) -> bool,
    ) -> Option<bool> {
        let _rebuild = lock(&self.rebuild);
        let current = self.set.load_full();
        let endpoint = current.all().iter().find(|e| e.address == address)?;
        let changed = change(current.all(), endpoint);
        if changed {
            self.set
                .store(Arc::new(EndpointSet::build(current.all().into(), &self.lb)));
        }
        Some(changed)
    }

    /// Whether the cluster has its endpoints: static ones always, DNS ones
    /// once the first lookup has come back (successful or not).
    pub(crate) fn is_warm(&self) -> bool {
        self.dns.is_none() || lock(&self.dns_status).resolutions > 0
    }

    /// Whether connections to the endpoints speak TLS (`tls:`).
    pub(crate) fn originates_tls(&self) -> bool {
        self.pool.tls.is_some()
    }

    /// The endpoint for the next request, counted as active until the guard
    /// drops; `None` when no endpoint can be picked.
    pub fn pick(&self, hash: Option<u64>) -> Option<ActiveRequest> {
        let set = self.set.load();
        if set.is_panic() {
            self.stats.panic.increment(1);
        }
        if hash.is_none() && self.lb.policy.is_hash_based() {
            self.stats.no_hash_key.increment(1);
        }
        set.balancer()
            .pick(set.picks(), &self.lb, hash)
            .map(|e| e.begin_request())
    }

    /// As [`pick`](Self::pick), preferring an endpoint not in `avoid` (a
    /// retry should not go back to the endpoint that just failed). A hash
    /// key is varied deterministically per retry, so a consistent-hash retry
    /// can land elsewhere. After a few draws that all hit `avoid`, any
    /// endpoint is taken.
    pub(crate) fn pick_avoiding(
        &self,
        hash: Option<u64>,
        avoid: &[SocketAddr],
    ) -> Option<ActiveRequest> {
        if avoid.is_empty() {
            return self.pick(hash);
        }
        let rehash = |h: u64, seed: u64| xxhash_rust::xxh64::xxh64(&h.to_le_bytes(), seed);
        let hash = hash.map(|h| rehash(h, avoid.len() as u64));
        let mut pick = self.pick(hash)?;
        for draw in 0..3u64 {
            if !avoid.contains(&pick.endpoint().address) {
                break;
            }
            pick = self.pick(hash.map(|h| rehash(h, draw + 100)))?;
        }
        Some(pick)
    }

    /// Folds a response's round trip into the endpoint's latency estimate,
    /// when the balancer uses one (peak EWMA).
    pub(crate) fn observe_latency(&self, endpoint: &Endpoint, rtt: Duration) {
        if self.lb.policy == LbPolicy::PeakEwma {
            endpoint.ewma.observe(rtt, Instant::now(), self.lb.decay);
        }
    }

    pub(crate) fn endpoints(&self) -> Guard<Arc<EndpointSet>> {
        self.set.load()
    }

    pub(crate) fn hash_policy(&self) -> Option<&HashPolicy> {
        self.lb.hash.as_ref()
    }

    pub(crate) fn is_hash_based(&self) -> bool {
        self.lb.policy.is_hash_based()
    }

    /// The cluster's circuit breakers.
    pub(crate) fn limits(&self) -> &Arc<Limits> {
        &self.pool.limits
    }

    /// The health checker's hook: an endpoint failing its checks leaves the
    /// balancer's set, and comes back when it passes again. Returns `false`
    /// when no endpoint has that address.
    pub(crate) fn set_health(&self, address: SocketAddr, healthy: bool) -> bool {
        self.change_endpoint(address, |_, endpoint| endpoint.swap_check_failed(!healthy))
            .is_some()
    }

    /// Replaces the endpoints (from DNS). Endpoints that stay keep their
    /// pools and state; new ones join in slow start and are warmed up.
    pub fn replace_endpoints(&self, wanted: &[(SocketAddr, NonZeroU32)]) -> bool {
        let _rebuild = lock(&self.rebuild);
        let current = self.set.load_full();
        let existing: HashMap<(SocketAddr, NonZeroU32), &Arc<Endpoint>> = current
            .all()
            .iter()
            .map(|e| ((e.address, e.weight), e))
            .collect();
        if existing.len() == wanted.len() && wanted.iter().all(|w| existing.contains_key(w)) {
            return false;
        }
        let now = Instant::now();
        let mut fresh = Vec::new();
        let endpoints: Box<[Arc<Endpoint>]> = wanted
            .iter()
            .map(
                |&(address, weight)| match existing.get(&(address, weight)) {
                    Some(endpoint) => Arc::clone(endpoint),
                    None => {
                        let endpoint =
                            new_endpoint(address, weight, Some(now), &self.lb, &self.pool);
                        fresh.push(endpoint.clone());
                        endpoint
                    }
                },
            )
            .collect();
        // An ejected endpoint that leaves the cluster no longer counts as ejected.
        if let Some(detector) = &self.outlier {
            for gone in current
                .all()
                .iter()
                .filter(|e| e.is_ejected() && !endpoints.iter().any(|k| Arc::ptr_eq(k, e)))
            {
                detector.restored(gone);
            }
        }
        self.set
            .store(Arc::new(EndpointSet::build(endpoints, &self.lb)));
        self.warm(&fresh);
        true
    }

    fn warm(&self, endpoints: &[Arc<Endpoint>]) {
        let http2 = match self.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::SameAsDownstream => return,
        };
        let Some(workers) = self.workers.get().filter(|_| self.pool.min_idle > 0) else {
            return;
        };
        // With several workers, each warms its own connections (as Envoy's
        // per-worker pools preconnect), so each is driven by its user.
        for endpoint in endpoints {
            workers.spawn_on_each(|| {
                let endpoint = endpoint.clone();
                async move { endpoint.pool.warm(http2).await }
            });
        }
    }
}

fn new_endpoint(
    address: SocketAddr,
    weight: NonZeroU32,
    joined: Option<Instant>,
    lb: &LbSettings,
    pool: &Arc<PoolSettings>,
) -> Arc<Endpoint> {
    Arc::new(Endpoint::new(
        address,
        weight,
        joined,
        PeakEwma::new(lb.default_rtt),
        EndpointPool::new(address, pool.clone()),
    ))
}

/// `config` less its static endpoint list.
fn shape(config: &ClusterConfig) -> ClusterConfig {
    ClusterConfig {
        endpoints: Vec::new(),
        ..config.clone()
    }
}

/// The cluster's TLS: from files (`tls:`) or with the mesh identity (`mtls:`).
fn tls_of(
    config: &ClusterConfig,
    path: &str,
    identity: &Arc<crate::identity::IdentityState>,
    errors: &mut Vec<ConfigError>,
) -> Option<crate::tls::UpstreamTls> {
    if (config.tls.is_some() || config.mtls.is_some())
        && config
            .health_check
            .as_ref()
            .is_some_and(|h| h.http.is_some() || h.grpc.is_some())
    {
        errors.push(ConfigError::new(
            format!("{path}.health_check"),
            "HTTP and gRPC health checks do not speak TLS yet; use a tcp check with tls",
        ));
    }
    match (&config.tls, &config.mtls) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError::new(
                format!("{path}.mtls"),
                "set either tls (certificate files) or mtls (the mesh identity), not both",
            ));
            None
        }
        (Some(tls), None) => crate::tls::upstream(tls, &format!("{path}.tls"), errors),
        (None, Some(mtls)) => {
            if mtls.identities.is_empty() {
                errors.push(ConfigError::new(
                    format!("{path}.mtls.identities"),
                    "name at least one SPIFFE ID the endpoints may present",
                ));
            }
            for (i, id) in mtls.identities.iter().enumerate() {
                if let Err(e) = id.parse::<crate::identity::SpiffeId>() {
                    errors.push(ConfigError::new(format!("{path}.mtls.identities[{i}]"), e));
                }
            }
            Some(crate::tls::mesh_upstream(identity, &mtls.identities))
        }
        (None, None) => None,
    }
}

fn check_endpoints(config: &ClusterConfig, path: &str, errors: &mut Vec<ConfigError>) {
    let mut seen = HashSet::new();
    for (i, endpoint) in config.endpoints.iter().enumerate() {
        if !seen.insert(endpoint.address) {
            errors.push(ConfigError::new(
                format!("{path}.endpoints[{i}]"),
                format!("endpoint {} is listed twice", endpoint.address),
            ));
        }
    }
}

fn check_pool(config: &ClusterConfig, path: &str, errors: &mut Vec<ConfigError>) {
    let pool = &config.pool;
    if pool.max_connections == Some(0) {
        errors.push(ConfigError::new(
            format!("{path}.pool.max_connections"),
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    if pool.max_requests_per_connection == Some(0) {
        errors.push(ConfigError::new(
            format!("{path}.pool.max_requests_per_connection"),
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    if pool.max_connection_age.is_some_and(|a| a.is_zero()) {
        errors.push(ConfigError::new(
            format!("{path}.pool.max_connection_age"),
            "must be greater than 0 (leave it out for no limit)",
        ));
    }
    if let Some(max) = pool.max_connections
        && pool.min_idle > max
    {
        errors.push(ConfigError::new(
            format!("{path}.pool.min_idle"),
            format!("{} is more than max_connections ({max})", pool.min_idle),
        ));
    }
    config.http2.check(&format!("{path}.http2"), errors);
    config.keepalive.check(&format!("{path}.keepalive"), errors);
}

#[cfg(test)]
mod tests;

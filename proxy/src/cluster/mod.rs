//! Clusters: a named set of upstream endpoints, the balancer that chooses
//! among them, and per endpoint its connection pool and live state (health,
//! active requests). A cluster whose config is unchanged survives a reload
//! as the same object, so its pools and counters carry over.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::balance::Balancer;
use crate::config::{ClusterConfig, ConfigError, UpstreamProtocol};
use crate::pool::{ConnStats, EndpointPool};
use crate::telemetry::{self, Telemetry};

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    config: ClusterConfig,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    endpoints: Box<[Arc<Endpoint>]>,
    balancer: Balancer,
    pub conn_stats: ConnStats,
}

impl Cluster {
    /// Builds a cluster, or reuses `previous` when its config is identical.
    pub fn compile(
        config: &ClusterConfig,
        path: &str,
        previous: Option<&Arc<Cluster>>,
        telemetry: &Telemetry,
        errors: &mut Vec<ConfigError>,
    ) -> Arc<Cluster> {
        if let Some(previous) = previous.filter(|p| p.config == *config) {
            return previous.clone();
        }
        let mut seen = HashSet::new();
        for (i, endpoint) in config.endpoints.iter().enumerate() {
            if !seen.insert(endpoint.address) {
                errors.push(ConfigError::new(
                    format!("{path}.endpoints[{i}]"),
                    format!("endpoint {} is listed twice", endpoint.address),
                ));
            }
        }
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
        let endpoints: Box<[Arc<Endpoint>]> = config
            .endpoints
            .iter()
            .map(|e| {
                Arc::new(Endpoint::new(
                    e.address,
                    e.weight,
                    EndpointPool::new(e.address, config.connect_timeout, conn_stats.clone()),
                ))
            })
            .collect();
        let balancer = Balancer::new(config.load_balancer.policy, &endpoints);
        Arc::new(Cluster {
            name: Arc::from(name.as_str()),
            config: config.clone(),
            protocol: config.protocol,
            connect_timeout: config.connect_timeout,
            endpoints,
            balancer,
            conn_stats,
        })
    }

    /// The endpoint for the next request; `None` when the cluster is empty.
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        self.balancer.pick(&self.endpoints)
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }
}

/// One upstream address of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub weight: NonZeroU32,
    healthy: AtomicBool,
    active_requests: AtomicUsize,
    pub pool: EndpointPool,
}

impl Endpoint {
    pub fn new(address: SocketAddr, weight: NonZeroU32, pool: EndpointPool) -> Endpoint {
        Endpoint {
            address,
            weight,
            healthy: AtomicBool::new(true),
            active_requests: AtomicUsize::new(0),
            pool,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The hook for health checking and outlier detection: an unhealthy
    /// endpoint is skipped by the balancer.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn active_requests(&self) -> usize {
        self.active_requests.load(Ordering::Relaxed)
    }

    /// Counts a request against this endpoint until the guard drops.
    pub fn begin_request(self: &Arc<Self>) -> ActiveRequest {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }
}

/// A request in flight to an endpoint.
pub struct ActiveRequest(Arc<Endpoint>);

impl ActiveRequest {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
pub fn test_endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
    let stats = ConnStats::detached();
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let address = SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16));
            Arc::new(Endpoint::new(
                address,
                NonZeroU32::new(w).unwrap(),
                EndpointPool::new(address, Duration::from_secs(1), stats.clone()),
            ))
        })
        .collect()
}

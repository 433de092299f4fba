//! One upstream address of a cluster and its live state: health, requests in
//! flight, latency estimate, when it joined (for slow start), and its
//! connection pool. The bottom of the upstream side: balancers, outlier
//! detection and health checks know endpoints, not clusters.

pub(crate) mod ewma;
mod state;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::time::Instant;

use crate::pool::EndpointPool;
use ewma::PeakEwma;

pub(crate) use state::{CheckState, OutlierState};

/// A static endpoint list: each endpoint's address and weight.
pub(crate) type EndpointList = Vec<(SocketAddr, NonZeroU32)>;

#[derive(Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub weight: NonZeroU32,
    /// Failed active health checks (set by the health checker).
    check_failed: AtomicBool,
    /// Ejected by outlier detection.
    ejected: AtomicBool,
    pub outlier: OutlierState,
    pub checks: CheckState,
    active_requests: AtomicUsize,
    pub ewma: PeakEwma,
    /// When the endpoint joined a running cluster; `None` for endpoints the
    /// cluster started with (they are not slow-started).
    pub joined: Option<Instant>,
    pub pool: EndpointPool,
}

impl Endpoint {
    pub fn new(
        address: SocketAddr,
        weight: NonZeroU32,
        joined: Option<Instant>,
        ewma: PeakEwma,
        pool: EndpointPool,
    ) -> Endpoint {
        Endpoint {
            address,
            weight,
            check_failed: AtomicBool::new(false),
            ejected: AtomicBool::new(false),
            outlier: OutlierState::default(),
            checks: CheckState::default(),
            active_requests: AtomicUsize::new(0),
            ewma,
            joined,
            pool,
        }
    }

    /// Neither failing its health checks nor ejected.
    pub fn is_healthy(&self) -> bool {
        !self.check_failed.load(Ordering::Relaxed) && !self.ejected.load(Ordering::Relaxed)
    }

    pub fn is_check_failed(&self) -> bool {
        self.check_failed.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Returns whether the flag changed. Use the [`Cluster`](crate::cluster::Cluster)
    /// methods, which also rebuild the balancer over the healthy endpoints.
    pub(crate) fn swap_check_failed(&self, failed: bool) -> bool {
        self.check_failed.swap(failed, Ordering::Relaxed) != failed
    }

    pub(crate) fn swap_ejected(&self, ejected: bool) -> bool {
        self.ejected.swap(ejected, Ordering::Relaxed) != ejected
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
#[derive(Debug)]
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

/// Endpoints 10.0.0.1:80, 10.0.0.2:80, … with the given weights and
/// detached pools (tests only).
#[cfg(test)]
pub(crate) fn test_endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
    use std::time::Duration;

    use crate::pool::PoolSettings;

    let settings = Arc::new(PoolSettings::detached());
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let address = SocketAddr::from(([10, 0, 0, i as u8 + 1], 80));
            Arc::new(Endpoint::new(
                address,
                NonZeroU32::new(w).unwrap(),
                None,
                PeakEwma::new(Duration::from_millis(1)),
                EndpointPool::new(address, settings.clone()),
            ))
        })
        .collect()
}

//! One upstream address of a cluster and its live state: health, requests in
//! flight, latency estimate, when it joined (for slow start), and its
//! connection pool.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use crate::balance::ewma::PeakEwma;
use crate::pool::EndpointPool;

#[derive(Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub weight: NonZeroU32,
    healthy: AtomicBool,
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
            healthy: AtomicBool::new(true),
            active_requests: AtomicUsize::new(0),
            ewma,
            joined,
            pool,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Returns whether the health changed. Use [`Cluster::set_health`](super::Cluster::set_health),
    /// which also rebuilds the balancer over the healthy endpoints.
    pub(super) fn swap_health(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
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

//! An endpoint set: a cluster's endpoints at one moment, the subset the
//! balancer picks from, and the balancer built over that subset. Rebuilt
//! whole (and swapped in atomically) when membership or health changes.

use std::sync::Arc;

use super::Endpoint;
use crate::balance::{Balancer, LbSettings};

#[derive(Debug)]
pub(crate) struct EndpointSet {
    all: Box<[Arc<Endpoint>]>,
    /// The healthy endpoints, or all of them in panic mode.
    picks: Box<[Arc<Endpoint>]>,
    healthy: usize,
    panic: bool,
    balancer: Balancer,
}

impl EndpointSet {
    pub(crate) fn build(all: Box<[Arc<Endpoint>]>, settings: &LbSettings) -> EndpointSet {
        let healthy: Box<[Arc<Endpoint>]> =
            all.iter().filter(|e| e.is_healthy()).cloned().collect();
        // Envoy's rule: below `panic_threshold` percent healthy, use everything,
        // since sending somewhere beats failing everything on a bad health signal.
        let panic =
            !all.is_empty() && healthy.len() * 100 < all.len() * settings.panic_threshold as usize;
        let healthy_count = healthy.len();
        let picks = if panic { all.clone() } else { healthy };
        let balancer = Balancer::build(settings, &picks);
        EndpointSet {
            all,
            picks,
            healthy: healthy_count,
            panic,
            balancer,
        }
    }

    pub(crate) fn all(&self) -> &[Arc<Endpoint>] {
        &self.all
    }

    pub(crate) fn picks(&self) -> &[Arc<Endpoint>] {
        &self.picks
    }

    pub(crate) fn healthy(&self) -> usize {
        self.healthy
    }

    pub(crate) fn is_panic(&self) -> bool {
        self.panic
    }

    pub(crate) fn balancer(&self) -> &Balancer {
        &self.balancer
    }
}

//! Load balancing: which endpoint of a cluster gets the next request or
//! connection. Only healthy endpoints are picked; when none is healthy, all
//! are used (panic mode), as Envoy does, because sending somewhere beats
//! failing everything on a bad health signal.

mod round_robin;

use std::sync::Arc;

use crate::cluster::Endpoint;
use crate::config::LbPolicy;

pub use round_robin::RoundRobin;

#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
}

impl Balancer {
    pub fn new(policy: LbPolicy, endpoints: &[Arc<Endpoint>]) -> Balancer {
        match policy {
            LbPolicy::RoundRobin => Balancer::RoundRobin(RoundRobin::new(endpoints)),
        }
    }

    /// `None` only when the cluster has no endpoints.
    pub fn pick<'a>(&self, endpoints: &'a [Arc<Endpoint>]) -> Option<&'a Arc<Endpoint>> {
        match self {
            Balancer::RoundRobin(rr) => rr.pick(endpoints),
        }
    }
}

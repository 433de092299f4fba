//! `random`: each pick independent, with probability proportional to weight.

use std::sync::Arc;

use super::SlowStart;
use crate::endpoint::Endpoint;

#[derive(Debug)]
pub(crate) struct WeightedRandom {
    /// Running sums of the weights.
    cumulative: Box<[u64]>,
}

impl WeightedRandom {
    pub(crate) fn new(endpoints: &[Arc<Endpoint>]) -> WeightedRandom {
        let mut total = 0u64;
        let cumulative = endpoints
            .iter()
            .map(|e| {
                total += u64::from(e.weight.get());
                total
            })
            .collect();
        WeightedRandom { cumulative }
    }

    pub(crate) fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        slow_start: Option<&SlowStart>,
    ) -> Option<&'a Arc<Endpoint>> {
        let total = *self.cumulative.last()?;
        let draw = || {
            let roll = crate::rand::below(total);
            endpoints.get(self.cumulative.partition_point(|&sum| sum <= roll))
        };
        match slow_start {
            None => draw(),
            Some(slow_start) => slow_start.admit(draw),
        }
    }
}

/// One endpoint uniformly at random: the fallback when a hash input is missing.
pub(super) fn uniform(endpoints: &[Arc<Endpoint>]) -> Option<&Arc<Endpoint>> {
    endpoints.get(crate::rand::below(endpoints.len() as u64) as usize)
}

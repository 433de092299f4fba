//! `round_robin`: each endpoint in turn. An endpoint of weight w gets w turns
//! per cycle, spread through the cycle rather than in a burst. The cycle is
//! computed once per endpoint set; a pick is one atomic increment.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::SlowStart;
use crate::endpoint::Endpoint;

/// Longest cycle kept; larger weight sums are scaled down to fit.
const MAX_CYCLE: u64 = 1 << 16;

#[derive(Debug)]
pub(crate) struct RoundRobin {
    /// Endpoint indexes in turn order; `None` when all weights are equal and
    /// the cycle is simply the endpoint list.
    cycle: Option<Box<[u32]>>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub(crate) fn new(endpoints: &[Arc<Endpoint>]) -> RoundRobin {
        let weights: Vec<u64> = endpoints
            .iter()
            .map(|e| u64::from(e.weight.get()))
            .collect();
        let all_equal = weights.windows(2).all(|w| w[0] == w[1]);
        let cycle = (!all_equal).then(|| interleaved_cycle(&weights));
        // Start at a random place so a fleet of proxies restarted together
        // does not send its first requests to the same endpoint.
        let start = crate::rand::next_u64() as usize;
        RoundRobin {
            cycle,
            next: AtomicUsize::new(start),
        }
    }

    pub(crate) fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        slow_start: Option<&SlowStart>,
    ) -> Option<&'a Arc<Endpoint>> {
        let len = self.cycle.as_ref().map_or(endpoints.len(), |c| c.len());
        if len == 0 {
            return None;
        }
        let next = || {
            let turn = self.next.fetch_add(1, Ordering::Relaxed) % len;
            endpoints.get(self.cycle.as_ref().map_or(turn, |c| c[turn] as usize))
        };
        match slow_start {
            None => next(),
            Some(slow_start) => slow_start.admit(next),
        }
    }
}

/// Orders endpoint `i`'s `w_i` turns at the points (2k+1)/(2·w_i) of the
/// cycle, so heavier endpoints come up evenly spaced rather than in a row.
fn interleaved_cycle(weights: &[u64]) -> Box<[u32]> {
    let gcd = weights.iter().copied().fold(0, gcd);
    let mut weights: Vec<u64> = weights.iter().map(|w| w / gcd.max(1)).collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_CYCLE {
        for w in &mut weights {
            *w = (*w * MAX_CYCLE / total).max(1);
        }
    }
    let mut turns: Vec<(u64, u64, u32)> = Vec::with_capacity(weights.iter().sum::<u64>() as usize);
    for (index, &w) in weights.iter().enumerate() {
        for k in 0..w {
            turns.push((2 * k + 1, 2 * w, index as u32));
        }
    }
    // a/b < c/d  ⇔  a·d < c·b (all positive, small enough not to overflow).
    turns.sort_by(|x, y| (x.0 * y.1).cmp(&(y.0 * x.1)).then(x.2.cmp(&y.2)));
    turns.into_iter().map(|t| t.2).collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::test_endpoints as endpoints;

    fn picks(weights: &[u32], n: usize) -> Vec<usize> {
        let endpoints = endpoints(weights);
        let rr = RoundRobin::new(&endpoints);
        (0..n)
            .map(|_| {
                let e = rr.pick(&endpoints, None).unwrap();
                endpoints.iter().position(|x| Arc::ptr_eq(x, e)).unwrap()
            })
            .collect()
    }

    #[test]
    fn equal_weights_take_turns() {
        let p = picks(&[1, 1, 1], 6);
        assert_eq!(
            p[..3]
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            3
        );
        assert_eq!(p[..3], p[3..]);
    }

    #[test]
    fn weights_give_proportional_interleaved_turns() {
        let p = picks(&[1, 3], 400);
        assert_eq!(p.iter().filter(|&&i| i == 1).count(), 300);
        // Never two turns of endpoint 0 in a row, and never more than 3 of endpoint 1.
        assert!(p.windows(2).all(|w| w != [0, 0]), "{p:?}");
        assert!(p.windows(4).all(|w| w != [1, 1, 1, 1]), "{p:?}");
    }

    #[test]
    fn huge_weight_sums_are_scaled_to_a_bounded_cycle() {
        let cycle = interleaved_cycle(&[1_000_000, 3_000_000, 7]);
        assert!(cycle.len() as u64 <= MAX_CYCLE + 3);
        let share = cycle.iter().filter(|&&i| i == 1).count() as f64 / cycle.len() as f64;
        assert!((share - 0.75).abs() < 0.01, "{share}");
        assert!(cycle.contains(&2), "a tiny weight still gets a turn");
    }
}

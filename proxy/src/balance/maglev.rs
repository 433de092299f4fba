//! `maglev`: consistent hashing with a Maglev lookup table (Google's Maglev
//! paper; weighted as Envoy does it). Each endpoint has its own permutation
//! of the table's slots (offset and skip from `xxh64` of its address);
//! endpoints take turns claiming their next free slot, heavier ones more
//! often, until the table is full. A request's hash indexes the table
//! directly: a pick is one array read. Changes move close to the minimum
//! share of keys, though not exactly the minimum as a ring does.

use std::sync::Arc;

use xxhash_rust::xxh64::xxh64;

use crate::endpoint::Endpoint;

pub(super) const DEFAULT_TABLE_SIZE: u64 = 65_537;
/// Envoy's largest allowed table.
pub(super) const MAX_TABLE_SIZE: u64 = 5_000_011;

#[derive(Debug)]
pub(crate) struct Maglev {
    table: Box<[u32]>,
}

struct Builder {
    offset: u64,
    skip: u64,
    weight: f64,
    target: f64,
    next: u64,
}

impl Maglev {
    pub(crate) fn new(endpoints: &[Arc<Endpoint>], size: u64) -> Maglev {
        if endpoints.is_empty() {
            return Maglev {
                table: Box::new([]),
            };
        }
        let max_weight = endpoints.iter().map(|e| e.weight.get()).max().unwrap_or(1);
        let mut builders: Vec<Builder> = endpoints
            .iter()
            .map(|e| {
                let key = e.address.to_string();
                Builder {
                    offset: xxh64(key.as_bytes(), 0) % size,
                    skip: xxh64(key.as_bytes(), 1) % (size - 1) + 1,
                    weight: f64::from(e.weight.get()) / f64::from(max_weight),
                    target: 0.0,
                    next: 0,
                }
            })
            .collect();
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0u64;
        let mut round = 1u64;
        while filled < size {
            for (index, b) in builders.iter_mut().enumerate() {
                if filled == size {
                    break;
                }
                // The heaviest endpoint claims a slot every round; one of a
                // third of its weight every third round.
                if (round as f64) * b.weight < b.target {
                    continue;
                }
                b.target += 1.0;
                let mut slot = (b.offset + b.skip * b.next) % size;
                while table[slot as usize] != u32::MAX {
                    b.next += 1;
                    slot = (b.offset + b.skip * b.next) % size;
                }
                table[slot as usize] = index as u32;
                b.next += 1;
                filled += 1;
            }
            round += 1;
        }
        Maglev {
            table: table.into(),
        }
    }

    pub(crate) fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        hash: u64,
    ) -> Option<&'a Arc<Endpoint>> {
        if self.table.is_empty() {
            return None;
        }
        let slot = self.table[(hash % self.table.len() as u64) as usize];
        endpoints.get(slot as usize)
    }
}

/// Whether `n` is prime (trial division; table sizes are at most a few million).
pub(crate) fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::consistency::{Exactness, assert_consistent, endpoints};

    #[test]
    fn keys_are_stable_and_move_minimally() {
        assert_consistent(Exactness::Near, |e| {
            let table = Maglev::new(e, DEFAULT_TABLE_SIZE);
            let e = e.to_vec();
            Box::new(move |hash| table.pick(&e, hash).map(|e| e.address))
        });
    }

    #[test]
    fn slots_follow_weights() {
        let e = endpoints(&[1, 2, 5]);
        let table = Maglev::new(&e, 10_007);
        let share = |i: u32| table.table.iter().filter(|&&s| s == i).count() as f64 / 10_007.0;
        assert!((share(0) - 0.125).abs() < 0.01, "{}", share(0));
        assert!((share(1) - 0.25).abs() < 0.01, "{}", share(1));
        assert!((share(2) - 0.625).abs() < 0.01, "{}", share(2));
    }

    #[test]
    fn primes_are_recognised() {
        assert!(is_prime(65_537) && is_prime(5_000_011) && is_prime(2));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(9));
    }
}

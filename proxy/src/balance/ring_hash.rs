//! `ring_hash`: consistent hashing on a ring (ketama). Each endpoint gets
//! points on a 64-bit ring in proportion to its weight
//! (`xxh64("{address}_{n}")`, as Envoy hashes them); a request's hash is
//! served by the first point at or after it.
//!
//! Unlike Envoy, which rescales every endpoint's point count to the ring size
//! whenever the endpoint count changes (so adding a fifth endpoint to four
//! also moves keys between the old four), an endpoint here gets a fixed
//! [`POINTS_PER_WEIGHT`] points per unit of weight. Its points stay where they
//! are when others come and go: adding an endpoint takes over only the keys
//! just before its points, and removing one hands on only its keys. The
//! count per weight changes only when the ring would be smaller than
//! `minimum_ring_size` or larger than `maximum_ring_size`.

use std::sync::Arc;

use xxhash_rust::xxh64::xxh64;

use crate::endpoint::Endpoint;

pub(super) const DEFAULT_MIN_SIZE: u64 = 1024;
/// Keeps a ring at 16 MiB and its rebuild near a tenth of a second at most
/// (Envoy allows up to 8M points; so does `maximum_ring_size` here).
pub(super) const DEFAULT_MAX_SIZE: u64 = 1024 * 1024;
pub(super) const LARGEST_SIZE: u64 = 8 * 1024 * 1024;
/// Points per unit of weight while the ring stays within its size bounds.
pub(super) const POINTS_PER_WEIGHT: u64 = 256;

#[derive(Debug)]
pub(crate) struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Box<[(u64, u32)]>,
    /// `starts[b]`: the first point whose top 16 bits are at least `b`, so a
    /// lookup searches a few points instead of the whole ring (a binary
    /// search over a million points is mostly cache misses).
    starts: Box<[u32]>,
}

const BUCKET_SHIFT: u32 = 48;

impl Ring {
    pub(crate) fn new(endpoints: &[Arc<Endpoint>], min_size: u64, max_size: u64) -> Ring {
        if endpoints.is_empty() {
            return Ring {
                points: Box::new([]),
                starts: Box::new([]),
            };
        }
        let gcd = endpoints
            .iter()
            .map(|e| u64::from(e.weight.get()))
            .fold(0, gcd);
        let weights: Vec<u64> = endpoints
            .iter()
            .map(|e| u64::from(e.weight.get()) / gcd)
            .collect();
        let total: u64 = weights.iter().sum();
        let per_weight = POINTS_PER_WEIGHT
            .max(min_size.div_ceil(total))
            .min((max_size / total).max(1));
        let mut points = Vec::with_capacity((total * per_weight) as usize);
        let mut key = String::new();
        for (index, (endpoint, weight)) in endpoints.iter().zip(&weights).enumerate() {
            use std::fmt::Write;
            key.clear();
            let _ = write!(key, "{}_", endpoint.address);
            let prefix = key.len();
            for n in 0..weight * per_weight {
                key.truncate(prefix);
                let _ = write!(key, "{n}");
                points.push((xxh64(key.as_bytes(), 0), index as u32));
            }
        }
        points.sort_unstable();
        let mut starts = Vec::with_capacity((1 << 16) + 1);
        let mut at = 0usize;
        for bucket in 0..=(1u64 << 16) {
            while at < points.len() && (points[at].0 >> BUCKET_SHIFT) < bucket {
                at += 1;
            }
            starts.push(at as u32);
        }
        Ring {
            points: points.into(),
            starts: starts.into(),
        }
    }

    pub(crate) fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        hash: u64,
    ) -> Option<&'a Arc<Endpoint>> {
        let bucket = (hash >> BUCKET_SHIFT) as usize;
        let (from, to) = (
            *self.starts.get(bucket)? as usize,
            self.starts[bucket + 1] as usize,
        );
        let at = from + self.points[from..to].partition_point(|&(point, _)| point < hash);
        let (_, index) = self.points.get(at).or_else(|| self.points.first())?;
        endpoints.get(*index as usize)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.points.len()
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::consistency::{Exactness, assert_consistent, endpoints};

    #[test]
    fn keys_are_stable_and_move_minimally() {
        assert_consistent(Exactness::Exact, |e| {
            let ring = Ring::new(e, DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE);
            let e = e.to_vec();
            Box::new(move |hash| ring.pick(&e, hash).map(|e| e.address))
        });
    }

    #[test]
    fn the_bucket_index_finds_what_a_full_search_finds() {
        let e = endpoints(&[1, 2, 3, 1, 5]);
        let ring = Ring::new(&e, DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE);
        for i in 0..100_000u64 {
            let hash = xxh64(&i.to_le_bytes(), 7);
            let full = ring.points.partition_point(|&(p, _)| p < hash);
            let expected = ring.points.get(full).unwrap_or(&ring.points[0]).1;
            let found = ring.pick(&e, hash).unwrap();
            assert!(Arc::ptr_eq(found, &e[expected as usize]));
        }
        for edge in [0, u64::MAX, ring.points[0].0, ring.points[ring.len() - 1].0] {
            assert!(ring.pick(&e, edge).is_some());
        }
    }

    #[test]
    fn the_ring_is_as_large_as_asked_and_weights_get_proportional_points() {
        let e = endpoints(&[1, 3]);
        let ring = Ring::new(&e, DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE);
        assert_eq!(ring.len(), 4 * 256);
        let heavy = ring.points.iter().filter(|p| p.1 == 1).count();
        assert_eq!(heavy * 4, ring.len() * 3);
        assert_eq!(
            Ring::new(&e, 8192, DEFAULT_MAX_SIZE).len(),
            8192,
            "minimum_ring_size raises the count"
        );
        // Points are `ADDRESS_n`, as Envoy hashes them.
        let one = Ring::new(&endpoints(&[1]), 1, 1);
        assert_eq!(one.points[0].0, xxh64(b"10.0.0.1:80_0", 0));
        let capped = Ring::new(&endpoints(&[1; 100]), 1, 5_000);
        assert_eq!(capped.len(), 5_000, "maximum_ring_size caps the ring");
        let scaled = Ring::new(&endpoints(&[100, 300]), DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE);
        assert_eq!(
            scaled.len(),
            4 * 256,
            "weights count relative to each other"
        );
    }
}

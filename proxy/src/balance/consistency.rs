//! Shared proofs for the consistent-hash balancers (tests only): the same
//! key lands on the same endpoint across independently built tables (a
//! restart), adding a fifth endpoint to four moves about a fifth of the keys
//! (to the new one), and removing one leaves the others' keys in place.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use xxhash_rust::xxh64::xxh64;

use crate::endpoint::Endpoint;
pub(crate) use crate::endpoint::test_endpoints as endpoints;

const KEYS: usize = 10_000;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exactness {
    /// A ring: moved keys go only to the new endpoint; removal moves only the removed one's keys.
    Exact,
    /// Maglev: within a small tolerance of that.
    Near,
}

type Lookup = Box<dyn Fn(u64) -> Option<SocketAddr>>;

fn assignments(lookup: &Lookup) -> Vec<SocketAddr> {
    (0..KEYS)
        .map(|i| lookup(xxh64(format!("key-{i}").as_bytes(), 0)).unwrap())
        .collect()
}

pub(crate) fn assert_consistent(exactness: Exactness, build: impl Fn(&[Arc<Endpoint>]) -> Lookup) {
    let four = endpoints(&[1, 1, 1, 1]);
    let five = endpoints(&[1, 1, 1, 1, 1]);
    let before = assignments(&build(&four));

    // A rebuild from the same endpoints (a restart) maps every key the same way.
    assert_eq!(before, assignments(&build(&endpoints(&[1, 1, 1, 1]))));

    // Every endpoint gets a fair share.
    let mut load: HashMap<SocketAddr, usize> = HashMap::new();
    for a in &before {
        *load.entry(*a).or_default() += 1;
    }
    for count in load.values() {
        assert!((1_500..3_500).contains(count), "uneven spread: {load:?}");
    }

    // Adding a fifth endpoint moves about a fifth of the keys, to it.
    let after = assignments(&build(&five));
    let new = five[4].address;
    let moved: Vec<usize> = (0..KEYS).filter(|&i| before[i] != after[i]).collect();
    let moved_share = moved.len() as f64 / KEYS as f64;
    assert!(
        (0.15..=0.25).contains(&moved_share),
        "adding 1 to 4 moved {:.1} % of keys",
        moved_share * 100.0
    );
    let to_new = moved.iter().filter(|&&i| after[i] == new).count() as f64 / moved.len() as f64;
    let floor = if exactness == Exactness::Exact {
        1.0
    } else {
        0.9
    };
    assert!(
        to_new >= floor,
        "only {:.1} % of moved keys went to the new endpoint",
        to_new * 100.0
    );

    // Removing one of five leaves the other endpoints' keys where they were.
    let mut without = five.clone();
    let removed = without.remove(2).address;
    let remaining = assignments(&build(&without));
    let kept: Vec<usize> = (0..KEYS).filter(|&i| after[i] != removed).collect();
    let stayed =
        kept.iter().filter(|&&i| after[i] == remaining[i]).count() as f64 / kept.len() as f64;
    eprintln!(
        "consistency: 4→5 moved {:.2} % of {KEYS} keys ({:.2} % of those to the new endpoint); 5→4 kept {:.3} % of the other endpoints' keys",
        moved_share * 100.0,
        to_new * 100.0,
        stayed * 100.0
    );
    let floor = if exactness == Exactness::Exact {
        1.0
    } else {
        0.97
    };
    assert!(
        stayed >= floor,
        "removing an endpoint moved {:.2} % of other keys",
        (1.0 - stayed) * 100.0
    );
}

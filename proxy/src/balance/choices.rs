//! Power of d choices (`least_request`, `peak_ewma`): draw d distinct
//! endpoints at random and take the one with the lowest load. Two choices
//! already avoid the herd behaviour of "always the least loaded" while
//! tracking load closely (Mitzenmacher); Envoy and Linkerd use the same.

use std::sync::Arc;

use crate::endpoint::Endpoint;

/// Most candidates a pick compares.
pub(super) const MAX_CHOICES: usize = 16;

/// The endpoint with the lowest `load` among `choices` distinct random
/// ones (all of them when there are no more than `choices`).
pub(super) fn pick<'a>(
    endpoints: &'a [Arc<Endpoint>],
    choices: usize,
    load: impl Fn(&Endpoint) -> f64,
) -> Option<&'a Arc<Endpoint>> {
    let n = endpoints.len();
    if n <= 1 {
        return endpoints.first();
    }
    let lower = |a: &'a Arc<Endpoint>, b: &'a Arc<Endpoint>| if load(b) < load(a) { b } else { a };
    if n <= choices {
        // Start at a random place so ties do not always go to the first endpoint.
        let start = crate::rand::below(n as u64) as usize;
        return (0..n).map(|i| &endpoints[(start + i) % n]).reduce(lower);
    }
    let mut drawn = [usize::MAX; MAX_CHOICES];
    let mut count = 0;
    while count < choices.min(MAX_CHOICES) {
        let candidate = crate::rand::below(n as u64) as usize;
        if !drawn[..count].contains(&candidate) {
            drawn[count] = candidate;
            count += 1;
        }
    }
    drawn[..count].iter().map(|&i| &endpoints[i]).reduce(lower)
}

//! Load balancing: which endpoint of a cluster gets the next request or
//! connection. A balancer is built over the endpoints it may pick (the
//! healthy ones, or all of them in panic mode; see [`EndpointSet`](crate::cluster::EndpointSet))
//! and rebuilt whenever that set changes.
//!
//! | policy | file | pick |
//! |---|---|---|
//! | `round_robin` | `round_robin.rs` | precomputed weighted cycle, one atomic increment |
//! | `weighted_round_robin` | `edf.rs` | earliest deadline first, O(log n) under a lock |
//! | `random` | `random.rs` | weighted draw, O(log n) |
//! | `least_request` | `choices.rs` | power of d choices on active requests |
//! | `peak_ewma` | `choices.rs` + `ewma.rs` | power of d choices on latency × load |
//! | `ring_hash` | `ring_hash.rs` | binary search on a ring |
//! | `maglev` | `maglev.rs` | one table read |

mod choices;
#[cfg(test)]
pub(crate) mod consistency;
mod edf;
mod hash_policy;
mod maglev;
mod random;
mod ring_hash;
mod round_robin;
mod slow_start;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ConfigError, LbPolicy, LoadBalancerConfig};
use crate::endpoint::Endpoint;

pub(crate) use edf::Edf;
pub(crate) use hash_policy::{HashInput, HashPolicy};
pub(crate) use maglev::{Maglev, is_prime};
pub(crate) use random::WeightedRandom;
pub(crate) use ring_hash::Ring;
pub(crate) use round_robin::RoundRobin;
pub(crate) use slow_start::SlowStart;

const DEFAULT_CHOICES: usize = 2;
/// Linkerd's defaults.
const DEFAULT_DECAY: Duration = Duration::from_secs(10);
const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// A cluster's balancer settings, validated.
#[derive(Debug)]
pub(crate) struct LbSettings {
    pub policy: LbPolicy,
    pub choice_count: usize,
    pub decay: Duration,
    pub default_rtt: Duration,
    pub ring_size: (u64, u64),
    pub table_size: u64,
    pub hash: Option<HashPolicy>,
    pub slow_start: Option<SlowStart>,
    /// Percent of endpoints that must be healthy, else all are used.
    pub panic_threshold: u32,
}

impl LbSettings {
    pub(crate) fn compile(
        config: &LoadBalancerConfig,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> LbSettings {
        use LbPolicy::*;
        let policy = config.policy;
        let mut only = |field: &str, given: bool, policies: &[LbPolicy]| {
            if given && !policies.contains(&policy) {
                let names: Vec<&str> = policies.iter().map(|p| p.name()).collect();
                errors.push(ConfigError::new(
                    format!("{path}.{field}"),
                    format!(
                        "only applies to policy {} (this cluster uses {})",
                        names.join(" or "),
                        policy.name()
                    ),
                ));
            }
        };
        only(
            "choice_count",
            config.choice_count.is_some(),
            &[LeastRequest, PeakEwma],
        );
        only("decay", config.decay.is_some(), &[PeakEwma]);
        only("default_rtt", config.default_rtt.is_some(), &[PeakEwma]);
        only(
            "minimum_ring_size",
            config.minimum_ring_size.is_some(),
            &[RingHash],
        );
        only(
            "maximum_ring_size",
            config.maximum_ring_size.is_some(),
            &[RingHash],
        );
        only("table_size", config.table_size.is_some(), &[Maglev]);
        only("hash_on", config.hash_on.is_some(), &[RingHash, Maglev]);
        only(
            "slow_start",
            config.slow_start.is_some(),
            &[
                RoundRobin,
                WeightedRoundRobin,
                Random,
                LeastRequest,
                PeakEwma,
            ],
        );

        let choice_count = config.choice_count.map_or(DEFAULT_CHOICES, |c| c as usize);
        if !(2..=choices::MAX_CHOICES).contains(&choice_count) {
            errors.push(ConfigError::new(
                format!("{path}.choice_count"),
                format!("{choice_count} is outside 2..={}", choices::MAX_CHOICES),
            ));
        }
        let decay = config.decay.unwrap_or(DEFAULT_DECAY);
        if decay.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.decay"),
                "must be greater than 0",
            ));
        }
        let ring_size = (
            config
                .minimum_ring_size
                .unwrap_or(ring_hash::DEFAULT_MIN_SIZE),
            config
                .maximum_ring_size
                .unwrap_or(ring_hash::DEFAULT_MAX_SIZE),
        );
        if ring_size.0 == 0 || ring_size.0 > ring_size.1 || ring_size.1 > ring_hash::LARGEST_SIZE {
            errors.push(ConfigError::new(
                path,
                format!(
                    "ring sizes must satisfy 1 <= minimum_ring_size ({}) <= maximum_ring_size ({}) <= {}",
                    ring_size.0,
                    ring_size.1,
                    ring_hash::LARGEST_SIZE
                ),
            ));
        }
        let table_size = config.table_size.unwrap_or(maglev::DEFAULT_TABLE_SIZE);
        if !is_prime(table_size) || table_size > maglev::MAX_TABLE_SIZE {
            errors.push(ConfigError::new(
                format!("{path}.table_size"),
                format!(
                    "{table_size} must be a prime no larger than {} (such as 65537)",
                    maglev::MAX_TABLE_SIZE
                ),
            ));
        }
        if config.panic_threshold > 100 {
            errors.push(ConfigError::new(
                format!("{path}.panic_threshold"),
                format!("{} is outside 0..=100 (percent)", config.panic_threshold),
            ));
        }
        LbSettings {
            policy,
            choice_count,
            decay,
            default_rtt: config.default_rtt.unwrap_or(DEFAULT_RTT),
            ring_size,
            table_size,
            hash: config
                .hash_on
                .as_ref()
                .and_then(|h| HashPolicy::compile(h, &format!("{path}.hash_on"), errors)),
            slow_start: config
                .slow_start
                .as_ref()
                .and_then(|s| SlowStart::compile(s, &format!("{path}.slow_start"), errors)),
            panic_threshold: config.panic_threshold,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Balancer {
    RoundRobin(RoundRobin),
    WeightedRoundRobin(Edf),
    Random(WeightedRandom),
    LeastRequest,
    PeakEwma,
    RingHash(Ring),
    Maglev(Maglev),
}

impl Balancer {
    /// Builds the balancer's structures over `endpoints` (the ones it may pick).
    pub(crate) fn build(settings: &LbSettings, endpoints: &[Arc<Endpoint>]) -> Balancer {
        match settings.policy {
            LbPolicy::RoundRobin => Balancer::RoundRobin(RoundRobin::new(endpoints)),
            LbPolicy::WeightedRoundRobin => Balancer::WeightedRoundRobin(Edf::new(endpoints)),
            LbPolicy::Random => Balancer::Random(WeightedRandom::new(endpoints)),
            LbPolicy::LeastRequest => Balancer::LeastRequest,
            LbPolicy::PeakEwma => Balancer::PeakEwma,
            LbPolicy::RingHash => Balancer::RingHash(Ring::new(
                endpoints,
                settings.ring_size.0,
                settings.ring_size.1,
            )),
            LbPolicy::Maglev => Balancer::Maglev(Maglev::new(endpoints, settings.table_size)),
        }
    }

    /// `hash` is the request's hash for consistent-hash policies; without one
    /// they pick uniformly at random (the caller counts that fallback).
    pub(crate) fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        settings: &LbSettings,
        hash: Option<u64>,
    ) -> Option<&'a Arc<Endpoint>> {
        let slow_start = settings.slow_start.as_ref();
        let share =
            |e: &Endpoint| f64::from(e.weight.get()) * slow_start.map_or(1.0, |s| s.factor(e));
        match self {
            Balancer::RoundRobin(rr) => rr.pick(endpoints, slow_start),
            Balancer::WeightedRoundRobin(edf) => edf.pick(endpoints, slow_start),
            Balancer::Random(random) => random.pick(endpoints, slow_start),
            Balancer::LeastRequest => choices::pick(endpoints, settings.choice_count, |e| {
                (e.active_requests() as f64 + 1.0) / share(e)
            }),
            Balancer::PeakEwma => {
                let now = Instant::now();
                choices::pick(endpoints, settings.choice_count, |e| {
                    e.ewma.cost(now, settings.decay) * (e.active_requests() as f64 + 1.0) / share(e)
                })
            }
            Balancer::RingHash(ring) => match hash {
                Some(hash) => ring.pick(endpoints, hash),
                None => random::uniform(endpoints),
            },
            Balancer::Maglev(table) => match hash {
                Some(hash) => table.pick(endpoints, hash),
                None => random::uniform(endpoints),
            },
        }
    }
}

//! Load-balancer configuration: the policy, its parameters, the hash input
//! for consistent hashing, slow start and the panic threshold.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::scalar;

/// `load_balancer:` on a cluster. Parameters that do not belong to the
/// chosen policy are rejected when the config is compiled.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerConfig {
    #[serde(default)]
    pub policy: LbPolicy,
    /// `least_request` and `peak_ewma`: candidates compared per pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice_count: Option<u32>,
    /// `peak_ewma`: how fast old latency observations fade.
    #[schemars(with = "Option<scalar::DurationText>")]
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub decay: Option<Duration>,
    /// `peak_ewma`: the latency assumed for an endpoint not yet observed.
    #[schemars(with = "Option<scalar::DurationText>")]
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_rtt: Option<Duration>,
    /// `ring_hash`: entries on the ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_ring_size: Option<u64>,
    /// `maglev`: lookup-table size, a prime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
    /// `ring_hash` and `maglev`: what to hash (routes may override).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOnConfig>,
    /// Ramp new endpoints' share up over a window (`round_robin`,
    /// `weighted_round_robin`, `random`, `least_request`, `peak_ewma`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<SlowStartConfig>,
    /// Below this percentage of healthy endpoints, all endpoints are used.
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: u32,
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        LoadBalancerConfig {
            policy: LbPolicy::default(),
            choice_count: None,
            decay: None,
            default_rtt: None,
            minimum_ring_size: None,
            maximum_ring_size: None,
            table_size: None,
            hash_on: None,
            slow_start: None,
            panic_threshold: default_panic_threshold(),
        }
    }
}

fn default_panic_threshold() -> u32 {
    50
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each endpoint in turn; an endpoint of weight w gets w turns per cycle, interleaved.
    #[default]
    RoundRobin,
    /// nginx's smooth weighted round robin.
    WeightedRoundRobin,
    /// Weighted random.
    Random,
    /// Power of `choice_count` choices on active requests.
    LeastRequest,
    /// Power of `choice_count` choices on peak-EWMA latency × (active + 1).
    PeakEwma,
    /// Consistent hashing on a ring (ketama).
    RingHash,
    /// Consistent hashing with a Maglev lookup table.
    Maglev,
}

impl LbPolicy {
    pub fn is_hash_based(self) -> bool {
        matches!(self, LbPolicy::RingHash | LbPolicy::Maglev)
    }

    pub fn name(self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "round_robin",
            LbPolicy::WeightedRoundRobin => "weighted_round_robin",
            LbPolicy::Random => "random",
            LbPolicy::LeastRequest => "least_request",
            LbPolicy::PeakEwma => "peak_ewma",
            LbPolicy::RingHash => "ring_hash",
            LbPolicy::Maglev => "maglev",
        }
    }
}

/// Exactly one of: `{header: NAME}`, `{cookie: {name, ttl, path}}`,
/// `{source_ip: true}`, `{query: NAME}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashOnConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<HashCookieConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// Hash on a cookie; with `ttl`, a client without the cookie gets one, so it sticks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashCookieConfig {
    pub name: String,
    /// Set the cookie when absent, with this `Max-Age` (`0s`: a session cookie).
    #[schemars(with = "Option<scalar::DurationText>")]
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A new endpoint's share grows from `min_weight_percent` to full over
/// `window`, as (elapsed / window)^(1 / aggression).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlowStartConfig {
    #[schemars(with = "scalar::DurationText")]
    #[serde(with = "scalar::duration")]
    pub window: Duration,
    #[serde(default = "default_aggression")]
    pub aggression: f64,
    #[serde(default = "default_min_weight_percent")]
    pub min_weight_percent: u32,
}

fn default_aggression() -> f64 {
    1.0
}

fn default_min_weight_percent() -> u32 {
    10
}

//! A service's traffic policy: how its clients reach it.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::route::{Retry, Timeouts};
use crate::{
    CacheConfig, CircuitBreakersConfig, HealthCheckConfig, KeepaliveConfig, LoadBalancerConfig,
    OutlierDetectionConfig, PoolConfig, RateLimitConfig, scalar,
};

/// How clients of a service reach it (applied by every proxy that calls
/// it), plus `rate_limit`, applied by the service's own proxies to what
/// they let in.
///
/// In Kubernetes this is a `TrafficPolicy` object's `spec` (group
/// `remora.dev`, version `v1alpha1`), attached to Services by `targetRefs`
/// (Gateway API policy attachment, GEP-713); in a mesh file it is a
/// service's `policy:`, which needs no `targetRefs`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "remora.dev",
        version = "v1alpha1",
        kind = "TrafficPolicy",
        plural = "trafficpolicies",
        shortname = "rtp",
        category = "remora",
        namespaced,
        status = "crate::crd::PolicyStatus",
        doc = "How clients reach the Services it targets: load balancing, resilience, pools and caching (docs/kubernetes.md).",
        printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRefs[*].name"}"#,
        printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
        validation = kube::core::Rule::new("has(self.spec.targetRefs) && size(self.spec.targetRefs) > 0").message("spec.targetRefs: at least one Service is required").field_path(".spec.targetRefs"),
        validation = kube::core::Rule::new("!has(self.spec.targetRefs) || self.spec.targetRefs.all(r, r.kind == 'Service' && (!has(r.group) || r.group == ''))").message("spec.targetRefs: only Services (kind Service, group \"\") may be targeted").field_path(".spec.targetRefs"),
        validation = kube::core::Rule::new("!has(self.spec.load_balancer) || !has(self.spec.load_balancer.hash_on) || (has(self.spec.load_balancer.policy) && self.spec.load_balancer.policy in ['ring_hash', 'maglev'])").message("spec.load_balancer.hash_on: only for ring_hash and maglev").field_path(".spec.load_balancer.hash_on"),
        validation = kube::core::Rule::new("!has(self.spec.rate_limit) || !has(self.spec.rate_limit.key) || self.spec.rate_limit.key == 'none'").message("spec.rate_limit.key: over xDS a rate limit is one bucket per proxy").field_path(".spec.rate_limit.key"),
        validation = kube::core::Rule::new("!has(self.spec.health_check) || [has(self.spec.health_check.http), has(self.spec.health_check.grpc), has(self.spec.health_check.tcp)].filter(x, x).size() == 1").message("spec.health_check: exactly one of http, grpc, tcp").field_path(".spec.health_check"),
    )
)]
#[serde(deny_unknown_fields)]
pub struct TrafficPolicySpec {
    /// The Services the policy applies to (a `TrafficPolicy` object only;
    /// in a mesh file a service's policy is its own).
    #[schemars(length(max = 16))]
    #[serde(default, rename = "targetRefs", skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_connect_timeout", with = "scalar::duration")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub load_balancer: LoadBalancerConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionConfig>,
    #[serde(default)]
    pub circuit_breakers: CircuitBreakersConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub keepalive: KeepaliveConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// A response cache in every calling proxy, on each route to the
    /// service (the RPC framework's client request cache; docs/cache.md).
    /// remora-proxy only: Envoy ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheConfig>,
    /// Retries of calls to the service, for every route to it that sets
    /// none (the Gateway API's HTTPRoute `retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Timeouts of calls to the service, for every route to it that sets
    /// none (the Gateway API's HTTPRoute `timeouts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for TrafficPolicySpec {
    fn default() -> Self {
        TrafficPolicySpec {
            target_refs: Vec::new(),
            connect_timeout: default_connect_timeout(),
            load_balancer: LoadBalancerConfig::default(),
            outlier_detection: None,
            circuit_breakers: CircuitBreakersConfig::default(),
            pool: PoolConfig::default(),
            keepalive: KeepaliveConfig::default(),
            health_check: None,
            rate_limit: None,
            cache: None,
            retry: None,
            timeouts: None,
        }
    }
}

/// A Service a policy attaches to (the Gateway API's
/// `LocalPolicyTargetReference`, GEP-713): in the policy's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    /// `""`: the core API group, a Service's.
    #[schemars(length(max = 253))]
    #[serde(default)]
    pub group: String,
    /// Only `Service`.
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

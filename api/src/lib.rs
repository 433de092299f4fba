//! Remora's user-facing policy and route types, defined once.
//!
//! The proxy's YAML (`remora-proxy --config`), the control plane's mesh
//! file and the Kubernetes CRDs (`TrafficPolicy`, `AuthorizationPolicy`)
//! all read these types: the same field names, the same defaults, the same
//! field-path errors. The CRDs' OpenAPI schemas are generated from them
//! (schemars), so a schema never drifts from what the code accepts.
//!
//! Durations are written `250ms`, `2s`, `1m`, `1h` everywhere
//! ([`scalar::parse_duration`]).

pub mod authorization;
mod balancer;
mod cache;
#[cfg(feature = "crd")]
pub mod crd;
mod error;
pub mod identity;
mod network;
mod policy;
mod pool;
pub mod probe;
mod resilience;
pub mod route;
pub mod scalar;
#[cfg(feature = "watch")]
pub mod watch;
mod yaml;

pub use authorization::{
    AuthorizationAction, AuthorizationPolicyConfig, MtlsMode, ValueMatchConfig, check_authorization,
};
pub use balancer::{HashCookieConfig, HashOnConfig, LbPolicy, LoadBalancerConfig, SlowStartConfig};
pub use cache::{CacheConfig, CacheKeyConfig};
pub use error::{ConfigError, ConfigErrors};
pub use network::{Http2Config, Http2KeepaliveConfig, KeepaliveConfig, TcpKeepaliveConfig};
pub use policy::{TargetRef, TrafficPolicySpec};
pub use pool::PoolConfig;
pub use resilience::{
    AdaptiveConcurrencyConfig, BackoffConfig, BudgetConfig, CircuitBreakersConfig,
    ConnectionRateLimitConfig, FailurePercentageConfig, FaultAbortConfig, FaultConfig,
    FaultDelayConfig, GlobalFailure, GlobalRateLimitConfig, GrpcHealthCheckConfig,
    HealthCheckConfig, HttpHealthCheckConfig, OutlierDetectionConfig, RateLimitConfig, RetryConfig,
    RetryOn, StatusRange, SuccessRateConfig, TcpHealthCheckConfig,
};
pub use yaml::parse_yaml_as;

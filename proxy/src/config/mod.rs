//! The proxy's configuration as a user writes it: the YAML file's shape.
//!
//! These types only describe and parse. Semantic checks (references, duplicates,
//! regexes, header names) happen when a config is compiled into a
//! [`Snapshot`](crate::snapshot::Snapshot), which is also where every error gets
//! its field path. The data path never reads these types.

mod cluster;
mod listener;
mod load;
mod tracing;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use cluster::{
    ClusterConfig, ClusterMtlsConfig, DnsConfig, EndpointConfig, UpstreamProtocol,
    UpstreamTlsConfig,
};
pub use listener::{
    BackendRef, DEFAULT_DETECT_TIMEOUT, DEFAULT_OPAQUE_PORTS, DirectResponseConfig, Direction,
    HeaderEditsConfig, HeaderValueConfig, ListenerConfig, ListenerProtocol, ListenerTlsConfig,
    MatchConfig, RouteConfig, Unmatched,
};
pub use load::{EnvOverrides, load_file, parse_yaml};
pub use remora_api::probe::{
    AppProbeConfig, GrpcProbeConfig, HttpGetProbeConfig, ProbeHandler, ProbeHeader,
    TcpSocketProbeConfig,
};
pub use tracing::{OtlpConfig, OtlpProtocol, Propagation, TracingConfig};
// The policy types every config source shares (docs/configuration.md).
pub use remora_api::{
    AdaptiveConcurrencyConfig, AuthorizationAction, AuthorizationPolicyConfig, BackoffConfig,
    BudgetConfig, CacheConfig, CacheKeyConfig, CircuitBreakersConfig, ConfigError, ConfigErrors,
    ConnectionRateLimitConfig, FailurePercentageConfig, FaultAbortConfig, FaultConfig,
    FaultDelayConfig, GlobalFailure, GlobalRateLimitConfig, GrpcHealthCheckConfig,
    HashCookieConfig, HashOnConfig, HealthCheckConfig, Http2Config, Http2KeepaliveConfig,
    HttpHealthCheckConfig, KeepaliveConfig, LbPolicy, LoadBalancerConfig, MtlsMode,
    OutlierDetectionConfig, PoolConfig, RateLimitConfig, RetryConfig, RetryOn, SlowStartConfig,
    StatusRange, SuccessRateConfig, TcpHealthCheckConfig, TcpKeepaliveConfig, ValueMatchConfig,
    parse_yaml_as, scalar,
};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub admin: AdminConfig,
    /// Data-plane worker threads; absent means one per CPU core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<NonZeroUsize>,
    /// Downstream connections open at once over all listeners; a new one
    /// past it is closed on accept (each listener's own `max_connections`
    /// applies as well). Absent: no limit but the process's file
    /// descriptors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<NonZeroUsize>,
    /// How long in-flight requests get to finish on shutdown.
    #[serde(default = "default_drain_timeout", with = "scalar::duration")]
    pub drain_timeout: Duration,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConfig>,
    /// Distributed tracing: W3C / B3 propagation, sampling, OTLP export
    /// (docs/observability.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
    /// How `dns:` clusters are resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_resolver: Option<DnsResolverConfig>,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// Listeners and clusters from an xDS server (ADS), added to the ones above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds: Option<XdsConfig>,
    /// The proxy's workload certificate, from the mesh's CA (docs/security.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
    /// The application's HTTP probes, answered on the admin port at these
    /// paths (`/app-health/CONTAINER/livez|readyz|startupz`), so the kubelet
    /// reaches them through the proxy under strict mTLS. Kubernetes' probe
    /// shape: `{httpGet: {path, port, host, scheme, httpHeaders}, timeoutSeconds}`.
    /// `REMORA_APP_PROBES` (the same as JSON) replaces it. docs/operations.md.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub app_probes: std::collections::BTreeMap<String, AppProbeConfig>,
}

/// `identity:` — where the proxy gets the certificate for its SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// `HOST:PORT` of the CA's CertificateService (the control plane's
    /// xDS address).
    pub ca: String,
    /// The bootstrap token (`remora-control-plane token`), or a projected
    /// Kubernetes service-account token, re-read before every request, so
    /// it can be rotated in place.
    pub token_file: std::path::PathBuf,
    /// The certificate lifetime asked for (the CA may give less).
    #[serde(default = "default_cert_lifetime", with = "scalar::duration")]
    pub lifetime: Duration,
}

fn default_cert_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// `xds:` — where the proxy gets its dynamic config (docs/xds.md).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct XdsConfig {
    /// `HOST:PORT` of the ADS server (plaintext gRPC).
    pub address: String,
    /// This proxy's `node.id`; the server picks its resources by it.
    pub node_id: String,
    /// `node.cluster`: the service this proxy fronts (informational).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// Incremental (delta) xDS instead of state-of-the-world.
    #[serde(default)]
    pub delta: bool,
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The admin server: readiness, metrics, config dump, drain.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(with = "scalar::socket_addr")]
    pub address: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 15000)),
        }
    }
}

/// Process logs (not the access log).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, or directives like `info,remora_proxy=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_string()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One JSON line per HTTP request.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// A file to append to, or `-` / `/dev/stdout` / `/dev/stderr`.
    pub path: String,
}

/// The DNS resolver for `dns:` clusters. Absent: the system's
/// `/etc/resolv.conf` (nameservers, search domains, options).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsResolverConfig {
    /// `IP:PORT` of each nameserver, asked over UDP (and TCP for large answers).
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// Per query attempt.
    #[serde(default = "default_dns_timeout", with = "scalar::duration")]
    pub timeout: Duration,
    #[serde(default = "default_dns_attempts")]
    pub attempts: u32,
}

fn default_dns_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_dns_attempts() -> u32 {
    2
}

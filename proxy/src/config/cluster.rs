//! Cluster configuration: a named set of upstream endpoints and how to talk to them.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::scalar::{default_true, is_default};
use super::{
    CircuitBreakersConfig, HealthCheckConfig, Http2Config, KeepaliveConfig, LoadBalancerConfig,
    OutlierDetectionConfig, PoolConfig, scalar,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    /// Static endpoints; or use `dns`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointConfig>,
    /// Endpoints from DNS: every A/AAAA record of the name, at the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints (an external service; docs/security.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
    /// Mutual TLS to mesh endpoints with the proxy's identity, accepting
    /// only servers that present one of these identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<ClusterMtlsConfig>,
    #[serde(default = "default_connect_timeout", with = "scalar::duration")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub load_balancer: LoadBalancerConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default, skip_serializing_if = "is_default")]
    pub keepalive: KeepaliveConfig,
    #[serde(default, skip_serializing_if = "is_default")]
    pub http2: Http2Config,
    #[serde(default = "default_true")]
    pub tcp_nodelay: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionConfig>,
    /// A concurrency limit that follows the upstream's latency
    /// (docs/resilience.md); `{}` for the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_concurrency: Option<crate::config::AdaptiveConcurrencyConfig>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub circuit_breakers: CircuitBreakersConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Which HTTP version the proxy speaks to the cluster's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c); gRPC needs this or `same_as_downstream`.
    Http2,
    SameAsDownstream,
}

/// Mutual TLS to a cluster in the mesh.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMtlsConfig {
    /// The SPIFFE IDs the endpoints may present (one at least).
    pub identities: Vec<String>,
}

/// TLS origination: how the proxy talks TLS to a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// The server name sent (SNI) and checked in the endpoint's certificate.
    pub sni: String,
    /// The roots the endpoints' certificates must chain to (PEM); absent:
    /// the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// `false` accepts any certificate (for tests only; logged).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub verify: bool,
}

fn is_true(value: &bool) -> bool {
    *value
}

/// `api.internal:8080`, or `{address: api.internal:8080, min_refresh: 1s, max_refresh: 5m}`.
/// The name is re-resolved when its records' TTL runs out, but not sooner
/// than `min_refresh` nor later than `max_refresh`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsConfig {
    /// `NAME:PORT`.
    pub address: String,
    #[serde(with = "scalar::duration")]
    pub min_refresh: Duration,
    #[serde(with = "scalar::duration")]
    pub max_refresh: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsFields {
    address: String,
    #[serde(default = "default_min_refresh", with = "scalar::duration")]
    min_refresh: Duration,
    #[serde(default = "default_max_refresh", with = "scalar::duration")]
    max_refresh: Duration,
}

fn default_min_refresh() -> Duration {
    Duration::from_secs(5)
}

fn default_max_refresh() -> Duration {
    Duration::from_secs(300)
}

impl<'de> Deserialize<'de> for DnsConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar::string_or_map(
            d,
            "NAME:PORT, or {address: NAME:PORT, min_refresh, max_refresh}",
            |address| {
                Ok(DnsConfig {
                    address: address.to_string(),
                    min_refresh: default_min_refresh(),
                    max_refresh: default_max_refresh(),
                })
            },
            |f: DnsFields| DnsConfig {
                address: f.address,
                min_refresh: f.min_refresh,
                max_refresh: f.max_refresh,
            },
        )
    }
}

/// `127.0.0.1:8081` or `{address: 127.0.0.1:8082, weight: 3}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointConfig {
    #[serde(with = "scalar::socket_addr")]
    pub address: SocketAddr,
    pub weight: NonZeroU32,
}

impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar::string_or_map(
            d,
            "an endpoint: IP:PORT, or {address: IP:PORT, weight: N}",
            |text| {
                Ok(EndpointConfig {
                    address: scalar::parse_socket_addr(text)?,
                    weight: default_weight(),
                })
            },
            |f: EndpointFields| EndpointConfig {
                address: f.address,
                weight: f.weight,
            },
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFields {
    #[serde(with = "scalar::socket_addr")]
    address: SocketAddr,
    #[serde(default = "default_weight")]
    weight: NonZeroU32,
}

fn default_weight() -> NonZeroU32 {
    NonZeroU32::MIN
}

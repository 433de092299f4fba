//! Cluster configuration: a named set of upstream endpoints and how to talk to them.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::scalar;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default = "default_connect_timeout", with = "scalar::duration")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub load_balancer: LoadBalancerConfig,
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

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerConfig {
    #[serde(default)]
    pub policy: LbPolicy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each endpoint in turn; an endpoint of weight w gets w turns per cycle, interleaved.
    #[default]
    RoundRobin,
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
        d.deserialize_any(EndpointVisitor)
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

struct EndpointVisitor;

impl<'de> Visitor<'de> for EndpointVisitor {
    type Value = EndpointConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an endpoint: IP:PORT, or {address: IP:PORT, weight: N}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointConfig, E> {
        let address = scalar::parse_socket_addr(v).map_err(E::custom)?;
        Ok(EndpointConfig {
            address,
            weight: default_weight(),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointConfig, A::Error> {
        let fields = EndpointFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(EndpointConfig {
            address: fields.address,
            weight: fields.weight,
        })
    }
}

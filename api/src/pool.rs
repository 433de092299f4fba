//! Connections per endpoint: the pool a cluster keeps.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::scalar;

/// Connections per endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Connections (busy or idle) per endpoint; requests beyond wait for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Idle HTTP/1.1 connections kept per endpoint.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: u32,
    /// An idle connection is closed after this long (`0s`: never).
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_idle_timeout", with = "scalar::duration")]
    pub idle_timeout: Duration,
    /// A connection is retired after this many requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// A connection is retired after this long, once its requests finish.
    #[schemars(with = "Option<scalar::DurationText>")]
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connection_age: Option<Duration>,
    /// Connections opened ahead of traffic when an endpoint appears.
    #[serde(default)]
    pub min_idle: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections: None,
            max_idle_per_endpoint: default_max_idle(),
            idle_timeout: default_idle_timeout(),
            max_requests_per_connection: None,
            max_connection_age: None,
            min_idle: 0,
        }
    }
}

fn default_max_idle() -> u32 {
    1024
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

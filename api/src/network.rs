//! Connection tuning shared by listeners (downstream) and clusters
//! (upstream): TCP and HTTP/2 keepalive, HTTP/2 flow control and stream limits.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, scalar};

/// `keepalive: {tcp: {...}, http2: {...}}`; each part is off unless given.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpKeepaliveConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<Http2KeepaliveConfig>,
}

/// TCP keepalive probes (`SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepaliveConfig {
    /// Idle time before the first probe.
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_tcp_time", with = "scalar::duration")]
    pub time: Duration,
    /// Time between probes.
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_tcp_interval", with = "scalar::duration")]
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    #[serde(default = "default_tcp_probes")]
    pub probes: u32,
}

fn default_tcp_time() -> Duration {
    Duration::from_secs(60)
}

fn default_tcp_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_tcp_probes() -> u32 {
    3
}

/// HTTP/2 PING: sent every `interval`; no answer within `timeout` closes the connection.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http2KeepaliveConfig {
    #[schemars(with = "scalar::DurationText")]
    #[serde(with = "scalar::duration")]
    pub interval: Duration,
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_ping_timeout", with = "scalar::duration")]
    pub timeout: Duration,
}

fn default_ping_timeout() -> Duration {
    Duration::from_secs(20)
}

/// HTTP/2 settings this side advertises and obeys.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http2Config {
    /// Streams at once on one connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    /// Flow-control window per stream, in bytes (65,535 to 2^31-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_stream_window_size: Option<u32>,
    /// Flow-control window per connection, in bytes (65,535 to 2^31-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_connection_window_size: Option<u32>,
}

/// The largest HTTP/2 flow-control window (RFC 9113 §6.9.1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

impl Http2Config {
    pub fn check(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.max_concurrent_streams == Some(0) {
            errors.push(ConfigError::new(
                format!("{path}.max_concurrent_streams"),
                "must be at least 1",
            ));
        }
        for (field, value) in [
            (
                "initial_stream_window_size",
                self.initial_stream_window_size,
            ),
            (
                "initial_connection_window_size",
                self.initial_connection_window_size,
            ),
        ] {
            if let Some(value) = value
                && !(65_535..=MAX_WINDOW).contains(&value)
            {
                errors.push(ConfigError::new(
                    format!("{path}.{field}"),
                    format!("{value} is outside 65535..={MAX_WINDOW}"),
                ));
            }
        }
    }
}

impl Http2KeepaliveConfig {
    pub fn check(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.interval.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.interval"),
                "must be greater than 0",
            ));
        }
        if self.timeout.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.timeout"),
                "must be greater than 0",
            ));
        }
    }
}

impl KeepaliveConfig {
    pub fn check(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if let Some(tcp) = &self.tcp {
            if tcp.time.as_secs() == 0 || tcp.interval.as_secs() == 0 {
                errors.push(ConfigError::new(
                    format!("{path}.tcp"),
                    "time and interval must be at least 1s (the kernel counts whole seconds)",
                ));
            }
            if tcp.probes == 0 {
                errors.push(ConfigError::new(
                    format!("{path}.tcp.probes"),
                    "must be at least 1",
                ));
            }
        }
        if let Some(http2) = &self.http2 {
            http2.check(&format!("{path}.http2"), errors);
        }
    }
}

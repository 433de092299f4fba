//! `tracing:` — distributed tracing: which trace headers are read and
//! written, how new traces are sampled, and where spans go (OTLP).
//! docs/observability.md.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::scalar;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Where spans are exported.
    pub otlp: OtlpConfig,
    /// The share of new traces sampled (0.0 to 1.0). A request that
    /// carries a sampling decision keeps it.
    #[serde(default = "default_sampling")]
    pub sampling: f64,
    /// The trace header formats written upstream, in order: `w3c`
    /// (`traceparent`, `tracestate`), `b3` (the single `b3` header),
    /// `b3_multi` (`x-b3-*`). All three are read.
    #[serde(default = "default_propagation")]
    pub propagation: Vec<Propagation>,
    /// A request with this header is sampled whatever `sampling` says (for
    /// debugging); empty: none.
    #[serde(default = "default_force_header")]
    pub force_sample_header: String,
    /// The resource's `service.name`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// More resource attributes (`service.namespace`, `k8s.pod.name`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource: BTreeMap<String, String>,
    /// Spans waiting for export at most; more are dropped (and counted).
    #[serde(default = "default_max_queue")]
    pub max_queue_spans: usize,
    /// Spans per export request at most.
    #[serde(default = "default_max_batch")]
    pub max_batch_spans: usize,
    /// A batch is sent after this long even if not full.
    #[serde(default = "default_batch_timeout", with = "scalar::duration")]
    pub batch_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// `http://HOST:PORT` (gRPC, usually port 4317) or
    /// `http://HOST:PORT/v1/traces` (HTTP/protobuf, usually port 4318).
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// One export request's deadline.
    #[serde(default = "default_export_timeout", with = "scalar::duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    #[default]
    Grpc,
    HttpProtobuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    W3c,
    B3,
    B3Multi,
}

impl TracingConfig {
    /// Every problem, by field path under `at`.
    pub fn check(&self, at: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut problem = |field: &str, message: String| {
            errors.push(ConfigError::new(format!("{at}.{field}"), message));
        };
        if !(0.0..=1.0).contains(&self.sampling) {
            problem(
                "sampling",
                format!("{} is not a share between 0.0 and 1.0", self.sampling),
            );
        }
        match self.otlp.endpoint.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
                if uri.port_u16().is_none() {
                    problem(
                        "otlp.endpoint",
                        format!(
                            "{:?} needs a port (4317 for gRPC, 4318 for HTTP)",
                            self.otlp.endpoint
                        ),
                    );
                }
            }
            _ => problem(
                "otlp.endpoint",
                format!(
                    "{:?} is not an http://HOST:PORT URL (https is not supported: export to a collector on the node or in the pod)",
                    self.otlp.endpoint
                ),
            ),
        }
        if self.otlp.timeout.is_zero() {
            problem("otlp.timeout", "must be greater than 0".into());
        }
        if self.propagation.is_empty() {
            problem(
                "propagation",
                "list at least one of w3c, b3, b3_multi".into(),
            );
        }
        if !self.force_sample_header.is_empty()
            && http::HeaderName::from_bytes(self.force_sample_header.as_bytes()).is_err()
        {
            problem(
                "force_sample_header",
                format!("{:?} is not a header name", self.force_sample_header),
            );
        }
        if self.service_name.is_empty() {
            problem("service_name", "must not be empty".into());
        }
        if self.max_queue_spans == 0 {
            problem("max_queue_spans", "must be at least 1".into());
        }
        if self.max_batch_spans == 0 {
            problem("max_batch_spans", "must be at least 1".into());
        }
        if self.batch_timeout.is_zero() {
            problem("batch_timeout", "must be greater than 0".into());
        }
        errors
    }
}

fn default_sampling() -> f64 {
    0.01
}

fn default_propagation() -> Vec<Propagation> {
    vec![Propagation::W3c]
}

fn default_force_header() -> String {
    "x-remora-force-trace".to_string()
}

fn default_service_name() -> String {
    "remora-proxy".to_string()
}

fn default_max_queue() -> usize {
    4096
}

fn default_max_batch() -> usize {
    512
}

fn default_batch_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_export_timeout() -> Duration {
    Duration::from_secs(5)
}

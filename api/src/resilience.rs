//! Resilience configuration: retries, outlier detection, circuit breakers,
//! active health checks, rate limits and fault injection.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::scalar;

/// `retry:` on a route.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first try (as in Istio and the Gateway API).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Statuses retried under `retriable-status-codes`.
    #[serde(default = "default_retriable_status_codes")]
    pub retriable_status_codes: Vec<u16>,
    /// Bounds each try until its response headers.
    #[schemars(with = "Option<scalar::DurationText>")]
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub backoff: BackoffConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    /// Retry POST, PATCH and other non-idempotent requests after they reached the upstream.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// A request body up to this size is kept for retries; a larger one is not retried.
    #[serde(default = "default_buffer_limit")]
    pub buffer_limit_bytes: u64,
}

fn default_attempts() -> u32 {
    2
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::RefusedStream,
        RetryOn::Unavailable,
        RetryOn::Cancelled,
        RetryOn::RetriableStatusCodes,
    ]
}

fn default_retriable_status_codes() -> Vec<u16> {
    vec![503]
}

fn default_buffer_limit() -> u64 {
    64 * 1024
}

/// The conditions a try is retried on (Envoy's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx, and no response at all (connect failure, reset, per-try timeout).
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503, 504, and no response at all.
    GatewayError,
    /// No response: the connection was reset or closed, or the per-try timeout fired.
    Reset,
    /// The connection could not be made (the request was never sent).
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM (the request was never processed).
    RefusedStream,
    /// 409 Conflict.
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    /// Any status in `retriable_status_codes`.
    RetriableStatusCodes,
    /// gRPC statuses: `grpc-status` of a trailers-only response, or of
    /// trailers that come before any message.
    Cancelled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_backoff_base", with = "scalar::duration")]
    pub base: Duration,
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_backoff_max", with = "scalar::duration")]
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

fn default_backoff_base() -> Duration {
    Duration::from_millis(25)
}

fn default_backoff_max() -> Duration {
    Duration::from_millis(250)
}

/// Retries may add at most `percent` of the requests of the last 10 s, plus
/// `min_per_second` (as Linkerd's and Finagle's retry budgets).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    #[serde(default = "default_budget_percent")]
    pub percent: f64,
    #[serde(default = "default_budget_min")]
    pub min_per_second: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            percent: default_budget_percent(),
            min_per_second: default_budget_min(),
        }
    }
}

fn default_budget_percent() -> f64 {
    20.0
}

fn default_budget_min() -> u32 {
    10
}

/// `adaptive_concurrency:` on a cluster: a concurrency limit that follows
/// the upstream's latency (Envoy's gradient controller; docs/resilience.md).
/// `{}` takes every default.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConcurrencyConfig {
    /// How often the limit is recomputed from the latencies of the window.
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_sample_interval", with = "scalar::duration")]
    pub sample_interval: Duration,
    /// Which percentile of a window's (and a minRTT measurement's)
    /// latencies stands for it, 1–100.
    #[serde(default = "default_percentile")]
    pub percentile: f64,
    /// How often the ideal latency (minRTT) is measured again.
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_min_rtt_interval", with = "scalar::duration")]
    pub min_rtt_interval: Duration,
    /// Requests a minRTT measurement takes.
    #[serde(default = "default_min_rtt_requests")]
    pub min_rtt_requests: u32,
    /// Random delay added to `min_rtt_interval`, percent of it (0–100).
    #[serde(default = "default_min_rtt_jitter")]
    pub min_rtt_jitter: f64,
    /// The limit while minRTT is measured, and its floor.
    #[serde(default = "default_min_concurrency")]
    pub min_concurrency: u32,
    /// The ceiling of the limit.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Latency above minRTT still taken as ideal, percent of minRTT.
    #[serde(default = "default_buffer")]
    pub buffer: f64,
    /// A fixed minRTT instead of measuring it (the limit never drops to
    /// `min_concurrency` to measure).
    #[schemars(with = "Option<scalar::DurationText>")]
    #[serde(
        default,
        with = "scalar::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub fixed_min_rtt: Option<Duration>,
}

fn default_sample_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_percentile() -> f64 {
    50.0
}
fn default_min_rtt_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_min_rtt_requests() -> u32 {
    50
}
fn default_min_rtt_jitter() -> f64 {
    10.0
}
fn default_min_concurrency() -> u32 {
    3
}
fn default_max_concurrency() -> u32 {
    1000
}
fn default_buffer() -> f64 {
    25.0
}

impl AdaptiveConcurrencyConfig {
    /// Errors by field under `at`.
    pub fn check(&self, at: &str, errors: &mut Vec<crate::ConfigError>) {
        let mut err = |field: &str, message: String| {
            errors.push(crate::ConfigError::new(format!("{at}.{field}"), message))
        };
        if self.sample_interval < Duration::from_millis(1) {
            err("sample_interval", "must be at least 1ms".into());
        }
        if self.min_rtt_interval < Duration::from_secs(1) {
            err("min_rtt_interval", "must be at least 1s".into());
        }
        if !(self.percentile > 0.0 && self.percentile <= 100.0) {
            err(
                "percentile",
                format!("{} is outside (0, 100]", self.percentile),
            );
        }
        if !(0.0..=100.0).contains(&self.min_rtt_jitter) {
            err(
                "min_rtt_jitter",
                format!("{} is outside 0..=100", self.min_rtt_jitter),
            );
        }
        if !(self.buffer >= 0.0 && self.buffer <= 1000.0) {
            err("buffer", format!("{} is outside 0..=1000", self.buffer));
        }
        if self.min_rtt_requests == 0 {
            err("min_rtt_requests", "must be at least 1".into());
        }
        if self.min_concurrency == 0 {
            err("min_concurrency", "must be at least 1".into());
        }
        if self.fixed_min_rtt.is_some_and(|d| d.is_zero()) {
            err("fixed_min_rtt", "must be greater than 0".into());
        }
        if self.max_concurrency < self.min_concurrency {
            err(
                "max_concurrency",
                format!(
                    "{} is below min_concurrency {}",
                    self.max_concurrency, self.min_concurrency
                ),
            );
        }
    }
}

/// `outlier_detection:` on a cluster. Detectors left out are off, except
/// `consecutive_5xx`, which defaults to 5 (`0` turns it off).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionConfig {
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_failure: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failure: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRateConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage: Option<FailurePercentageConfig>,
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_outlier_interval", with = "scalar::duration")]
    pub interval: Duration,
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_base_ejection", with = "scalar::duration")]
    pub base_ejection_time: Duration,
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_max_ejection", with = "scalar::duration")]
    pub max_ejection_time: Duration,
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_consecutive_5xx() -> u32 {
    5
}

fn default_outlier_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}

fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}

fn default_max_ejection_percent() -> u32 {
    10
}

/// Ejects endpoints whose success rate in an interval is more than
/// `stdev_factor` standard deviations below the cluster's mean.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuccessRateConfig {
    #[serde(default = "default_sr_hosts")]
    pub minimum_hosts: u32,
    #[serde(default = "default_sr_volume")]
    pub request_volume: u32,
    #[serde(default = "default_stdev_factor")]
    pub stdev_factor: f64,
}

fn default_sr_hosts() -> u32 {
    5
}

fn default_sr_volume() -> u32 {
    100
}

fn default_stdev_factor() -> f64 {
    1.9
}

/// Ejects endpoints whose failure percentage in an interval reaches `threshold`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailurePercentageConfig {
    #[serde(default = "default_fp_threshold")]
    pub threshold: u32,
    #[serde(default = "default_sr_hosts")]
    pub minimum_hosts: u32,
    #[serde(default = "default_fp_volume")]
    pub request_volume: u32,
}

fn default_fp_threshold() -> u32 {
    85
}

fn default_fp_volume() -> u32 {
    50
}

/// `circuit_breakers:` on a cluster; each limit is off unless set. Over a
/// limit, a request gets 503 at once with `x-remora-overloaded: true`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakersConfig {
    /// Connections to all the cluster's endpoints together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Retries in flight to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// `health_check:` on a cluster: exactly one of `http`, `grpc`, `tcp`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheckConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheckConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheckConfig>,
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_hc_interval", with = "scalar::duration")]
    pub interval: Duration,
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_hc_timeout", with = "scalar::duration")]
    pub timeout: Duration,
    /// Up to this much is added to each interval at random, so checks from
    /// many proxies do not arrive together.
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_hc_jitter", with = "scalar::duration")]
    pub jitter: Duration,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
}

fn default_hc_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_hc_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_hc_jitter() -> Duration {
    Duration::from_secs(1)
}

fn default_unhealthy_threshold() -> u32 {
    3
}

fn default_healthy_threshold() -> u32 {
    2
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheckConfig {
    pub path: String,
    /// Statuses that pass: codes (`200`) or ranges (`"200-399"`); default 200–299.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<StatusRange>,
    /// `Host` of the check request; default the cluster's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// `200` or `"200-399"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StatusRange {
    Code(u16),
    Range(String),
}

/// An integer or a string, as Kubernetes' `IntOrString`.
impl JsonSchema for StatusRange {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StatusRange".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
        })
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StatusRange;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a status code such as 200, or a range such as \"200-399\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusRange, E> {
                u16::try_from(v)
                    .map(StatusRange::Code)
                    .map_err(|_| E::custom(format!("{v} is not a status code")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusRange, E> {
                match v.parse::<u16>() {
                    Ok(code) => Ok(StatusRange::Code(code)),
                    Err(_) => Ok(StatusRange::Range(v.to_string())),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcHealthCheckConfig {
    /// The service name sent in `grpc.health.v1.HealthCheckRequest` ("" = the whole server).
    #[serde(default)]
    pub service: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheckConfig {}

/// `rate_limit:` on a route or an HTTP listener: a token bucket per key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_second: f64,
    /// Requests admitted at once after a quiet spell; default: one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `none` (one bucket for all), `source_ip`, `header:NAME`, or `peer_identity`.
    #[serde(default = "default_rate_key")]
    pub key: String,
    /// Share the limit between proxies: the buckets live in Redis
    /// (docs/resilience.md#global-rate-limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalRateLimitConfig>,
}

/// `rate_limit.global:` the limit's buckets in Redis, shared by every proxy
/// with the same listener (and route) names.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalRateLimitConfig {
    /// `redis://HOST:PORT/DB` (`rediss://` for TLS is not built).
    pub redis: String,
    /// How long a request may wait for Redis before the `failure` verdict.
    #[schemars(with = "scalar::DurationText")]
    #[serde(default = "default_global_timeout", with = "scalar::duration")]
    pub timeout: Duration,
    /// When Redis cannot be asked: `open` admits (the local limit still
    /// applies), `closed` answers 429.
    #[serde(default)]
    pub failure: GlobalFailure,
    /// The buckets' name in Redis: limits with the same name share them.
    /// Absent: `listener/NAME` or `route/LISTENER/ROUTE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GlobalFailure {
    #[default]
    Open,
    Closed,
}

fn default_global_timeout() -> Duration {
    Duration::from_millis(5)
}

fn default_rate_key() -> String {
    "none".to_string()
}

/// `connection_rate_limit:` on a listener: new connections per second.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRateLimitConfig {
    pub connections_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// `fault:` on a route, for chaos testing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelayConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbortConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelayConfig {
    #[schemars(with = "scalar::DurationText")]
    #[serde(with = "scalar::duration")]
    pub duration: Duration,
    #[serde(default = "default_fault_percent")]
    pub percent: f64,
}

/// Exactly one of `status` (HTTP) and `grpc_status`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbortConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    #[serde(default = "default_fault_percent")]
    pub percent: f64,
}

fn default_fault_percent() -> f64 {
    100.0
}

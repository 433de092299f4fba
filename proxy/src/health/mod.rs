//! Active health checks: every `interval` (plus up to `jitter`), each
//! endpoint of the cluster is checked, over a new connection so the check
//! also proves the endpoint accepts connections:
//!
//! - `http`: `GET path` with `Host: host`; passes on an expected status
//!   (HTTP/2 with prior knowledge for `http2` clusters, else HTTP/1.1);
//! - `grpc`: `grpc.health.v1.Health/Check` for `service`; passes on `SERVING`;
//! - `tcp`: the connection opens.
//!
//! `unhealthy_threshold` failures in a row take an endpoint out of the
//! balancer; `healthy_threshold` passes in a row bring it back. Both are
//! logged. Endpoints start healthy, so a proxy serves at once after start.

mod probe;

use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics::Counter;

use crate::config::{ConfigError, HealthCheckConfig, StatusRange, UpstreamProtocol};
use crate::endpoint::Endpoint;
use crate::telemetry::{self, Telemetry};

pub(crate) use probe::Probe;

#[derive(Debug)]
pub(crate) struct HealthChecker {
    probe: Probe,
    interval: Duration,
    pub timeout: Duration,
    jitter: Duration,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
    failures_total: Counter,
}

impl HealthChecker {
    pub(crate) fn compile(
        config: &HealthCheckConfig,
        cluster: &str,
        protocol: UpstreamProtocol,
        path: &str,
        telemetry: &Telemetry,
        errors: &mut Vec<ConfigError>,
    ) -> Option<HealthChecker> {
        let before = errors.len();
        let given = usize::from(config.http.is_some())
            + usize::from(config.grpc.is_some())
            + usize::from(config.tcp.is_some());
        if given != 1 {
            errors.push(ConfigError::new(
                path,
                "exactly one of http, grpc and tcp must be set",
            ));
        }
        for (field, value) in [("interval", config.interval), ("timeout", config.timeout)] {
            if value.is_zero() {
                errors.push(ConfigError::new(
                    format!("{path}.{field}"),
                    "must be greater than 0",
                ));
            }
        }
        if !config.interval.is_zero() && config.timeout > config.interval {
            errors.push(ConfigError::new(
                format!("{path}.timeout"),
                "must not be longer than the interval",
            ));
        }
        for (field, value) in [
            ("unhealthy_threshold", config.unhealthy_threshold),
            ("healthy_threshold", config.healthy_threshold),
        ] {
            if value == 0 {
                errors.push(ConfigError::new(
                    format!("{path}.{field}"),
                    "must be at least 1",
                ));
            }
        }
        let probe = if let Some(http) = &config.http {
            if !http.path.starts_with('/') {
                errors.push(ConfigError::new(
                    format!("{path}.http.path"),
                    format!("{:?} must start with /", http.path),
                ));
            }
            let host = http.host.clone().unwrap_or_else(|| cluster.to_string());
            if http::HeaderValue::from_str(&host).is_err() {
                errors.push(ConfigError::new(
                    format!("{path}.http.host"),
                    format!("{host:?} is not a valid Host"),
                ));
            }
            let statuses = compile_statuses(
                &http.expected_statuses,
                &format!("{path}.http.expected_statuses"),
                errors,
            );
            Probe::Http {
                path: http.path.clone(),
                host,
                statuses,
                http2: protocol == UpstreamProtocol::Http2,
            }
        } else if let Some(grpc) = &config.grpc {
            Probe::Grpc {
                service: grpc.service.clone(),
            }
        } else {
            Probe::Tcp
        };
        (errors.len() == before).then(|| HealthChecker {
            probe,
            interval: config.interval,
            timeout: config.timeout,
            jitter: config.jitter,
            unhealthy_threshold: config.unhealthy_threshold,
            healthy_threshold: config.healthy_threshold,
            failures_total: telemetry.counter(
                telemetry::HEALTH_CHECK_FAILURES_TOTAL,
                &[("cluster", cluster)],
            ),
        })
    }

    /// How long to wait before the next round of checks.
    pub(crate) fn next_wait(&self) -> Duration {
        self.interval + self.jitter.mul_f64(crate::rand::unit())
    }

    /// Checks one endpoint and folds the result into its run of passes or
    /// failures; a run that crosses its threshold calls `set_health`, which
    /// answers whether the endpoint was still in the cluster.
    pub(crate) async fn check_one(
        &self,
        cluster: &str,
        endpoint: &Endpoint,
        set_health: impl FnOnce(bool) -> bool,
    ) {
        let result =
            match tokio::time::timeout(self.timeout, self.probe.run(endpoint.address)).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "no answer within {}",
                    crate::config::scalar::format_duration(self.timeout)
                )),
            };
        let state = &endpoint.checks;
        match result {
            Ok(()) => {
                state.failures.store(0, Ordering::Relaxed);
                let passes = state.passes.fetch_add(1, Ordering::Relaxed) + 1;
                if endpoint.is_check_failed()
                    && passes >= self.healthy_threshold
                    && set_health(true)
                {
                    tracing::info!(%cluster, endpoint = %endpoint.address, passes, "endpoint passes its health checks again");
                }
            }
            Err(reason) => {
                self.failures_total.increment(1);
                state.passes.store(0, Ordering::Relaxed);
                let failures = state.failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(%cluster, endpoint = %endpoint.address, %reason, "health check failed");
                if !endpoint.is_check_failed()
                    && failures >= self.unhealthy_threshold
                    && set_health(false)
                {
                    tracing::warn!(
                        %cluster, endpoint = %endpoint.address, failures, %reason,
                        "endpoint failed its health checks; taken out of the balancer"
                    );
                }
            }
        }
    }
}

fn compile_statuses(
    given: &[StatusRange],
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Box<[(u16, u16)]> {
    if given.is_empty() {
        return Box::new([(200, 299)]);
    }
    let mut ranges = Vec::with_capacity(given.len());
    for (i, status) in given.iter().enumerate() {
        let range = match status {
            StatusRange::Code(code) => Some((*code, *code)),
            StatusRange::Range(text) => text
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?))),
        };
        match range {
            Some((low, high)) if (100..=599).contains(&low) && low <= high && high <= 599 => {
                ranges.push((low, high))
            }
            _ => errors.push(ConfigError::new(
                format!("{path}[{i}]"),
                "expected a status code (200) or a range of them (\"200-399\")",
            )),
        }
    }
    ranges.into()
}

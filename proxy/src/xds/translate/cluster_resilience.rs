//! A cluster's resilience settings from Envoy: circuit breakers (with
//! Envoy's defaults of 1,024 connections, pending and active requests, and
//! 3 retries), outlier detection, and active health checks.

use std::time::Duration;

use remora_xds_proto::cluster::{self, Cluster};
use remora_xds_proto::{core, protobuf};

use super::{Rejection, Result, opt_duration, u32v};
use crate::config::{
    CircuitBreakersConfig, FailurePercentageConfig, GrpcHealthCheckConfig, HealthCheckConfig,
    HttpHealthCheckConfig, OutlierDetectionConfig, StatusRange, SuccessRateConfig,
    TcpHealthCheckConfig,
};

/// Envoy's default for each circuit-breaker threshold but retries.
const ENVOY_LIMIT: u32 = 1024;
const ENVOY_MAX_RETRIES: u32 = 3;

pub(super) fn circuit_breakers(c: &Cluster) -> Result<CircuitBreakersConfig> {
    let default = cluster::circuit_breakers::Thresholds::default();
    let thresholds = c
        .circuit_breakers
        .as_ref()
        .and_then(|b| {
            b.thresholds
                .iter()
                .find(|t| t.priority == core::RoutingPriority::Default as i32)
        })
        .unwrap_or(&default);
    if thresholds.retry_budget.is_some() {
        return Err(Rejection::unsupported(
            "circuit_breakers.thresholds.retry_budget",
            "a retry budget per cluster",
        ));
    }
    // Envoy's defaults apply to what is left out; u32::MAX means no limit.
    let limit = |v: &Option<protobuf::UInt32Value>, default: u32| {
        let value = v.as_ref().map_or(default, |v| v.value);
        (value != u32::MAX).then_some(value)
    };
    Ok(CircuitBreakersConfig {
        max_connections: limit(&thresholds.max_connections, ENVOY_LIMIT),
        max_pending_requests: limit(&thresholds.max_pending_requests, ENVOY_LIMIT),
        max_requests: limit(&thresholds.max_requests, ENVOY_LIMIT),
        max_retries: limit(&thresholds.max_retries, ENVOY_MAX_RETRIES),
    })
}

pub(super) fn outlier_detection(o: &cluster::OutlierDetection) -> Result<OutlierDetectionConfig> {
    // Only all-or-nothing enforcement can be honoured.
    let enforced = |v: &Option<protobuf::UInt32Value>, default: u32, field: &str| -> Result<bool> {
        match v.as_ref().map_or(default, |v| v.value) {
            0 => Ok(false),
            100 => Ok(true),
            _ => Err(Rejection::unsupported(
                field,
                "an enforcement percentage other than 0 or 100",
            )),
        }
    };
    let mut config: OutlierDetectionConfig = super::defaults!(OutlierDetectionConfig, "{}");
    config.consecutive_5xx = if enforced(
        &o.enforcing_consecutive_5xx,
        100,
        "enforcing_consecutive_5xx",
    )? {
        u32v(&o.consecutive_5xx).unwrap_or(5)
    } else {
        0
    };
    config.consecutive_gateway_failure = enforced(
        &o.enforcing_consecutive_gateway_failure,
        0,
        "enforcing_consecutive_gateway_failure",
    )?
    .then(|| u32v(&o.consecutive_gateway_failure).unwrap_or(5));
    config.consecutive_local_origin_failure = (o.split_external_local_origin_errors
        && enforced(
            &o.enforcing_consecutive_local_origin_failure,
            100,
            "enforcing_consecutive_local_origin_failure",
        )?)
    .then(|| u32v(&o.consecutive_local_origin_failure).unwrap_or(5));
    if o.enforcing_local_origin_success_rate
        .as_ref()
        .is_some_and(|v| v.value != 0)
        && o.split_external_local_origin_errors
    {
        return Err(Rejection::unsupported(
            "enforcing_local_origin_success_rate",
            "a separate local-origin success rate",
        ));
    }
    config.success_rate =
        enforced(&o.enforcing_success_rate, 100, "enforcing_success_rate")?.then(|| {
            SuccessRateConfig {
                minimum_hosts: u32v(&o.success_rate_minimum_hosts).unwrap_or(5),
                request_volume: u32v(&o.success_rate_request_volume).unwrap_or(100),
                stdev_factor: f64::from(u32v(&o.success_rate_stdev_factor).unwrap_or(1900))
                    / 1000.0,
            }
        });
    config.failure_percentage = enforced(
        &o.enforcing_failure_percentage,
        0,
        "enforcing_failure_percentage",
    )?
    .then(|| FailurePercentageConfig {
        threshold: u32v(&o.failure_percentage_threshold).unwrap_or(85),
        minimum_hosts: u32v(&o.failure_percentage_minimum_hosts).unwrap_or(5),
        request_volume: u32v(&o.failure_percentage_request_volume).unwrap_or(50),
    });
    if let Some(d) = opt_duration(&o.interval, "interval")? {
        config.interval = d;
    }
    if let Some(d) = opt_duration(&o.base_ejection_time, "base_ejection_time")? {
        config.base_ejection_time = d;
    }
    if let Some(d) = opt_duration(&o.max_ejection_time, "max_ejection_time")? {
        config.max_ejection_time = d;
    }
    if let Some(p) = u32v(&o.max_ejection_percent) {
        config.max_ejection_percent = p;
    }
    Ok(config)
}

pub(super) fn health_check(h: &core::HealthCheck) -> Result<HealthCheckConfig> {
    use core::health_check::HealthChecker;
    let required = |d: &Option<protobuf::Duration>, field: &str| -> Result<Duration> {
        opt_duration(d, field)?.ok_or_else(|| Rejection::new(field, "required"))
    };
    let mut config = HealthCheckConfig {
        http: None,
        grpc: None,
        tcp: None,
        interval: required(&h.interval, "interval")?,
        timeout: required(&h.timeout, "timeout")?,
        jitter: opt_duration(&h.interval_jitter, "interval_jitter")?.unwrap_or_default(),
        unhealthy_threshold: u32v(&h.unhealthy_threshold)
            .ok_or_else(|| Rejection::new("unhealthy_threshold", "required"))?,
        healthy_threshold: u32v(&h.healthy_threshold)
            .ok_or_else(|| Rejection::new("healthy_threshold", "required"))?,
    };
    if h.transport_socket_match_criteria.is_some() || h.tls_options.is_some() {
        return Err(Rejection::unsupported("tls_options", "TLS health checks"));
    }
    match &h.health_checker {
        Some(HealthChecker::HttpHealthCheck(http)) => {
            if !http.request_headers_to_add.is_empty() || !http.request_headers_to_remove.is_empty()
            {
                return Err(Rejection::unsupported(
                    "http_health_check.request_headers_to_add",
                    "header edits on health checks",
                ));
            }
            if http.method != 0 && http.method != core::RequestMethod::Get as i32 {
                return Err(Rejection::unsupported(
                    "http_health_check.method",
                    "a method other than GET",
                ));
            }
            if http.send.is_some() || !http.receive.is_empty() {
                return Err(Rejection::unsupported(
                    "http_health_check.receive",
                    "payload checks",
                ));
            }
            let expected_statuses = http
                .expected_statuses
                .iter()
                .map(|r| {
                    if r.end == r.start + 1 {
                        StatusRange::Code(r.start as u16)
                    } else {
                        StatusRange::Range(format!("{}-{}", r.start, r.end - 1))
                    }
                })
                .collect();
            if http.path.is_empty() {
                return Err(Rejection::new("http_health_check.path", "required"));
            }
            config.http = Some(HttpHealthCheckConfig {
                path: http.path.clone(),
                expected_statuses,
                host: (!http.host.is_empty()).then(|| http.host.clone()),
            });
        }
        Some(HealthChecker::GrpcHealthCheck(grpc)) => {
            config.grpc = Some(GrpcHealthCheckConfig {
                service: grpc.service_name.clone(),
            })
        }
        Some(HealthChecker::TcpHealthCheck(tcp)) => {
            if tcp.send.is_some() || !tcp.receive.is_empty() {
                return Err(Rejection::unsupported(
                    "tcp_health_check.send",
                    "payload checks",
                ));
            }
            config.tcp = Some(TcpHealthCheckConfig {});
        }
        Some(HealthChecker::CustomHealthCheck(custom)) => {
            return Err(Rejection::unsupported(
                "custom_health_check",
                &format!("the health checker {:?}", custom.name),
            ));
        }
        None => {
            return Err(Rejection::new(
                "http_health_check",
                "a health checker is required",
            ));
        }
    }
    Ok(config)
}

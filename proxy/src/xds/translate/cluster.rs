//! Cluster → `ClusterConfig`, and ClusterLoadAssignment → endpoints.
//!
//! Envoy's defaults are kept where they differ from the proxy's YAML
//! defaults: circuit breakers (1,024 connections, pending and active
//! requests, 3 retries) and outlier detection's success-rate detector, which
//! Envoy enforces unless `enforcing_success_rate` is 0.

use std::num::NonZeroU32;
use std::time::Duration;

use remora_xds_proto::cluster::{self, Cluster};
use remora_xds_proto::endpoint::{ClusterLoadAssignment, lb_endpoint};
use remora_xds_proto::{core, protobuf, upstream_http};

use super::{
    ClusterPart, Rejection, Result, ads_source, duration_or_none, ip_and_port, opt_duration,
    socket_address, u32v, unpack_typed,
};
use crate::config::{
    CircuitBreakersConfig, ClusterConfig, DnsConfig, EndpointConfig, FailurePercentageConfig,
    GrpcHealthCheckConfig, HealthCheckConfig, HttpHealthCheckConfig, KeepaliveConfig, LbPolicy,
    OutlierDetectionConfig, SlowStartConfig, StatusRange, SuccessRateConfig, TcpHealthCheckConfig,
    TcpKeepaliveConfig, UpstreamProtocol,
};

const HTTP_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const HTTP_OPTIONS: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Remora's settings that have no Envoy field (see the control plane).
const METADATA_KEY: &str = "remora";

/// Envoy's default for each circuit-breaker threshold but retries.
const ENVOY_LIMIT: u32 = 1024;
const ENVOY_MAX_RETRIES: u32 = 3;

pub fn cluster(c: &Cluster) -> Result<ClusterPart> {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType};
    if c.name.is_empty() {
        return Err(Rejection::new("name", "required"));
    }
    let mut config: ClusterConfig = super::defaults!(ClusterConfig, "{name: x}");
    config.name = c.name.clone();

    if c.transport_socket.is_some() || !c.transport_socket_matches.is_empty() {
        return Err(Rejection::unsupported(
            "transport_socket",
            "TLS to upstreams over xDS",
        ));
    }
    if c.lb_subset_config.is_some() {
        return Err(Rejection::unsupported(
            "lb_subset_config",
            "subset load balancing",
        ));
    }
    if c.load_balancing_policy.is_some() {
        return Err(Rejection::unsupported(
            "load_balancing_policy",
            "typed load-balancing policies (use lb_policy)",
        ));
    }
    if c.upstream_bind_config.is_some() {
        return Err(Rejection::unsupported(
            "upstream_bind_config",
            "a source address",
        ));
    }
    if !c.filters.is_empty() {
        return Err(Rejection::unsupported(
            "filters",
            "upstream network filters",
        ));
    }

    let eds = match &c.cluster_discovery_type {
        None => {
            // STATIC is the protobuf default.
            static_endpoints(c, &mut config)?;
            None
        }
        Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(*t) {
            Ok(DiscoveryType::Static) => {
                static_endpoints(c, &mut config)?;
                None
            }
            Ok(DiscoveryType::Eds) => {
                let eds = c.eds_cluster_config.as_ref();
                ads_source(
                    &eds.and_then(|e| e.eds_config.clone()),
                    "eds_cluster_config.eds_config",
                )?;
                let service = eds.map(|e| e.service_name.clone()).unwrap_or_default();
                Some(if service.is_empty() {
                    c.name.clone()
                } else {
                    service
                })
            }
            Ok(DiscoveryType::StrictDns) | Ok(DiscoveryType::LogicalDns) => {
                config.dns = Some(dns(c)?);
                None
            }
            Ok(DiscoveryType::OriginalDst) => {
                return Err(Rejection::unsupported("type", "ORIGINAL_DST clusters"));
            }
            Err(_) => {
                return Err(Rejection::new(
                    "type",
                    format!("unknown discovery type {t}"),
                ));
            }
        },
        Some(ClusterDiscoveryType::ClusterType(custom)) => {
            return Err(Rejection::unsupported(
                "cluster_type",
                &format!("the custom cluster type {:?}", custom.name),
            ));
        }
    };

    if let Some(timeout) = opt_duration(&c.connect_timeout, "connect_timeout")? {
        config.connect_timeout = timeout;
    }
    load_balancer(c, &mut config)?;
    config.circuit_breakers = circuit_breakers(c)?;
    config.outlier_detection = c
        .outlier_detection
        .as_ref()
        .map(|o| outlier_detection(o).map_err(|e| e.at("outlier_detection")))
        .transpose()?;
    config.health_check = match c.health_checks.as_slice() {
        [] => None,
        [check] => Some(health_check(check).map_err(|e| e.at("health_checks[0]"))?),
        _ => {
            return Err(Rejection::unsupported(
                "health_checks[1]",
                "more than one health check",
            ));
        }
    };
    if let Some(tcp) = c
        .upstream_connection_options
        .as_ref()
        .and_then(|o| o.tcp_keepalive.as_ref())
    {
        let defaults = TcpKeepaliveConfig {
            time: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            probes: 3,
        };
        config.keepalive.tcp = Some(TcpKeepaliveConfig {
            time: u32v(&tcp.keepalive_time)
                .map_or(defaults.time, |s| Duration::from_secs(s.into())),
            interval: u32v(&tcp.keepalive_interval)
                .map_or(defaults.interval, |s| Duration::from_secs(s.into())),
            probes: u32v(&tcp.keepalive_probes).unwrap_or(defaults.probes),
        });
    }
    #[allow(deprecated)]
    if let Some(max) = u32v(&c.max_requests_per_connection) {
        config.pool.max_requests_per_connection = Some(max);
    }
    #[allow(deprecated)]
    if let Some(h2) = &c.http2_protocol_options {
        config.protocol = UpstreamProtocol::Http2;
        http2(h2, &mut config).map_err(|e| e.at("http2_protocol_options"))?;
    }
    if let Some(options) = c.typed_extension_protocol_options.get(HTTP_OPTIONS_KEY) {
        http_options(options, &mut config).map_err(|e| {
            e.at(&format!(
                "typed_extension_protocol_options[{HTTP_OPTIONS_KEY:?}]"
            ))
        })?;
    }
    if let Some((key, _)) = c
        .typed_extension_protocol_options
        .iter()
        .find(|(k, _)| k.as_str() != HTTP_OPTIONS_KEY)
    {
        return Err(Rejection::unsupported(
            format!("typed_extension_protocol_options[{key:?}]"),
            "protocol options other than HttpProtocolOptions",
        ));
    }
    extras(c, &mut config)?;
    Ok(ClusterPart { config, eds })
}

fn static_endpoints(c: &Cluster, config: &mut ClusterConfig) -> Result<()> {
    let assignment = c
        .load_assignment
        .as_ref()
        .ok_or_else(|| Rejection::new("load_assignment", "required for a STATIC cluster"))?;
    config.endpoints = endpoints(assignment).map_err(|e| e.at("load_assignment"))?;
    Ok(())
}

/// STRICT_DNS / LOGICAL_DNS: one name and port, re-resolved on its TTL.
fn dns(c: &Cluster) -> Result<DnsConfig> {
    let assignment = c
        .load_assignment
        .as_ref()
        .ok_or_else(|| Rejection::new("load_assignment", "required for a DNS cluster"))?;
    let mut found = None;
    for (l, locality) in assignment.endpoints.iter().enumerate() {
        for (e, lb) in locality.lb_endpoints.iter().enumerate() {
            let at = format!("load_assignment.endpoints[{l}].lb_endpoints[{e}]");
            if found.is_some() {
                return Err(Rejection::unsupported(
                    at,
                    "more than one name in a DNS cluster",
                ));
            }
            let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier else {
                return Err(Rejection::new(format!("{at}.endpoint"), "required"));
            };
            let (host, port) = ip_and_port(&endpoint.address, &format!("{at}.endpoint.address"))?;
            found = Some(format!("{host}:{port}"));
        }
    }
    let address = found.ok_or_else(|| {
        Rejection::new("load_assignment.endpoints", "a name and port are required")
    })?;
    #[allow(deprecated)]
    let refresh =
        opt_duration(&c.dns_refresh_rate, "dns_refresh_rate")?.unwrap_or(Duration::from_secs(5));
    #[allow(deprecated)]
    let respect_ttl = c.respect_dns_ttl;
    Ok(DnsConfig {
        address,
        min_refresh: refresh,
        // Envoy re-resolves every dns_refresh_rate unless told to follow the TTL.
        max_refresh: if respect_ttl {
            Duration::from_secs(300).max(refresh)
        } else {
            refresh
        },
    })
}

pub fn endpoints(a: &ClusterLoadAssignment) -> Result<Vec<EndpointConfig>> {
    if let Some(policy) = &a.policy
        && !policy.drop_overloads.is_empty()
    {
        return Err(Rejection::unsupported(
            "policy.drop_overloads",
            "dropping overload",
        ));
    }
    if !a.named_endpoints.is_empty() {
        return Err(Rejection::unsupported("named_endpoints", "named endpoints"));
    }
    let mut out = Vec::new();
    for (l, locality) in a.endpoints.iter().enumerate() {
        let at = format!("endpoints[{l}]");
        if locality.priority != 0 {
            return Err(Rejection::unsupported(
                format!("{at}.priority"),
                "priorities other than 0 (failover)",
            ));
        }
        if locality.lb_config.is_some() {
            return Err(Rejection::unsupported(
                format!("{at}.leds_cluster_locality_config"),
                "LEDS",
            ));
        }
        for (e, lb) in locality.lb_endpoints.iter().enumerate() {
            let at = format!("{at}.lb_endpoints[{e}]");
            let endpoint = match &lb.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) => endpoint,
                Some(lb_endpoint::HostIdentifier::EndpointName(_)) => {
                    return Err(Rejection::unsupported(
                        format!("{at}.endpoint_name"),
                        "named endpoints",
                    ));
                }
                None => return Err(Rejection::new(format!("{at}.endpoint"), "required")),
            };
            if !endpoint.additional_addresses.is_empty() {
                return Err(Rejection::unsupported(
                    format!("{at}.endpoint.additional_addresses"),
                    "more than one address per endpoint",
                ));
            }
            // Envoy routes only to endpoints that are not known to be bad.
            let status = core::HealthStatus::try_from(lb.health_status)
                .unwrap_or(core::HealthStatus::Unknown);
            if matches!(
                status,
                core::HealthStatus::Unhealthy
                    | core::HealthStatus::Draining
                    | core::HealthStatus::Timeout
            ) {
                continue;
            }
            let address = socket_address(&endpoint.address, &format!("{at}.endpoint.address"))?;
            let weight = match u32v(&lb.load_balancing_weight) {
                None => NonZeroU32::MIN,
                Some(w) => NonZeroU32::new(w).ok_or_else(|| {
                    Rejection::new(format!("{at}.load_balancing_weight"), "must be at least 1")
                })?,
            };
            if out.iter().any(|e: &EndpointConfig| e.address == address) {
                return Err(Rejection::new(
                    at,
                    format!("the endpoint {address} is listed twice"),
                ));
            }
            out.push(EndpointConfig { address, weight });
        }
    }
    Ok(out)
}

fn load_balancer(c: &Cluster, config: &mut ClusterConfig) -> Result<()> {
    use cluster::cluster::{LbConfig, LbPolicy as Envoy};
    let lb = &mut config.load_balancer;
    lb.policy = match Envoy::try_from(c.lb_policy) {
        Ok(Envoy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(Envoy::LeastRequest) => LbPolicy::LeastRequest,
        Ok(Envoy::Random) => LbPolicy::Random,
        Ok(Envoy::RingHash) => LbPolicy::RingHash,
        Ok(Envoy::Maglev) => LbPolicy::Maglev,
        Ok(other) => {
            return Err(Rejection::unsupported(
                "lb_policy",
                &format!("the policy {}", other.as_str_name()),
            ));
        }
        Err(_) => {
            return Err(Rejection::new(
                "lb_policy",
                format!("unknown policy {}", c.lb_policy),
            ));
        }
    };
    let slow_start = |s: &Option<cluster::cluster::SlowStartConfig>,
                      at: &str|
     -> Result<Option<SlowStartConfig>> {
        let Some(s) = s else { return Ok(None) };
        let window = opt_duration(&s.slow_start_window, &format!("{at}.slow_start_window"))?
            .ok_or_else(|| Rejection::new(format!("{at}.slow_start_window"), "required"))?;
        Ok(Some(SlowStartConfig {
            window,
            aggression: s.aggression.as_ref().map_or(1.0, |a| a.default_value),
            min_weight_percent: s
                .min_weight_percent
                .as_ref()
                .map_or(10, |p| p.value.round() as u32),
        }))
    };
    match &c.lb_config {
        None => {}
        Some(LbConfig::RingHashLbConfig(r)) if lb.policy == LbPolicy::RingHash => {
            use cluster::cluster::ring_hash_lb_config::HashFunction;
            if r.hash_function != HashFunction::XxHash as i32 {
                return Err(Rejection::unsupported(
                    "ring_hash_lb_config.hash_function",
                    "MURMUR_HASH_2",
                ));
            }
            lb.minimum_ring_size = r.minimum_ring_size.as_ref().map(|v| v.value);
            lb.maximum_ring_size = r.maximum_ring_size.as_ref().map(|v| v.value);
        }
        Some(LbConfig::MaglevLbConfig(m)) if lb.policy == LbPolicy::Maglev => {
            lb.table_size = m.table_size.as_ref().map(|v| v.value);
        }
        Some(LbConfig::LeastRequestLbConfig(l)) if lb.policy == LbPolicy::LeastRequest => {
            if l.active_request_bias.is_some() {
                return Err(Rejection::unsupported(
                    "least_request_lb_config.active_request_bias",
                    "an active request bias",
                ));
            }
            lb.choice_count = u32v(&l.choice_count);
            lb.slow_start = slow_start(
                &l.slow_start_config,
                "least_request_lb_config.slow_start_config",
            )?;
        }
        Some(LbConfig::RoundRobinLbConfig(r)) if lb.policy == LbPolicy::RoundRobin => {
            lb.slow_start = slow_start(
                &r.slow_start_config,
                "round_robin_lb_config.slow_start_config",
            )?;
        }
        Some(_) => {
            return Err(Rejection::new(
                "lb_config",
                "does not belong to the cluster's lb_policy",
            ));
        }
    }
    if let Some(common) = &c.common_lb_config {
        if let Some(p) = &common.healthy_panic_threshold {
            lb.panic_threshold = p.value.round().clamp(0.0, 100.0) as u32;
        }
        if common.locality_config_specifier.is_some() {
            return Err(Rejection::unsupported(
                "common_lb_config.locality_weighted_lb_config",
                "zone-aware or locality-weighted balancing",
            ));
        }
    }
    Ok(())
}

fn circuit_breakers(c: &Cluster) -> Result<CircuitBreakersConfig> {
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

fn outlier_detection(o: &cluster::OutlierDetection) -> Result<OutlierDetectionConfig> {
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

fn health_check(h: &core::HealthCheck) -> Result<HealthCheckConfig> {
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

fn http_options(any: &protobuf::Any, config: &mut ClusterConfig) -> Result<()> {
    use upstream_http::http_protocol_options::UpstreamProtocolOptions;
    use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig;
    if any.type_url != HTTP_OPTIONS {
        return Err(Rejection::new(
            "",
            format!("expected {HTTP_OPTIONS}, found {}", any.type_url),
        ));
    }
    let options: upstream_http::HttpProtocolOptions = unpack_typed(any, "")?;
    if !options.http_filters.is_empty() {
        return Err(Rejection::unsupported(
            "http_filters",
            "upstream HTTP filters",
        ));
    }
    if let Some(common) = &options.common_http_protocol_options {
        if let Some(idle) = opt_duration(
            &common.idle_timeout,
            "common_http_protocol_options.idle_timeout",
        )? {
            config.pool.idle_timeout = idle;
        }
        if let Some(max) = u32v(&common.max_requests_per_connection) {
            config.pool.max_requests_per_connection = Some(max);
        }
        config.pool.max_connection_age = opt_duration(
            &common.max_connection_duration,
            "common_http_protocol_options.max_connection_duration",
        )?
        .and_then(duration_or_none);
    }
    match &options.upstream_protocol_options {
        None => {}
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) => {
            match &explicit.protocol_config {
                Some(ProtocolConfig::HttpProtocolOptions(_)) | None => {
                    config.protocol = UpstreamProtocol::Http1
                }
                Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                    config.protocol = UpstreamProtocol::Http2;
                    http2(h2, config)
                        .map_err(|e| e.at("explicit_http_config.http2_protocol_options"))?;
                }
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(Rejection::unsupported(
                        "explicit_http_config.http3_protocol_options",
                        "HTTP/3",
                    ));
                }
            }
        }
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(d)) => {
            config.protocol = UpstreamProtocol::SameAsDownstream;
            if let Some(h2) = &d.http2_protocol_options {
                http2(h2, config)
                    .map_err(|e| e.at("use_downstream_protocol_config.http2_protocol_options"))?;
            }
        }
        Some(UpstreamProtocolOptions::AutoConfig(_)) => {
            // Without TLS (ALPN) Envoy's auto config speaks HTTP/1.1.
            config.protocol = UpstreamProtocol::Http1;
        }
    }
    Ok(())
}

fn http2(h2: &core::Http2ProtocolOptions, config: &mut ClusterConfig) -> Result<()> {
    let (http2, keepalive) = super::listener::http2_options(h2)?;
    config.http2 = http2;
    config.keepalive = KeepaliveConfig {
        tcp: config.keepalive.tcp.take(),
        http2: keepalive,
    };
    Ok(())
}

/// `metadata.filter_metadata["remora"].extras`: a JSON object with
/// `load_balancer` (policy, decay, default_rtt) and `pool` (max_connections,
/// max_idle_per_endpoint, min_idle) for what Envoy has no field for.
fn extras(c: &Cluster, config: &mut ClusterConfig) -> Result<()> {
    let Some(text) = c
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(METADATA_KEY))
        .and_then(|s| s.fields.get("extras"))
        .and_then(|v| match &v.kind {
            Some(protobuf::value::Kind::StringValue(s)) => Some(s),
            _ => None,
        })
    else {
        return Ok(());
    };
    let at = "metadata.filter_metadata[\"remora\"].extras";
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Extras {
        #[serde(default)]
        load_balancer: Option<LbExtras>,
        #[serde(default)]
        pool: Option<PoolExtras>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LbExtras {
        policy: LbPolicy,
        #[serde(default, with = "crate::config::scalar::duration::option")]
        decay: Option<Duration>,
        #[serde(default, with = "crate::config::scalar::duration::option")]
        default_rtt: Option<Duration>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PoolExtras {
        max_connections: Option<u32>,
        max_idle_per_endpoint: Option<u32>,
        min_idle: Option<u32>,
    }
    let extras: Extras =
        serde_json::from_str(text).map_err(|e| Rejection::new(at, e.to_string()))?;
    if let Some(lb) = extras.load_balancer {
        let from = config.load_balancer.policy;
        let compatible = matches!(
            (lb.policy, from),
            (LbPolicy::PeakEwma, LbPolicy::LeastRequest)
                | (LbPolicy::WeightedRoundRobin, LbPolicy::RoundRobin)
        ) || lb.policy == from;
        if !compatible {
            return Err(Rejection::new(
                at,
                format!(
                    "load_balancer.policy {} does not refine lb_policy {}",
                    lb.policy.name(),
                    from.name()
                ),
            ));
        }
        config.load_balancer.policy = lb.policy;
        config.load_balancer.decay = lb.decay;
        config.load_balancer.default_rtt = lb.default_rtt;
        if lb.policy == LbPolicy::WeightedRoundRobin {
            // Slow start is honoured; choice_count belongs to least_request only.
            config.load_balancer.choice_count = None;
        }
    }
    if let Some(pool) = extras.pool {
        config.pool.max_connections = pool.max_connections;
        if let Some(max) = pool.max_idle_per_endpoint {
            config.pool.max_idle_per_endpoint = max;
        }
        config.pool.min_idle = pool.min_idle.unwrap_or(0);
    }
    Ok(())
}

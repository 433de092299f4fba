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

use super::cluster_resilience::{circuit_breakers, health_check, outlier_detection};
use super::{
    ClusterPart, Rejection, Result, ads_source, duration_or_none, ip_and_port, opt_duration,
    socket_address, u32v, unpack_typed,
};
use crate::config::{
    ClusterConfig, DnsConfig, EndpointConfig, KeepaliveConfig, LbPolicy, SlowStartConfig,
    TcpKeepaliveConfig, UpstreamProtocol,
};

const HTTP_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const HTTP_OPTIONS: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Remora's settings that have no Envoy field (see the control plane).
const METADATA_KEY: &str = "remora";

pub(crate) fn cluster(c: &Cluster) -> Result<ClusterPart> {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType};
    if c.name.is_empty() {
        return Err(Rejection::new("name", "required"));
    }
    let mut config: ClusterConfig = super::defaults!(ClusterConfig, "{name: x}");
    config.name = c.name.clone();

    if !c.transport_socket_matches.is_empty() {
        return Err(Rejection::unsupported(
            "transport_socket_matches",
            "transport socket matching",
        ));
    }
    if let Some(socket) = &c.transport_socket {
        config.mtls = Some(super::tls::upstream(socket, "transport_socket")?);
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
                // Connections go to their own original destination; only a
                // capture listener's TCP proxy may name it (`xds/state.rs`).
                return Ok(ClusterPart {
                    config,
                    eds: None,
                    original_dst: true,
                });
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
    Ok(ClusterPart {
        config,
        eds,
        original_dst: false,
    })
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

pub(crate) fn endpoints(a: &ClusterLoadAssignment) -> Result<Vec<EndpointConfig>> {
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

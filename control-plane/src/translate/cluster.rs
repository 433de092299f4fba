//! A service's Cluster and ClusterLoadAssignment, from its traffic policy.
//!
//! Policy fields map onto Envoy's own fields wherever Envoy has one; the few
//! settings Envoy has no field for (the `peak_ewma` and
//! `weighted_round_robin` policy names, per-endpoint pool sizes) travel in
//! the cluster's `metadata.filter_metadata["remora"]`, which Envoy ignores.

use remora_api::{LbPolicy, StatusRange};
use remora_xds_proto::cluster::{self, CircuitBreakers, Cluster, OutlierDetection};
use remora_xds_proto::endpoint::{self, ClusterLoadAssignment};
use remora_xds_proto::{core, protobuf, upstream_http};

use super::wire::{address, ads, duration, percent, u32v, u64v};
use crate::mesh::{Service, ServiceProtocol};

/// The key of Remora's settings in a cluster's `filter_metadata`.
pub const METADATA_KEY: &str = "remora";

/// The `typed_extension_protocol_options` key for upstream HTTP options.
pub const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub fn cluster(service: &Service) -> Cluster {
    let policy = &service.policy;
    let lb = &policy.load_balancer;
    let mut out = Cluster {
        name: super::cluster_name(service),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(duration(policy.connect_timeout)),
        lb_policy: match lb.policy {
            LbPolicy::RoundRobin | LbPolicy::WeightedRoundRobin => {
                cluster::cluster::LbPolicy::RoundRobin
            }
            LbPolicy::Random => cluster::cluster::LbPolicy::Random,
            LbPolicy::LeastRequest | LbPolicy::PeakEwma => cluster::cluster::LbPolicy::LeastRequest,
            LbPolicy::RingHash => cluster::cluster::LbPolicy::RingHash,
            LbPolicy::Maglev => cluster::cluster::LbPolicy::Maglev,
        } as i32,
        common_lb_config: Some(cluster::cluster::CommonLbConfig {
            healthy_panic_threshold: Some(percent(f64::from(lb.panic_threshold))),
            ..Default::default()
        }),
        circuit_breakers: Some(circuit_breakers(service)),
        outlier_detection: policy.outlier_detection.as_ref().map(outlier_detection),
        health_checks: policy.health_check.iter().map(health_check).collect(),
        upstream_connection_options: policy.keepalive.tcp.as_ref().map(|tcp| {
            cluster::UpstreamConnectionOptions {
                tcp_keepalive: Some(core::TcpKeepalive {
                    keepalive_probes: Some(u32v(tcp.probes)),
                    keepalive_time: Some(u32v(tcp.time.as_secs() as u32)),
                    keepalive_interval: Some(u32v(tcp.interval.as_secs() as u32)),
                }),
                ..Default::default()
            }
        }),
        ..Default::default()
    };
    let slow_start = lb
        .slow_start
        .as_ref()
        .map(|s| cluster::cluster::SlowStartConfig {
            slow_start_window: Some(duration(s.window)),
            aggression: Some(core::RuntimeDouble {
                default_value: s.aggression,
                runtime_key: String::new(),
            }),
            min_weight_percent: Some(percent(f64::from(s.min_weight_percent))),
        });
    out.lb_config = match lb.policy {
        LbPolicy::RingHash => Some(cluster::cluster::LbConfig::RingHashLbConfig(
            cluster::cluster::RingHashLbConfig {
                minimum_ring_size: lb.minimum_ring_size.map(u64v),
                maximum_ring_size: lb.maximum_ring_size.map(u64v),
                ..Default::default()
            },
        )),
        LbPolicy::Maglev => lb.table_size.map(|size| {
            cluster::cluster::LbConfig::MaglevLbConfig(cluster::cluster::MaglevLbConfig {
                table_size: Some(u64v(size)),
            })
        }),
        LbPolicy::LeastRequest | LbPolicy::PeakEwma => {
            Some(cluster::cluster::LbConfig::LeastRequestLbConfig(
                cluster::cluster::LeastRequestLbConfig {
                    choice_count: lb.choice_count.map(u32v),
                    slow_start_config: slow_start,
                    ..Default::default()
                },
            ))
        }
        LbPolicy::RoundRobin | LbPolicy::WeightedRoundRobin => slow_start.map(|s| {
            cluster::cluster::LbConfig::RoundRobinLbConfig(cluster::cluster::RoundRobinLbConfig {
                slow_start_config: Some(s),
            })
        }),
        LbPolicy::Random => None,
    };
    if service.protocol.is_http() {
        out.typed_extension_protocol_options
            .insert(HTTP_OPTIONS.to_string(), http_options(service));
    }
    if let Some(json) = remora_extras(service) {
        out.metadata = Some(remora_metadata(json));
    }
    out
}

/// `filter_metadata["remora"].extras`: settings with no Envoy field, as
/// one JSON string so the encoding stays deterministic.
pub fn remora_metadata(json: String) -> core::Metadata {
    core::Metadata {
        filter_metadata: [(
            METADATA_KEY.to_string(),
            protobuf::Struct {
                fields: [(
                    "extras".to_string(),
                    protobuf::Value {
                        kind: Some(protobuf::value::Kind::StringValue(json)),
                    },
                )]
                .into(),
            },
        )]
        .into(),
        ..Default::default()
    }
}

/// A cluster's extras: `{"load_balancer": {...}, "pool": {...}}`.
fn remora_extras(service: &Service) -> Option<String> {
    let policy = &service.policy;
    let lb = &policy.load_balancer;
    let mut extras = serde_json::Map::new();
    if matches!(lb.policy, LbPolicy::PeakEwma | LbPolicy::WeightedRoundRobin) {
        let mut fields = serde_json::Map::new();
        fields.insert("policy".into(), lb.policy.name().into());
        if let Some(decay) = lb.decay {
            fields.insert("decay".into(), format_duration(decay).into());
        }
        if let Some(rtt) = lb.default_rtt {
            fields.insert("default_rtt".into(), format_duration(rtt).into());
        }
        extras.insert("load_balancer".into(), fields.into());
    }
    let pool = &policy.pool;
    let defaults = remora_api::PoolConfig::default();
    let mut fields = serde_json::Map::new();
    if let Some(max) = pool.max_connections {
        fields.insert("max_connections".into(), max.into());
    }
    if pool.max_idle_per_endpoint != defaults.max_idle_per_endpoint {
        fields.insert(
            "max_idle_per_endpoint".into(),
            pool.max_idle_per_endpoint.into(),
        );
    }
    if pool.min_idle != 0 {
        fields.insert("min_idle".into(), pool.min_idle.into());
    }
    if !fields.is_empty() {
        extras.insert("pool".into(), fields.into());
    }
    if extras.is_empty() {
        return None;
    }
    Some(serde_json::Value::Object(extras).to_string())
}

fn format_duration(d: std::time::Duration) -> String {
    remora_api::scalar::format_duration(d)
}

fn http_options(service: &Service) -> protobuf::Any {
    use upstream_http::http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    };
    let pool = &service.policy.pool;
    let common = core::HttpProtocolOptions {
        idle_timeout: Some(duration(pool.idle_timeout)),
        max_requests_per_connection: pool.max_requests_per_connection.map(u32v),
        max_connection_duration: pool.max_connection_age.map(duration),
        ..Default::default()
    };
    let protocol = match service.protocol {
        ServiceProtocol::Http2 | ServiceProtocol::Grpc => {
            ProtocolConfig::Http2ProtocolOptions(core::Http2ProtocolOptions {
                connection_keepalive: service.policy.keepalive.http2.as_ref().map(|k| {
                    core::KeepaliveSettings {
                        interval: Some(duration(k.interval)),
                        timeout: Some(duration(k.timeout)),
                        ..Default::default()
                    }
                }),
                ..Default::default()
            })
        }
        _ => ProtocolConfig::HttpProtocolOptions(core::Http1ProtocolOptions::default()),
    };
    remora_xds_proto::pack(&upstream_http::HttpProtocolOptions {
        common_http_protocol_options: Some(common),
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(protocol),
            },
        )),
        ..Default::default()
    })
}

/// An unset limit is written as the largest value, so Envoy (whose default
/// for each is 1,024) leaves it off, as Remora does.
fn circuit_breakers(service: &Service) -> CircuitBreakers {
    let limits = &service.policy.circuit_breakers;
    let or_max = |v: Option<u32>| Some(u32v(v.unwrap_or(u32::MAX)));
    CircuitBreakers {
        thresholds: vec![cluster::circuit_breakers::Thresholds {
            priority: core::RoutingPriority::Default as i32,
            max_connections: or_max(limits.max_connections),
            max_pending_requests: or_max(limits.max_pending_requests),
            max_requests: or_max(limits.max_requests),
            max_retries: or_max(limits.max_retries),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn outlier_detection(config: &remora_api::OutlierDetectionConfig) -> OutlierDetection {
    let on = Some(u32v(100));
    let off = Some(u32v(0));
    OutlierDetection {
        consecutive_5xx: Some(u32v(config.consecutive_5xx)),
        enforcing_consecutive_5xx: if config.consecutive_5xx > 0 { on } else { off },
        consecutive_gateway_failure: config.consecutive_gateway_failure.map(u32v),
        enforcing_consecutive_gateway_failure: if config.consecutive_gateway_failure.is_some() {
            on
        } else {
            off
        },
        split_external_local_origin_errors: config.consecutive_local_origin_failure.is_some(),
        consecutive_local_origin_failure: config.consecutive_local_origin_failure.map(u32v),
        enforcing_consecutive_local_origin_failure: if config
            .consecutive_local_origin_failure
            .is_some()
        {
            on
        } else {
            off
        },
        enforcing_success_rate: if config.success_rate.is_some() {
            on
        } else {
            off
        },
        success_rate_minimum_hosts: config.success_rate.as_ref().map(|s| u32v(s.minimum_hosts)),
        success_rate_request_volume: config.success_rate.as_ref().map(|s| u32v(s.request_volume)),
        success_rate_stdev_factor: config
            .success_rate
            .as_ref()
            .map(|s| u32v((s.stdev_factor * 1000.0).round() as u32)),
        enforcing_failure_percentage: if config.failure_percentage.is_some() {
            on
        } else {
            off
        },
        failure_percentage_threshold: config
            .failure_percentage
            .as_ref()
            .map(|f| u32v(f.threshold)),
        failure_percentage_minimum_hosts: config
            .failure_percentage
            .as_ref()
            .map(|f| u32v(f.minimum_hosts)),
        failure_percentage_request_volume: config
            .failure_percentage
            .as_ref()
            .map(|f| u32v(f.request_volume)),
        interval: Some(duration(config.interval)),
        base_ejection_time: Some(duration(config.base_ejection_time)),
        max_ejection_time: Some(duration(config.max_ejection_time)),
        max_ejection_percent: Some(u32v(config.max_ejection_percent)),
        ..Default::default()
    }
}

fn health_check(config: &remora_api::HealthCheckConfig) -> core::HealthCheck {
    use core::health_check::{GrpcHealthCheck, HealthChecker, HttpHealthCheck, TcpHealthCheck};
    let checker = if let Some(http) = &config.http {
        HealthChecker::HttpHealthCheck(HttpHealthCheck {
            path: http.path.clone(),
            host: http.host.clone().unwrap_or_default(),
            expected_statuses: http
                .expected_statuses
                .iter()
                .filter_map(|s| match s {
                    StatusRange::Code(code) => Some(remora_xds_proto::types::Int64Range {
                        start: i64::from(*code),
                        end: i64::from(*code) + 1,
                    }),
                    StatusRange::Range(text) => {
                        let (a, b) = text.split_once('-')?;
                        Some(remora_xds_proto::types::Int64Range {
                            start: a.trim().parse().ok()?,
                            end: b.trim().parse::<i64>().ok()? + 1,
                        })
                    }
                })
                .collect(),
            ..Default::default()
        })
    } else if let Some(grpc) = &config.grpc {
        HealthChecker::GrpcHealthCheck(GrpcHealthCheck {
            service_name: grpc.service.clone(),
            ..Default::default()
        })
    } else {
        HealthChecker::TcpHealthCheck(TcpHealthCheck::default())
    };
    core::HealthCheck {
        timeout: Some(duration(config.timeout)),
        interval: Some(duration(config.interval)),
        interval_jitter: Some(duration(config.jitter)),
        unhealthy_threshold: Some(u32v(config.unhealthy_threshold)),
        healthy_threshold: Some(u32v(config.healthy_threshold)),
        health_checker: Some(checker),
        ..Default::default()
    }
}

pub fn load_assignment(service: &Service) -> ClusterLoadAssignment {
    // One locality per zone, in first-seen order; endpoints without a zone share one.
    let mut localities: Vec<endpoint::LocalityLbEndpoints> = Vec::new();
    for e in &service.endpoints {
        let zone = e.zone.clone().unwrap_or_default();
        let lb_endpoint = endpoint::LbEndpoint {
            load_balancing_weight: Some(u32v(e.weight)),
            host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                endpoint::Endpoint {
                    address: Some(address(e.address)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        match localities
            .iter_mut()
            .find(|l| l.locality.as_ref().map(|l| l.zone.as_str()).unwrap_or("") == zone)
        {
            Some(locality) => locality.lb_endpoints.push(lb_endpoint),
            None => localities.push(endpoint::LocalityLbEndpoints {
                locality: (!zone.is_empty()).then(|| core::Locality {
                    zone: zone.clone(),
                    ..Default::default()
                }),
                lb_endpoints: vec![lb_endpoint],
                ..Default::default()
            }),
        }
    }
    ClusterLoadAssignment {
        cluster_name: super::cluster_name(service),
        endpoints: localities,
        ..Default::default()
    }
}

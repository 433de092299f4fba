//! Listeners: one per outbound entry (the workload calls a service) and one
//! per inbound entry (traffic for the workload), with an inbound route
//! configuration and a static cluster pointing at the workload. A sidecar
//! (`capture: true`) also gets the two capture listeners and their
//! original-destination clusters, and its other listeners bind no socket.

use std::net::SocketAddr;
use std::sync::Arc;

use remora_api::MtlsMode;
use remora_xds_proto::filters::{
    http_connection_manager as hcm, local_ratelimit, router, tcp_proxy,
};
use remora_xds_proto::listener::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, listener_filter,
};
use remora_xds_proto::route::{self, Route, RouteAction, RouteConfiguration, VirtualHost};
use remora_xds_proto::{cluster, core, endpoint, protobuf, type_url, types};

use super::wire::{address, ads, duration, u32v};
use super::{Resource, cluster_name};
use crate::mesh::{CAPTURE_INBOUND_PORT, CAPTURE_OUTBOUND_PORT, Inbound, MeshTracing, Service};

/// The HTTP filter name Envoy registers the local rate limit under.
pub const LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";

pub fn outbound_name(listen: SocketAddr) -> String {
    format!("outbound|{listen}")
}

/// The workload's listener for a service at `listen`; a sidecar's binds no
/// socket and is reached through the outbound capture listener.
pub fn outbound(
    service: &Service,
    listen: SocketAddr,
    sidecar: bool,
    tracing: Option<&MeshTracing>,
) -> Listener {
    let name = outbound_name(listen);
    let filter = if service.protocol.is_http() {
        http_filter(&name, &super::route::route_name(service), false)
    } else {
        tcp_filter(&name, &cluster_name(service))
    };
    let mut out = listener(name, listen, filter);
    if sidecar {
        out.bind_to_port = Some(protobuf::BoolValue { value: false });
        out.traffic_direction = core::TrafficDirection::Outbound as i32;
    }
    if let Some(tracing) = tracing {
        traced(&mut out, tracing, &format!("client-of-{}", service.key()));
    }
    out
}

const OPENTELEMETRY_TRACER: &str = "envoy.tracers.opentelemetry";

/// Puts the mesh's OpenTelemetry tracer on every HTTP connection manager
/// of `listener`: spans to the collector's cluster over gRPC, new traces
/// sampled at the mesh's share.
fn traced(listener: &mut Listener, tracing: &MeshTracing, service_name: &str) {
    use remora_xds_proto::trace_config::{OpenTelemetryConfig, tracing::Http};
    let provider = Http {
        name: OPENTELEMETRY_TRACER.into(),
        config_type: Some(
            remora_xds_proto::trace_config::tracing::http::ConfigType::TypedConfig(
                remora_xds_proto::pack(&OpenTelemetryConfig {
                    grpc_service: Some(core::GrpcService {
                        target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                            core::grpc_service::EnvoyGrpc {
                                cluster_name: crate::mesh::COLLECTOR_CLUSTER.into(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }),
                    service_name: service_name.into(),
                    ..Default::default()
                }),
            ),
        ),
    };
    for chain in &mut listener.filter_chains {
        for filter in &mut chain.filters {
            let Some(remora_xds_proto::listener::filter::ConfigType::TypedConfig(any)) =
                &mut filter.config_type
            else {
                continue;
            };
            let Ok(mut manager) = remora_xds_proto::unpack::<hcm::HttpConnectionManager>(any)
            else {
                continue;
            };
            manager.tracing = Some(hcm::http_connection_manager::Tracing {
                random_sampling: Some(super::wire::percent(tracing.sampling * 100.0)),
                provider: Some(provider.clone()),
                ..Default::default()
            });
            *any = remora_xds_proto::pack(&manager);
        }
    }
}

/// The original-destination cluster a sidecar's capture listeners pass
/// unclaimed connections through.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// The same for inbound connections (to the application).
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";

/// A sidecar's capture listeners (Envoy's `virtualOutbound` and
/// `virtualInbound`): `use_original_dst` hands each connection to the
/// listener of its original destination; what none claims goes through an
/// ORIGINAL_DST cluster to where it was headed.
pub fn capture() -> Vec<(&'static str, Arc<Resource>)> {
    let mut out = Vec::new();
    for (name, port, direction, cluster) in [
        (
            "outbound|capture",
            CAPTURE_OUTBOUND_PORT,
            core::TrafficDirection::Outbound,
            PASSTHROUGH_CLUSTER,
        ),
        (
            "inbound|capture",
            CAPTURE_INBOUND_PORT,
            core::TrafficDirection::Inbound,
            INBOUND_PASSTHROUGH_CLUSTER,
        ),
    ] {
        let at = SocketAddr::from(([0, 0, 0, 0], port));
        let mut listener = listener(name.into(), at, tcp_filter(name, cluster));
        listener.use_original_dst = Some(protobuf::BoolValue { value: true });
        listener.traffic_direction = direction as i32;
        out.push((type_url::LISTENER, Resource::new(name.into(), &listener)));
        let passthrough = cluster::Cluster {
            name: cluster.into(),
            cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
                cluster::cluster::DiscoveryType::OriginalDst as i32,
            )),
            lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
            connect_timeout: Some(duration(std::time::Duration::from_secs(10))),
            ..Default::default()
        };
        out.push((
            type_url::CLUSTER,
            Resource::new(cluster.into(), &passthrough),
        ));
    }
    out
}

/// The inbound listener, its route configuration (HTTP) and its cluster; a
/// sidecar's binds no socket and is reached through the inbound capture
/// listener.
pub fn inbound(
    service: &Service,
    inbound: &Inbound,
    sidecar: bool,
    mtls: remora_api::MtlsMode,
    tracing: Option<&MeshTracing>,
) -> Vec<(&'static str, Arc<Resource>)> {
    let name = format!("inbound|{}", inbound.listen);
    let mut out = Vec::new();
    let build = |authorization: &[remora_api::AuthorizationPolicyConfig]| {
        let rate_limited = service.policy.rate_limit.is_some();
        let filters = if service.protocol.is_http() {
            let mut manager = http_manager(&name, &name, rate_limited);
            let mut http_filters = super::rbac::http_filters(authorization);
            http_filters.append(&mut manager.http_filters);
            manager.http_filters = http_filters;
            vec![manager_filter(&manager)]
        } else {
            let mut filters = super::rbac::network_filters(authorization, &name);
            filters.push(tcp_filter(&name, &name));
            filters
        };
        let mut listener = listener_of(name.clone(), inbound.listen, filters);
        if let Some(tracing) = tracing {
            traced(&mut listener, tracing, &service.key());
        }
        secure(&mut listener, mtls);
        if sidecar {
            listener.bind_to_port = Some(protobuf::BoolValue { value: false });
            listener.traffic_direction = core::TrafficDirection::Inbound as i32;
        }
        listener
    };
    if service.protocol.is_http() {
        let routes = inbound_routes(&name, service);
        out.push((type_url::ROUTE, Resource::new(name.clone(), &routes)));
    }
    let listener = build(&service.authorization);
    let listener = if service.authorization.is_empty() {
        Resource::new(name.clone(), &listener)
    } else {
        // RBAC policies are a map, encoded in no fixed order: version by
        // the listener without them and the policies as configured.
        let mut key = remora_xds_proto::pack(&build(&[])).value;
        key.extend(serde_json::to_vec(&service.authorization).unwrap_or_default());
        Resource::keyed(name.clone(), &listener, &key)
    };
    out.push((type_url::LISTENER, listener));
    out.push((
        type_url::CLUSTER,
        Resource::new(name.clone(), &inbound_cluster(&name, service, inbound)),
    ));
    out
}

/// An inbound listener's mesh mTLS.
fn secure(listener: &mut Listener, mtls: MtlsMode) {
    match mtls {
        MtlsMode::Disabled => {}
        MtlsMode::Strict => {
            listener.filter_chains[0].transport_socket = Some(super::wire::downstream_mtls());
        }
        // As Istio: the TLS inspector tells the transports apart, a chain
        // for each, the same filters on both.
        MtlsMode::Permissive => {
            let plain = listener.filter_chains[0].clone();
            let tls = FilterChain {
                filter_chain_match: Some(transport_match("tls")),
                transport_socket: Some(super::wire::downstream_mtls()),
                ..plain.clone()
            };
            let plain = FilterChain {
                filter_chain_match: Some(transport_match("raw_buffer")),
                ..plain
            };
            listener.filter_chains = vec![tls, plain];
            listener.listener_filters = vec![ListenerFilter {
                name: TLS_INSPECTOR.into(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(
                    remora_xds_proto::pack(
                        &remora_xds_proto::filters::tls_inspector::TlsInspector::default(),
                    ),
                )),
                ..Default::default()
            }];
        }
    }
}

/// Envoy's TLS inspector listener filter.
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

fn transport_match(protocol: &str) -> FilterChainMatch {
    FilterChainMatch {
        transport_protocol: protocol.into(),
        ..Default::default()
    }
}

fn listener(name: String, at: std::net::SocketAddr, filter: Filter) -> Listener {
    listener_of(name, at, vec![filter])
}

fn listener_of(name: String, at: std::net::SocketAddr, filters: Vec<Filter>) -> Listener {
    Listener {
        stat_prefix: name.replace('|', "_"),
        name,
        address: Some(address(at)),
        filter_chains: vec![FilterChain {
            filters,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn http_filter(stat_prefix: &str, route_config: &str, rate_limited: bool) -> Filter {
    manager_filter(&http_manager(stat_prefix, route_config, rate_limited))
}

fn manager_filter(manager: &hcm::HttpConnectionManager) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(remora_xds_proto::listener::filter::ConfigType::TypedConfig(
            remora_xds_proto::pack(manager),
        )),
    }
}

fn http_manager(
    stat_prefix: &str,
    route_config: &str,
    rate_limited: bool,
) -> hcm::HttpConnectionManager {
    let mut http_filters = Vec::new();
    if rate_limited {
        // Off here; each route that limits turns it on with its own bucket.
        http_filters.push(hcm::HttpFilter {
            name: LOCAL_RATE_LIMIT.into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(
                remora_xds_proto::pack(&local_ratelimit::LocalRateLimit {
                    stat_prefix: "rate_limit".into(),
                    ..Default::default()
                }),
            )),
            ..Default::default()
        });
    }
    http_filters.push(hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(
            remora_xds_proto::pack(&router::Router::default()),
        )),
        ..Default::default()
    });
    hcm::HttpConnectionManager {
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        stat_prefix: stat_prefix.replace('|', "_"),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads()),
                route_config_name: route_config.into(),
            },
        )),
        http_filters,
        ..Default::default()
    }
}

fn tcp_filter(stat_prefix: &str, cluster: &str) -> Filter {
    let proxy = tcp_proxy::TcpProxy {
        stat_prefix: stat_prefix.replace('|', "_"),
        cluster_specifier: Some(tcp_proxy::tcp_proxy::ClusterSpecifier::Cluster(
            cluster.into(),
        )),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(remora_xds_proto::listener::filter::ConfigType::TypedConfig(
            remora_xds_proto::pack(&proxy),
        )),
    }
}

fn inbound_routes(name: &str, service: &Service) -> RouteConfiguration {
    let mut route = Route {
        name: "inbound".into(),
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(name.into())),
            timeout: Some(duration(std::time::Duration::ZERO)),
            ..Default::default()
        })),
        ..Default::default()
    };
    if let Some(limit) = &service.policy.rate_limit {
        route.typed_per_filter_config.insert(
            LOCAL_RATE_LIMIT.into(),
            remora_xds_proto::pack(&token_bucket(limit)),
        );
        if let Some(global) = &limit.global {
            // remora-proxy makes the limit global; Envoy keeps it per proxy.
            // Every proxy of the service shares the service's buckets.
            let mut global = global.clone();
            global.bucket.get_or_insert_with(|| service.key());
            let extras = serde_json::json!({ "rate_limit_global": global }).to_string();
            route.metadata = Some(super::cluster::remora_metadata(extras));
        }
    }
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "inbound".into(),
            domains: vec!["*".into()],
            routes: vec![route],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `requests_per_second` as a token bucket: whole rates refill once a
/// second, slower rates one token per `1 / rate` seconds.
pub fn token_bucket(limit: &remora_api::RateLimitConfig) -> local_ratelimit::LocalRateLimit {
    let rate = limit.requests_per_second;
    let (tokens, interval) = if rate >= 1.0 {
        (
            rate.round().max(1.0) as u32,
            std::time::Duration::from_secs(1),
        )
    } else {
        (1, std::time::Duration::from_secs_f64(1.0 / rate))
    };
    let always = Some(core::RuntimeFractionalPercent {
        default_value: Some(types::FractionalPercent {
            numerator: 100,
            denominator: types::fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    });
    local_ratelimit::LocalRateLimit {
        stat_prefix: "rate_limit".into(),
        token_bucket: Some(types::TokenBucket {
            max_tokens: limit.burst.unwrap_or(tokens),
            tokens_per_fill: Some(u32v(tokens)),
            fill_interval: Some(duration(interval)),
        }),
        filter_enabled: always.clone(),
        filter_enforced: always,
        ..Default::default()
    }
}

fn inbound_cluster(name: &str, service: &Service, inbound: &Inbound) -> cluster::Cluster {
    let mut out = cluster::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(service.policy.connect_timeout)),
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(address(inbound.target)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    if service.protocol.is_http() {
        let full = super::cluster::cluster(service);
        if let Some(options) = full
            .typed_extension_protocol_options
            .get(super::cluster::HTTP_OPTIONS)
        {
            out.typed_extension_protocol_options
                .insert(super::cluster::HTTP_OPTIONS.into(), options.clone());
        }
    }
    out
}

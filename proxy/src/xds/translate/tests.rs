use std::time::Duration;

use remora_xds_proto::filters::{http_connection_manager as hcm, router};
use remora_xds_proto::listener::{Filter, FilterChain, Listener, filter};
use remora_xds_proto::route::{
    self, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use remora_xds_proto::{cluster, core, matcher, pack, protobuf, type_url};

use super::*;
use crate::config::{Direction, LbPolicy, ListenerProtocol};

pub(crate) fn address(port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: "127.0.0.1".into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn ads() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn http_listener(http_filters: Vec<hcm::HttpFilter>) -> Listener {
    let manager = hcm::HttpConnectionManager {
        stat_prefix: "in".into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads()),
                route_config_name: "routes".into(),
            },
        )),
        http_filters,
        ..Default::default()
    };
    Listener {
        name: "l".into(),
        address: Some(address(15001)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn router_filter() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(
            &router::Router::default(),
        ))),
        ..Default::default()
    }
}

fn to(cluster: &str, m: RouteMatch) -> Route {
    Route {
        r#match: Some(m),
        action: Some(route::route::Action::Route(RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                cluster.into(),
            )),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn prefix(p: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::Prefix(p.into())),
        ..Default::default()
    }
}

fn vhost(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        ..Default::default()
    }
}

fn rejection(type_url: &str, any: &protobuf::Any) -> String {
    translate(type_url, any).unwrap_err().to_string()
}

#[test]
fn an_http_listener_names_its_routes_and_keeps_envoys_defaults() {
    let (name, part) = translate(
        type_url::LISTENER,
        &pack(&http_listener(vec![router_filter()])),
    )
    .unwrap();
    assert_eq!(name, "l");
    let Part::Listener(part) = part else {
        panic!("a listener")
    };
    assert_eq!(part.routes, Routes::Rds("routes".into()));
    assert_eq!(part.config.address.port(), 15001);
    assert_eq!(
        part.defaults.stream_idle_timeout,
        Some(Duration::from_secs(300))
    );
    assert!(!part.defaults.local_rate_limit);
}

#[test]
fn an_unknown_http_filter_is_rejected_unless_optional() {
    let cors = |optional| hcm::HttpFilter {
        name: "envoy.filters.http.cors".into(),
        is_optional: optional,
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(protobuf::Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors".into(),
            value: vec![],
        })),
        ..Default::default()
    };
    let message = rejection(
        type_url::LISTENER,
        &pack(&http_listener(vec![cors(false), router_filter()])),
    );
    assert_eq!(
        message,
        "Listener \"l\" filter_chains[0].filters[0].typed_config.http_filters[0].typed_config: the HTTP filter \"envoy.filters.http.cors\" (type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors) is not supported by remora-proxy"
    );
    assert!(
        translate(
            type_url::LISTENER,
            &pack(&http_listener(vec![cors(true), router_filter()]))
        )
        .is_ok()
    );
    let message = rejection(type_url::LISTENER, &pack(&http_listener(vec![])));
    assert!(
        message.ends_with("http_filters: the router filter is required (last)"),
        "{message}"
    );
}

#[test]
fn virtual_hosts_are_laid_out_most_specific_domain_first() {
    let rc = RouteConfiguration {
        name: "routes".into(),
        virtual_hosts: vec![
            vhost("any", &["*"], vec![to("c-any", prefix("/"))]),
            vhost(
                "suffix",
                &["*.example.com"],
                vec![to("c-suffix", prefix("/"))],
            ),
            vhost(
                "exact",
                &["api.example.com"],
                vec![to("c-exact", prefix("/api"))],
            ),
        ],
        ..Default::default()
    };
    let routes = route_configuration(&rc).unwrap();
    let summary: Vec<(Option<&str>, Option<&str>, Option<u16>)> = routes
        .iter()
        .map(|r| {
            (
                r.matches.host.as_deref(),
                r.backends.first().map(|b| b.cluster.as_str()),
                r.direct_response.as_ref().map(|d| d.status),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (Some("api.example.com"), Some("c-exact"), None),
            // api.example.com/other must not fall through to *.example.com.
            (Some("api.example.com"), None, Some(404)),
            (Some("*.example.com"), Some("c-suffix"), None),
            (Some("*.example.com"), None, Some(404)),
            (None, Some("c-any"), None),
        ]
    );
    // Envoy's route timeout default is 15 s.
    assert_eq!(routes[0].timeout, Some(Duration::from_secs(15)));
}

#[test]
fn a_bad_regex_is_rejected_with_its_path() {
    let rc = RouteConfiguration {
        name: "routes".into(),
        virtual_hosts: vec![vhost(
            "v",
            &["*"],
            vec![to(
                "c",
                RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::SafeRegex(
                        matcher::RegexMatcher {
                            regex: "/api/(unclosed".into(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
            )],
        )],
        ..Default::default()
    };
    let message = rejection(type_url::ROUTE, &pack(&rc));
    assert!(
        message.starts_with(
            "RouteConfiguration \"routes\" virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex \"/api/(unclosed\""
        ),
        "{message}"
    );
}

#[test]
fn route_features_the_proxy_lacks_are_rejected_by_name() {
    let mut redirect = to("c", prefix("/"));
    redirect.action = Some(route::route::Action::Redirect(Default::default()));
    let mut rewrite = to("c", prefix("/"));
    if let Some(route::route::Action::Route(action)) = &mut rewrite.action {
        action.prefix_rewrite = "/v2".into();
    }
    for (route, expected) in [
        (
            redirect,
            "virtual_hosts[0].routes[0].redirect: a redirect is not supported",
        ),
        (
            rewrite,
            "virtual_hosts[0].routes[0].route.prefix_rewrite: path rewriting is not supported",
        ),
    ] {
        let rc = RouteConfiguration {
            name: "r".into(),
            virtual_hosts: vec![vhost("v", &["*"], vec![route])],
            ..Default::default()
        };
        let message = rejection(type_url::ROUTE, &pack(&rc));
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn retries_follow_envoys_defaults() {
    let mut r = to("c", prefix("/"));
    if let Some(route::route::Action::Route(action)) = &mut r.action {
        action.retry_policy = Some(route::RetryPolicy {
            retry_on: "5xx,reset".into(),
            ..Default::default()
        });
        action.timeout = Some(protobuf::Duration {
            seconds: 0,
            nanos: 0,
        });
    }
    let rc = RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![vhost("v", &["*"], vec![r])],
        ..Default::default()
    };
    let routes = route_configuration(&rc).unwrap();
    let retry = routes[0].retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 1, "Envoy's num_retries default");
    assert_eq!(
        retry.on,
        vec![
            crate::config::RetryOn::FiveXx,
            crate::config::RetryOn::Reset
        ]
    );
    assert!(retry.retry_non_idempotent);
    assert_eq!(routes[0].timeout, None, "a zero timeout is none");

    let mut bad = to("c", prefix("/"));
    if let Some(route::route::Action::Route(action)) = &mut bad.action {
        action.retry_policy = Some(route::RetryPolicy {
            retry_on: "5xx,envoy-ratelimited".into(),
            ..Default::default()
        });
    }
    let rc = RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![vhost("v", &["*"], vec![bad])],
        ..Default::default()
    };
    assert!(
        rejection(type_url::ROUTE, &pack(&rc))
            .contains("retry_on: the retry condition \"envoy-ratelimited\"")
    );
}

#[test]
fn a_cluster_keeps_envoys_circuit_breaker_defaults_and_reads_remora_extras() {
    let c = cluster::Cluster {
        name: "c".into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        lb_policy: cluster::cluster::LbPolicy::LeastRequest as i32,
        metadata: Some(core::Metadata {
            filter_metadata: [(
                "remora".to_string(),
                protobuf::Struct {
                    fields: [(
                        "extras".to_string(),
                        protobuf::Value {
                            kind: Some(protobuf::value::Kind::StringValue(
                                r#"{"load_balancer":{"policy":"peak_ewma","decay":"5s"},"pool":{"max_connections":8}}"#.into(),
                            )),
                        },
                    )]
                    .into(),
                },
            )]
            .into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (_, part) = translate(type_url::CLUSTER, &pack(&c)).unwrap();
    let Part::Cluster(part) = part else {
        panic!("a cluster")
    };
    assert_eq!(part.eds.as_deref(), Some("c"));
    let config = part.config;
    assert_eq!(config.load_balancer.policy, LbPolicy::PeakEwma);
    assert_eq!(config.load_balancer.decay, Some(Duration::from_secs(5)));
    assert_eq!(config.pool.max_connections, Some(8));
    assert_eq!(config.circuit_breakers.max_connections, Some(1024));
    assert_eq!(config.circuit_breakers.max_retries, Some(3));
}

#[test]
fn hostile_resources_are_rejected_not_trusted() {
    // Larger than the per-resource limit.
    let huge = protobuf::Any {
        type_url: type_url::CLUSTER.into(),
        value: vec![0; MAX_RESOURCE_BYTES + 1],
    };
    assert!(rejection(type_url::CLUSTER, &huge).contains("accepts at most"));
    // Garbage bytes.
    let garbage = protobuf::Any {
        type_url: type_url::LISTENER.into(),
        value: vec![0xff; 64],
    };
    assert!(rejection(type_url::LISTENER, &garbage).starts_with("cannot decode"));
    // A resource of another type in the response.
    let wrong = pack(&cluster::Cluster::default());
    assert!(rejection(type_url::LISTENER, &wrong).contains("in a response for"));
    // An unknown type.
    let unknown = protobuf::Any {
        type_url: "type.googleapis.com/envoy.config.core.v3.Secret".into(),
        value: vec![],
    };
    assert!(
        rejection("type.googleapis.com/envoy.config.core.v3.Secret", &unknown)
            .contains("is not supported")
    );
    // An endpoint with a name instead of an IP.
    let assignment = remora_xds_proto::endpoint::ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: vec![remora_xds_proto::endpoint::LocalityLbEndpoints {
            lb_endpoints: vec![remora_xds_proto::endpoint::LbEndpoint {
                host_identifier: Some(
                    remora_xds_proto::endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        remora_xds_proto::endpoint::Endpoint {
                            address: Some(core::Address {
                                address: Some(core::address::Address::SocketAddress(
                                    core::SocketAddress {
                                        address: "backend.internal".into(),
                                        port_specifier: Some(
                                            core::socket_address::PortSpecifier::PortValue(80),
                                        ),
                                        ..Default::default()
                                    },
                                )),
                            }),
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(
        rejection(type_url::ENDPOINT, &pack(&assignment)),
        "ClusterLoadAssignment \"c\" endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: \"backend.internal\" is not an IP address"
    );
}

pub(crate) fn tcp_proxy_chain(cluster: &str) -> FilterChain {
    let proxy = remora_xds_proto::filters::tcp_proxy::TcpProxy {
        stat_prefix: "t".into(),
        cluster_specifier: Some(
            remora_xds_proto::filters::tcp_proxy::tcp_proxy::ClusterSpecifier::Cluster(
                cluster.into(),
            ),
        ),
        ..Default::default()
    };
    FilterChain {
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack(&proxy))),
        }],
        ..Default::default()
    }
}

/// Envoy's sidecar model: a `use_original_dst` listener whose TCP proxy
/// names an ORIGINAL_DST cluster, and `bind_to_port: false` listeners per
/// destination, with their `traffic_direction`.
#[test]
fn sidecar_listeners_map_to_capture_listeners() {
    let capture = Listener {
        name: "virtualOutbound".into(),
        address: Some(address(15001)),
        use_original_dst: Some(protobuf::BoolValue { value: true }),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        filter_chains: vec![tcp_proxy_chain("PassthroughCluster")],
        ..Default::default()
    };
    let (_, part) = translate(type_url::LISTENER, &pack(&capture)).unwrap();
    let Part::Listener(part) = part else { panic!() };
    assert!(part.config.original_destination);
    assert!(part.config.bind);
    assert_eq!(part.config.cluster, None);
    assert_eq!(part.config.direction, Some(Direction::Outbound));
    assert_eq!(
        part.unmatched_cluster.as_deref(),
        Some("PassthroughCluster")
    );

    let mut target = http_listener(vec![router_filter()]);
    target.bind_to_port = Some(protobuf::BoolValue { value: false });
    target.traffic_direction = core::TrafficDirection::Inbound as i32;
    let (_, part) = translate(type_url::LISTENER, &pack(&target)).unwrap();
    let Part::Listener(part) = part else { panic!() };
    assert!(!part.config.bind);
    assert!(!part.config.original_destination);
    assert_eq!(part.config.protocol, Some(ListenerProtocol::Http));
    assert_eq!(part.config.direction, Some(Direction::Inbound));

    let passthrough = cluster::Cluster {
        name: "PassthroughCluster".into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
        ..Default::default()
    };
    let (_, part) = translate(type_url::CLUSTER, &pack(&passthrough)).unwrap();
    let Part::Cluster(part) = part else { panic!() };
    assert!(part.original_dst);

    // HTTP on the capture listener itself is not Envoy's model.
    let mut http_capture = http_listener(vec![router_filter()]);
    http_capture.use_original_dst = Some(protobuf::BoolValue { value: true });
    assert!(
        rejection(type_url::LISTENER, &pack(&http_capture))
            .contains("HTTP on a use_original_dst listener"),
    );
    let mut bad_direction = capture.clone();
    bad_direction.traffic_direction = 7;
    assert!(
        rejection(type_url::LISTENER, &pack(&bad_direction))
            .contains("traffic_direction: unknown direction 7")
    );
}

fn tls_socket(any: protobuf::Any) -> core::TransportSocket {
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any)),
    }
}

fn uri_san(
    uri: &str,
    san_type: remora_xds_proto::tls::subject_alt_name_matcher::SanType,
) -> remora_xds_proto::tls::SubjectAltNameMatcher {
    remora_xds_proto::tls::SubjectAltNameMatcher {
        san_type: san_type as i32,
        matcher: Some(matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(uri.into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Istio-style TLS contexts: the proxy takes them as mesh mTLS with its own
/// identity, whatever SDS secret they name.
#[test]
fn tls_contexts_become_mesh_mtls() {
    use remora_xds_proto::tls::{
        CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
        TlsCertificate, UpstreamTlsContext, common_tls_context::ValidationContextType,
        subject_alt_name_matcher::SanType,
    };
    let sds = vec![SdsSecretConfig {
        name: "default".into(),
        ..Default::default()
    }];
    let mut listener = http_listener(vec![router_filter()]);
    listener.filter_chains[0].transport_socket = Some(tls_socket(pack(&DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: sds.clone(),
            ..Default::default()
        }),
        require_client_certificate: Some(protobuf::BoolValue { value: true }),
        ..Default::default()
    })));
    let (_, part) = translate(type_url::LISTENER, &pack(&listener)).unwrap();
    let Part::Listener(part) = part else { panic!() };
    assert_eq!(part.config.mtls, Some(crate::config::MtlsMode::Strict));

    // One-way TLS, and inline certificates: not the mesh's shape.
    listener.filter_chains[0].transport_socket =
        Some(tls_socket(pack(&DownstreamTlsContext::default())));
    assert!(rejection(type_url::LISTENER, &pack(&listener)).contains("require_client_certificate"));
    listener.filter_chains[0].transport_socket = Some(tls_socket(pack(&DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![TlsCertificate::default()],
            ..Default::default()
        }),
        require_client_certificate: Some(protobuf::BoolValue { value: true }),
        ..Default::default()
    })));
    assert!(rejection(type_url::LISTENER, &pack(&listener)).contains("tls_certificates"));

    let upstream = |sans| {
        tls_socket(pack(&UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: sds.clone(),
                validation_context_type: Some(ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        }))
    };
    let mut c = cluster::Cluster {
        name: "reviews".into(),
        load_assignment: Some(remora_xds_proto::endpoint::ClusterLoadAssignment {
            cluster_name: "reviews".into(),
            ..Default::default()
        }),
        transport_socket: Some(upstream(vec![uri_san(
            "spiffe://cluster.local/ns/shop/sa/reviews",
            SanType::Uri,
        )])),
        ..Default::default()
    };
    let (_, part) = translate(type_url::CLUSTER, &pack(&c)).unwrap();
    let Part::Cluster(part) = part else { panic!() };
    assert_eq!(
        part.config.mtls.unwrap().identities,
        ["spiffe://cluster.local/ns/shop/sa/reviews"]
    );
    c.transport_socket = Some(upstream(vec![uri_san("reviews.shop", SanType::Dns)]));
    assert!(rejection(type_url::CLUSTER, &pack(&c)).contains("san_type"));
    c.transport_socket = Some(upstream(vec![]));
    assert!(rejection(type_url::CLUSTER, &pack(&c)).contains("name the SPIFFE IDs"));
}

/// Envoy's adaptive concurrency filter becomes the listener's limiter with
/// the gradient controller's parameters; disabled, it is none; a reply
/// other than 503 or a controller without its required fields is refused.
#[test]
fn the_adaptive_concurrency_filter_becomes_the_listeners_limiter() {
    use remora_xds_proto::filters::adaptive_concurrency::{
        AdaptiveConcurrency, GradientControllerConfig, adaptive_concurrency,
        gradient_controller_config,
    };
    let gradient = GradientControllerConfig {
        sample_aggregate_percentile: Some(remora_xds_proto::types::Percent { value: 90.0 }),
        concurrency_limit_params: Some(
            gradient_controller_config::ConcurrencyLimitCalculationParams {
                max_concurrency_limit: Some(protobuf::UInt32Value { value: 200 }),
                concurrency_update_interval: Some(protobuf::Duration {
                    seconds: 0,
                    nanos: 50_000_000,
                }),
                ..Default::default()
            },
        ),
        min_rtt_calc_params: Some(gradient_controller_config::MinimumRttCalculationParams {
            interval: Some(protobuf::Duration {
                seconds: 30,
                nanos: 0,
            }),
            request_count: Some(protobuf::UInt32Value { value: 20 }),
            ..Default::default()
        }),
    };
    let filter = |f: AdaptiveConcurrency| hcm::HttpFilter {
        name: "envoy.filters.http.adaptive_concurrency".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(&f))),
        ..Default::default()
    };
    let on = AdaptiveConcurrency {
        concurrency_controller_config: Some(
            adaptive_concurrency::ConcurrencyControllerConfig::GradientControllerConfig(gradient),
        ),
        ..Default::default()
    };
    let (_, part) = translate(
        type_url::LISTENER,
        &pack(&http_listener(vec![filter(on.clone()), router_filter()])),
    )
    .unwrap();
    let Part::Listener(part) = part else {
        panic!("a listener")
    };
    let config = part.config.adaptive_concurrency.unwrap();
    assert_eq!(config.percentile, 90.0);
    assert_eq!(config.max_concurrency, 200);
    assert_eq!(config.sample_interval, Duration::from_millis(50));
    assert_eq!(config.min_rtt_interval, Duration::from_secs(30));
    assert_eq!(config.min_rtt_requests, 20);
    assert_eq!((config.min_concurrency, config.buffer), (3, 25.0));

    let off = AdaptiveConcurrency {
        enabled: Some(core::RuntimeFeatureFlag {
            default_value: Some(protobuf::BoolValue { value: false }),
            runtime_key: "adaptive".into(),
        }),
        ..on.clone()
    };
    let (_, part) = translate(
        type_url::LISTENER,
        &pack(&http_listener(vec![filter(off), router_filter()])),
    )
    .unwrap();
    let Part::Listener(part) = part else {
        panic!("a listener")
    };
    assert!(part.config.adaptive_concurrency.is_none());

    let teapot = AdaptiveConcurrency {
        concurrency_limit_exceeded_status: Some(remora_xds_proto::types::HttpStatus { code: 418 }),
        ..on.clone()
    };
    let e = rejection(
        type_url::LISTENER,
        &pack(&http_listener(vec![filter(teapot), router_filter()])),
    );
    assert!(e.contains("concurrency_limit_exceeded_status"), "{e}");
    let mut no_interval = gradient;
    no_interval.concurrency_limit_params = None;
    let e = rejection(
        type_url::LISTENER,
        &pack(&http_listener(vec![
            filter(AdaptiveConcurrency {
                concurrency_controller_config: Some(
                    adaptive_concurrency::ConcurrencyControllerConfig::GradientControllerConfig(
                        no_interval,
                    ),
                ),
                ..Default::default()
            }),
            router_filter(),
        ])),
    );
    assert!(e.contains("concurrency_limit_params: required"), "{e}");
}

/// `HttpConnectionManager.tracing`: the OpenTelemetry tracer becomes the
/// listener's tracing (collector, sampling share, service name); another
/// tracer is refused by name, not ignored.
#[test]
fn the_opentelemetry_tracer_is_read_and_others_refused() {
    use remora_xds_proto::trace_config::{
        OpenTelemetryConfig, ZipkinConfig, tracing::Http, tracing::http::ConfigType,
    };
    let traced = |provider: Http, sampling: Option<f64>| {
        let mut listener = http_listener(vec![router_filter()]);
        let Some(filter::ConfigType::TypedConfig(any)) =
            &mut listener.filter_chains[0].filters[0].config_type
        else {
            unreachable!()
        };
        let mut manager: hcm::HttpConnectionManager = remora_xds_proto::unpack(any).unwrap();
        manager.tracing = Some(hcm::http_connection_manager::Tracing {
            random_sampling: sampling.map(|value| remora_xds_proto::types::Percent { value }),
            provider: Some(provider),
            ..Default::default()
        });
        *any = pack(&manager);
        pack(&listener)
    };
    let otel = Http {
        name: "envoy.tracers.opentelemetry".into(),
        config_type: Some(ConfigType::TypedConfig(pack(&OpenTelemetryConfig {
            grpc_service: Some(core::GrpcService {
                target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                    core::grpc_service::EnvoyGrpc {
                        cluster_name: "collector".into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            service_name: "web".into(),
            ..Default::default()
        }))),
    };
    let (_, part) = translate(type_url::LISTENER, &traced(otel.clone(), Some(25.0))).unwrap();
    let Part::Listener(part) = part else {
        panic!("a listener")
    };
    assert_eq!(
        part.tracing,
        Some(super::XdsTracing {
            collector: super::Collector::Cluster("collector".into()),
            sampling: 0.25,
            service_name: "web".into(),
        })
    );
    // Envoy's default sampling is 100 %.
    let (_, part) = translate(type_url::LISTENER, &traced(otel, None)).unwrap();
    let Part::Listener(part) = part else {
        panic!("a listener")
    };
    assert_eq!(part.tracing.unwrap().sampling, 1.0);
    let zipkin = Http {
        name: "envoy.tracers.zipkin".into(),
        config_type: Some(ConfigType::TypedConfig(pack(&ZipkinConfig::default()))),
    };
    let refused = rejection(type_url::LISTENER, &traced(zipkin, None));
    assert!(
        refused.contains("tracing.provider") && refused.contains("envoy.tracers.zipkin"),
        "{refused}"
    );
}

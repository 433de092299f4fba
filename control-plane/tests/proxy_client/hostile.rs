//! Hostile xDS from a scripted server (a bad regex, an unknown type, a huge
//! resource, garbage bytes): remora-proxy NACKs each, keeps the config it
//! had, and follows the next good update.

use super::*;

/// An ADS server that sends what the test scripts and reports what it hears.
struct Scripted {
    requests: mpsc::UnboundedSender<DiscoveryRequest>,
    responses: std::sync::Mutex<Option<mpsc::Receiver<DiscoveryResponse>>>,
}

type Responses<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type StreamAggregatedResourcesStream = Responses<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Responses<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let requests = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                let _ = requests.send(request);
            }
        });
        let responses = self
            .responses
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| tonic::Status::unavailable("one stream only"))?;
        Ok(tonic::Response::new(Box::pin(
            ReceiverStream::new(responses).map(Ok),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("SotW only"))
    }
}

fn socket(addr: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                addr.port().into(),
            )),
            ..Default::default()
        })),
    }
}

fn static_cluster(to: SocketAddr) -> cluster::Cluster {
    cluster::Cluster {
        name: "backend".into(),
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: "backend".into(),
            endpoints: vec![endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(socket(to)),
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
    }
}

fn http_listener(at: SocketAddr) -> listener::Listener {
    let manager = hcm::HttpConnectionManager {
        stat_prefix: "out".into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(core::ConfigSource {
                    config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                        core::AggregatedConfigSource {},
                    )),
                    ..Default::default()
                }),
                route_config_name: "routes".into(),
            },
        )),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(
                &router::Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    listener::Listener {
        name: "out".into(),
        address: Some(socket(at)),
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(pack(&manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn routes(path: route::route_match::PathSpecifier) -> route::RouteConfiguration {
    route::RouteConfiguration {
        name: "routes".into(),
        virtual_hosts: vec![route::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![route::Route {
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(path),
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                        "backend".into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn response(
    type_url: &str,
    version: &str,
    nonce: &str,
    resources: Vec<protobuf::Any>,
) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url: type_url.into(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

/// The client's answer to the response with `nonce`.
async fn answer(
    requests: &mut mpsc::UnboundedReceiver<DiscoveryRequest>,
    nonce: &str,
) -> DiscoveryRequest {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let request = tokio::time::timeout_at(deadline, requests.recv())
            .await
            .unwrap_or_else(|_| panic!("no answer to nonce {nonce}"))
            .expect("the stream is open");
        if request.response_nonce == nonce {
            return request;
        }
    }
}

fn nack_message(request: &DiscoveryRequest) -> String {
    request
        .error_detail
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_else(|| panic!("expected a NACK, got an ACK of {}", request.version_info))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_xds_is_nacked_and_the_last_good_config_keeps_serving() {
    use route::route_match::PathSpecifier;
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (requests_tx, mut requests) = mpsc::unbounded_channel();
    let (send, responses) = mpsc::channel(8);
    let server = AggregatedDiscoveryServiceServer::new(Scripted {
        requests: requests_tx,
        responses: std::sync::Mutex::new(Some(responses)),
    })
    .max_decoding_message_size(64 << 20)
    .max_encoding_message_size(64 << 20);
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds = socket.local_addr().unwrap();
    let server_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(TcpListenerStream::new(socket)),
    );
    let remora = Remora::start("scripted", xds, false);

    // A good config: cluster, listener, then the route it names.
    send.send(response(
        type_url::CLUSTER,
        "c1",
        "1",
        vec![pack(&static_cluster(v1.addr))],
    ))
    .await
    .unwrap();
    send.send(response(
        type_url::LISTENER,
        "l1",
        "2",
        vec![pack(&http_listener(listen))],
    ))
    .await
    .unwrap();
    send.send(response(
        type_url::ROUTE,
        "r1",
        "3",
        vec![pack(&routes(PathSpecifier::Prefix("/".into())))],
    ))
    .await
    .unwrap();
    for nonce in ["1", "2", "3"] {
        let ack = answer(&mut requests, nonce).await;
        assert!(
            ack.error_detail.is_none(),
            "nonce {nonce}: {:?}",
            ack.error_detail
        );
    }
    eventually("the proxy serves the scripted config", 10, || async {
        upstream_of(listen).await == "v1"
    })
    .await;

    // A bad regex: NACKed with its path; version r1 stays.
    send.send(response(
        type_url::ROUTE,
        "r2",
        "4",
        vec![pack(&routes(PathSpecifier::SafeRegex(
            matcher::RegexMatcher {
                regex: "/(unclosed".into(),
                ..Default::default()
            },
        )))],
    ))
    .await
    .unwrap();
    let nack = answer(&mut requests, "4").await;
    let message = nack_message(&nack);
    assert!(
        message.contains("RouteConfiguration \"routes\" virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex"),
        "{message}"
    );
    assert_eq!(nack.version_info, "r1", "the NACK names the version kept");
    assert_eq!(
        nack.error_detail.as_ref().unwrap().code,
        tonic::Code::InvalidArgument as i32
    );

    // An unknown type.
    send.send(response(
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "s1",
        "5",
        vec![],
    ))
    .await
    .unwrap();
    let message = nack_message(&answer(&mut requests, "5").await);
    assert!(
        message.contains("is not supported by remora-proxy"),
        "{message}"
    );

    // A huge resource (9 MiB).
    let huge = protobuf::Any {
        type_url: type_url::CLUSTER.into(),
        value: vec![0; 9 << 20],
    };
    send.send(response(type_url::CLUSTER, "c2", "6", vec![huge]))
        .await
        .unwrap();
    let nack = answer(&mut requests, "6").await;
    assert!(
        nack_message(&nack).contains("accepts at most"),
        "{}",
        nack_message(&nack)
    );
    assert_eq!(nack.version_info, "c1");

    // Garbage where a listener should be.
    let garbage = protobuf::Any {
        type_url: type_url::LISTENER.into(),
        value: vec![0xff; 100],
    };
    send.send(response(type_url::LISTENER, "l2", "7", vec![garbage]))
        .await
        .unwrap();
    assert!(nack_message(&answer(&mut requests, "7").await).contains("cannot decode"));

    // A listener that cannot be bound: translated fine, but the config does not apply.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut second = http_listener(taken.local_addr().unwrap());
    second.name = "second".into();
    send.send(response(
        type_url::LISTENER,
        "l3",
        "8",
        vec![pack(&http_listener(listen)), pack(&second)],
    ))
    .await
    .unwrap();
    let message = nack_message(&answer(&mut requests, "8").await);
    assert!(
        message.contains("xds listener \"second\".address: cannot bind"),
        "{message}"
    );

    // Through all of it the first config kept serving.
    assert_eq!(upstream_of(listen).await, "v1");
    let status = remora.xds();
    assert_eq!(status["types"][0]["nacks"], 1, "{status}");
    assert_eq!(status["types"][2]["nacks"], 2, "{status}");
    assert_eq!(status["types"][3]["nacks"], 1, "{status}");

    // A good update still applies.
    send.send(response(
        type_url::CLUSTER,
        "c3",
        "9",
        vec![pack(&static_cluster(v2.addr))],
    ))
    .await
    .unwrap();
    assert!(answer(&mut requests, "9").await.error_detail.is_none());
    eventually(
        "the proxy follows a good update after the bad ones",
        10,
        || async { upstream_of(listen).await == "v2" },
    )
    .await;
    drop(taken);
    server_task.abort();
}

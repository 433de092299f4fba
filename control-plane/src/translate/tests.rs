use remora_xds_proto::{cluster::Cluster, endpoint::ClusterLoadAssignment, route, unpack};

use super::*;
use crate::mesh::parse_yaml;

const MESH: &str = "
services:
  - name: api
    port: 8080
    protocol: grpc
    endpoints: ['10.0.0.1:8080', {address: '10.0.0.2:8080', weight: 3, zone: b}]
    policy:
      load_balancer: {policy: ring_hash, minimum_ring_size: 512, hash_on: {header: x-user}}
      outlier_detection: {consecutive_5xx: 3, base_ejection_time: 10s}
      circuit_breakers: {max_requests: 100}
      health_check: {grpc: {service: api}, interval: 2s}
      rate_limit: {requests_per_second: 50, burst: 10}
  - name: web
    port: 80
    endpoints: ['10.0.1.1:80']
  - name: db
    port: 5432
    protocol: tcp
    endpoints: ['10.0.2.1:5432']
routes:
  - kind: HTTPRoute
    name: web-routes
    parentRefs: [{name: web}]
    rules:
      - matches: [{path: {type: PathPrefix, value: /a}}]
      - matches: [{path: {type: PathPrefix, value: /a/b}}, {path: {type: Exact, value: /x}}]
        backendRefs: [{name: api, weight: 1}, {name: web, weight: 2}]
        timeouts: {request: 3s, backendRequest: 1s}
        retry: {attempts: 3, codes: [503], backoff: 50ms}
proxies:
  - node_id: client
    outbound: [{service: web, listen: 127.0.0.1:15001}, {service: db, listen: 127.0.0.1:15002}]
  - node_id: server
    inbound: [{service: api, listen: 127.0.0.1:15006, target: 127.0.0.1:8080}]
";

fn get<T: prost::Name + prost::Message + Default>(
    r: &ProxyResources,
    type_url: &str,
    name: &str,
) -> T {
    unpack(&r.of_type(type_url).unwrap()[name].any).unwrap()
}

#[test]
fn a_proxy_gets_exactly_what_its_listeners_reach() {
    let t = translate(&parse_yaml(MESH).unwrap(), None);
    let client = &t.proxies[0];
    let names = |i: usize| {
        client.by_type[i]
            .keys()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(0),
        [
            "outbound|5432||db.default",
            "outbound|8080||api.default",
            "outbound|80||web.default"
        ],
        "web's routes reach api; db is TCP"
    );
    assert_eq!(
        names(2),
        ["outbound|127.0.0.1:15001", "outbound|127.0.0.1:15002"]
    );
    assert_eq!(names(3), ["web.default:80"]);
    let server = &t.proxies[1];
    assert_eq!(
        server.by_type[0].keys().map(|k| &**k).collect::<Vec<_>>(),
        ["inbound|127.0.0.1:15006"]
    );
}

#[test]
fn policies_become_envoy_fields() {
    let t = translate(&parse_yaml(MESH).unwrap(), None);
    let api: Cluster = get(
        &t.proxies[0],
        type_url::CLUSTER,
        "outbound|8080||api.default",
    );
    assert_eq!(
        api.lb_policy,
        remora_xds_proto::cluster::cluster::LbPolicy::RingHash as i32
    );
    let thresholds = &api.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(thresholds.max_requests.unwrap().value, 100);
    assert_eq!(
        thresholds.max_connections.unwrap().value,
        u32::MAX,
        "unset is off, not Envoy's 1024"
    );
    let outlier = api.outlier_detection.as_ref().unwrap();
    assert_eq!(outlier.consecutive_5xx.unwrap().value, 3);
    assert_eq!(outlier.base_ejection_time.unwrap().seconds, 10);
    assert_eq!(api.health_checks[0].interval.unwrap().seconds, 2);
    assert!(
        api.typed_extension_protocol_options
            .contains_key(cluster::HTTP_OPTIONS)
    );

    let cla: ClusterLoadAssignment = get(
        &t.proxies[0],
        type_url::ENDPOINT,
        "outbound|8080||api.default",
    );
    assert_eq!(cla.endpoints.len(), 2, "one locality per zone");
    assert_eq!(
        cla.endpoints[1].lb_endpoints[0]
            .load_balancing_weight
            .unwrap()
            .value,
        3
    );

    let routes: route::RouteConfiguration = get(&t.proxies[0], type_url::ROUTE, "web.default:80");
    let vhost = &routes.virtual_hosts[0];
    let paths: Vec<String> = vhost
        .routes
        .iter()
        .map(|r| {
            format!(
                "{:?}",
                r.r#match.as_ref().unwrap().path_specifier.as_ref().unwrap()
            )
        })
        .collect();
    assert_eq!(
        paths,
        [
            "Path(\"/x\")",
            "Path(\"/a/b\")",
            "Prefix(\"/a/b/\")",
            "Path(\"/a\")",
            "Prefix(\"/a/\")",
            "Prefix(\"/\")"
        ],
        "exact first, then the longer prefix, then the service itself"
    );
    let Some(route::route::Action::Route(action)) = &vhost.routes[0].action else {
        panic!("a route action")
    };
    let retry = action.retry_policy.as_ref().unwrap();
    assert_eq!(retry.num_retries.unwrap().value, 3);
    assert_eq!(retry.retriable_status_codes, [503]);
    assert_eq!(retry.per_try_timeout.unwrap().seconds, 1);
    assert_eq!(action.timeout.unwrap().seconds, 3);
    assert_eq!(
        action.hash_policy.len(),
        1,
        "api (the first backend) hashes on x-user"
    );

    let inbound: route::RouteConfiguration =
        get(&t.proxies[1], type_url::ROUTE, "inbound|127.0.0.1:15006");
    let limit =
        &inbound.virtual_hosts[0].routes[0].typed_per_filter_config[listener::LOCAL_RATE_LIMIT];
    let limit: remora_xds_proto::filters::local_ratelimit::LocalRateLimit = unpack(limit).unwrap();
    let bucket = limit.token_bucket.unwrap();
    assert_eq!(
        (bucket.max_tokens, bucket.tokens_per_fill.unwrap().value),
        (10, 50)
    );
}

#[test]
fn versions_follow_content_so_a_change_touches_only_what_depends_on_it() {
    let before = translate(&parse_yaml(MESH).unwrap(), None);
    let again = translate(&parse_yaml(MESH).unwrap(), Some(&before));
    assert!(
        Arc::ptr_eq(&before.proxies[0], &again.proxies[0]),
        "unchanged: the same resources"
    );

    let changed = MESH.replace("'10.0.1.1:80'", "'10.0.1.9:80'");
    let after = translate(&parse_yaml(&changed).unwrap(), Some(&before));
    let differs = |p: usize, t: usize| -> Vec<String> {
        after.proxies[p].by_type[t]
            .iter()
            .filter(|(name, r)| {
                before.proxies[p].by_type[t].get(*name).map(|b| &b.version) != Some(&r.version)
            })
            .map(|(name, _)| name.to_string())
            .collect()
    };
    assert_eq!(
        differs(0, 1),
        ["outbound|80||web.default"],
        "only web's endpoints"
    );
    assert!(differs(0, 0).is_empty() && differs(0, 2).is_empty() && differs(0, 3).is_empty());
    assert!(
        Arc::ptr_eq(&before.proxies[1], &after.proxies[1]),
        "the server proxy does not call web"
    );
}

/// Sidecars that reach every service (`outbound_all`), as the Kubernetes
/// source makes them.
const SIDECARS: &str = "
services:
  - {name: a, port: 80, addresses: [10.96.0.1], endpoints: ['10.0.0.1:80']}
  - {name: b, port: 80, addresses: [10.96.0.2], endpoints: ['10.0.0.2:80']}
  - {name: c, port: 5432, protocol: tcp, addresses: [10.96.0.3], endpoints: ['10.0.0.3:5432']}
proxies:
  - {node_id: pod-1, capture: true, outbound_all: true}
";

#[test]
fn an_unchanged_service_keeps_its_resources_and_a_changed_one_is_built_anew() {
    let old = parse_yaml(SIDECARS).unwrap();
    let before = translate(&old, None);
    let new = parse_yaml(&SIDECARS.replace("'10.0.0.2:80'", "'10.0.0.9:80'")).unwrap();
    let reused = super::translate_reusing(&new, Some(&old), Some(&before));
    let fresh = translate(&new, None);
    let shared = |t: &super::Translation| t.proxies[0].shared.clone().unwrap();
    let (was, now, built) = (shared(&before), shared(&reused), shared(&fresh));
    // The same resources as a translation from nothing...
    for t in 0..4 {
        let versions = |r: &ProxyResources| -> Vec<(String, String)> {
            r.by_type[t]
                .iter()
                .map(|(n, r)| (n.to_string(), r.version.clone()))
                .collect()
        };
        assert_eq!(versions(&now), versions(&built), "type {t}");
        assert!(!now.by_type[t].is_empty() || t == 3, "type {t}");
    }
    // ...but a's and c's are the previous ones, b's endpoints are new.
    let same = |t: usize, name: &str| Arc::ptr_eq(&was.by_type[t][name], &now.by_type[t][name]);
    assert!(same(0, "outbound|80||a.default") && same(1, "outbound|80||a.default"));
    assert!(same(0, "outbound|5432||c.default") && same(2, "outbound|10.96.0.3:5432"));
    assert!(!same(1, "outbound|80||b.default"));
    assert_ne!(
        was.by_type[1]["outbound|80||b.default"].version,
        now.by_type[1]["outbound|80||b.default"].version
    );
    // Routes attached, then taken away: the route configurations follow.
    let routed = parse_yaml(&format!(
        "{}routes:
  - kind: HTTPRoute
    name: split
    parentRefs: [{{name: a}}]
    rules: [{{backendRefs: [{{name: a, weight: 1}}, {{name: b, weight: 1}}]}}]
",
        SIDECARS.replace("'10.0.0.2:80'", "'10.0.0.9:80'")
    ))
    .unwrap();
    let with_routes = super::translate_reusing(&routed, Some(&new), Some(&reused));
    let without = super::translate_reusing(&new, Some(&routed), Some(&with_routes));
    for (got, from_nothing) in [(&with_routes, translate(&routed, None)), (&without, fresh)] {
        let versions = |t: &super::Translation| -> Vec<(String, String)> {
            shared(t).by_type[3]
                .iter()
                .map(|(n, r)| (n.to_string(), r.version.clone()))
                .collect()
        };
        assert_eq!(versions(got), versions(&from_nothing));
    }
    assert_ne!(
        shared(&with_routes).by_type[3]["a.default:80"].version,
        now.by_type[3]["a.default:80"].version
    );

    // Another trust domain: what is served is what a translation from
    // nothing serves.
    let mut moved = new.clone();
    moved.trust_domain = "other.example".into();
    let again = super::translate_reusing(&moved, Some(&new), Some(&reused));
    let fresh = translate(&moved, None);
    for t in 0..4 {
        let versions = |r: &ProxyResources| -> Vec<String> {
            r.by_type[t].values().map(|r| r.version.clone()).collect()
        };
        assert_eq!(versions(&shared(&again)), versions(&shared(&fresh)));
    }
}

const EVERY_POLICY: &str = "
services:
  - name: api
    port: 8080
    protocol: grpc
    endpoints: ['10.0.0.1:8080', {address: '10.0.0.2:8080', weight: 3, zone: b}]
    policy:
      connect_timeout: 750ms
      load_balancer:
        policy: least_request
        choice_count: 3
        slow_start: {window: 30s, aggression: 2.0, min_weight_percent: 20}
        panic_threshold: 30
      outlier_detection:
        consecutive_5xx: 4
        consecutive_gateway_failure: 2
        consecutive_local_origin_failure: 6
        success_rate: {minimum_hosts: 3, request_volume: 50, stdev_factor: 1.5}
        failure_percentage: {threshold: 70, minimum_hosts: 2, request_volume: 20}
        interval: 5s
        base_ejection_time: 15s
        max_ejection_time: 120s
        max_ejection_percent: 40
      circuit_breakers: {max_connections: 10, max_pending_requests: 20, max_requests: 30, max_retries: 4}
      pool: {max_connections: 8, max_idle_per_endpoint: 4, idle_timeout: 90s, max_requests_per_connection: 1000, max_connection_age: 10m, min_idle: 1}
      keepalive: {tcp: {time: 30s, interval: 5s, probes: 4}, http2: {interval: 20s, timeout: 5s}}
      health_check: {http: {path: /healthz, expected_statuses: [200, '300-399'], host: api.local}, interval: 3s, timeout: 500ms, jitter: 100ms, unhealthy_threshold: 2, healthy_threshold: 1}
  - name: cache
    port: 6379
    endpoints: ['10.0.3.1:6379']
    policy:
      load_balancer: {policy: ring_hash, minimum_ring_size: 256, maximum_ring_size: 4096, hash_on: {cookie: {name: sid, ttl: 1h, path: /}}}
  - name: ewma
    port: 80
    endpoints: ['10.0.4.1:80']
    policy:
      load_balancer: {policy: peak_ewma, decay: 5s, default_rtt: 20ms}
      health_check: {tcp: {}}
routes:
  - kind: HTTPRoute
    name: cache-routes
    parentRefs: [{name: cache}]
    rules:
      - matches: [{path: {type: Exact, value: /x}, method: POST, headers: [{name: X-Tenant, value: a}]}]
        timeouts: {request: 3s, backendRequest: 1s}
        retry: {attempts: 3, codes: [503], backoff: 50ms}
proxies:
  - node_id: client
    outbound: [{service: api, listen: 127.0.0.1:15001}, {service: cache, listen: 127.0.0.1:15002}, {service: ewma, listen: 127.0.0.1:15003}]
";

/// Every policy field reaches remora-proxy unchanged: the mesh's policy →
/// Envoy's Cluster → the proxy's own cluster config.
#[test]
fn every_policy_field_survives_the_trip_to_remora_proxy() {
    let mesh = parse_yaml(EVERY_POLICY).unwrap();
    let t = translate(&mesh, None);
    let client = &t.proxies[0];
    for service in &mesh.services {
        let name = cluster_name(service);
        let resource = &client.of_type(type_url::CLUSTER).unwrap()[&name];
        let (got, part) =
            remora_proxy::xds::translate::translate(type_url::CLUSTER, &resource.any).unwrap();
        assert_eq!(got, name);
        let remora_proxy::xds::translate::Part::Cluster(part) = part else {
            panic!("a cluster")
        };
        assert_eq!(part.eds.as_deref(), Some(name.as_str()));
        let config = &part.config;
        let policy = &service.policy;
        let mut lb = policy.load_balancer.clone();
        lb.hash_on = None; // travels on the routes
        assert_eq!(config.load_balancer, lb, "{name}");
        assert_eq!(config.connect_timeout, policy.connect_timeout, "{name}");
        assert_eq!(config.outlier_detection, policy.outlier_detection, "{name}");
        assert_eq!(config.circuit_breakers, policy.circuit_breakers, "{name}");
        assert_eq!(config.pool, policy.pool, "{name}");
        assert_eq!(config.health_check, policy.health_check, "{name}");
        let mut keepalive = policy.keepalive.clone();
        if !matches!(
            service.protocol,
            crate::mesh::ServiceProtocol::Grpc | crate::mesh::ServiceProtocol::Http2
        ) {
            keepalive.http2 = None; // HTTP/2 PINGs need HTTP/2
        }
        assert_eq!(config.keepalive, keepalive, "{name}");
        let protocol = match service.protocol {
            crate::mesh::ServiceProtocol::Grpc | crate::mesh::ServiceProtocol::Http2 => {
                remora_proxy::config::UpstreamProtocol::Http2
            }
            _ => remora_proxy::config::UpstreamProtocol::Http1,
        };
        assert_eq!(config.protocol, protocol, "{name}");

        let assignment = &client.of_type(type_url::ENDPOINT).unwrap()[&name];
        let (_, endpoints) =
            remora_proxy::xds::translate::translate(type_url::ENDPOINT, &assignment.any).unwrap();
        let remora_proxy::xds::translate::Part::Endpoints(endpoints) = endpoints else {
            panic!("endpoints")
        };
        let expected: Vec<(std::net::SocketAddr, u32)> = service
            .endpoints
            .iter()
            .map(|e| (e.address, e.weight))
            .collect();
        let got: Vec<(std::net::SocketAddr, u32)> = endpoints
            .iter()
            .map(|e| (e.address, e.weight.get()))
            .collect();
        assert_eq!(got, expected, "{name}");
    }

    // The route: match, timeouts, retry and the backend's hash input.
    let routes = &client.of_type(type_url::ROUTE).unwrap()["cache.default:6379"];
    let (_, part) = remora_proxy::xds::translate::translate(type_url::ROUTE, &routes.any).unwrap();
    let remora_proxy::xds::translate::Part::Routes(routes) = part else {
        panic!("routes")
    };
    let first = &routes[0];
    assert_eq!(first.matches.path.as_deref(), Some("/x"));
    assert_eq!(first.matches.method.as_deref(), Some("POST"));
    assert_eq!(first.matches.headers[0].name, "x-tenant");
    assert_eq!(first.matches.headers[0].exact.as_deref(), Some("a"));
    assert_eq!(first.timeout, Some(std::time::Duration::from_secs(3)));
    let retry = first.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 3);
    assert_eq!(retry.retriable_status_codes, vec![503]);
    assert_eq!(
        retry.per_try_timeout,
        Some(std::time::Duration::from_secs(1))
    );
    assert_eq!(retry.backoff.base, std::time::Duration::from_millis(50));
    let hash = first.hash_on.as_ref().unwrap().cookie.as_ref().unwrap();
    assert_eq!(hash.name, "sid");
    assert_eq!(hash.ttl, Some(std::time::Duration::from_secs(3600)));
    // The default route to the service itself: no timeout (0 = none).
    let last = routes.last().unwrap();
    assert_eq!(last.timeout, None);
    assert_eq!(last.backends[0].cluster, "outbound|6379||cache.default");
}

/// The inbound rate limit reaches remora-proxy as the route's token bucket.
#[test]
fn the_inbound_rate_limit_survives_the_trip_to_remora_proxy() {
    use remora_proxy::xds::translate::{Part, translate as to_proxy};
    let t = translate(&parse_yaml(MESH).unwrap(), None);
    let server = &t.proxies[1];
    let name = "inbound|127.0.0.1:15006";
    let (_, listener) = to_proxy(
        type_url::LISTENER,
        &server.of_type(type_url::LISTENER).unwrap()[name].any,
    )
    .unwrap();
    let Part::Listener(listener) = listener else {
        panic!("a listener")
    };
    assert!(listener.defaults.local_rate_limit);
    assert_eq!(listener.config.rate_limit, None, "the filter itself is off");
    let (_, routes) = to_proxy(
        type_url::ROUTE,
        &server.of_type(type_url::ROUTE).unwrap()[name].any,
    )
    .unwrap();
    let Part::Routes(routes) = routes else {
        panic!("routes")
    };
    let limit = routes[0].rate_limit.as_ref().unwrap();
    assert_eq!(limit.requests_per_second, 50.0);
    assert_eq!(limit.burst, Some(10));
    assert_eq!(routes[0].timeout, None);
}

/// Fuzz: arbitrary bytes as any of the four Envoy resource types never
/// panic remora-proxy's translation (it accepts or names what is wrong),
/// starting from the real resources of EVERY_POLICY and the mesh example.
/// `REMORA_FUZZ_ITERATIONS` scales the run.
#[test]
fn fuzz_the_proxy_translation_of_envoy_resources() {
    let mut seeds = Vec::new();
    let example = include_str!("../../../examples/mesh/mesh.yaml");
    for mesh in [EVERY_POLICY, example] {
        let t = translate(&parse_yaml(mesh).unwrap(), None);
        for proxy in &t.proxies {
            for (i, resources) in proxy.by_type.iter().enumerate() {
                for resource in resources.values() {
                    let mut seed = vec![i as u8];
                    seed.extend_from_slice(&resource.any.value);
                    seeds.push(seed);
                }
            }
        }
    }
    let ran = remora_proxy::fuzz::run("xds translation", &seeds, 20_000, |input| {
        let Some((&kind, value)) = input.split_first() else {
            return;
        };
        let type_url = type_url::ALL[kind as usize % 4];
        let any = Any {
            type_url: type_url.to_string(),
            value: value.to_vec(),
        };
        let _ = remora_proxy::xds::translate::translate(type_url, &any);
    });
    eprintln!("fuzz xds translation: {ran} inputs");
}

/// Fuzz: the mesh file parser and validator never panic.
#[test]
fn fuzz_the_mesh_file() {
    let seeds = vec![
        EVERY_POLICY.as_bytes().to_vec(),
        include_bytes!("../../../examples/mesh/mesh.yaml").to_vec(),
    ];
    let ran = remora_proxy::fuzz::run("mesh file", &seeds, 3_000, |input| {
        if let Ok(mesh) = parse_yaml(&String::from_utf8_lossy(input)) {
            let _ = translate(&mesh, None);
        }
    });
    eprintln!("fuzz mesh file: {ran} inputs");
}

/// Sidecar mode: the capture listeners and their original-destination
/// clusters, and the service listeners at the services' addresses, binding
/// no socket, with their direction.
#[test]
fn a_sidecar_gets_capture_listeners_and_listeners_by_original_destination() {
    use remora_xds_proto::listener::Listener;
    let mesh = parse_yaml(
        "
services:
  - {name: web, port: 80, addresses: [10.96.0.10], endpoints: ['10.0.1.1:80']}
  - {name: db, port: 5432, protocol: tcp, addresses: [10.96.0.11], endpoints: ['10.0.2.1:5432']}
  - {name: me, port: 8000, endpoints: ['10.0.3.1:8000']}
proxies:
  - node_id: pod
    capture: true
    inbound: [{service: me, listen: '0.0.0.0:8000', target: '127.0.0.1:8000'}]
    outbound: [{service: web}, {service: db}]
",
    )
    .unwrap();
    let t = translate(&mesh, None);
    let pod = &t.proxies[0];
    let names = |i: usize| {
        pod.by_type[i]
            .keys()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(2),
        [
            "inbound|0.0.0.0:8000",
            "inbound|capture",
            "outbound|10.96.0.10:80",
            "outbound|10.96.0.11:5432",
            "outbound|capture",
        ]
    );
    assert!(names(0).contains(&"PassthroughCluster".to_string()));
    assert!(names(0).contains(&"InboundPassthroughCluster".to_string()));
    let capture: Listener = get(pod, type_url::LISTENER, "outbound|capture");
    assert_eq!(capture.use_original_dst.map(|v| v.value), Some(true));
    assert_eq!(
        capture.traffic_direction,
        remora_xds_proto::core::TrafficDirection::Outbound as i32
    );
    let web: Listener = get(pod, type_url::LISTENER, "outbound|10.96.0.10:80");
    assert_eq!(web.bind_to_port.map(|v| v.value), Some(false));
    let inbound: Listener = get(pod, type_url::LISTENER, "inbound|0.0.0.0:8000");
    assert_eq!(inbound.bind_to_port.map(|v| v.value), Some(false));
    assert_eq!(
        inbound.traffic_direction,
        remora_xds_proto::core::TrafficDirection::Inbound as i32
    );
    let passthrough: Cluster = get(pod, type_url::CLUSTER, "PassthroughCluster");
    assert_eq!(
        passthrough.cluster_discovery_type,
        Some(
            remora_xds_proto::cluster::cluster::ClusterDiscoveryType::Type(
                remora_xds_proto::cluster::cluster::DiscoveryType::OriginalDst as i32
            )
        )
    );

    // The proxy takes the same resources: capture listeners, listeners that
    // bind nothing, the passthrough.
    let mut listeners = Vec::new();
    for resource in pod.by_type[2].values() {
        let (_, part) =
            remora_proxy::xds::translate::translate(type_url::LISTENER, &resource.any).unwrap();
        let remora_proxy::xds::translate::Part::Listener(part) = part else {
            panic!()
        };
        listeners.push(part);
    }
    let capture = listeners
        .iter()
        .find(|l| l.config.name == "inbound|capture")
        .unwrap();
    assert!(capture.config.original_destination);
    assert_eq!(
        capture.config.direction,
        Some(remora_proxy::config::Direction::Inbound)
    );
    assert_eq!(
        capture.unmatched_cluster.as_deref(),
        Some("InboundPassthroughCluster")
    );
}

/// `mtls: strict`: inbound listeners require client certificates, service
/// clusters check the service's identity; remora-proxy reads both back as
/// its mesh mTLS.
#[test]
fn a_strict_mesh_puts_mtls_on_inbound_listeners_and_service_clusters() {
    use remora_xds_proto::listener::Listener;
    let mesh = parse_yaml(
        "
mtls: strict
services:
  - {name: api, namespace: shop, port: 80, identity: api-sa, endpoints: ['10.0.0.1:15006']}
proxies:
  - {node_id: api-1, inbound: [{service: api.shop, listen: '10.0.0.1:15006', target: '127.0.0.1:80'}]}
  - {node_id: web-1, outbound: [{service: api.shop, listen: '127.0.0.1:15001'}]}
",
    )
    .unwrap();
    let t = translate(&mesh, None);
    let inbound: Listener = get(&t.proxies[0], type_url::LISTENER, "inbound|10.0.0.1:15006");
    assert!(inbound.filter_chains[0].transport_socket.is_some());
    let cluster: Cluster = get(&t.proxies[1], type_url::CLUSTER, "outbound|80||api.shop");
    assert!(cluster.transport_socket.is_some());
    let (_, part) = remora_proxy::xds::translate::translate(
        type_url::CLUSTER,
        &t.proxies[1].by_type[0]["outbound|80||api.shop"].any,
    )
    .unwrap();
    let remora_proxy::xds::translate::Part::Cluster(part) = part else {
        panic!()
    };
    assert_eq!(
        part.config.mtls.unwrap().identities,
        ["spiffe://cluster.local/ns/shop/sa/api-sa"]
    );
    let (_, part) = remora_proxy::xds::translate::translate(
        type_url::LISTENER,
        &t.proxies[0].by_type[2]["inbound|10.0.0.1:15006"].any,
    )
    .unwrap();
    let remora_proxy::xds::translate::Part::Listener(part) = part else {
        panic!()
    };
    assert_eq!(part.config.mtls, Some(remora_api::MtlsMode::Strict));
}

/// `mtls: permissive`: the inbound listener has Istio's two chains (TLS
/// with client certificates, raw_buffer) behind the TLS inspector, which
/// remora-proxy reads back as `mtls: permissive`; clusters still talk mTLS.
#[test]
fn a_permissive_mesh_takes_both_transports_on_inbound_listeners() {
    use remora_xds_proto::listener::Listener;
    let mesh = parse_yaml(
        "
mtls: permissive
services:
  - {name: api, namespace: shop, port: 80, identity: api-sa, endpoints: ['10.0.0.1:15006']}
proxies:
  - {node_id: api-1, inbound: [{service: api.shop, listen: '10.0.0.1:15006', target: '127.0.0.1:80'}]}
  - {node_id: web-1, outbound: [{service: api.shop, listen: '127.0.0.1:15001'}]}
",
    )
    .unwrap();
    let t = translate(&mesh, None);
    let inbound: Listener = get(&t.proxies[0], type_url::LISTENER, "inbound|10.0.0.1:15006");
    assert_eq!(
        inbound.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    let transports: Vec<_> = inbound
        .filter_chains
        .iter()
        .map(|c| {
            (
                c.filter_chain_match
                    .as_ref()
                    .unwrap()
                    .transport_protocol
                    .as_str(),
                c.transport_socket.is_some(),
            )
        })
        .collect();
    assert_eq!(transports, [("tls", true), ("raw_buffer", false)]);
    let cluster: Cluster = get(&t.proxies[1], type_url::CLUSTER, "outbound|80||api.shop");
    assert!(cluster.transport_socket.is_some());
    let (_, part) = remora_proxy::xds::translate::translate(
        type_url::LISTENER,
        &t.proxies[0].by_type[2]["inbound|10.0.0.1:15006"].any,
    )
    .unwrap();
    let remora_proxy::xds::translate::Part::Listener(part) = part else {
        panic!()
    };
    assert_eq!(part.config.mtls, Some(remora_api::MtlsMode::Permissive));
    // Chains with different filters are not permissive mTLS: refused.
    let mut odd = inbound.clone();
    odd.filter_chains[1].filters.clear();
    let refused =
        remora_proxy::xds::translate::translate(type_url::LISTENER, &remora_xds_proto::pack(&odd))
            .unwrap_err()
            .to_string();
    assert!(refused.contains("filter_chains"), "{refused}");
}

/// A service's authorization policies become RBAC filters on its inbound
/// listener (a DENY filter, then an ALLOW filter), which remora-proxy reads
/// back as the same policies; their version is stable across translations
/// although RBAC policies are a map.
#[test]
fn authorization_policies_travel_as_rbac_filters() {
    use remora_xds_proto::listener::Listener;
    let mesh = parse_yaml(
        "
mtls: strict
services:
  - name: api
    namespace: shop
    port: 80
    endpoints: ['10.0.0.1:8080']
    authorization:
      - {name: readers, action: allow, from: ['spiffe://cluster.local/ns/shop/sa/web-sa', 'spiffe://cluster.local/ns/ops/*'], methods: [GET, HEAD], ports: [8080], headers: [{name: x-team, exact: blue}, {name: x-debug, present: false}]}
      - {name: no-admin, action: deny, paths: ['/admin*', /debug]}
      - {name: anyone-healthz, action: allow, paths: [/healthz]}
  - name: db
    namespace: shop
    port: 5432
    protocol: tcp
    endpoints: ['10.0.0.1:5432']
    authorization:
      - {name: mesh-only, action: allow, from: ['*'], ports: [5432]}
proxies:
  - node_id: api-1
    inbound:
      - {service: api.shop, listen: '10.0.0.1:15006', target: '127.0.0.1:8080'}
      - {service: db.shop, listen: '10.0.0.1:15432', target: '127.0.0.1:5432'}
",
    )
    .unwrap();
    let t = translate(&mesh, None);
    let again = translate(&mesh, None);
    for name in ["inbound|10.0.0.1:15006", "inbound|10.0.0.1:15432"] {
        assert_eq!(
            t.proxies[0].by_type[2][name].version, again.proxies[0].by_type[2][name].version,
            "{name}"
        );
        let listener: Listener = get(&t.proxies[0], type_url::LISTENER, name);
        let (_, part) = remora_proxy::xds::translate::translate(
            type_url::LISTENER,
            &t.proxies[0].by_type[2][name].any,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}\n{listener:?}"));
        let remora_proxy::xds::translate::Part::Listener(part) = part else {
            panic!()
        };
        let service = if name.ends_with("15006") {
            &mesh.services[0]
        } else {
            &mesh.services[1]
        };
        let mut expected = service.authorization.clone();
        expected.sort_by_key(|p| {
            (
                p.action != remora_api::AuthorizationAction::Deny,
                p.name.clone(),
            )
        });
        assert_eq!(part.config.authorization, expected, "{name}");
    }
    // The HTTP listener's filters: deny, allow, router.
    let listener: Listener = get(&t.proxies[0], type_url::LISTENER, "inbound|10.0.0.1:15006");
    let Some(remora_xds_proto::listener::filter::ConfigType::TypedConfig(any)) =
        &listener.filter_chains[0].filters[0].config_type
    else {
        panic!()
    };
    let manager: remora_xds_proto::filters::http_connection_manager::HttpConnectionManager =
        remora_xds_proto::unpack(any).unwrap();
    let names: Vec<&str> = manager
        .http_filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.rbac",
            "envoy.filters.http.rbac",
            "envoy.filters.http.router"
        ]
    );
    // A TCP service's policies cannot look at requests.
    let e = parse_yaml(
        "services: [{name: db, port: 5432, protocol: tcp, authorization: [{name: p, action: deny, paths: [/x]}]}]",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("services[0].authorization[0].paths"), "{e}");
    // Without mTLS no peer has an identity: a `from` would match nothing.
    let e = parse_yaml(
        "services: [{name: api, port: 80, authorization: [{name: p, action: allow, from: ['*']}]}]",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("services[0].authorization[0].from: peers have identities only over mTLS"),
        "{e}"
    );
}

/// A service's `rate_limit.global`: Envoy's local rate limit on the inbound
/// route as before, plus the Redis settings in the route's Remora metadata,
/// with the service as the shared bucket; remora-proxy reads a global
/// limit back.
#[test]
fn a_global_rate_limit_travels_in_the_routes_remora_metadata() {
    let mesh = parse_yaml(
        "
services:
  - name: api
    namespace: shop
    port: 80
    endpoints: ['10.0.0.1:15006']
    policy: {rate_limit: {requests_per_second: 100, global: {redis: 'redis://10.0.0.9:6379/0', failure: closed}}}
proxies:
  - {node_id: api-1, inbound: [{service: api.shop, listen: '10.0.0.1:15006', target: '127.0.0.1:80'}]}
",
    )
    .unwrap();
    let t = translate(&mesh, None);
    let (_, part) = remora_proxy::xds::translate::translate(
        type_url::ROUTE,
        &t.proxies[0].by_type[3]["inbound|10.0.0.1:15006"].any,
    )
    .unwrap();
    let remora_proxy::xds::translate::Part::Routes(part) = part else {
        panic!()
    };
    let limit = part[0].rate_limit.clone().unwrap();
    assert_eq!(limit.requests_per_second, 100.0);
    let global = limit.global.unwrap();
    assert_eq!(global.redis, "redis://10.0.0.9:6379/0");
    assert_eq!(global.bucket.as_deref(), Some("api.shop"));
    assert_eq!(global.failure, remora_api::GlobalFailure::Closed);
    assert_eq!(global.timeout, std::time::Duration::from_millis(5));
    let e = parse_yaml(
        "services: [{name: api, port: 80, policy: {rate_limit: {requests_per_second: 1, global: {redis: 'http://x'}}}}]",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("services[0].policy.rate_limit.global.redis"),
        "{e}"
    );
}

/// A service's `cache`: every outbound route to it carries the cache in
/// its Remora metadata, which remora-proxy reads back as the route's
/// `cache`; a bad field is named by its mesh path.
#[test]
fn a_services_cache_travels_on_every_route_to_it() {
    let mesh = parse_yaml(
        "
services:
  - name: api
    namespace: shop
    port: 80
    endpoints: ['10.0.0.1:15006']
    policy: {cache: {ttl: 30s, methods: [GET, POST], stale_if_error: 1m}}
proxies:
  - {node_id: web-1, outbound: [{service: api.shop, listen: '127.0.0.1:8080'}]}
",
    )
    .unwrap();
    let t = translate(&mesh, None);
    let (_, part) = remora_proxy::xds::translate::translate(
        type_url::ROUTE,
        &t.proxies[0].by_type[3]["api.shop:80"].any,
    )
    .unwrap();
    let remora_proxy::xds::translate::Part::Routes(part) = part else {
        panic!()
    };
    let cache = part[0].cache.clone().expect("the route's cache");
    assert_eq!(cache.ttl, std::time::Duration::from_secs(30));
    assert_eq!(cache.methods, ["GET", "POST"]);
    assert_eq!(cache.stale_if_error, std::time::Duration::from_secs(60));
    let e = parse_yaml(
        "services: [{name: api, port: 80, policy: {cache: {ttl: 0s, grpc_methods: [nope]}}}]",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("services[0].policy.cache.ttl"), "{e}");
    assert!(
        e.contains("services[0].policy.cache.grpc_methods[0]"),
        "{e}"
    );
    let e =
        parse_yaml("services: [{name: db, port: 5432, protocol: tcp, policy: {cache: {ttl: 1s}}}]")
            .unwrap_err()
            .to_string();
    assert!(
        e.contains("services[0].policy.cache: applies to HTTP"),
        "{e}"
    );
}

#[test]
fn a_services_retry_and_timeouts_are_the_default_of_every_route_to_it() {
    let mesh = parse_yaml(
        "
services:
  - name: api
    port: 80
    endpoints: ['10.0.0.1:8080']
    policy: {retry: {attempts: 4, codes: [502]}, timeouts: {request: 7s, backendRequest: 2s}}
routes:
  - kind: HTTPRoute
    name: own
    parentRefs: [{name: api}]
    rules:
      - matches: [{path: {value: /own}}]
        retry: {attempts: 1}
        timeouts: {request: 1s}
      - matches: [{path: {value: /inherits}}]
proxies:
  - {node_id: web-1, outbound: [{service: api, listen: '127.0.0.1:8080'}]}
",
    )
    .unwrap();
    let t = translate(&mesh, None);
    let routes: route::RouteConfiguration = get(&t.proxies[0], type_url::ROUTE, "api.default:80");
    let actions: Vec<(u32, i64)> = routes.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| {
            let Some(route::route::Action::Route(action)) = &r.action else {
                panic!("a route action")
            };
            (
                action
                    .retry_policy
                    .as_ref()
                    .unwrap()
                    .num_retries
                    .unwrap()
                    .value,
                action.timeout.unwrap().seconds,
            )
        })
        .collect();
    // /inherits (the longer prefix first: two Envoy routes, exact and
    // prefix), /own (two), then the service's default route: only /own
    // keeps its own.
    assert_eq!(actions, [(4, 7), (4, 7), (1, 1), (1, 1), (4, 7)]);
    let e = parse_yaml(
        "services: [{name: db, port: 5432, protocol: tcp, policy: {retry: {attempts: 1}, timeouts: {request: 1s, backendRequest: 2s}}}]",
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "services[0].policy.retry: applies to HTTP and gRPC services only",
        "services[0].policy.timeouts.backendRequest: must not be longer than timeouts.request",
        "services[0].policy.timeouts: applies to HTTP and gRPC services only",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in {e}");
    }
    let e = parse_yaml(
        "services: [{name: a, port: 80, policy: {targetRefs: [{kind: Service, name: a}]}}]",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("services[0].policy.targetRefs: only a TrafficPolicy object has targetRefs"),
        "{e}"
    );
}

#[test]
fn a_version_stands_for_its_hash_and_only_this_servers_versions_do() {
    let resource = Resource::new("a".into(), &Cluster::default());
    assert_eq!(Resource::hash_of(&resource.version), Some(resource.hash));
    assert_eq!(Resource::hash_of("00000000000000ff"), Some(255));
    for foreign in [
        "",
        "1",
        "v1",
        "00000000000000FF",
        "00000000000000ff0",
        "+000000000000ff",
    ] {
        assert_eq!(Resource::hash_of(foreign), None, "{foreign:?}");
    }
}

#[test]
fn a_shared_diff_names_what_was_added_replaced_or_removed() {
    let cluster = |name: &str, connect_ms: i64| {
        let cluster = Cluster {
            name: name.into(),
            connect_timeout: Some(remora_xds_proto::protobuf::Duration {
                seconds: 0,
                nanos: (connect_ms * 1_000_000) as i32,
            }),
            ..Default::default()
        };
        Resource::new(name.into(), &cluster)
    };
    let set = |clusters: &[(&str, i64)]| {
        let mut resources = ProxyResources::default();
        for &(name, ms) in clusters {
            resources.insert(type_url::CLUSTER, &cluster(name, ms));
        }
        Arc::new(resources)
    };
    let from = set(&[("a", 1), ("b", 1), ("c", 1), ("e", 1)]);
    let to = set(&[("b", 1), ("c", 2), ("d", 1), ("e", 1), ("f", 1)]);
    let diff = SharedDiff::between(&from, &to);
    let changed: Vec<&str> = diff.changed[0].iter().map(|n| &**n).collect();
    assert_eq!(changed, ["a", "c", "d", "f"]);
    assert!(diff.changed[1..].iter().all(Vec::is_empty));
    let back = SharedDiff::between(&to, &from);
    let changed: Vec<&str> = back.changed[0].iter().map(|n| &**n).collect();
    assert_eq!(changed, ["a", "c", "d", "f"]);
}

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
    let names = |i: usize| client.by_type[i].keys().cloned().collect::<Vec<_>>();
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
        server.by_type[0].keys().collect::<Vec<_>>(),
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
            .map(|(name, _)| name.clone())
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

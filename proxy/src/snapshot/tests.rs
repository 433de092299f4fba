use std::sync::Arc;

use super::*;
use crate::config::parse_yaml;

fn compile(yaml: &str) -> Result<Snapshot, String> {
    let config = parse_yaml(yaml).map_err(|e| e.to_string())?;
    Snapshot::compile(config, None, &Telemetry::new(), 1, Mode::Check).map_err(|e| e.to_string())
}

const CLUSTERS: &str = "
clusters:
  - {name: api-v1, endpoints: [127.0.0.1:8091]}
  - {name: web, endpoints: [127.0.0.1:8081]}
";

#[test]
fn every_example_compiles() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            compile(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 3, "examples/*.yaml: {checked}");
    let snapshot = compile(include_str!("../../../examples/proxy.yaml")).unwrap();
    assert_eq!(snapshot.listeners.len(), 2);
    assert_eq!(snapshot.clusters.len(), 4);
}

#[test]
fn a_dangling_cluster_reference_is_named_by_its_path() {
    let yaml = format!(
        "{CLUSTERS}
listeners:
  - name: web
    address: 127.0.0.1:10000
    routes:
      - {{name: api, backends: [{{cluster: api-v1}}]}}
      - {{name: v3, backends: [{{cluster: api-v3}}]}}
"
    );
    assert_eq!(
        compile(&yaml).unwrap_err(),
        r#"listeners[0].routes[1].backends[0].cluster: no cluster named "api-v3""#
    );
}

#[test]
fn duplicates_are_named_by_their_path() {
    let yaml = "
clusters:
  - {name: a, endpoints: [127.0.0.1:1, 127.0.0.1:1]}
  - {name: a}
listeners:
  - {name: l, address: 127.0.0.1:10000, routes: [{name: r, backends: [{cluster: a}]}, {name: r, backends: [{cluster: a}]}]}
  - {name: l, address: 127.0.0.1:10000, protocol: tcp, cluster: a}
  - {name: m, address: 127.0.0.1:0, protocol: tcp, cluster: a}
  - {name: n, address: 127.0.0.1:0, protocol: tcp, cluster: a}
";
    assert_eq!(
        compile(yaml).unwrap_err(),
        [
            "clusters[0].endpoints[1]: endpoint 127.0.0.1:1 is listed twice",
            "clusters[1].name: duplicate cluster name \"a\"",
            "listeners[1].name: duplicate listener name \"l\"",
            "listeners[1].address: 127.0.0.1:10000 is already used by listeners[0]",
            "listeners[0].routes[1].name: duplicate route name \"r\" in this listener",
        ]
        .join("\n")
    );
}

#[test]
fn listener_kinds_take_only_their_own_fields() {
    let yaml = format!(
        "{CLUSTERS}
listeners:
  - {{name: a, address: 127.0.0.1:1, protocol: tcp}}
  - {{name: b, address: 127.0.0.1:2, protocol: tcp, cluster: web, routes: [{{name: r, backends: [{{cluster: web}}]}}]}}
  - {{name: c, address: 127.0.0.1:3, cluster: web}}
  - {{name: d, address: 127.0.0.1:4, protocol: tcp, cluster: nope}}
"
    );
    assert_eq!(
        compile(&yaml).unwrap_err(),
        [
            "listeners[0].cluster: required for protocol: tcp",
            "listeners[1].routes: TCP listeners have no routes; set cluster instead",
            "listeners[2].cluster: only TCP listeners take a cluster; HTTP listeners send traffic through routes[].backends",
            "listeners[3].cluster: no cluster named \"nope\"",
        ]
        .join("\n")
    );
}

#[test]
fn capture_listener_fields_are_checked() {
    let yaml = format!(
        "{CLUSTERS}
listeners:
  - {{name: a, address: '0.0.0.0:15001', original_destination: true, bind: false}}
  - {{name: b, address: '0.0.0.0:15002', original_destination: true, cluster: web}}
  - {{name: c, address: '127.0.0.1:0', bind: false, routes: [{{name: r, backends: [{{cluster: web}}]}}]}}
  - {{name: d, address: '127.0.0.1:4', unmatched: reject, routes: [{{name: r, backends: [{{cluster: web}}]}}]}}
  - {{name: e, address: '0.0.0.0:15003', original_destination: true, unmatched: reject}}
  - {{name: f, address: '10.0.0.9:80', bind: false, routes: [{{name: r, backends: [{{cluster: web}}]}}]}}
  - {{name: g, address: '0.0.0.0:15004', original_destination: true, protocol: http}}
  - {{name: h, address: '0.0.0.0:15005', original_destination: true, detect_timeout: 0s, opaque_ports: [25, 0]}}
  - {{name: i, address: '0.0.0.0:15007', original_destination: true, protocol: tcp, opaque_ports: [25]}}
  - {{name: j, address: '127.0.0.1:5', protocol: auto, cluster: web}}
  - {{name: k, address: '127.0.0.1:6', detect_timeout: 1s, routes: [{{name: r, backends: [{{cluster: web}}]}}]}}
  - {{name: l, address: '10.0.0.9:81', bind: false, direction: inbound, cluster: web, routes: [{{name: r, backends: [{{cluster: web}}]}}]}}
  - {{name: m, address: '[::]:15008', original_destination: true, direction: inbound, opaque_ports: [5432]}}
  - {{name: n, address: '0.0.0.0:15009', original_destination: true, tls: {{cert_file: a.pem, key_file: a.key}}}}
  - {{name: o, address: '10.0.0.9:82', bind: false, tls: {{cert_file: a.pem, key_file: a.key}}}}
"
    );
    assert_eq!(
        compile(&yaml).unwrap_err(),
        [
            "listeners[0].bind: a capture listener (original_destination: true) must bind its port",
            "listeners[1].original_destination: a capture listener has no routes or cluster: it hands each connection to the listener of its original destination",
            "listeners[2].address: a listener with bind: false stands for an original destination, so it needs a port (not 0)",
            "listeners[3].unmatched: only a capture listener (original_destination: true) has unmatched connections",
            "listeners[6].protocol: a capture listener is auto (detect each connection) or tcp (no detection); HTTP is for the listeners it hands connections to",
            "listeners[7].detect_timeout: must be greater than 0 (protocol: tcp turns detection off)",
            "listeners[7].opaque_ports[1]: 0 is not a port",
            "listeners[8].opaque_ports: protocol: tcp does no detection; leave it out or use protocol: auto",
            "listeners[9].protocol: auto detects captured traffic: only for a listener with bind: false (or a capture listener)",
            "listeners[10].detect_timeout: only a capture listener (original_destination: true) detects protocols",
            "listeners[13].tls: a capture listener passes connections on as they are; put tls on the listener it hands them to",
            "listeners[14].tls: terminating TLS needs a declared protocol (http or tcp), not auto",
        ]
        .join("\n")
    );
}

#[test]
fn route_actions_and_limits_are_checked() {
    let yaml = format!(
        "{CLUSTERS}
listeners:
  - name: l
    address: 127.0.0.1:1
    max_request_headers_kb: 0
    request_headers_timeout: 0s
    routes:
      - {{name: both, backends: [{{cluster: web}}], direct_response: {{status: 200}}}}
      - {{name: neither}}
      - {{name: bad-status, direct_response: {{status: 99}}}}
      - {{name: zero, backends: [{{cluster: web, weight: 0}}]}}
      - {{name: no-timeout, timeout: 0s, backends: [{{cluster: web}}]}}
"
    );
    assert_eq!(
        compile(&yaml).unwrap_err(),
        [
            "listeners[0].routes[0]: set either backends or direct_response, not both",
            "listeners[0].routes[1].backends: a route needs at least one backend (or a direct_response)",
            "listeners[0].routes[2].direct_response.status: 99 is not a status code between 200 and 599",
            "listeners[0].routes[3].backends: at least one backend needs a weight above 0",
            "listeners[0].routes[4].timeout: must be greater than 0 (leave it out for no timeout)",
            "listeners[0].request_headers_timeout: must be greater than 0",
            "listeners[0].max_request_headers_kb: 0 is outside 1..=1024",
        ]
        .join("\n")
    );
}

#[test]
fn a_bad_log_level_is_named() {
    assert!(
        compile("log: {level: 'info,['}")
            .unwrap_err()
            .starts_with("log.level: invalid log level")
    );
}

#[test]
fn unchanged_clusters_survive_a_recompile_and_changed_ones_are_rebuilt() {
    let telemetry = Telemetry::new();
    let first = Snapshot::compile(
        parse_yaml(CLUSTERS).unwrap(),
        None,
        &telemetry,
        1,
        Mode::Check,
    )
    .unwrap();
    // (A change of endpoints alone keeps the cluster: see below.)
    let changed = CLUSTERS.replace(
        "{name: web, endpoints",
        "{name: web, protocol: http2, endpoints",
    );
    assert_ne!(changed, CLUSTERS);
    let second = Snapshot::compile(
        parse_yaml(&changed).unwrap(),
        Some(&first),
        &telemetry,
        2,
        Mode::Check,
    )
    .unwrap();
    assert!(Arc::ptr_eq(
        first.cluster("api-v1").unwrap(),
        second.cluster("api-v1").unwrap()
    ));
    assert!(!Arc::ptr_eq(
        first.cluster("web").unwrap(),
        second.cluster("web").unwrap()
    ));
}

#[test]
fn resilience_settings_are_checked() {
    let yaml = "
clusters:
  - name: a
    endpoints: [127.0.0.1:1]
    circuit_breakers: {max_requests: 0}
    outlier_detection: {consecutive_5xx: 0, interval: 0s, max_ejection_percent: 150, base_ejection_time: 10s, max_ejection_time: 1s}
    health_check: {http: {path: health, expected_statuses: [200, '300-200', 700]}, tcp: {}, interval: 1s, timeout: 2s, unhealthy_threshold: 0}
  - name: b
    endpoints: [127.0.0.1:2]
    health_check: {interval: 0s}
listeners:
  - name: l
    address: 127.0.0.1:1
    rate_limit: {requests_per_second: 0}
    routes:
      - name: r
        backends: [{cluster: a}]
        retry: {attempts: 0, on: [5xx], retriable_status_codes: [99], per_try_timeout: 0s, backoff: {base: 2s, max: 1s}, budget: {percent: 150}, buffer_limit_bytes: 0}
        rate_limit: {requests_per_second: 10, burst: 0, key: 'header:'}
        fault: {delay: {duration: 1s, percent: 101}, abort: {percent: 10}}
      - name: s
        backends: [{cluster: b}]
        rate_limit: {requests_per_second: 1, key: peer_identity}
        fault: {abort: {status: 503, grpc_status: 14, percent: 1}}
  - {name: t, address: 127.0.0.1:2, protocol: tcp, cluster: a, connection_rate_limit: {connections_per_second: -1}, max_connections: 0}
";
    assert_eq!(
        compile(yaml).unwrap_err(),
        [
            "clusters[0].outlier_detection.interval: must be greater than 0",
            "clusters[0].outlier_detection.base_ejection_time: must be greater than 0 and at most max_ejection_time",
            "clusters[0].outlier_detection.max_ejection_percent: 150 is outside 0..=100",
            "clusters[0].health_check: exactly one of http, grpc and tcp must be set",
            "clusters[0].health_check.timeout: must not be longer than the interval",
            "clusters[0].health_check.unhealthy_threshold: must be at least 1",
            "clusters[0].health_check.http.path: \"health\" must start with /",
            "clusters[0].health_check.http.expected_statuses[1]: expected a status code (200) or a range of them (\"200-399\")",
            "clusters[0].health_check.http.expected_statuses[2]: expected a status code (200) or a range of them (\"200-399\")",
            "clusters[0].circuit_breakers.max_requests: must be at least 1 (0 would refuse every request; leave it out for no limit)",
            "clusters[1].health_check: exactly one of http, grpc and tcp must be set",
            "clusters[1].health_check.interval: must be greater than 0",
            "listeners[0].routes[0].retry.retriable_status_codes[0]: 99 is not a status code",
            "listeners[0].routes[0].retry.per_try_timeout: must be greater than 0 (leave it out for none)",
            "listeners[0].routes[0].retry.backoff: base must be greater than 0 and at most max",
            "listeners[0].routes[0].retry.budget.percent: 150 is outside 0..=100",
            "listeners[0].routes[0].rate_limit.burst: must be at least 1",
            "listeners[0].routes[0].fault.delay.percent: 101 is outside 0..=100",
            "listeners[0].routes[0].fault.abort: set exactly one of status and grpc_status",
            "listeners[0].routes[1].fault.abort: set exactly one of status and grpc_status",
            "listeners[0].rate_limit.requests_per_second: 0 must be above 0 (and at most 1e9)",
            "listeners[1].max_connections: must be at least 1 (leave it out for no limit)",
            "listeners[1].connection_rate_limit.connections_per_second: -1 must be above 0 (and at most 1e9)",
        ]
        .join("\n")
    );
    // Unknown retry conditions and rate-limit keys are named with their place.
    let err = compile(
        "
clusters: [{name: a, endpoints: [127.0.0.1:1]}]
listeners:
  - {name: l, address: 127.0.0.1:1, routes: [{name: r, backends: [{cluster: a}], retry: {on: [5xx, sometimes]}}]}
",
    )
    .unwrap_err();
    assert!(
        err.starts_with("listeners[0].routes[0].retry.on[1]: unknown variant `sometimes`, expected one of 5xx, gateway-error,"),
        "{err}"
    );
    let err = compile(
        "
clusters: [{name: a, endpoints: [127.0.0.1:1]}]
listeners:
  - {name: l, address: 127.0.0.1:1, routes: [{name: r, backends: [{cluster: a}], rate_limit: {requests_per_second: 5, key: 'header:'}}]}
",
    )
    .unwrap_err();
    assert_eq!(
        err,
        "listeners[0].routes[0].rate_limit.key: \"header:\" is not a key: use none, source_ip, peer_identity or header:NAME"
    );
}

/// Every whole config shown in the README and docs (a YAML block with
/// top-level `listeners:` or `clusters:`) is valid.
#[test]
fn every_config_in_the_docs_compiles() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let blocks = text.split("```yaml\n").skip(1);
        for rest in blocks {
            let block = rest.split("```").next().unwrap();
            let whole = block
                .lines()
                .any(|l| l.starts_with("listeners:") || l.starts_with("clusters:"));
            if !whole || block.contains("...") {
                continue;
            }
            compile(block).unwrap_or_else(|e| panic!("{}: {e}\n{block}", file.display()));
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked} configs found in the docs");
}

fn addresses(cluster: &Cluster) -> Vec<String> {
    cluster
        .endpoints()
        .all()
        .iter()
        .map(|e| e.address.to_string())
        .collect()
}

#[test]
fn an_endpoint_change_keeps_the_cluster_and_the_endpoints_that_stay() {
    let telemetry = Telemetry::new();
    let at = |endpoints: &str, timeout: &str| {
        parse_yaml(&format!(
            "clusters: [{{name: api, connect_timeout: {timeout}, endpoints: [{endpoints}]}}]"
        ))
        .unwrap()
    };
    let first = Snapshot::compile(
        at("127.0.0.1:1, 127.0.0.1:2", "1s"),
        None,
        &telemetry,
        1,
        Mode::Check,
    )
    .unwrap();
    let kept = first.clusters[0].endpoints().all()[1].clone();

    let second = Snapshot::compile(
        at("127.0.0.1:2, 127.0.0.1:3", "1s"),
        Some(&first),
        &telemetry,
        2,
        Mode::Check,
    )
    .unwrap();
    assert!(
        Arc::ptr_eq(&first.clusters[0], &second.clusters[0]),
        "the same cluster object serves on"
    );
    assert_eq!(
        addresses(&second.clusters[0]),
        ["127.0.0.1:1", "127.0.0.1:2"],
        "nothing changes before the snapshot goes live"
    );
    assert_eq!(second.apply_endpoint_updates(), 1);
    assert_eq!(
        addresses(&second.clusters[0]),
        ["127.0.0.1:2", "127.0.0.1:3"]
    );
    let now = second.clusters[0].endpoints().all()[0].clone();
    assert!(
        Arc::ptr_eq(&kept, &now),
        "an endpoint that stays keeps its pool and state"
    );
    assert_eq!(second.apply_endpoint_updates(), 0, "applied once");

    // A bad endpoint list is refused with its path, and the live cluster is untouched.
    let error = Snapshot::compile(
        at("127.0.0.1:4, 127.0.0.1:4", "1s"),
        Some(&second),
        &telemetry,
        3,
        Mode::Check,
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "clusters[0].endpoints[1]: endpoint 127.0.0.1:4 is listed twice"
    );
    assert_eq!(
        addresses(&second.clusters[0]),
        ["127.0.0.1:2", "127.0.0.1:3"]
    );

    // Any other change builds a new cluster with the new endpoints.
    let third = Snapshot::compile(
        at("127.0.0.1:5", "2s"),
        Some(&second),
        &telemetry,
        3,
        Mode::Check,
    )
    .unwrap();
    assert!(!Arc::ptr_eq(&second.clusters[0], &third.clusters[0]));
    assert_eq!(addresses(&third.clusters[0]), ["127.0.0.1:5"]);
    assert_eq!(third.apply_endpoint_updates(), 0);

    // Back to the list the cluster was built with: what counts is the live
    // endpoints, not the list it started from.
    let back = Snapshot::compile(
        at("127.0.0.1:1, 127.0.0.1:2", "1s"),
        Some(&second),
        &telemetry,
        4,
        Mode::Check,
    )
    .unwrap();
    assert!(Arc::ptr_eq(&second.clusters[0], &back.clusters[0]));
    assert_eq!(back.apply_endpoint_updates(), 1);
    assert_eq!(addresses(&back.clusters[0]), ["127.0.0.1:1", "127.0.0.1:2"]);
}

#[test]
fn application_probes_and_adaptive_concurrency_are_checked() {
    let yaml = "
app_probes:
  /healthz: {httpGet: {port: 8080}}
  /app-health/web/readyz: {httpGet: {path: ready, port: 0, scheme: GRPC}, timeoutSeconds: 0}
clusters:
  - {name: a, endpoints: [127.0.0.1:1], adaptive_concurrency: {percentile: 0, min_concurrency: 5, max_concurrency: 4, sample_interval: 0s}}
listeners:
  - {name: t, address: 127.0.0.1:2, protocol: tcp, cluster: a, adaptive_concurrency: {}}
";
    assert_eq!(
        compile(yaml).unwrap_err(),
        [
            "clusters[0].adaptive_concurrency.sample_interval: must be at least 1ms",
            "clusters[0].adaptive_concurrency.percentile: 0 is outside (0, 100]",
            "clusters[0].adaptive_concurrency.max_concurrency: 4 is below min_concurrency 5",
            "app_probes[\"/app-health/web/readyz\"].httpGet.scheme: \"GRPC\": HTTP or HTTPS",
            "app_probes[\"/app-health/web/readyz\"].httpGet.port: must be 1-65535",
            "app_probes[\"/app-health/web/readyz\"].httpGet.path: must start with /",
            "app_probes[\"/app-health/web/readyz\"].timeoutSeconds: must be at least 1",
            "app_probes[\"/healthz\"]: a probe's admin path starts with /app-health/ (e.g. /app-health/web/readyz)",
            "listeners[0].adaptive_concurrency: limits HTTP requests: only on an HTTP listener (or a cluster's)",
        ]
        .join("\n")
    );
}

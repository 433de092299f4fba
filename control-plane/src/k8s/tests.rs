use std::path::Path;

use super::*;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn strict() -> Settings {
    Settings {
        mtls: MtlsMode::Strict,
        ..Settings::default()
    }
}

/// Objects from YAML documents.
fn objects(yaml: &str) -> Objects {
    let mut objects = Objects::default();
    for document in serde_saphyr::from_multiple::<serde_json::Value>(yaml).unwrap() {
        objects.add(document);
    }
    objects
}

fn verdict<'a>(report: &'a Report, kind: &str, name: &str) -> &'a Verdict {
    report
        .objects
        .iter()
        .find(|(o, _)| o.kind == kind && o.name == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {kind} {name} in {report:#?}"))
}

fn rejected(report: &Report, kind: &str, name: &str) -> (&'static str, String) {
    match verdict(report, kind, name) {
        Verdict::Rejected { reason, message } => (reason, message.clone()),
        Verdict::Accepted => panic!("{kind} {name} was accepted"),
    }
}

const APP: &str = "
apiVersion: v1
kind: Service
metadata: {name: api, namespace: prod}
spec:
  clusterIP: 10.96.1.1
  selector: {app: api}
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: grpc, port: 9090, targetPort: grpc, appProtocol: grpc}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: prod, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: grpc, port: 9091}]
endpoints:
  - {addresses: [10.1.1.1], conditions: {ready: true}, zone: a}
  - {addresses: [10.1.1.2], conditions: {ready: false, serving: true, terminating: true}}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: prod, labels: {app: api}}
spec:
  serviceAccountName: api
  initContainers: [{name: remora-proxy, image: 'proxy:1', restartPolicy: Always}]
  containers: [{name: api, image: 'api:1', ports: [{name: grpc, containerPort: 9091}]}]
status: {phase: Running, podIP: 10.1.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: batch-0, namespace: prod, labels: {app: api}}
spec:
  initContainers: [{name: remora-proxy, image: 'proxy:1', restartPolicy: Always}]
  containers: [{name: job, image: 'app:1'}]
status: {phase: Succeeded, podIP: 10.1.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: plain-0, namespace: prod}
spec:
  containers: [{name: app, image: 'app:1'}]
status: {phase: Running, podIP: 10.1.1.4}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: prod}
spec: {}
";

#[test]
fn the_example_manifests_serve_what_the_equivalent_mesh_file_serves() {
    let (from_manifests, report) =
        manifests::load(&root().join("examples/kubernetes"), &strict()).unwrap();
    assert_eq!(report.rejected().count(), 0, "{report:#?}");
    assert_eq!(report.objects.len(), 14);
    let text =
        std::fs::read_to_string(root().join("control-plane/tests/fixtures/kubernetes-mesh.yaml"))
            .unwrap();
    let from_file = crate::mesh::parse_yaml_with(&text, MtlsMode::Strict).unwrap();

    let a = crate::translate::translate(&from_manifests, None);
    let b = crate::translate::translate(&from_file, None);
    let by_node = |mesh: &Mesh, translation: &crate::translate::Translation| {
        mesh.proxies
            .iter()
            .map(|p| p.node_id.clone())
            .zip(translation.proxies.iter().map(|r| {
                (0..4)
                    .map(|t| {
                        r.of(t)
                            .iter()
                            .map(|(name, r)| (name.to_string(), r.any.clone()))
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            }))
            .collect::<BTreeMap<_, _>>()
    };
    let (a, b) = (by_node(&from_manifests, &a), by_node(&from_file, &b));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        ["reviews-v1-0.shop", "reviews-v2-0.shop", "web-0.shop"]
    );
    for (node, resources) in &a {
        let names = |r: &Vec<Vec<(String, _)>>| {
            r.iter()
                .map(|t| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(resources), names(&b[node]), "{node}: resource names");
        assert!(resources == &b[node], "{node}: resource contents differ");
        // Listeners, routes, clusters and endpoints: all four kinds are there.
        assert!(resources.iter().all(|t| !t.is_empty()), "{node}");
    }
}

#[test]
fn services_endpoints_and_pods_become_services_and_sidecars() {
    let (mesh, report) = build(&objects(APP), &Settings::default()).unwrap();
    assert_eq!(report.rejected().count(), 0, "{report:#?}");
    // Two ports: two mesh services, NAME-PORT.
    let names: Vec<_> = mesh.services.iter().map(|s| s.key()).collect();
    assert_eq!(names, ["api-80.prod", "api-9090.prod"]);
    let http = &mesh.services[0];
    assert_eq!(http.protocol, ServiceProtocol::Http);
    assert_eq!(http.addresses, ["10.96.1.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(http.identity, "api");
    // Ready endpoints only (the terminating one is left out while one is ready).
    let endpoints: Vec<_> = http.endpoints.iter().map(|e| e.address).collect();
    assert_eq!(endpoints, ["10.1.1.1:8080".parse().unwrap()]);
    assert_eq!(http.endpoints[0].zone.as_deref(), Some("a"));
    let grpc = &mesh.services[1];
    assert_eq!(grpc.protocol, ServiceProtocol::Grpc);
    assert_eq!(grpc.endpoints[0].address, "10.1.1.1:9091".parse().unwrap());

    // Only the running pod with the sidecar is a proxy.
    assert_eq!(mesh.proxies.len(), 1);
    let proxy = &mesh.proxies[0];
    assert_eq!(proxy.node_id, "api-0.prod");
    assert!(proxy.capture);
    assert_eq!(proxy.identity.as_deref(), Some("api.prod"));
    let inbound: Vec<_> = proxy
        .inbound
        .iter()
        .map(|i| (i.service.as_str(), i.listen, i.target))
        .collect();
    assert_eq!(
        inbound,
        [
            (
                "api-80.prod",
                "10.1.1.1:8080".parse().unwrap(),
                "127.0.0.1:8080".parse().unwrap()
            ),
            // targetPort by name, from the container's ports.
            (
                "api-9090.prod",
                "10.1.1.1:9091".parse().unwrap(),
                "127.0.0.1:9091".parse().unwrap()
            ),
        ]
    );
    assert!(proxy.outbound_all && proxy.outbound.is_empty());
}

#[test]
fn only_terminating_endpoints_still_serve_until_a_ready_one_comes() {
    let yaml = APP.replace(
        "{addresses: [10.1.1.1], conditions: {ready: true}, zone: a}",
        "{addresses: [10.1.1.1], conditions: {ready: false, serving: false}, zone: a}",
    );
    let (mesh, _) = build(&objects(&yaml), &Settings::default()).unwrap();
    let endpoints: Vec<_> = mesh.services[0]
        .endpoints
        .iter()
        .map(|e| e.address)
        .collect();
    assert_eq!(endpoints, ["10.1.1.2:8080".parse().unwrap()]);
}

#[test]
fn a_malformed_object_is_reported_by_field_path_and_the_rest_is_served() {
    let yaml = format!(
        "{APP}
---
apiVersion: remora.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: bad-field, namespace: prod}}
spec:
  targetRefs: [{{kind: Service, name: api}}]
  load_balancer: {{policy: fastest}}
---
apiVersion: remora.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: bad-hash, namespace: prod}}
spec:
  targetRefs: [{{kind: Service, name: api}}]
  load_balancer: {{hash_on: {{header: x}}}}
---
apiVersion: remora.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: no-target, namespace: prod}}
spec:
  load_balancer: {{policy: random}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: to-nowhere, namespace: prod}}
spec:
  parentRefs: [{{kind: Service, name: api, port: 80}}]
  rules: [{{backendRefs: [{{name: missing, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bad-regex, namespace: prod}}
spec:
  parentRefs: [{{kind: Service, name: api, port: 80}}]
  rules: [{{matches: [{{path: {{type: RegularExpression, value: '(('}}}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: at-a-gateway, namespace: prod}}
spec:
  parentRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: public}}]
  rules: [{{backendRefs: [{{name: api, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: good, namespace: prod}}
spec:
  parentRefs: [{{kind: Service, name: api, port: 80}}]
  rules: [{{matches: [{{path: {{value: /v2}}}}], timeouts: {{request: 1s}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: broken, namespace: prod}}
spec:
  ports: [{{port: 70000}}]
"
    );
    let (mesh, report) = build(&objects(&yaml), &Settings::default()).unwrap();
    let (reason, message) = rejected(&report, "TrafficPolicy", "bad-field");
    assert_eq!(reason, "Invalid");
    assert!(
        message.starts_with("spec.load_balancer.policy: unknown variant `fastest`"),
        "{message}"
    );
    let (_, message) = rejected(&report, "TrafficPolicy", "bad-hash");
    assert_eq!(
        message,
        "spec.load_balancer.hash_on: only for ring_hash and maglev, not round_robin"
    );
    let (_, message) = rejected(&report, "TrafficPolicy", "no-target");
    assert_eq!(message, "spec.targetRefs: at least one Service is required");
    let (reason, message) = rejected(&report, "HTTPRoute", "to-nowhere");
    assert_eq!(reason, "BackendNotFound");
    assert_eq!(
        message,
        "spec.rules[0].backendRefs[0].name: no Service prod/missing"
    );
    let (_, message) = rejected(&report, "HTTPRoute", "bad-regex");
    assert!(
        message.starts_with("spec.rules[0].matches[0].path.value: invalid regex"),
        "{message}"
    );
    let (_, message) = rejected(&report, "Service", "broken");
    assert_eq!(message, "spec.ports[0].port: 70000 is outside 1..=65535");
    // A route of a Gateway is another controller's: not judged at all.
    assert!(!report.objects.keys().any(|o| o.name == "at-a-gateway"));
    // The rest is served: the good route and the services.
    assert_eq!(verdict(&report, "HTTPRoute", "good"), &Verdict::Accepted);
    let routes: Vec<_> = mesh.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(routes, ["good"]);
    assert_eq!(mesh.routes[0].parent_refs[0].name, "api-80");
    assert_eq!(mesh.services.len(), 2);
    // The services keep their default policy: no bad policy applied.
    assert_eq!(
        mesh.services[0].policy,
        crate::mesh::TrafficPolicy::default()
    );
}

#[test]
fn of_two_policies_on_one_service_the_oldest_wins() {
    let policy = |name: &str, created: &str, lb: &str| {
        format!(
            "---
apiVersion: remora.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: {name}, namespace: prod, creationTimestamp: '{created}'}}
spec:
  targetRefs: [{{kind: Service, name: api}}]
  load_balancer: {{policy: {lb}}}
"
        )
    };
    let yaml = format!(
        "{APP}{}{}",
        policy("newer", "2026-02-01T00:00:00Z", "random"),
        policy("older", "2026-01-01T00:00:00Z", "least_request")
    );
    let (mesh, report) = build(&objects(&yaml), &Settings::default()).unwrap();
    assert_eq!(
        verdict(&report, "TrafficPolicy", "older"),
        &Verdict::Accepted
    );
    let (reason, message) = rejected(&report, "TrafficPolicy", "newer");
    assert_eq!(reason, "Conflicted");
    assert!(message.contains("TrafficPolicy prod/older"), "{message}");
    assert_eq!(
        mesh.services[0].policy.load_balancer.policy,
        remora_api::LbPolicy::LeastRequest
    );
}

#[test]
fn a_route_to_a_multi_port_service_names_the_port() {
    let yaml = format!(
        "{APP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: all-ports, namespace: prod}}
spec:
  parentRefs: [{{kind: Service, name: api, port: 9090}}]
  rules: [{{backendRefs: [{{name: api}}]}}]
"
    );
    let (_, report) = build(&objects(&yaml), &Settings::default()).unwrap();
    let (_, message) = rejected(&report, "GRPCRoute", "all-ports");
    assert_eq!(
        message,
        "spec.rules[0].backendRefs[0].port: required: Service prod/api has several ports"
    );
}

#[test]
fn a_list_is_read_item_by_item_and_other_kinds_are_ignored() {
    let yaml = "
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Service
    metadata: {name: a}
    spec: {ports: [{port: 80}]}
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: c}
";
    let objects = objects(yaml);
    assert_eq!(objects.ignored, 1);
    let (mesh, _) = build(&objects, &Settings::default()).unwrap();
    assert_eq!(mesh.services[0].key(), "a.default");
}

#[test]
fn the_committed_crds_are_what_the_types_generate() {
    let path = root().join("charts/remora/crds/crds.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = remora_api::crd::crds_yaml();
    assert!(
        committed == generated,
        "{} is stale: run `cargo run -p remora-control-plane -- crds > charts/remora/crds/crds.yaml`",
        path.display()
    );
}

#[test]
fn a_policy_whose_services_do_not_exist_is_reported() {
    let yaml = format!(
        "{APP}
---
apiVersion: remora.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: orphan, namespace: prod}}
spec:
  targetRefs: [{{kind: Service, name: gone}}]
  action: deny
"
    );
    let (mesh, report) = build(&objects(&yaml), &strict()).unwrap();
    let (reason, message) = rejected(&report, "AuthorizationPolicy", "orphan");
    assert_eq!(reason, "TargetNotFound");
    assert_eq!(message, "spec.targetRefs: no Service gone in prod");
    assert!(mesh.services.iter().all(|s| s.authorization.is_empty()));
}

/// Every Remora or Gateway API object shown in docs/kubernetes.md parses.
#[test]
fn every_object_in_the_kubernetes_docs_parses() {
    let text = std::fs::read_to_string(root().join("docs/kubernetes.md")).unwrap();
    let mut checked = 0;
    for rest in text.split("```yaml\n").skip(1) {
        let block = rest.split("```").next().unwrap();
        let ours = block.contains("apiVersion: remora.dev/")
            || block.contains("apiVersion: gateway.networking.k8s.io/");
        if !ours {
            continue;
        }
        let objects = objects(block);
        assert!(
            objects.report.objects.is_empty(),
            "{:#?}\n{block}",
            objects.report
        );
        assert_eq!(objects.ignored, 0, "{block}");
        checked += 1;
    }
    assert!(checked >= 3, "{checked} objects found in the docs");
}

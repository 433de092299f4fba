//! `serve --kubernetes` against a fake API server that speaks list and
//! watch with resource versions, bookmarks and 410 Gone: the initial sync,
//! objects added, modified and deleted, a watch restarted after 410, a
//! 30 s outage during which the last mesh keeps being served and the
//! control plane says it is not ready, status written with the right
//! conditions by the leader alone, and the lease handed over between two
//! replicas; the CA's root shared through a Secret, and a sidecar's
//! service-account token, checked with a TokenReview, getting it a
//! certificate in the configured trust domain.

mod support;

use std::sync::Arc;
use std::time::Duration;

use remora_control_plane::ControlPlane;
use remora_control_plane::k8s::fake::*;
use remora_control_plane::k8s::leader::LeaseConfig;
use remora_control_plane::mesh::Mesh;
use serde_json::{Value, json};
use support::{admin, eventually};

fn service(name: &str, ip: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"clusterIP": ip, "selector": {"app": name},
                    "ports": [{"name": "http", "port": port, "targetPort": port}]}})
}

fn slice(service: &str, addresses: &[&str], port: u16) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-1"), "namespace": "shop",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": port}],
           "endpoints": addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>()})
}

fn pod(name: &str, app: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
           "spec": {"serviceAccountName": app,
                    "initContainers": [{"name": "remora-proxy", "image": "proxy:1", "restartPolicy": "Always"}],
                    "containers": [{"name": app, "image": "app:1"}]},
           "status": {"phase": "Running", "podIP": ip}})
}

/// Every collection the control plane reads but the Gateway API's (as a
/// cluster without its CRDs), and leases.
const COLLECTIONS: [&str; 6] = [
    SERVICES,
    PODS,
    ENDPOINT_SLICES,
    TRAFFIC_POLICIES,
    AUTHORIZATION_POLICIES,
    LEASES,
];

async fn api_server() -> FakeApiServer {
    let api = FakeApiServer::start(&COLLECTIONS).await;
    api.apply(SERVICES, service("web", "10.96.0.10", 80));
    api.apply(SERVICES, service("reviews", "10.96.0.20", 9080));
    api.apply(ENDPOINT_SLICES, slice("web", &["10.1.0.10"], 80));
    api.apply(ENDPOINT_SLICES, slice("reviews", &["10.1.0.11"], 9080));
    api.apply(PODS, pod("web-0", "web", "10.1.0.10"));
    api
}

fn lease(identity: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: "remora-system".into(),
        name: "remora-control-plane".into(),
        identity: identity.into(),
        duration: Duration::from_secs(3),
        retry: Duration::from_millis(300),
    }
}

async fn control_plane(api: &FakeApiServer) -> ControlPlane {
    replica(api, "cp-0").await
}

async fn replica(api: &FakeApiServer, identity: &str) -> ControlPlane {
    support::control_plane_of(
        remora_control_plane::Source::Kubernetes(api.client(), lease(identity)),
        None,
    )
    .await
}

fn mesh(cp: &ControlPlane) -> Arc<Mesh> {
    cp.state.borrow().mesh.clone()
}

fn services(cp: &ControlPlane) -> Vec<String> {
    mesh(cp).services.iter().map(|s| s.key()).collect()
}

fn endpoints(cp: &ControlPlane, name: &str) -> Vec<String> {
    mesh(cp)
        .services
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.endpoints.iter().map(|e| e.address.to_string()).collect())
        .unwrap_or_default()
}

async fn ready(cp: &ControlPlane) -> bool {
    admin(cp.admin_address, "/ready").await.0 == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_then_objects_added_modified_and_deleted() {
    let api = api_server().await;
    let cp = control_plane(&api).await;
    eventually("the initial sync", 20, || async { ready(&cp).await }).await;
    assert_eq!(services(&cp), ["reviews.shop", "web.shop"]);
    assert_eq!(mesh(&cp).proxies[0].node_id, "web-0.shop");
    // The Gateway API is not installed: its kinds count as empty.
    let states = cp.kubernetes.as_ref().unwrap().states();
    assert!(
        states.iter().any(|(kind, state)| kind == "HTTPRoute"
            && *state == remora_control_plane::k8s::watch::KindState::Absent),
        "{states:?}"
    );

    // Added.
    api.apply(SERVICES, service("ratings", "10.96.0.30", 9080));
    eventually("a new Service", 10, || async {
        services(&cp).contains(&"ratings.shop".to_string())
    })
    .await;
    // Modified.
    api.apply(
        ENDPOINT_SLICES,
        slice("reviews", &["10.1.0.11", "10.1.0.12"], 9080),
    );
    eventually("a new endpoint", 10, || async {
        endpoints(&cp, "reviews") == ["10.1.0.11:9080", "10.1.0.12:9080"]
    })
    .await;
    // A policy: applied; a malformed one: reported, the rest untouched.
    api.apply(
        TRAFFIC_POLICIES,
        json!({"apiVersion": "remora.dev/v1alpha1", "kind": "TrafficPolicy",
               "metadata": {"name": "reviews", "namespace": "shop"},
               "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
                        "load_balancer": {"policy": "least_request"}}}),
    );
    api.apply(
        TRAFFIC_POLICIES,
        json!({"apiVersion": "remora.dev/v1alpha1", "kind": "TrafficPolicy",
               "metadata": {"name": "broken", "namespace": "shop"},
               "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
                        "load_balancer": {"policy": "fastest"}}}),
    );
    eventually("the policy applied", 10, || async {
        mesh(&cp)
            .services
            .iter()
            .any(|s| s.name == "reviews" && s.policy.load_balancer.policy.name() == "least_request")
    })
    .await;
    let mut reports = cp.kubernetes.as_ref().unwrap().reports.clone();
    eventually("the broken policy reported", 10, || {
        let report = reports.borrow_and_update().clone();
        async move {
            report.rejected().any(|(object, reason, message)| {
                object.name == "broken"
                    && reason == "Invalid"
                    && message.starts_with("spec.load_balancer.policy: unknown variant `fastest`")
            })
        }
    })
    .await;
    // Deleted.
    api.delete(SERVICES, "shop", "ratings");
    eventually("the Service gone", 10, || async {
        !services(&cp).contains(&"ratings.shop".to_string())
    })
    .await;
    assert!(ready(&cp).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_too_old_for_the_server_relists() {
    let api = api_server().await;
    let cp = control_plane(&api).await;
    eventually("the initial sync", 20, || async { ready(&cp).await }).await;
    let (lists_before, _, _) = api.counts();

    // History is compacted while a Service is deleted and another added:
    // the watchers' versions are gone, so they must list again, and the
    // deletion is seen by the list alone.
    api.delete(SERVICES, "shop", "web");
    api.apply(SERVICES, service("ratings", "10.96.0.30", 9080));
    api.compact();
    eventually("a re-list after 410 Gone", 30, || async {
        let services = services(&cp);
        services == ["ratings.shop", "reviews.shop"]
    })
    .await;
    let (lists, _, gone) = api.counts();
    assert!(gone >= 1, "no watch was answered 410");
    assert!(lists > lists_before, "no re-list");
    // And the watch goes on from the new list.
    api.apply(SERVICES, service("details", "10.96.0.40", 9080));
    eventually("a change after the re-list", 10, || async {
        services(&cp).contains(&"details.shop".to_string())
    })
    .await;
    assert!(ready(&cp).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_the_last_mesh_served_and_the_control_plane_unready() {
    let api = api_server().await;
    let cp = control_plane(&api).await;
    eventually("the initial sync", 20, || async { ready(&cp).await }).await;
    let version = cp.state.borrow().version;
    let served = services(&cp);

    api.set_down(true);
    eventually("not ready during the outage", 20, || async {
        !ready(&cp).await
    })
    .await;
    let (_, metrics) = admin(cp.admin_address, "/metrics").await;
    assert!(metrics.contains("remora_cp_source_in_sync 0"), "{metrics}");
    // 30 s without the API server: the mesh stays as it was.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(cp.state.borrow().version, version, "the mesh changed");
        assert_eq!(services(&cp), served);
    }
    assert!(!ready(&cp).await);

    // Back, with a change made meanwhile (as if by another client).
    api.set_down(false);
    api.apply(SERVICES, service("ratings", "10.96.0.30", 9080));
    eventually("ready again, with the change", 60, || async {
        ready(&cp).await && services(&cp).contains(&"ratings.shop".to_string())
    })
    .await;
    let (_, metrics) = admin(cp.admin_address, "/metrics").await;
    assert!(metrics.contains("remora_cp_source_in_sync 1"), "{metrics}");
}

fn route(name: &str, backend: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": "shop", "generation": 2},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
                    "rules": [{"backendRefs": [{"name": backend, "port": 9080}]}]}})
}

fn policy(name: &str, lb: &str) -> Value {
    json!({"apiVersion": "remora.dev/v1alpha1", "kind": "TrafficPolicy",
           "metadata": {"name": name, "namespace": "shop", "generation": 1},
           "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
                    "load_balancer": {"policy": lb}}})
}

/// The `type` condition of `conditions`: (status, reason, message).
fn condition(conditions: &Value, kind: &str) -> Option<(String, String, String)> {
    conditions
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

async fn leaders(replicas: &[&ControlPlane]) -> Vec<bool> {
    replicas
        .iter()
        .map(|cp| *cp.kubernetes.as_ref().unwrap().leader.borrow())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_writes_status_and_hands_over_when_it_goes() {
    let api = FakeApiServer::start(&[
        SERVICES,
        PODS,
        ENDPOINT_SLICES,
        HTTP_ROUTES,
        GRPC_ROUTES,
        TRAFFIC_POLICIES,
        AUTHORIZATION_POLICIES,
        LEASES,
    ])
    .await;
    api.apply(SERVICES, service("reviews", "10.96.0.20", 9080));
    api.apply(SERVICES, service("reviews-v2", "10.96.0.22", 9080));
    api.apply(HTTP_ROUTES, route("good", "reviews-v2"));
    api.apply(HTTP_ROUTES, route("dangling", "ratings"));
    api.apply(TRAFFIC_POLICIES, policy("valid", "least_request"));
    let first = replica(&api, "cp-0").await;
    let second = replica(&api, "cp-1").await;
    eventually("one leader", 10, || async {
        leaders(&[&first, &second])
            .await
            .iter()
            .filter(|l| **l)
            .count()
            == 1
    })
    .await;

    // The status the leader writes.
    eventually("route and policy status", 10, || async {
        let good = api.get(HTTP_ROUTES, "shop", "good").unwrap();
        let dangling = api.get(HTTP_ROUTES, "shop", "dangling").unwrap();
        let valid = api.get(TRAFFIC_POLICIES, "shop", "valid").unwrap();
        let parent = |route: &Value| route["status"]["parents"][0].clone();
        parent(&good)["controllerName"] == "remora.dev/mesh"
            && condition(&parent(&good)["conditions"], "Accepted").is_some_and(|c| c.0 == "True")
            && condition(&parent(&good)["conditions"], "ResolvedRefs")
                .is_some_and(|c| c.0 == "True")
            && condition(&parent(&dangling)["conditions"], "ResolvedRefs").is_some_and(|c| {
                c.0 == "False"
                    && c.1 == "BackendNotFound"
                    && c.2 == "spec.rules[0].backendRefs[0].name: no Service shop/ratings"
            })
            && condition(&valid["status"]["conditions"], "Accepted").is_some_and(|c| c.0 == "True")
    })
    .await;
    let good = api.get(HTTP_ROUTES, "shop", "good").unwrap();
    assert_eq!(good["status"]["parents"][0]["parentRef"]["name"], "reviews");
    assert_eq!(
        good["status"]["parents"][0]["conditions"][0]["observedGeneration"],
        2
    );
    // Written once: a status that would not change is not written again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let version =
        api.get(HTTP_ROUTES, "shop", "good").unwrap()["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        api.get(HTTP_ROUTES, "shop", "good").unwrap()["metadata"]["resourceVersion"],
        version,
        "the status is rewritten in a loop"
    );

    // The leader goes; the other replica takes the lease over once it
    // expires, and writes the status of what changes next.
    let (leader, follower) = if leaders(&[&first, &second]).await[0] {
        (first, second)
    } else {
        (second, first)
    };
    drop(leader);
    eventually("the follower leads", 15, || async {
        *follower.kubernetes.as_ref().unwrap().leader.borrow()
    })
    .await;
    let lease = api
        .get(LEASES, "remora-system", "remora-control-plane")
        .unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
    api.apply(TRAFFIC_POLICIES, policy("invalid", "fastest"));
    eventually("the new leader writes status", 10, || async {
        api.get(TRAFFIC_POLICIES, "shop", "invalid")
            .is_some_and(|p| {
                condition(&p["status"]["conditions"], "Accepted").is_some_and(|c| {
                    c.0 == "False"
                        && c.1 == "Invalid"
                        && c.2
                            .starts_with("spec.load_balancer.policy: unknown variant `fastest`")
                })
            })
    })
    .await;
}

/// The CA of `--ca-secret`: replicas share one root through a Secret, and
/// a sidecar's projected service-account token (checked with a
/// TokenReview) gets it a certificate for its service account's identity,
/// in the trust domain of `--trust-domain`, as the mesh's identities are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_root_is_shared_and_service_account_tokens_get_certificates() {
    use remora_control_plane::ca::kubernetes::{TokenReviewer, shared_root};
    use remora_xds_proto::ca::SignRequest;
    use remora_xds_proto::ca::certificate_service_client::CertificateServiceClient;
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let api = FakeApiServer::start(&[COLLECTIONS.as_slice(), &[SECRETS]].concat()).await;
    api.apply(PODS, pod("web-0", "web", "10.1.0.10"));
    let client = api.client();
    let first = shared_root(&client, "remora-system", "remora-ca", "prod.example")
        .await
        .unwrap();
    let second = shared_root(&client, "remora-system", "remora-ca", "prod.example")
        .await
        .unwrap();
    assert_eq!(
        first.bundle(),
        second.bundle(),
        "one root for every replica"
    );
    assert!(api.get(SECRETS, "remora-system", "remora-ca").is_some());

    let cp = ControlPlane::start(remora_control_plane::Options {
        source: remora_control_plane::Source::Kubernetes(client.clone(), lease("cp-0")),
        xds_address: "127.0.0.1:0".parse().unwrap(),
        admin_address: "127.0.0.1:0".parse().unwrap(),
        debounce: Duration::from_millis(50),
        ca: Some(Arc::new(first)),
        cert_lifetime: Duration::from_secs(3600),
        token_reviewer: Some(TokenReviewer {
            client,
            audience: "remora-ca".into(),
            trust_domain: "prod.example".into(),
        }),
        webhook: None,
        trust_domain: Some("prod.example".into()),
    })
    .await
    .unwrap();
    api.grant_token("sa-token-web-0", "shop", "web", "web-0", "remora-ca");
    api.grant_token(
        "sa-token-for-the-api",
        "shop",
        "web",
        "web-0",
        "https://kubernetes.default.svc",
    );
    let web = remora_api::identity::SpiffeId::new("prod.example", "shop", "web").unwrap();
    let sign = |token: &'static str, id: remora_api::identity::SpiffeId| {
        let address = format!("http://{}", cp.xds_address);
        async move {
            let (_, csr) = remora_api::identity::key_and_csr(Some(&id)).unwrap();
            let mut client = CertificateServiceClient::connect(address).await.unwrap();
            let mut request = tonic::Request::new(SignRequest {
                csr_pem: csr,
                validity_seconds: 0,
            });
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            client.sign(request).await.map(|r| r.into_inner())
        }
    };
    let signed = sign("sa-token-web-0", web.clone()).await.unwrap();
    let leaf = &signed.cert_chain_pem[0];
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(
        san.contains("spiffe://prod.example/ns/shop/sa/web"),
        "{san}"
    );

    let mut state = cp.state.clone();
    let mesh = state
        .wait_for(|state| !state.mesh.proxies.is_empty())
        .await
        .unwrap()
        .mesh
        .clone();
    assert_eq!(mesh.trust_domain, "prod.example");
    let pod = &mesh.proxies[0];
    assert_eq!(
        mesh.proxy_identity(pod, &mesh.service_index()).unwrap(),
        web,
        "the pod's identity is in the trust domain"
    );

    // A real proxy with a projected token file, as an injected sidecar
    // runs: it cannot know its SPIFFE ID (the trust domain is the control
    // plane's), so its CSR names nobody and the certificate says who it is.
    let jwt = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDp3ZWIifQ.c2lnbmF0dXJl";
    api.grant_token(jwt, "shop", "web", "web-0", "remora-ca");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("remora-ca");
    std::fs::write(&token_file, format!("{jwt}\n")).unwrap();
    let config = remora_proxy::config::parse_yaml(&format!(
        "admin: {{address: '127.0.0.1:0'}}\nidentity: {{ca: '{}', token_file: '{}'}}\n",
        cp.xds_address,
        token_file.display()
    ))
    .unwrap();
    let identity = config.identity.clone().unwrap();
    let proxy = remora_proxy::Proxy::start(config, Default::default()).unwrap();
    proxy.spawn_identity(identity);
    eventually("the sidecar's first certificate", 10, || {
        let ready = proxy.is_ready();
        async move { ready }
    })
    .await;
    assert_eq!(proxy.identity().current().unwrap().id, web);

    let refused = sign("sa-token-for-the-api", web.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused.message().contains("service-account token refused"),
        "{}",
        refused.message()
    );
    let refused = sign("not-a-token", web).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let other = remora_api::identity::SpiffeId::new("prod.example", "shop", "admin").unwrap();
    let refused = sign("sa-token-web-0", other).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

/// A sidecar that connects before its pod is read gets nothing (an empty
/// answer would make it ready with no listeners, and its application's
/// first calls would find nothing behind the capture), then its pod's
/// resources as soon as the pod is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_ahead_of_its_pod_gets_nothing_until_the_pod_is_read() {
    use remora_xds_proto::discovery::DeltaDiscoveryRequest;
    use remora_xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let api = api_server().await;
    let cp = control_plane(&api).await;
    eventually("the control plane is ready", 10, || ready(&cp)).await;
    let mut client =
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", cp.xds_address))
            .await
            .unwrap();
    let (tx, requests) = tokio::sync::mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: Some(remora_xds_proto::core::Node {
            id: "web-1.shop".into(),
            ..Default::default()
        }),
        type_url: remora_xds_proto::type_url::LISTENER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), responses.message())
            .await
            .is_err(),
        "nothing is sent before the pod is read"
    );
    api.apply(PODS, pod("web-1", "web", "10.1.0.12"));
    let response = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("the pod's listeners once it is read")
        .unwrap()
        .expect("the stream is open");
    let names: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
    assert!(
        names.contains(&"outbound|capture") && names.iter().any(|n| n.starts_with("inbound|")),
        "{names:?}"
    );
    drop(tx);
}

//! The control plane serving Kubernetes manifests (`serve --manifests`): a
//! real Envoy bootstrapped with a pod's node id (`POD.NAMESPACE`) receives
//! and ACKs that pod's listeners, routes, clusters and endpoints from
//! `examples/kubernetes`, over state-of-the-world and delta ADS; a change
//! to an EndpointSlice reaches it (over delta, as a push of what changed
//! alone); a malformed object added later is left out while the rest keeps
//! being served; `--trust-domain` names every identity of the manifests.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

/// The node's status on the control plane's `/debug/proxies`.
async fn node(cp: &remora_control_plane::ControlPlane, id: &str) -> serde_json::Value {
    let (_, body) = admin(cp.admin_address, "/debug/proxies").await;
    let proxies: serde_json::Value = serde_json::from_str(&body).unwrap();
    proxies
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node_id"] == id)
        .cloned()
        .unwrap_or_default()
}

/// Every type sent to the node is ACKed at the version sent, with no NACK.
fn all_acked(node: &serde_json::Value) -> bool {
    ["listener", "route", "cluster", "endpoint"]
        .iter()
        .all(|t| {
            let status = &node["types"][t];
            !status["sent_version"].is_null()
                && status["acked_version"] == status["sent_version"]
                && status["last_nack"].is_null()
        })
}

async fn envoy_config_dump(envoy: &Envoy) -> String {
    let (status, body) = admin(envoy.admin, "/config_dump?include_eds").await;
    assert_eq!(status, 200, "Envoy's config_dump: {body}");
    body
}

/// State of the world, then delta (one after the other: both Envoys would
/// bind the capture ports).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_a_pods_resources_from_the_example_manifests() {
    scenario(false).await;
    scenario(true).await;
}

async fn scenario(delta: bool) {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes");
    for file in ["app.yaml", "policy.yaml"] {
        std::fs::copy(example.join(file), dir.path().join(file)).unwrap();
    }
    let cp = control_plane_of(
        remora_control_plane::Source::Manifests(dir.path().to_path_buf()),
        None,
    )
    .await;

    let envoy = Envoy::start("web-0.shop", cp.xds_address, delta);
    eventually("Envoy ACKs every type for web-0.shop", 30, || async {
        all_acked(&node(&cp, "web-0.shop").await)
    })
    .await;
    let status = node(&cp, "web-0.shop").await;
    assert_eq!(status["entry"], "web-0.shop", "{status}");
    let dump = envoy_config_dump(&envoy).await;
    for name in [
        // The pod's own port, captured; each Service's cluster IP.
        "inbound|10.1.0.10:8080",
        "outbound|10.96.0.20:9080",
        "outbound|capture",
        // The canary route on reviews, and its backends' clusters.
        "reviews.shop:9080",
        "outbound|9080||reviews-v1.shop",
        "outbound|9080||reviews-v2.shop",
        // The TrafficPolicy: ring hash on the reviews clusters.
        "RING_HASH",
    ] {
        assert!(
            dump.contains(name),
            "{name} missing from Envoy's config:\n{}",
            envoy.log_text()
        );
    }
    // The terminating endpoint (not ready) is not served while others are.
    assert!(
        !dump.contains("10.1.0.9"),
        "a terminating endpoint was served"
    );

    // An EndpointSlice changes (a new reviews-v2 pod): the new address
    // reaches Envoy, ACKed.
    let before = status["types"]["endpoint"]["acked_version"].clone();
    let app = std::fs::read_to_string(dir.path().join("app.yaml")).unwrap();
    std::fs::write(
        dir.path().join("app.yaml"),
        app.replace(
            "  - addresses: [10.1.0.12]\n    conditions: {ready: true}\n    zone: zone-b",
            "  - addresses: [10.1.0.12]\n    conditions: {ready: true}\n    zone: zone-b\n  - addresses: [10.1.0.13]\n    conditions: {ready: true}\n    zone: zone-b",
        ),
    )
    .unwrap();
    eventually("the new endpoint ACKed", 30, || async {
        let status = node(&cp, "web-0.shop").await;
        all_acked(&status) && status["types"]["endpoint"]["acked_version"] != before
    })
    .await;
    eventually("Envoy has the new endpoint", 10, || async {
        envoy_config_dump(&envoy).await.contains("10.1.0.13")
    })
    .await;

    // A malformed object is left out; everything else is still served.
    let versions = node(&cp, "web-0.shop").await["types"].clone();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: remora.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: broken, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: web}]
  load_balancer: {policy: fastest}
",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = node(&cp, "web-0.shop").await;
    assert!(all_acked(&status), "{status}");
    assert_eq!(status["types"], versions, "nothing changed for the pod");
    let (_, metrics) = admin(cp.admin_address, "/metrics").await;
    assert!(
        metrics.contains("remora_cp_mesh_reloads_total{result=\"rejected\"} 0"),
        "a left-out object is not a failed reload:\n{metrics}"
    );
    drop(envoy);
}

fn options(
    source: remora_control_plane::Source,
    ca: Option<std::sync::Arc<remora_control_plane::ca::Ca>>,
    trust_domain: Option<&str>,
) -> remora_control_plane::Options {
    remora_control_plane::Options {
        source,
        xds_address: "127.0.0.1:0".parse().unwrap(),
        admin_address: "127.0.0.1:0".parse().unwrap(),
        debounce: Duration::from_millis(50),
        ca,
        cert_lifetime: Duration::from_secs(3600),
        token_reviewer: None,
        webhook: None,
        trust_domain: trust_domain.map(str::to_string),
    }
}

/// `--trust-domain`: every identity of a manifests source is in it; a mesh
/// file keeps its own (`trust_domain`) and the flag is refused there, as
/// is a domain SPIFFE does not allow, each naming the flag.
#[tokio::test]
async fn manifests_take_the_trust_domain_of_the_flag() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes");
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = remora_control_plane::ca::Ca::load_or_create(ca_dir.path(), "corp.example").unwrap();
    let cp = remora_control_plane::ControlPlane::start(options(
        remora_control_plane::Source::Manifests(example.clone()),
        Some(std::sync::Arc::new(ca)),
        Some("corp.example"),
    ))
    .await
    .unwrap();
    let mesh = cp.state.borrow().mesh.clone();
    assert_eq!(mesh.trust_domain, "corp.example");
    let web = mesh.proxy_for("web-0.shop").expect("the pod web-0");
    assert_eq!(
        mesh.proxy_identity(&mesh.proxies[web], &mesh.service_index())
            .unwrap()
            .to_string(),
        "spiffe://corp.example/ns/shop/sa/web"
    );

    let mesh_file = MeshFile::new("services: []\n");
    for (source, domain, says) in [
        (
            remora_control_plane::Source::MeshFile(mesh_file.path.clone()),
            "corp.example",
            "--trust-domain is for manifests and Kubernetes",
        ),
        (
            remora_control_plane::Source::Manifests(example.clone()),
            "Corp.Example",
            "--trust-domain: trust domain \"Corp.Example\"",
        ),
    ] {
        let error = remora_control_plane::ControlPlane::start(options(source, None, Some(domain)))
            .await
            .err()
            .expect("refused");
        assert!(error.to_string().contains(says), "{error}");
    }
}

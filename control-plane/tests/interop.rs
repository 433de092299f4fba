//! A real Envoy, bootstrapped with ADS to Remora's control plane, routes
//! traffic as the mesh file says, and follows changes to the file: an
//! endpoint moved, then a weighted split. remora-proxy, driven by the same
//! control plane, runs next to it and must route every request the same
//! way. Asserted by traffic, over both state-of-the-world and delta ADS.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use support::*;

fn mesh(
    (listen, remora_listen): (SocketAddr, SocketAddr),
    v1: SocketAddr,
    v2: SocketAddr,
    backend_endpoint: SocketAddr,
    split: Option<(u32, u32)>,
) -> String {
    let routes = match split {
        None => String::new(),
        Some((w1, w2)) => format!(
            "
routes:
  - kind: HTTPRoute
    name: split
    parentRefs: [{{name: backend}}]
    rules:
      - matches: [{{path: {{type: PathPrefix, value: /split}}}}]
        backendRefs: [{{name: backend-v1, weight: {w1}}}, {{name: backend-v2, weight: {w2}}}]
"
        ),
    };
    format!(
        "
services:
  - name: backend
    port: 8080
    endpoints: ['{backend_endpoint}']
  - name: backend-v1
    port: 8080
    endpoints: ['{v1}']
  - name: backend-v2
    port: 8080
    endpoints: ['{v2}']
{routes}
proxies:
  - node_id: client-*
    outbound: [{{service: backend, listen: '{listen}'}}]
  - node_id: remora-*
    outbound: [{{service: backend, listen: '{remora_listen}'}}]
"
    )
}

async fn upstream_of(listen: SocketAddr, path: &str) -> String {
    match get(listen, path).await {
        Ok((200, upstream)) => upstream,
        Ok((status, _)) => format!("status {status}"),
        Err(e) => e,
    }
}

async fn count(listen: SocketAddr, path: &str, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        *seen.entry(upstream_of(listen, path).await).or_default() += 1;
    }
    seen
}

async fn scenario(delta: bool) {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let remora_listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let both = (listen, remora_listen);
    let file = MeshFile::new(&mesh(both, v1.addr, v2.addr, v1.addr, None));
    let cp = control_plane(&file).await;
    let envoy = Envoy::start(
        if delta { "client-delta" } else { "client-sotw" },
        cp.xds_address,
        delta,
    );
    let remora = Remora::start(
        if delta { "remora-delta" } else { "remora-sotw" },
        cp.xds_address,
        delta,
    );

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let last = upstream_of(listen, "/").await;
        if last == "v1" {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("Envoy never served: last {last}\n{}", envoy.log_text());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eventually("remora-proxy serves", 30, || async {
        upstream_of(remora_listen, "/").await == "v1"
    })
    .await;
    assert!(remora.proxy.is_ready());
    same_routing(both, "initial").await;

    // Move the service's endpoint: traffic follows.
    file.write(&mesh(both, v1.addr, v2.addr, v2.addr, None));
    for at in [listen, remora_listen] {
        eventually(
            "Envoy and remora-proxy route to v2 after the endpoint moved",
            10,
            || async { upstream_of(at, "/").await == "v2" },
        )
        .await;
        let after = count(at, "/", 20).await;
        assert_eq!(after.get("v2"), Some(&20), "{at}: {after:?}");
    }
    same_routing(both, "endpoint moved").await;

    // A weighted split on /split: 1:3 between v1 and v2.
    file.write(&mesh(both, v1.addr, v2.addr, v2.addr, Some((1, 3))));
    for at in [listen, remora_listen] {
        eventually(
            "Envoy and remora-proxy split /split between v1 and v2",
            10,
            || async { count(at, "/split", 20).await.contains_key("v1") },
        )
        .await;
        let seen = count(at, "/split", 400).await;
        let (a, b) = (
            seen.get("v1").copied().unwrap_or(0),
            seen.get("v2").copied().unwrap_or(0),
        );
        assert_eq!(a + b, 400, "{at}: every request answered: {seen:?}");
        assert!(
            (60..=140).contains(&a),
            "{at}: about a quarter to v1: {seen:?}"
        );
        // Element-wise prefix: /splitx is not /split, so it goes to the service (v2).
        assert_eq!(upstream_of(at, "/splitx").await, "v2");
        assert_eq!(upstream_of(at, "/split/deeper").await.len(), 2);
    }
    same_routing(both, "weighted split").await;

    // The control plane saw every type ACKed by this node.
    let (status, body) = admin(cp.admin_address, "/debug/proxies").await;
    assert_eq!(status, 200);
    let proxies: serde_json::Value = serde_json::from_str(&body).unwrap();
    let node = proxies
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["entry"] == "client-*")
        .unwrap_or_else(|| panic!("Envoy's node: {body}"));
    assert_eq!(node["protocol"], if delta { "delta" } else { "sotw" });
    for t in ["listener", "route", "cluster", "endpoint"] {
        assert!(
            node["types"][t]["acked_version"].is_string(),
            "{t} acked: {body}"
        );
        assert!(
            node["types"][t]["last_nack"].is_null(),
            "{t} not NACKed: {body}"
        );
    }
    let (_, metrics) = admin(cp.admin_address, "/metrics").await;
    assert!(
        metrics.contains("remora_cp_connected_proxies 2"),
        "{metrics}"
    );
    // remora-proxy ACKed every type and NACKed nothing.
    let status = remora.xds();
    assert_eq!(status["connected"], true, "{status}");
    for t in status["types"].as_array().unwrap() {
        assert!(t["acks"].as_u64().unwrap() >= 1, "{status}");
        assert_eq!(t["nacks"], 0, "{status}");
    }
}

/// Paths whose answer does not depend on chance get the same upstream (or
/// the same status) through Envoy and through remora-proxy.
async fn same_routing((envoy, remora): (SocketAddr, SocketAddr), step: &str) {
    for path in [
        "/",
        "/split",
        "/split/",
        "/splitx",
        "/other/deep?x=1",
        "/Split",
    ] {
        let through_envoy = upstream_of(envoy, path).await;
        let through_remora = upstream_of(remora, path).await;
        if path.starts_with("/split")
            && !path.starts_with("/splitx")
            && through_envoy != through_remora
        {
            // A weighted split picks at random; both must at least pick from the split.
            assert!(
                ["v1", "v2"].contains(&through_envoy.as_str())
                    && ["v1", "v2"].contains(&through_remora.as_str()),
                "{step}: {path}: Envoy {through_envoy}, remora-proxy {through_remora}"
            );
            continue;
        }
        assert_eq!(
            through_envoy, through_remora,
            "{step}: {path} routed differently: Envoy {through_envoy}, remora-proxy {through_remora}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_the_mesh_file_over_state_of_the_world_ads() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_the_mesh_file_over_delta_ads() {
    scenario(true).await;
}

//! The ADS server against a gRPC client written here: state of the world
//! and delta, ACK and NACK, removal, a 1,000-endpoint update, a client that
//! never reads, and hostile requests.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use remora_xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use remora_xds_proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use remora_xds_proto::{core, endpoint, type_url};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use support::*;

fn mesh(backend_endpoints: &[&str], extra_service: bool) -> String {
    let endpoints = backend_endpoints
        .iter()
        .map(|e| format!("'{e}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let extra = if extra_service {
        "  - {name: extra, port: 9000, endpoints: ['127.0.0.1:9999']}\n"
    } else {
        ""
    };
    let extra_outbound = if extra_service {
        ", {service: extra, listen: '127.0.0.1:15002'}"
    } else {
        ""
    };
    format!(
        "
services:
  - name: backend
    port: 8080
    endpoints: [{endpoints}]
  - name: web
    port: 8080
    endpoints: ['127.0.0.1:7000']
{extra}
proxies:
  - node_id: web
    inbound: [{{service: web, listen: '127.0.0.1:15006', target: '127.0.0.1:7000'}}]
    outbound: [{{service: backend, listen: '127.0.0.1:15001'}}{extra_outbound}]
"
    )
}

fn node(id: &str) -> Option<core::Node> {
    Some(core::Node {
        id: id.into(),
        ..Default::default()
    })
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn connect(addr: std::net::SocketAddr) -> Sotw {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, requests) = mpsc::channel(16);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        Sotw { tx, rx }
    }

    async fn send(&self, request: DiscoveryRequest) {
        self.tx.send(request).await.unwrap();
    }

    async fn subscribe(&self, type_url: &str, names: &[&str]) {
        self.send(DiscoveryRequest {
            node: node("web"),
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5 s")
            .unwrap()
            .expect("the stream is open")
    }

    async fn nothing_for(&mut self, wait: Duration) {
        if let Ok(message) = tokio::time::timeout(wait, self.rx.message()).await {
            panic!(
                "expected no response, got {:?}",
                message.map(|m| m.map(|r| r.type_url))
            );
        }
    }
}

fn names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|any| {
            if any.type_url == type_url::ENDPOINT {
                remora_xds_proto::unpack::<endpoint::ClusterLoadAssignment>(any)
                    .unwrap()
                    .cluster_name
            } else if any.type_url == type_url::CLUSTER {
                remora_xds_proto::unpack::<remora_xds_proto::cluster::Cluster>(any)
                    .unwrap()
                    .name
            } else if any.type_url == type_url::LISTENER {
                remora_xds_proto::unpack::<remora_xds_proto::listener::Listener>(any)
                    .unwrap()
                    .name
            } else {
                remora_xds_proto::unpack::<remora_xds_proto::route::RouteConfiguration>(any)
                    .unwrap()
                    .name
            }
        })
        .collect()
}

const BACKEND: &str = "outbound|8080||backend.default";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_of_the_world_serves_each_type_and_pushes_only_what_changed() {
    let file = MeshFile::new(&mesh(&["127.0.0.1:9001"], false));
    let cp = control_plane(&file).await;
    let mut ads = Sotw::connect(cp.xds_address).await;

    ads.subscribe(type_url::CLUSTER, &[]).await;
    let clusters = ads.next().await;
    assert_eq!(clusters.type_url, type_url::CLUSTER);
    assert_eq!(
        names(&clusters),
        ["inbound|127.0.0.1:15006", BACKEND],
        "wildcard: every cluster of the node"
    );
    ads.ack(&clusters, &[]).await;

    ads.subscribe(type_url::ENDPOINT, &[BACKEND]).await;
    let endpoints = ads.next().await;
    assert_eq!(names(&endpoints), [BACKEND]);
    ads.ack(&endpoints, &[BACKEND]).await;

    ads.subscribe(type_url::LISTENER, &[]).await;
    let listeners = ads.next().await;
    assert_eq!(
        names(&listeners),
        ["inbound|127.0.0.1:15006", "outbound|127.0.0.1:15001"]
    );
    ads.ack(&listeners, &[]).await;

    ads.subscribe(type_url::ROUTE, &["backend.default:8080"])
        .await;
    let routes = ads.next().await;
    assert_eq!(names(&routes), ["backend.default:8080"]);
    ads.ack(&routes, &["backend.default:8080"]).await;

    // All ACKed: nothing more is sent while nothing changes.
    ads.nothing_for(Duration::from_millis(300)).await;

    // An endpoint change touches only the endpoint type.
    file.write(&mesh(&["127.0.0.1:9001", "127.0.0.1:9002"], false));
    let update = ads.next().await;
    assert_eq!(update.type_url, type_url::ENDPOINT);
    assert_ne!(update.version_info, endpoints.version_info);
    let cla: endpoint::ClusterLoadAssignment =
        remora_xds_proto::unpack(&update.resources[0]).unwrap();
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 2);
    ads.ack(&update, &[BACKEND]).await;
    ads.nothing_for(Duration::from_millis(300)).await;

    let (_, body) = admin(cp.admin_address, "/debug/proxies").await;
    let proxies: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(proxies[0]["node_id"], "web");
    assert_eq!(
        proxies[0]["types"]["endpoint"]["acked_version"],
        update.version_info.as_str()
    );
    assert_eq!(
        proxies[0]["types"]["cluster"]["acked_version"],
        clusters.version_info.as_str()
    );
    let (_, metrics) = admin(cp.admin_address, "/metrics").await;
    assert!(
        metrics.contains("remora_cp_pushes_total{type=\"endpoint\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("remora_cp_push_latency_seconds_count 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_is_recorded_and_not_resent_until_the_config_changes() {
    let file = MeshFile::new(&mesh(&["127.0.0.1:9001"], false));
    let cp = control_plane(&file).await;
    let mut ads = Sotw::connect(cp.xds_address).await;
    ads.subscribe(type_url::CLUSTER, &[]).await;
    let first = ads.next().await;
    ads.send(DiscoveryRequest {
        type_url: type_url::CLUSTER.into(),
        version_info: String::new(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(remora_xds_proto::rpc::Status {
            code: 3,
            message: "clusters[0].lb_policy: not supported here".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    ads.nothing_for(Duration::from_millis(400)).await;

    let (_, body) = admin(cp.admin_address, "/debug/proxies").await;
    let proxies: serde_json::Value = serde_json::from_str(&body).unwrap();
    let nack = &proxies[0]["types"]["cluster"]["last_nack"];
    assert_eq!(nack["version"], first.version_info.as_str(), "{body}");
    assert_eq!(
        nack["error_detail"],
        "clusters[0].lb_policy: not supported here"
    );
    assert!(proxies[0]["types"]["cluster"]["acked_version"].is_null());
    let (_, metrics) = admin(cp.admin_address, "/metrics").await;
    assert!(
        metrics.contains("remora_cp_nacks_total{type=\"cluster\"} 1"),
        "{metrics}"
    );

    // A change to the clusters is sent.
    file.write(&mesh(&["127.0.0.1:9001"], true));
    let next = ads.next().await;
    assert_eq!(next.type_url, type_url::CLUSTER);
    assert!(names(&next).contains(&"outbound|9000||extra.default".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_stale_nonces_are_ignored_and_removal_drops_the_resource() {
    let file = MeshFile::new(&mesh(&["127.0.0.1:9001"], true));
    let cp = control_plane(&file).await;
    let mut ads = Sotw::connect(cp.xds_address).await;
    ads.subscribe(type_url::CLUSTER, &[]).await;
    let first = ads.next().await;
    assert_eq!(names(&first).len(), 3);
    ads.ack(&first, &[]).await;
    file.write(&mesh(&["127.0.0.1:9001"], false));
    let second = ads.next().await;
    assert_eq!(
        names(&second),
        ["inbound|127.0.0.1:15006", BACKEND],
        "extra removed"
    );
    // An answer to the superseded nonce changes nothing.
    ads.ack(&first, &[]).await;
    ads.nothing_for(Duration::from_millis(300)).await;
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn connect(addr: std::net::SocketAddr) -> Delta {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, requests) = mpsc::channel(16);
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        Delta { tx, rx }
    }

    async fn send(&self, request: DeltaDiscoveryRequest) {
        self.tx.send(request).await.unwrap();
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5 s")
            .unwrap()
            .expect("the stream is open")
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    /// Node `web` connecting again holding `initial` (clusters), and the
    /// first answer.
    async fn resume(
        addr: std::net::SocketAddr,
        initial: HashMap<String, String>,
    ) -> (Delta, DeltaDiscoveryResponse) {
        let mut ads = Delta::connect(addr).await;
        ads.send(DeltaDiscoveryRequest {
            node: node("web"),
            type_url: type_url::CLUSTER.into(),
            initial_resource_versions: initial,
            ..Default::default()
        })
        .await;
        let first = ads.next().await;
        (ads, first)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sends_changes_and_removals_and_a_reconnect_resumes_from_its_versions() {
    let file = MeshFile::new(&mesh(&["127.0.0.1:9001"], true));
    let cp = control_plane(&file).await;
    let mut ads = Delta::connect(cp.xds_address).await;
    ads.send(DeltaDiscoveryRequest {
        node: node("web"),
        type_url: type_url::CLUSTER.into(),
        ..Default::default()
    })
    .await;
    let first = ads.next().await;
    let held: HashMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    assert_eq!(held.len(), 3);
    ads.ack(&first).await;

    file.write(&mesh(&["127.0.0.1:9001"], false));
    let removal = ads.next().await;
    assert!(
        removal.resources.is_empty(),
        "unchanged clusters are not resent"
    );
    assert_eq!(removal.removed_resources, ["outbound|9000||extra.default"]);
    ads.ack(&removal).await;

    // Reconnect holding the two remaining clusters at their versions: only
    // the initial (empty) answer comes, nothing is resent.
    drop(ads);
    let mut initial = held.clone();
    initial.remove("outbound|9000||extra.default");
    let (mut again, resumed) = Delta::resume(cp.xds_address, initial).await;
    assert!(resumed.resources.is_empty(), "{:?}", resumed.resources);
    assert!(resumed.removed_resources.is_empty());

    // Named subscription and unsubscription for endpoints.
    again
        .send(DeltaDiscoveryRequest {
            type_url: type_url::ENDPOINT.into(),
            resource_names_subscribe: vec![BACKEND.into()],
            ..Default::default()
        })
        .await;
    let eds = again.next().await;
    assert_eq!(eds.resources.len(), 1);
    assert_eq!(eds.resources[0].name, BACKEND);

    // Reconnect holding one cluster at a version this server never sent
    // (another control plane's), one at its own, and one it does not
    // serve: the first is sent again, the last removed.
    drop(again);
    let mut names: Vec<String> = held
        .keys()
        .filter(|name| *name != "outbound|9000||extra.default")
        .cloned()
        .collect();
    names.sort();
    let (foreign, kept) = (names[0].clone(), names[1].clone());
    let initial = HashMap::from([
        (foreign.clone(), "v1-from-elsewhere".to_string()),
        (kept.clone(), held[&kept].clone()),
        ("outbound|1||ghost.default".to_string(), held[&kept].clone()),
    ]);
    let (_third, resumed) = Delta::resume(cp.xds_address, initial).await;
    let sent: Vec<&str> = resumed.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(sent, [foreign.as_str()]);
    assert_eq!(resumed.resources[0].version, held[&foreign]);
    assert_eq!(resumed.removed_resources, ["outbound|1||ghost.default"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_endpoint_cluster_is_updated_whole() {
    let many: Vec<String> = (0..1000)
        .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let file = MeshFile::new(&mesh(&refs, false));
    let cp = control_plane(&file).await;
    let mut ads = Sotw::connect(cp.xds_address).await;
    ads.subscribe(type_url::ENDPOINT, &[BACKEND]).await;
    let first = ads.next().await;
    let cla: endpoint::ClusterLoadAssignment =
        remora_xds_proto::unpack(&first.resources[0]).unwrap();
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1000);
    ads.ack(&first, &[BACKEND]).await;

    let mut changed = many.clone();
    changed[500] = "10.9.9.9:8080".into();
    let refs: Vec<&str> = changed.iter().map(String::as_str).collect();
    file.write(&mesh(&refs, false));
    let update = ads.next().await;
    let cla: endpoint::ClusterLoadAssignment =
        remora_xds_proto::unpack(&update.resources[0]).unwrap();
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1000);
    let addresses: Vec<String> = cla.endpoints[0]
        .lb_endpoints
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert!(addresses.iter().any(|a| a.contains("10.9.9.9")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_hold_up_another() {
    let file = MeshFile::new(&mesh(&["127.0.0.1:9001"], false));
    let cp = control_plane(&file).await;
    // A client that subscribes and then never reads its responses.
    let stuck = Sotw::connect(cp.xds_address).await;
    stuck.subscribe(type_url::ENDPOINT, &[BACKEND]).await;
    let mut ads = Sotw::connect(cp.xds_address).await;
    ads.subscribe(type_url::ENDPOINT, &[BACKEND]).await;
    let mut last = ads.next().await;
    ads.ack(&last, &[BACKEND]).await;
    for i in 0..30 {
        file.write(&mesh(&[&format!("127.0.0.1:{}", 9100 + i)], false));
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    // The reading client ends on the last version (latest wins: it may skip some).
    loop {
        last = ads.next().await;
        let cla: endpoint::ClusterLoadAssignment =
            remora_xds_proto::unpack(&last.resources[0]).unwrap();
        ads.ack(&last, &[BACKEND]).await;
        if format!("{cla:?}").contains("9129") {
            break;
        }
    }
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_errors_and_never_stop_the_server() {
    let file = MeshFile::new(&mesh(&["127.0.0.1:9001"], false));
    let cp = control_plane(&file).await;

    // No node id: the stream is refused with a reason.
    let mut anonymous = Sotw::connect(cp.xds_address).await;
    anonymous
        .send(DiscoveryRequest {
            type_url: type_url::CLUSTER.into(),
            ..Default::default()
        })
        .await;
    let status = tokio::time::timeout(Duration::from_secs(5), anonymous.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert!(status.message().contains("node.id"), "{status}");

    // An unknown type is ignored and counted; the stream goes on.
    let mut ads = Sotw::connect(cp.xds_address).await;
    ads.send(DiscoveryRequest {
        node: node("web"),
        type_url: "type.googleapis.com/envoy.service.runtime.v3.Runtime".into(),
        ..Default::default()
    })
    .await;
    ads.subscribe(type_url::CLUSTER, &[]).await;
    assert_eq!(ads.next().await.type_url, type_url::CLUSTER);
    let (_, metrics) = admin(cp.admin_address, "/metrics").await;
    assert!(
        metrics.contains("remora_cp_unknown_type_requests_total 1"),
        "{metrics}"
    );

    // A request over the size limit ends that stream only.
    let huge = Sotw::connect(cp.xds_address).await;
    huge.send(DiscoveryRequest {
        node: node("web"),
        type_url: type_url::ENDPOINT.into(),
        resource_names: vec!["x".repeat(1024); 17 * 1024],
        ..Default::default()
    })
    .await;
    let mut huge = huge;
    let result = tokio::time::timeout(Duration::from_secs(5), huge.rx.message()).await;
    assert!(
        !matches!(result, Ok(Ok(Some(_)))),
        "no answer to an oversized request"
    );

    // A node no entry matches gets empty resource sets, not an error.
    let mut stranger = Sotw::connect(cp.xds_address).await;
    stranger
        .send(DiscoveryRequest {
            node: node("nobody"),
            type_url: type_url::LISTENER.into(),
            ..Default::default()
        })
        .await;
    assert!(stranger.next().await.resources.is_empty());

    // An invalid mesh file is rejected and the running mesh stays.
    file.write("services: [{name: x, port: 1}]\nroutes: [{kind: HTTPRoute, name: r, parentRefs: [{name: x}], rules: [{matches: [{path: {type: RegularExpression, value: '(('}}]}]}]\n");
    eventually("the bad file is counted", 5, || async {
        admin(cp.admin_address, "/metrics")
            .await
            .1
            .contains("remora_cp_mesh_reloads_total{result=\"rejected\"} 1")
    })
    .await;
    let mut fresh = Sotw::connect(cp.xds_address).await;
    fresh.subscribe(type_url::CLUSTER, &[]).await;
    assert_eq!(
        names(&fresh.next().await),
        ["inbound|127.0.0.1:15006", BACKEND]
    );
    assert_eq!(admin(cp.admin_address, "/ready").await.0, 200);
}

//! remora-proxy as an xDS client: it keeps serving while the control plane
//! is killed and restarted under load, and resumes; and it NACKs hostile
//! xDS (a bad regex, an unknown type, a huge resource, garbage bytes)
//! from a scripted server, keeping the config it had, without crashing.

mod hostile;
#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use remora_xds_proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use remora_xds_proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use remora_xds_proto::filters::{http_connection_manager as hcm, router};
use remora_xds_proto::{
    cluster, core, endpoint, listener, matcher, pack, protobuf, route, type_url,
};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

/// The control plane as its own process, so it can be killed.
struct ControlPlaneProcess {
    child: Child,
}

impl ControlPlaneProcess {
    async fn start(mesh: &MeshFile, xds: SocketAddr, admin: SocketAddr) -> ControlPlaneProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_remora-control-plane"))
            .args([
                "serve",
                "--debounce",
                "20ms",
                "--log-level",
                "warn",
                "--mesh",
            ])
            .arg(&mesh.path)
            .args([
                "--xds-address",
                &xds.to_string(),
                "--admin-address",
                &admin.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting remora-control-plane");
        eventually("the control plane listens", 10, || async {
            tokio::net::TcpStream::connect(xds).await.is_ok()
        })
        .await;
        ControlPlaneProcess { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn mesh(listen: SocketAddr, endpoint: SocketAddr) -> String {
    format!(
        "
services:
  - name: backend
    port: 8080
    endpoints: ['{endpoint}']
proxies:
  - node_id: app-*
    outbound: [{{service: backend, listen: '{listen}'}}]
"
    )
}

async fn upstream_of(listen: SocketAddr) -> String {
    match get(listen, "/").await {
        Ok((200, upstream)) => upstream,
        Ok((status, _)) => format!("status {status}"),
        Err(e) => e,
    }
}

async fn restart_under_load(delta: bool) {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let file = MeshFile::new(&mesh(listen, v1.addr));
    let mut cp = ControlPlaneProcess::start(&file, xds, admin).await;
    let remora = Remora::start("app-1", xds, delta);
    eventually("remora-proxy serves from the control plane", 20, || async {
        upstream_of(listen).await == "v1"
    })
    .await;

    // Load: 4 clients, one request after another, each on a new connection.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get(listen, "/").await {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
            }
        }));
    }
    let more_requests = |n: usize| {
        let ok = ok.clone();
        let target = ok.load(Ordering::Relaxed) + n;
        eventually("more requests under load", 20, move || {
            let ok = ok.clone();
            async move { ok.load(Ordering::Relaxed) >= target }
        })
    };
    more_requests(100).await;

    let received =
        |status: &serde_json::Value, t: usize| status["types"][t]["received"].as_u64().unwrap();
    let before = remora.xds();

    // The control plane dies; the proxy keeps serving what it has.
    cp.kill();
    eventually("the proxy notices", 10, || async {
        remora.xds()["connected"] == false
    })
    .await;
    more_requests(300).await;
    let during = ok.load(Ordering::Relaxed);
    assert!(
        remora.proxy.is_ready(),
        "still ready without the control plane"
    );

    // The file changes while it is down; a new control plane comes up on
    // the same address and the proxy resumes, taking the change.
    file.write(&mesh(listen, v2.addr));
    let _cp = ControlPlaneProcess::start(&file, xds, admin).await;
    eventually(
        "the proxy reconnects and follows the new file",
        40,
        || async { upstream_of(listen).await == "v2" },
    )
    .await;
    more_requests(100).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let failures = failures.lock().unwrap();
    let total = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        total,
        &failures[..failures.len().min(5)]
    );
    assert!(
        during > 50,
        "requests were served while the control plane was down ({during})"
    );
    let status = remora.xds();
    assert!(status["connects"].as_u64().unwrap() >= 2, "{status}");
    assert_eq!(status["connected"], true, "{status}");
    for t in status["types"].as_array().unwrap() {
        assert_eq!(t["nacks"], 0, "{status}");
    }
    // On reconnect the proxy said what it holds (SotW: each type's version;
    // delta: initial_resource_versions), so only the changed endpoints came again.
    assert!(
        received(&status, 1) > received(&before, 1),
        "new endpoints: {before} → {status}"
    );
    for t in [0, 2, 3] {
        assert_eq!(
            received(&status, t),
            received(&before, t),
            "type {t} not resent: {before} → {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_control_plane_restarted_under_load_loses_no_request() {
    restart_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_control_plane_restarted_under_load_loses_no_request() {
    restart_under_load(true).await;
}

fn two_services(
    listen_a: SocketAddr,
    listen_b: Option<SocketAddr>,
    a: SocketAddr,
    b_endpoints: &[String],
) -> String {
    let outbound_b = match listen_b {
        Some(listen) => format!(", {{service: b, listen: '{listen}'}}"),
        None => String::new(),
    };
    format!(
        "
services:
  - name: a
    port: 80
    endpoints: ['{a}']
  - name: b
    port: 80
    endpoints: [{}]
proxies:
  - node_id: app-*
    outbound: [{{service: a, listen: '{listen_a}'}}{outbound_b}]
",
        b_endpoints
            .iter()
            .map(|e| format!("'{e}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// 1,000 endpoints arrive in one update; removing a service from the
/// proxy's entry removes its listener, cluster and endpoints.
async fn large_update_and_removal(delta: bool) {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let listen_a = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen_b = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let file = MeshFile::new(&two_services(
        listen_a,
        Some(listen_b),
        a.addr,
        &[b.addr.to_string()],
    ));
    let cp = control_plane(&file).await;
    let remora = Remora::start("app-1", cp.xds_address, delta);
    eventually("both services are served", 20, || async {
        upstream_of(listen_a).await == "a" && upstream_of(listen_b).await == "b"
    })
    .await;

    // b grows to 1,000 endpoints (999 unreachable TEST-NET addresses + the real one).
    let mut many: Vec<String> = (0..999)
        .map(|i| format!("192.0.2.{}:{}", 1 + i % 250, 1000 + i))
        .collect();
    many.push(b.addr.to_string());
    file.write(&two_services(listen_a, Some(listen_b), a.addr, &many));
    let cluster = "outbound|80||b.default";
    eventually("the proxy holds all 1,000 endpoints", 20, || async {
        remora
            .proxy
            .snapshot()
            .config
            .clusters
            .iter()
            .any(|c| c.name == cluster && c.endpoints.len() == 1000)
    })
    .await;
    assert_eq!(
        upstream_of(listen_a).await,
        "a",
        "the other service is untouched"
    );

    // b is no longer called by this proxy: its listener, cluster and endpoints go.
    file.write(&two_services(listen_a, None, a.addr, &many));
    eventually("b's listener is removed", 20, || async {
        tokio::net::TcpStream::connect(listen_b).await.is_err()
    })
    .await;
    let snapshot = remora.proxy.snapshot();
    assert!(!snapshot.config.clusters.iter().any(|c| c.name == cluster));
    assert_eq!(snapshot.config.listeners.len(), 1);
    assert_eq!(upstream_of(listen_a).await, "a");
    let status = remora.xds();
    assert_eq!(
        status["types"][1]["resources"], 1,
        "only a's endpoints remain: {status}"
    );
    for t in status["types"].as_array().unwrap() {
        assert_eq!(t["nacks"], 0, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_large_update_and_removal() {
    large_update_and_removal(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_large_update_and_removal() {
    large_update_and_removal(true).await;
}

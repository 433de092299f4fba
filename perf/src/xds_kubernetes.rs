//! `remora-perf xds-clients --kubernetes`: the control plane watching a
//! Kubernetes API server (an in-process fake that speaks list and watch,
//! `remora_control_plane::k8s::fake`), with a cluster's shape: `--services`
//! Services with their EndpointSlices, `--count` pods with the sidecar, and
//! as many simulated proxies on delta ADS, each with its pod's node id.
//! Then pods restart at `--churn` per second for `--seconds`: each restart
//! moves one endpoint of a distinct Service. For each change the report
//! gives the time from the EndpointSlice write to the last proxy's ACK of
//! that Service's endpoints (p50 / p99 / max over changes), and the control
//! plane's memory per Service and per proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use remora_control_plane::k8s::fake::{self, FakeApiServer};
use remora_xds_proto::core::Node;
use remora_xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use remora_xds_proto::type_url;
use serde_json::{Value, json};

use crate::xds_clients::Options;

fn service(s: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": format!("svc-{s}"), "namespace": "default"},
           "spec": {"clusterIP": format!("10.96.{}.{}", s / 250, s % 250 + 1),
                    "selector": {"app": format!("svc-{s}")},
                    "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}})
}

/// Service `s`'s endpoints; `generation` moves the first one (a pod
/// restarted with a new IP).
fn slice(s: usize, generation: usize) -> Value {
    let ip = |i: usize| format!("10.{}.{}.{}", 100 + i, s / 250, s % 250 + 1);
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
    "metadata": {"name": format!("svc-{s}-1"), "namespace": "default",
                 "labels": {"kubernetes.io/service-name": format!("svc-{s}")}},
    "addressType": "IPv4",
    "ports": [{"name": "http", "port": 8080}],
    "endpoints": [
        {"addresses": [ip(generation % 50)], "conditions": {"ready": true}},
        {"addresses": [ip(60)], "conditions": {"ready": true}},
        {"addresses": [ip(61)], "conditions": {"ready": true}},
    ]})
}

fn pod(p: usize, services: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("pod-{p}"), "namespace": "default",
                        "labels": {"app": format!("svc-{}", p % services)}},
           "spec": {"initContainers": [{"name": "remora-proxy", "image": "remora/proxy", "restartPolicy": "Always"}],
                    "containers": [{"name": "app", "image": "app"}]},
           "status": {"phase": "Running", "podIP": format!("10.200.{}.{}", p / 250, p % 250 + 1)}})
}

/// Per client, per Service: when it last received that Service's
/// endpoints (ns since the start).
struct Clients {
    start: Instant,
    services: usize,
    received: Vec<AtomicU64>,
    /// Clients holding every Service's endpoints.
    complete: AtomicUsize,
    /// Measured: the streams' end is expected now.
    done: std::sync::atomic::AtomicBool,
    /// Streams that ended before the measurement did, and were opened again.
    reconnects: AtomicU64,
}

impl Clients {
    fn slot(&self, client: usize, service: usize) -> &AtomicU64 {
        &self.received[client * self.services + service]
    }
}

async fn api_server(services: usize, pods: usize) -> FakeApiServer {
    let api = FakeApiServer::start(&[
        fake::SERVICES,
        fake::PODS,
        fake::ENDPOINT_SLICES,
        fake::HTTP_ROUTES,
        fake::GRPC_ROUTES,
        fake::TRAFFIC_POLICIES,
        fake::AUTHORIZATION_POLICIES,
        fake::LEASES,
    ])
    .await;
    for s in 0..services {
        api.apply(fake::SERVICES, service(s));
        api.apply(fake::ENDPOINT_SLICES, slice(s, 0));
    }
    for p in 0..pods {
        api.apply(fake::PODS, pod(p, services));
    }
    api
}

struct ControlPlaneProcess {
    child: std::process::Child,
    _dir: PathGuard,
}

struct PathGuard(std::path::PathBuf);

impl Drop for PathGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `remora-control-plane serve --kubernetes` against `api`; returns when
/// it is ready (every kind listed and the mesh published).
async fn control_plane(
    options: &Options,
    api: &FakeApiServer,
    xds: SocketAddr,
) -> anyhow::Result<ControlPlaneProcess> {
    let binary = crate::xds_clients::control_plane_binary(options.control_plane.clone())?;
    let dir = std::env::temp_dir().join(format!(
        "remora-xds-kubernetes-{}-{}",
        std::process::id(),
        xds.port()
    ));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let admin = crate::xds_clients::free_addr()?;
    let child = std::process::Command::new(&binary)
        .args(["serve", "--kubernetes"])
        .args(["--xds-address", &xds.to_string()])
        .args(["--admin-address", &admin.to_string()])
        .args(["--debounce", &options.debounce])
        .args(["--log-level", "warn"])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "remora-system")
        .env("POD_NAME", format!("cp-{}", xds.port()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let process = ControlPlaneProcess {
        child,
        _dir: PathGuard(dir),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
                .await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            if answer.starts_with(b"HTTP/1.1 200") {
                return Ok(process);
            }
        }
        if Instant::now() > deadline {
            bail!("the control plane was not ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let services = options.services;
    let count = options.count;
    // The control plane's RSS with the cluster empty, then with it synced.
    let empty = api_server(0, 0).await;
    let baseline = control_plane(&options, &empty, crate::xds_clients::free_addr()?).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty = crate::procfs::rss_bytes(baseline.child.id()).unwrap_or(0);
    drop(baseline);
    drop(empty);

    let populate = Instant::now();
    let api = api_server(services, count).await;
    let xds = crate::xds_clients::free_addr()?;
    let cp = control_plane(&options, &api, xds).await?;
    let synced = populate.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = cp.child.id();
    let rss_synced = crate::procfs::rss_bytes(pid).unwrap_or(0);

    let clients = Arc::new(Clients {
        start: Instant::now(),
        services,
        received: (0..count * services).map(|_| AtomicU64::new(0)).collect(),
        complete: AtomicUsize::new(0),
        done: Default::default(),
        reconnects: AtomicU64::new(0),
    });
    let names: Arc<Vec<String>> = Arc::new(
        (0..services)
            .map(|s| format!("outbound|8080||svc-{s}.default"))
            .collect(),
    );
    let connect = Instant::now();
    for i in 0..count {
        let clients = clients.clone();
        let names = names.clone();
        tokio::spawn(async move {
            // A thousand connections at once can overflow the listen
            // backlog (a reset), and a client starved of CPU during the
            // first sync can miss the server's keep-alive ping: like a
            // real proxy, a client whose stream ends connects again (and
            // is sent everything again). Reconnects are counted.
            let mut failures = 0u64;
            let mut holding = 0;
            loop {
                let result = client(i, xds, names.clone(), clients.clone(), &mut holding).await;
                if clients.done.load(Ordering::Relaxed) {
                    break;
                }
                let error = match result {
                    Ok(()) => anyhow::anyhow!("the control plane ended the stream"),
                    Err(error) => error,
                };
                clients.reconnects.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                if failures == 20 {
                    eprintln!("xds-clients: client {i}: gave up after 20 attempts: {error:#}");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100 * failures.min(10))).await;
            }
        });
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while clients.complete.load(Ordering::Relaxed) < count {
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} clients got every Service's endpoints within 300 s",
                clients.complete.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = connect.elapsed();
    let reconnects_connecting = clients.reconnects.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = crate::procfs::rss_bytes(pid).unwrap_or(0);

    // Churn: pod restarts, each moving one endpoint of a distinct Service.
    let changes = (options.churn * options.seconds).min(services);
    let interval = Duration::from_secs_f64(1.0 / options.churn.max(1) as f64);
    let mut written = Vec::with_capacity(changes);
    let churn_start = Instant::now();
    for c in 0..changes {
        let due = churn_start + interval * c as u32;
        tokio::time::sleep_until(due.into()).await;
        let service = c % services;
        written.push((service, clients.start.elapsed().as_nanos() as u64));
        api.apply(fake::ENDPOINT_SLICES, slice(service, c / services + 1));
    }
    // Every client must see every change.
    let deadline = Instant::now() + Duration::from_secs(120);
    let latencies = loop {
        let mut latencies = Vec::with_capacity(changes);
        let mut missing = 0;
        for &(service, at) in &written {
            let last = (0..count)
                .map(|i| clients.slot(i, service).load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            let all = (0..count).all(|i| clients.slot(i, service).load(Ordering::Relaxed) >= at);
            if all {
                latencies.push(last.saturating_sub(at) as f64 / 1e6);
            } else {
                missing += 1;
            }
        }
        if missing == 0 {
            break latencies;
        }
        if Instant::now() > deadline {
            bail!("{missing} of {changes} changes did not reach every client within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    clients.done.store(true, Ordering::Relaxed);
    let reconnects_churn = clients.reconnects.load(Ordering::Relaxed) - reconnects_connecting;
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let pick =
        |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1];
    let (p50, p99, max) = (pick(0.5), pick(0.99), *sorted.last().unwrap_or(&0.0));
    let per_service = rss_synced.saturating_sub(rss_empty) as f64 / services.max(1) as f64;
    let per_proxy = rss_connected.saturating_sub(rss_synced) as f64 / count.max(1) as f64;
    if options.json {
        println!(
            "{}",
            json!({
                "source": "kubernetes",
                "count": count,
                "services": services,
                "churn_per_second": options.churn,
                "changes": changes,
                "debounce": options.debounce,
                "synced_ms": synced.as_secs_f64() * 1e3,
                "connected_ms": connected.as_secs_f64() * 1e3,
                "p50_ms": p50,
                "p99_ms": p99,
                "max_ms": max,
                "rss_empty_bytes": rss_empty,
                "rss_synced_bytes": rss_synced,
                "rss_connected_bytes": rss_connected,
                "rss_per_service_bytes": per_service,
                "rss_per_proxy_bytes": per_proxy,
                "reconnects_connecting": reconnects_connecting,
                "reconnects_churn": reconnects_churn,
            })
        );
    } else {
        println!(
            "Kubernetes source: {services} Services, {count} pods with the sidecar, as many delta ADS clients (debounce {})",
            options.debounce
        );
        println!(
            "  listed and published in {:.0} ms; every client holding every Service's endpoints {:.0} ms after connecting",
            synced.as_secs_f64() * 1e3,
            connected.as_secs_f64() * 1e3
        );
        println!(
            "  {changes} pod restarts at {}/s: EndpointSlice write → last client's ACK p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms",
            options.churn
        );
        println!(
            "  control plane RSS: {:.1} MB empty, {:.1} MB synced ({per_service:.0} B per Service), {:.1} MB with every proxy connected ({per_proxy:.0} B per proxy)",
            rss_empty as f64 / 1e6,
            rss_synced as f64 / 1e6,
            rss_connected as f64 / 1e6,
        );
        println!(
            "  streams opened again: {reconnects_connecting} while connecting, {reconnects_churn} during the churn"
        );
    }
    drop(cp);
    Ok(())
}

/// One simulated sidecar on delta ADS: node `pod-I.default`, every type
/// subscribed (endpoints and routes by name), every response ACKed.
/// `holding`: how many Services' endpoints the client has been sent, over
/// all its streams.
async fn client(
    i: usize,
    xds: SocketAddr,
    names: Arc<Vec<String>>,
    clients: Arc<Clients>,
    holding: &mut usize,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))?
        .connect_timeout(Duration::from_secs(60))
        .connect()
        .await?;
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    let node = Some(Node {
        id: format!("pod-{i}.default"),
        ..Default::default()
    });
    crate::xds_clients::delta_session(&mut ads, node, &names, |response| {
        if response.type_url != type_url::ENDPOINT {
            return;
        }
        let now = clients.start.elapsed().as_nanos() as u64;
        for resource in &response.resources {
            let Some(s) = resource
                .name
                .strip_prefix("outbound|8080||svc-")
                .and_then(|rest| rest.strip_suffix(".default"))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|s| *s < clients.services)
            else {
                continue;
            };
            if clients.slot(i, s).swap(now, Ordering::Relaxed) == 0 {
                *holding += 1;
                if *holding == clients.services {
                    clients.complete.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
    .await
}

//! `remora-perf xds-clients --count N`: N simulated proxies, each on its own
//! connection with a real ADS stream (state of the world, or delta with
//! `--delta`), subscribing to all four types and ACKing every response, as
//! Envoy does. The control plane runs as its own process so its RSS can be
//! read. Each round changes one endpoint in the mesh file and measures, per
//! client, the time from the file's replacement to the client's ACK of the
//! new endpoints; the report gives p50 / p99 / max over clients per round, the
//! median of the rounds, and the control plane's RSS per connected proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use remora_xds_proto::core::Node;
use remora_xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use remora_xds_proto::discovery::{DeltaDiscoveryRequest, DiscoveryRequest};
use remora_xds_proto::type_url;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(clap::Args)]
pub struct Options {
    /// Simulated proxies.
    #[arg(long, default_value_t = 1000)]
    pub(crate) count: usize,
    /// Services in the generated mesh (every proxy calls all of them).
    #[arg(long, default_value_t = 20)]
    pub(crate) services: usize,
    /// Endpoint changes measured.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Use delta ADS instead of state of the world.
    #[arg(long)]
    delta: bool,
    /// The control plane's debounce (its default is 100ms).
    #[arg(long, default_value = "0ms")]
    pub(crate) debounce: String,
    /// The `remora-control-plane` binary; default: next to this one.
    #[arg(long)]
    pub(crate) control_plane: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// A Kubernetes-shaped source: the control plane watches an (in-process,
    /// fake) API server holding `--services` Services and `--count` pods,
    /// and pods restart at `--churn` per second (delta ADS).
    #[arg(long)]
    kubernetes: bool,
    /// With --kubernetes: pod restarts per second.
    #[arg(long, default_value_t = 100)]
    pub(crate) churn: usize,
    /// With --kubernetes: seconds of churn.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: usize,
}

fn mesh(services: usize, round: usize) -> String {
    let mut text = String::from("services:\n");
    for s in 0..services {
        // Round r moves service 0's first endpoint to port 20000 + r.
        let first = if s == 0 { 20000 + round } else { 8080 };
        text.push_str(&format!(
            "  - {{name: svc-{s}, port: 8080, endpoints: ['10.1.{s}.1:{first}', '10.1.{s}.2:8080', '10.1.{s}.3:8080']}}\n"
        ));
    }
    text.push_str("proxies:\n  - node_id: 'load-*'\n    outbound:\n");
    for s in 0..services {
        text.push_str(&format!(
            "      - {{service: svc-{s}, listen: '127.0.0.1:{}'}}\n",
            30000 + s
        ));
    }
    text
}

fn write_atomically(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub(crate) fn control_plane_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("the directory of remora-perf")?
            .join("remora-control-plane"),
    };
    if !path.is_file() {
        bail!(
            "no control plane at {}: build it with `cargo build --release -p remora-control-plane`, or pass --control-plane PATH",
            path.display()
        );
    }
    Ok(path)
}

/// What each client records: the last time it ACKed an endpoint update,
/// in nanoseconds since the bench started.
struct Clients {
    start: Instant,
    acked_eds: Vec<AtomicU64>,
    eds_updates: AtomicUsize,
    connected: AtomicUsize,
}

pub fn run(options: Options) -> anyhow::Result<()> {
    let wanted = (options.count as u64) * 2 + 1024;
    let limit = crate::conns::raise_nofile(wanted)?;
    if limit < options.count as u64 + 256 {
        bail!(
            "RLIMIT_NOFILE is {limit}; {} clients need more",
            options.count
        );
    }
    if options.kubernetes {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(crate::xds_kubernetes::run(options));
    }
    let binary = control_plane_binary(options.control_plane.clone())?;
    let dir = tempfile_dir()?;
    let mesh_path = dir.join("mesh.yaml");
    write_atomically(&mesh_path, &mesh(options.services, 0))?;
    let xds = free_addr()?;
    let admin = free_addr()?;
    let mut child = Command::new(&binary)
        .args(["serve", "--mesh"])
        .arg(&mesh_path)
        .args(["--xds-address", &xds.to_string()])
        .args(["--admin-address", &admin.to_string()])
        .args(["--debounce", &options.debounce])
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(measure(&options, &mesh_path, xds, &child));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("remora-xds-clients-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn measure(
    options: &Options,
    mesh_path: &std::path::Path,
    xds: SocketAddr,
    child: &Child,
) -> anyhow::Result<()> {
    let pid = child.id();
    // Wait for the control plane to listen.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(xds).await.is_err() {
        if Instant::now() > deadline {
            bail!("the control plane did not listen on {xds}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = crate::procfs::rss_bytes(pid).unwrap_or(0);

    let clients = Arc::new(Clients {
        start: Instant::now(),
        acked_eds: (0..options.count).map(|_| AtomicU64::new(0)).collect(),
        eds_updates: AtomicUsize::new(0),
        connected: AtomicUsize::new(0),
    });
    let cluster_names: Arc<Vec<String>> = Arc::new(
        (0..options.services)
            .map(|s| format!("outbound|8080||svc-{s}.default"))
            .collect(),
    );
    let connect_start = Instant::now();
    let initial_target = options.count;
    for i in 0..options.count {
        let clients = clients.clone();
        let names = cluster_names.clone();
        let delta = options.delta;
        tokio::spawn(async move {
            if let Err(error) = client(i, xds, delta, names, clients).await {
                eprintln!("xds-clients: client {i}: {error:#}");
            }
        });
        if i % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    // Everyone connected and holding the initial endpoints.
    let deadline = Instant::now() + Duration::from_secs(120);
    while clients.eds_updates.load(Ordering::Relaxed) < initial_target {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} clients got their endpoints within 120 s",
                clients.eds_updates.load(Ordering::Relaxed),
                options.count
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let initial = connect_start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = crate::procfs::rss_bytes(pid).unwrap_or(0);

    let mut rounds = Vec::new();
    for round in 1..=options.rounds {
        let before = clients.eds_updates.load(Ordering::Relaxed);
        let t0 = clients.start.elapsed().as_nanos() as u64;
        write_atomically(mesh_path, &mesh(options.services, round))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while clients.eds_updates.load(Ordering::Relaxed) < before + options.count {
            if Instant::now() > deadline {
                bail!(
                    "round {round}: only {} of {} clients ACKed within 60 s",
                    clients.eds_updates.load(Ordering::Relaxed) - before,
                    options.count
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut latencies: Vec<f64> = clients
            .acked_eds
            .iter()
            .map(|a| (a.load(Ordering::Relaxed).saturating_sub(t0)) as f64 / 1e6)
            .collect();
        latencies.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
        };
        rounds.push((pick(0.5), pick(0.99), *latencies.last().unwrap()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let median = |f: fn(&(f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let per_proxy = rss_connected.saturating_sub(rss_before) as f64 / options.count as f64;
    let protocol = if options.delta { "delta" } else { "sotw" };
    if options.json {
        println!(
            "{}",
            serde_json::json!({
                "count": options.count,
                "services": options.services,
                "protocol": protocol,
                "debounce": options.debounce,
                "initial_connect_ms": initial.as_secs_f64() * 1e3,
                "rounds_ms": rounds.iter().map(|(a, b, c)| [a, b, c]).collect::<Vec<_>>(),
                "p50_ms": median(|r| r.0),
                "p99_ms": median(|r| r.1),
                "max_ms": median(|r| r.2),
                "rss_before_bytes": rss_before,
                "rss_connected_bytes": rss_connected,
                "rss_per_proxy_bytes": per_proxy,
            })
        );
    } else {
        println!(
            "{} {protocol} clients, {} services, debounce {}: all connected and holding endpoints in {:.0} ms",
            options.count,
            options.services,
            options.debounce,
            initial.as_secs_f64() * 1e3
        );
        for (i, (p50, p99, max)) in rounds.iter().enumerate() {
            println!(
                "  round {}: file change → ACK p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
                i + 1
            );
        }
        println!(
            "  median of {} rounds: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            rounds.len(),
            median(|r| r.0),
            median(|r| r.1),
            median(|r| r.2)
        );
        println!(
            "  control plane RSS: {:.1} MB idle, {:.1} MB with all connected, {:.0} B per proxy",
            rss_before as f64 / 1e6,
            rss_connected as f64 / 1e6,
            per_proxy
        );
    }
    Ok(())
}

/// One delta ADS session as a sidecar runs it: clusters and listeners by
/// wildcard, the endpoints of `clusters` and their routes by name; every
/// response ACKed, then handed to `seen`.
pub(crate) async fn delta_session(
    ads: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    node: Option<Node>,
    clusters: &[String],
    mut seen: impl FnMut(&remora_xds_proto::discovery::DeltaDiscoveryResponse),
) -> anyhow::Result<()> {
    let routes: Vec<String> = clusters
        .iter()
        .map(|n| n.replace("outbound|8080||", "") + ":8080")
        .collect();
    let (tx, rx) = mpsc::channel(8);
    for (t, subscribe) in [
        (type_url::CLUSTER, vec![]),
        (type_url::ENDPOINT, clusters.to_vec()),
        (type_url::LISTENER, vec![]),
        (type_url::ROUTE, routes),
    ] {
        tx.send(DeltaDiscoveryRequest {
            node: node.clone(),
            type_url: t.into(),
            resource_names_subscribe: subscribe,
            ..Default::default()
        })
        .await?;
    }
    let mut responses = ads
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(response) = responses.message().await? {
        tx.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await?;
        seen(&response);
    }
    Ok(())
}

async fn client(
    i: usize,
    xds: SocketAddr,
    delta: bool,
    names: Arc<Vec<String>>,
    clients: Arc<Clients>,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))?
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await?;
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let node = Some(Node {
        id: format!("load-{i}"),
        ..Default::default()
    });
    clients.connected.fetch_add(1, Ordering::Relaxed);
    let record = |type_url: &str| {
        if type_url == type_url::ENDPOINT {
            clients.acked_eds[i]
                .store(clients.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            clients.eds_updates.fetch_add(1, Ordering::Relaxed);
        }
    };
    if delta {
        delta_session(&mut ads, node, &names, |response| {
            if !response.resources.is_empty() {
                record(&response.type_url);
            }
        })
        .await?;
    } else {
        let routes: Vec<String> = names
            .iter()
            .map(|n| n.replace("outbound|8080||", "") + ":8080")
            .collect();
        let subscription = |t: &str| -> Vec<String> {
            match t {
                type_url::ENDPOINT => names.to_vec(),
                type_url::ROUTE => routes.clone(),
                _ => vec![],
            }
        };
        let (tx, rx) = mpsc::channel(8);
        for t in type_url::ALL {
            tx.send(DiscoveryRequest {
                node: node.clone(),
                type_url: t.into(),
                resource_names: subscription(t),
                ..Default::default()
            })
            .await?;
        }
        let mut responses = ads
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        while let Some(response) = responses.message().await? {
            tx.send(DiscoveryRequest {
                type_url: response.type_url.clone(),
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                resource_names: subscription(&response.type_url),
                ..Default::default()
            })
            .await?;
            record(&response.type_url);
        }
    }
    Ok(())
}

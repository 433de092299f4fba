//! `cache`: the response cache's hit path against the proxied path and
//! against nginx's `proxy_cache`, on loopback.
//!
//! One path (`GET /item`, 1 KiB body from the test upstream) is requested
//! by closed-loop keep-alive HTTP/1.1 connections through:
//!
//! - remora-proxy without a cache (every request proxied);
//! - remora-proxy with `cache: {ttl: 5m}` on the route (every request
//!   after the first a hit);
//! - nginx (Debian, one worker process) with `proxy_cache` and
//!   `proxy_cache_valid 200 5m` (every request after the first a hit).
//!
//! Each proxy runs pinned to `--proxy-cpus`; the upstream and the load
//! generator share `--load-cpus`. Rounds alternate the targets; the summary
//! gives medians of requests/s and the proxy's CPU per request, and the
//! ratios the issue asks for.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::child::{Killed, pinned};
use crate::load;
use crate::mtls::{free_port, wait_listening};

pub type Options = crate::child::ClosedLoopOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    RemoraProxied,
    RemoraCached,
    NginxCached,
}

impl Target {
    const ALL: [Target; 3] = [
        Target::RemoraProxied,
        Target::RemoraCached,
        Target::NginxCached,
    ];

    fn label(self) -> &'static str {
        match self {
            Target::RemoraProxied => "remora, no cache (proxied)",
            Target::RemoraCached => "remora, cache hit",
            Target::NginxCached => "nginx proxy_cache hit",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub round: usize,
    pub target: Target,
    pub report: load::Report,
    pub cpu_us_per_request: Option<f64>,
    pub rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub started: String,
    pub command: String,
    pub rounds: usize,
    pub duration_s: f64,
    pub connections: usize,
    pub measurements: Vec<Measurement>,
}

pub fn run(options: Options) -> anyhow::Result<()> {
    let remora = crate::child::remora_binary(options.remora.as_deref())?;
    let nginx = crate::sidecar::which("nginx")
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        .context("nginx not found: apt-get install nginx-light")?;
    let (dir, started) = crate::child::results_dir(&options.out, "cache")?;
    let mut results = Results {
        started,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        rounds: options.rounds,
        duration_s: options.duration.as_secs_f64(),
        connections: options.connections,
        measurements: Vec::new(),
    };
    let (upstream, _upstream) = crate::child::upstream_1k(&options.load_cpus, &dir)?;

    for round in 0..options.rounds {
        for target in Target::ALL {
            eprintln!(
                "cache: round {}/{}: {}",
                round + 1,
                options.rounds,
                target.label()
            );
            let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let child = match target {
                Target::RemoraProxied | Target::RemoraCached => {
                    let cache = if target == Target::RemoraCached {
                        ", cache: {ttl: 5m}"
                    } else {
                        ""
                    };
                    let config = dir.join("remora.yaml");
                    std::fs::write(
                        &config,
                        format!(
                            "workers: 1
log: {{level: warn}}
listeners:
  - name: web
    address: '{listen}'
    routes: [{{name: all, backends: [{{cluster: app}}]{cache}}}]
clusters:
  - {{name: app, endpoints: ['{upstream}']}}
"
                        ),
                    )?;
                    Killed(
                        pinned(&options.proxy_cpus, &remora, &dir.join("remora.log"))?
                            .arg("--config")
                            .arg(&config)
                            .spawn()?,
                    )
                }
                Target::NginxCached => {
                    let conf = nginx_config(&dir, listen, upstream)?;
                    Killed(
                        pinned(&options.proxy_cpus, &nginx, &dir.join("nginx.log"))?
                            .arg("-p")
                            .arg(&dir)
                            .arg("-c")
                            .arg(&conf)
                            .spawn()?,
                    )
                }
            };
            wait_listening(listen)?;
            let measured =
                crate::child::warm_and_measure(child.0.id(), listen, &options, target.label())?;
            results.measurements.push(Measurement {
                round,
                target,
                report: measured.report,
                cpu_us_per_request: measured.cpu_us_per_request,
                rss_bytes: measured.rss_bytes,
            });
            drop(child);
        }
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_vec_pretty(&results)?,
        )?;
    }
    crate::child::finish(&dir, "cache", &summary(&results))
}

/// nginx as a caching reverse proxy: one process (no master), no access
/// log, keep-alive to the upstream, every 200 cached for 5 minutes.
fn nginx_config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<PathBuf> {
    let cache = dir.join("nginx-cache");
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&cache)?;
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    proxy_cache_path {cache} levels=1:2 keys_zone=remora_perf:10m max_size=64m inactive=10m;
    upstream app {{ server {upstream}; keepalive 32; }}
    server {{
        listen {listen};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_cache remora_perf;
            proxy_cache_valid 200 5m;
            proxy_cache_lock on;
        }}
    }}
}}
",
            cache = cache.display()
        ),
    )?;
    Ok(conf)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    crate::bench::median(values.collect()).unwrap_or(f64::NAN)
}

pub fn summary(results: &Results) -> String {
    use std::fmt::Write as _;
    let of = |target: Target, f: &dyn Fn(&Measurement) -> f64| {
        median(
            results
                .measurements
                .iter()
                .filter(|m| m.target == target)
                .map(f),
        )
    };
    let cpu = |target| of(target, &|m| m.cpu_us_per_request.unwrap_or(f64::NAN));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# cache: {} rounds of {} s, {} keep-alive HTTP/1.1 connections, GET of a 1 KiB body (medians)\n\nCommand: `{}`\n",
        results.rounds, results.duration_s, results.connections, results.command
    );
    let _ = writeln!(
        out,
        "| target | req/s | p50 µs | p99 µs | proxy CPU µs/request | RSS MiB |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for target in Target::ALL {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} |",
            target.label(),
            of(target, &|m| m.report.rate),
            of(target, &|m| m.report.latency_us.p50 as f64),
            of(target, &|m| m.report.latency_us.p99 as f64),
            cpu(target),
            of(target, &|m| m.rss_bytes.unwrap_or(0) as f64 / 1048576.0),
        );
    }
    let hit = cpu(Target::RemoraCached);
    let _ = writeln!(
        out,
        "\nRemora's hit path: {:.2}× nginx's CPU per request (goal ≤ 1), {:.2}× Remora's proxied path (goal ≤ 0.5).",
        hit / cpu(Target::NginxCached),
        hit / cpu(Target::RemoraProxied),
    );
    out
}

//! `tracing`: what tracing and a live tap cost, on loopback.
//!
//! `GET /item` (1 KiB body) by closed-loop keep-alive HTTP/1.1 connections
//! through remora-proxy:
//!
//! - without `tracing:` (the baseline);
//! - with `tracing:` at `sampling: 0.01` and at `sampling: 1.0`, exporting
//!   over OTLP/HTTP to the test upstream (which answers every POST 200),
//!   so the exporter thread's work counts in the proxy's CPU;
//! - without tracing but with a tap open (`GET /tap`, read and discarded).
//!
//! The proxy runs pinned to `--proxy-cpus`; the upstream (also the span
//! sink), the load generator and the tap reader share `--load-cpus`.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::child::{Killed, pinned};
use crate::load;
use crate::mtls::{free_port, wait_listening};

pub type Options = crate::child::ClosedLoopOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Off,
    Sampled1,
    Sampled100,
    Tap,
}

impl Target {
    const ALL: [Target; 4] = [
        Target::Off,
        Target::Sampled1,
        Target::Sampled100,
        Target::Tap,
    ];

    fn label(self) -> &'static str {
        match self {
            Target::Off => "tracing off",
            Target::Sampled1 => "tracing, 1 % sampled",
            Target::Sampled100 => "tracing, 100 % sampled",
            Target::Tap => "tracing off, a tap open",
        }
    }

    fn tracing(self, sink: SocketAddr) -> String {
        let sampling = match self {
            Target::Sampled1 => 0.01,
            Target::Sampled100 => 1.0,
            Target::Off | Target::Tap => return String::new(),
        };
        format!(
            "tracing: {{otlp: {{endpoint: 'http://{sink}/v1/traces', protocol: http_protobuf}}, sampling: {sampling}}}\n"
        )
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
    let (dir, started) = crate::child::results_dir(&options.out, "tracing")?;
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
                "tracing: round {}/{}: {}",
                round + 1,
                options.rounds,
                target.label()
            );
            let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let config = dir.join("remora.yaml");
            std::fs::write(
                &config,
                format!(
                    "workers: 1
log: {{level: warn}}
admin: {{address: '{admin}'}}
{}listeners:
  - name: web
    address: '{listen}'
    routes: [{{name: all, backends: [{{cluster: app}}]}}]
clusters:
  - {{name: app, endpoints: ['{upstream}']}}
",
                    target.tracing(upstream)
                ),
            )?;
            let child = Killed(
                pinned(&options.proxy_cpus, &remora, &dir.join("remora.log"))?
                    .arg("--config")
                    .arg(&config)
                    .spawn()?,
            );
            wait_listening(listen)?;
            wait_listening(admin)?;
            let _tap = if target == Target::Tap {
                Some(Killed(
                    pinned(&options.load_cpus, Path::new("curl"), &dir.join("tap.log"))?
                        .args(["-sN", "-o", "/dev/null"])
                        .arg(format!("http://{admin}/tap?limit=100000000&duration=10m"))
                        .spawn()?,
                ))
            } else {
                None
            };
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
    crate::child::finish(&dir, "tracing", &summary(&results))
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
        "# tracing: {} rounds of {} s, {} keep-alive HTTP/1.1 connections, GET of a 1 KiB body (medians)\n\nCommand: `{}`\n",
        results.rounds, results.duration_s, results.connections, results.command
    );
    let _ = writeln!(
        out,
        "| target | req/s | p50 µs | p99 µs | proxy CPU µs/request | vs off | RSS MiB |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let base = cpu(Target::Off);
    for target in Target::ALL {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {:+.1} % | {:.1} |",
            target.label(),
            of(target, &|m| m.report.rate),
            of(target, &|m| m.report.latency_us.p50 as f64),
            of(target, &|m| m.report.latency_us.p99 as f64),
            cpu(target),
            (cpu(target) / base - 1.0) * 100.0,
            of(target, &|m| m.rss_bytes.unwrap_or(0) as f64 / 1048576.0),
        );
    }
    let _ = writeln!(
        out,
        "\nOverhead: {:+.1} % at 1 % sampling (goal ≤ 5 %), {:+.1} % at 100 % (goal ≤ 25 %), {:+.1} % with a tap open.",
        (cpu(Target::Sampled1) / base - 1.0) * 100.0,
        (cpu(Target::Sampled100) / base - 1.0) * 100.0,
        (cpu(Target::Tap) / base - 1.0) * 100.0,
    );
    out
}

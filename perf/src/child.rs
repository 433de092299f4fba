//! What the scenarios that drive a proxy share: child processes pinned to
//! CPUs and killed on drop, a closed-loop load run, and the proxy's CPU
//! per request over it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::path::PathBuf;

use anyhow::{Context as _, bail};

use crate::{load, procfs};

/// The options of a scenario that measures one proxy in a closed loop.
#[derive(clap::Args, Debug, Clone)]
pub struct ClosedLoopOptions {
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Time per measurement.
    #[arg(long, value_parser = crate::duration::parse, default_value = "5s")]
    pub duration: Duration,
    /// Closed-loop connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// CPUs for the proxy under test (taskset list).
    #[arg(long, default_value = "0")]
    pub proxy_cpus: String,
    /// CPUs for the upstream and the load generator.
    #[arg(long, default_value = "1")]
    pub load_cpus: String,
    /// remora-proxy to measure (default: next to this program).
    #[arg(long)]
    pub remora: Option<PathBuf>,
    /// Where the results folder is written.
    #[arg(long, default_value = "perf/results")]
    pub out: PathBuf,
}

/// The `remora-proxy` to measure (`--remora`, else the one next to this
/// program), or why there is none.
pub fn remora_binary(chosen: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    let remora = match chosen {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("remora-proxy"),
    };
    if !remora.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p remora-proxy) or pass --remora",
            remora.display()
        );
    }
    Ok(remora)
}

/// A new results folder `OUT/TIMESTAMP-SCENARIO` (absolute), and the
/// timestamp.
pub fn results_dir(out: &std::path::Path, scenario: &str) -> anyhow::Result<(PathBuf, String)> {
    let started = crate::bench::timestamp();
    let dir = std::path::absolute(out.join(format!("{started}-{scenario}")))?;
    std::fs::create_dir_all(&dir)?;
    Ok((dir, started))
}

/// The test upstream (`remora-perf upstream`) on a free port, pinned to
/// `cpus`, answering 1 KiB bodies; listening when this returns.
pub fn upstream_1k(cpus: &str, dir: &std::path::Path) -> anyhow::Result<(SocketAddr, Killed)> {
    let at = SocketAddr::from(([127, 0, 0, 1], crate::mtls::free_port()?));
    let child = Killed(
        pinned(cpus, &std::env::current_exe()?, &dir.join("upstream.log"))?
            .args(["upstream", "--listen", &at.to_string()])
            .args(["--body-size", "1024"])
            .spawn()?,
    );
    crate::mtls::wait_listening(at)?;
    Ok((at, child))
}

/// A child killed on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program` under `taskset -c cpus`, its stderr to `log`.
pub fn pinned(cpus: &str, program: &Path, log: &Path) -> anyhow::Result<Command> {
    let mut command = Command::new("taskset");
    command
        .args(["-c", cpus])
        .arg(program)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log)?));
    Ok(command)
}

/// A closed-loop `remora-perf load` of `url` from `cpus`.
pub fn closed_loop(
    cpus: &str,
    url: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<load::Report> {
    let output = Command::new("taskset")
        .args(["-c", cpus])
        .arg(std::env::current_exe()?)
        .arg("load")
        .arg(url)
        .args(["--connections", &connections.to_string()])
        .args(["--duration", &format!("{}ms", duration.as_millis())])
        .arg("--json")
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        bail!("load: {}", String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice::<load::Report>(&output.stdout).context("load: unreadable output")
}

/// A closed loop against `target`'s `path`, and the CPU process `pid`
/// spent per request meanwhile (µs).
pub fn cpu_per_request(
    pid: u32,
    cpus: &str,
    target: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<(load::Report, Option<f64>)> {
    let before = procfs::cpu_ticks(pid);
    let report = closed_loop(
        cpus,
        &format!("http://{target}{path}"),
        connections,
        duration,
    )?;
    let after = procfs::cpu_ticks(pid);
    let cpu = before.zip(after).map(|(b, a)| {
        (a - b) as f64 * 1e6
            / procfs::ticks_per_second() as f64
            / (report.requests + report.errors).max(1) as f64
    });
    Ok((report, cpu))
}

/// What one closed-loop measurement of a proxy gave.
pub struct Measured {
    pub report: load::Report,
    pub cpu_us_per_request: Option<f64>,
    pub rss_bytes: Option<u64>,
}

/// A 1 s warm-up (which must get answers), then `options.duration` of
/// closed loop on `listen`'s `/item`, with process `pid`'s CPU and memory.
pub fn warm_and_measure(
    pid: u32,
    listen: SocketAddr,
    options: &ClosedLoopOptions,
    what: &str,
) -> anyhow::Result<Measured> {
    let url = format!("http://{listen}/item");
    let warm = closed_loop(
        &options.load_cpus,
        &url,
        options.connections,
        Duration::from_secs(1),
    )?;
    if warm.requests == 0 {
        bail!("{what}: no request succeeded in the warm-up");
    }
    let (report, cpu_us_per_request) = cpu_per_request(
        pid,
        &options.load_cpus,
        listen,
        "/item",
        options.connections,
        options.duration,
    )?;
    Ok(Measured {
        report,
        cpu_us_per_request,
        rss_bytes: procfs::rss_bytes(pid),
    })
}

/// Writes a scenario's summary next to its results and prints it.
pub fn finish(dir: &std::path::Path, scenario: &str, summary: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join("summary.md"), summary)?;
    println!("{summary}");
    eprintln!("{scenario}: results in {}", dir.display());
    Ok(())
}

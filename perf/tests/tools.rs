//! The benchmark tools against each other on loopback: the upstream serves
//! every protocol the load generator speaks, the open loop holds its rate,
//! failures are counted, `conns` holds and re-checks connections, and a
//! short `bench` run writes its results.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

fn perf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_remora-perf"))
}

struct Upstream {
    child: Child,
    http: String,
    tcp: String,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `remora-perf upstream` on ephemeral ports and reads them from its output.
fn upstream(extra: &[&str]) -> Upstream {
    let mut child = perf()
        .args([
            "upstream",
            "--listen",
            "127.0.0.1:0",
            "--tcp-echo",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut http, mut tcp) = (None, None);
    while http.is_none() || tcp.is_none() {
        let line = lines
            .next()
            .expect("the upstream says where it listens")
            .unwrap();
        let address = line
            .split(" on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        if line.contains("TCP echo") {
            tcp = Some(address);
        } else {
            http = Some(address);
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    Upstream {
        child,
        http: http.unwrap(),
        tcp: tcp.unwrap(),
    }
}

fn run_json(args: &[&str]) -> Value {
    let output = perf().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "remora-perf {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_load_generator_speaks_every_protocol_to_the_upstream() {
    let upstream = upstream(&[]);
    let url = format!("http://{}/", upstream.http);
    for (protocol, target, streams) in [
        ("http1", url.as_str(), "1"),
        ("h2c", url.as_str(), "2"),
        ("grpc", url.as_str(), "2"),
        ("grpc-stream", url.as_str(), "2"),
        ("tcp", upstream.tcp.as_str(), "1"),
    ] {
        let report = run_json(&[
            "load",
            target,
            "--protocol",
            protocol,
            "--connections",
            "4",
            "--streams",
            streams,
            "--duration",
            "500ms",
            "--size",
            "64",
            "--json",
        ]);
        assert_eq!(report["errors"], 0, "{protocol}: {report}");
        assert!(
            report["requests"].as_u64().unwrap() > 100,
            "{protocol}: {report}"
        );
        assert!(
            report["latency_us"]["p50"].as_u64().unwrap() > 0,
            "{protocol}: {report}"
        );
        let per_answer = match protocol {
            "http1" | "h2c" => 20,
            "tcp" => 64,
            _ => 69, // a gRPC message: 5-byte prefix and 64 bytes
        };
        assert_eq!(
            report["bytes"].as_u64().unwrap(),
            report["requests"].as_u64().unwrap() * per_answer,
            "{protocol}: every answer is whole: {report}"
        );
    }
}

#[test]
fn the_open_loop_holds_its_rate() {
    let upstream = upstream(&[]);
    let report = run_json(&[
        "load",
        &format!("http://{}/", upstream.http),
        "--rate",
        "500",
        "--duration",
        "2s",
        "--connections",
        "8",
        "--json",
    ]);
    let requests = report["requests"].as_u64().unwrap();
    assert!((950..=1010).contains(&requests), "500/s for 2 s: {report}");
    assert_eq!(report["target_rate"], 500.0);
}

#[test]
fn failures_are_counted_not_hidden() {
    let upstream = upstream(&["--failure-rate", "0.5"]);
    for protocol in ["http1", "grpc"] {
        let report = run_json(&[
            "load",
            &format!("http://{}/", upstream.http),
            "--protocol",
            protocol,
            "--duration",
            "500ms",
            "--connections",
            "2",
            "--json",
        ]);
        let (ok, errors) = (
            report["requests"].as_u64().unwrap(),
            report["errors"].as_u64().unwrap(),
        );
        assert!(ok > 50 && ok.abs_diff(errors) <= 4, "half fail: {report}");
        let first = report["first_error"].as_str().unwrap();
        assert!(
            first == "status 503" || first == "grpc-status 14",
            "{first}"
        );
    }
}

#[test]
fn conns_holds_connections_and_checks_each_one() {
    let upstream = upstream(&[]);
    let report = run_json(&[
        "conns",
        &upstream.http,
        "--pid",
        &upstream.child.id().to_string(),
        "--count",
        "300",
        "--sources",
        "3",
        "--json",
    ]);
    assert_eq!(report["opened"], 300, "{report}");
    assert_eq!(report["answered"], 300, "{report}");
    assert!(report["rss_idle"].as_u64().unwrap() > 0);
}

#[test]
fn a_short_bench_run_writes_its_results() {
    // The bench measures the remora-proxy next to remora-perf.
    let proxy =
        std::path::Path::new(env!("CARGO_BIN_EXE_remora-perf")).with_file_name("remora-proxy");
    if !proxy.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "remora-proxy", "--bin", "remora-proxy"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let out = tempfile::tempdir().unwrap();
    let output = perf()
        .args([
            "bench",
            "--targets",
            "direct,remora,baseline",
            "--scenarios",
            "http1",
            "--rounds",
            "1",
            "--duration",
            "1s",
            "--latency-duration",
            "1s",
            "--base-port",
            "28100",
            "--baseline",
        ])
        // The same build as the A/B baseline: the target must run and be reported.
        .arg(&proxy)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = std::fs::read_dir(out.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    let measurements = results["measurements"].as_array().unwrap();
    assert_eq!(measurements.len(), 3);
    assert!(
        measurements
            .iter()
            .any(|m| m["target"] == "baseline" && m["throughput"]["errors"] == 0),
        "{results}"
    );
    let remora = measurements
        .iter()
        .find(|m| m["target"] == "remora")
        .unwrap();
    assert!(
        remora["cpu_us_per_request"].as_f64().unwrap() > 0.0,
        "{remora}"
    );
    assert!(remora["rss_idle"].as_u64().unwrap() > 1_000_000, "{remora}");
    assert!(
        remora["latency"]["requests"].as_u64().unwrap() > 1000,
        "{remora}"
    );
    assert_eq!(remora["throughput"]["errors"], 0);
    let summary = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(summary.contains("| remora |"), "{summary}");
    assert!(summary.contains("| baseline |"), "{summary}");
    assert!(
        summary.contains("Remora / baseline: CPU per request"),
        "{summary}"
    );
    assert!(
        std::fs::read_to_string(run.join("latency.svg"))
            .unwrap()
            .contains("<polyline")
    );
}

//! The load generator.
//!
//! A *lane* sends one request at a time: each HTTP/1.1 or TCP connection is
//! one lane, and an h2c or gRPC connection carries `--streams` lanes.
//!
//! - **Closed loop** (no `--rate`): every lane sends its next request as soon
//!   as the last one is answered, for `--duration`. Latency is from send to
//!   the end of the response.
//! - **Open loop** (`--rate R`): each of the L lanes has its own schedule,
//!   one request every L/R seconds, staggered across lanes. A request that
//!   has to wait because its lane's previous answer came late is measured
//!   from its *intended* send time, so a stall shows in the percentiles
//!   instead of silently thinning the load (coordinated omission). A lane
//!   that is idle and waits for its timer is measured from the actual send,
//!   so the timer's millisecond granularity is not counted as latency.
//!
//! Latencies go into HdrHistograms (1 µs to 60 s, 3 significant digits), one
//! per lane, merged at the end. Lanes are spread over `--threads` threads,
//! each with its own single-threaded runtime.

mod h2;
mod http1;
mod tcp;

use std::net::SocketAddr;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// `http://HOST:PORT/PATH` (tcp: `HOST:PORT`).
    pub target: String,
    #[arg(long, value_enum, default_value = "http1")]
    pub protocol: Protocol,
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Concurrent streams per connection (h2c and gRPC).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    #[arg(long, value_parser = crate::duration::parse, default_value = "10s")]
    pub duration: Duration,
    /// Open loop at this many requests per second in total; closed loop without it.
    #[arg(long)]
    pub rate: Option<f64>,
    /// gRPC message bytes, or TCP bytes per round trip.
    #[arg(long, default_value_t = 20)]
    pub size: usize,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// An extra request header, `NAME:VALUE` (repeatable; HTTP and gRPC).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// A request header whose value is the lane's number, so that lanes
    /// spread over a consistent-hash balancer.
    #[arg(long)]
    pub vary_header: Option<String>,
    /// Print the report as JSON (for `bench`) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// HTTP/1.1 GET, keep-alive.
    Http1,
    /// HTTP/2 with prior knowledge, GET.
    H2c,
    /// gRPC unary calls (one message each way).
    Grpc,
    /// gRPC bidirectional streams: a message out, its echo back, repeated.
    GrpcStream,
    /// Opaque TCP: `--size` bytes out, the same back, repeated.
    Tcp,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub protocol: Protocol,
    pub connections: usize,
    pub streams: usize,
    pub target_rate: Option<f64>,
    pub seconds: f64,
    /// Requests (or messages, or TCP round trips) answered.
    pub requests: u64,
    pub errors: u64,
    /// Answered per second.
    pub rate: f64,
    /// Response body bytes (TCP: bytes echoed).
    pub bytes: u64,
    pub latency_us: Latency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }
}

pub fn run(options: Options) -> anyhow::Result<()> {
    let report = measure(&options)?;
    if options.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn print_text(r: &Report) {
    println!(
        "{:?}: {} answered in {:.2} s = {:.0}/s, {} errors{}",
        r.protocol,
        r.requests,
        r.seconds,
        r.rate,
        r.errors,
        r.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    let l = &r.latency_us;
    println!(
        "latency µs: p50 {} p90 {} p99 {} p99.9 {} max {} mean {:.1}",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean
    );
    if r.protocol == Protocol::Tcp {
        println!(
            "throughput: {:.1} MiB/s echoed",
            r.bytes as f64 / r.seconds / (1 << 20) as f64
        );
    }
}

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub address: SocketAddr,
    /// `host:port` as given, for `Host` and `:authority`.
    pub authority: String,
    pub path: String,
}

impl Target {
    fn parse(text: &str, protocol: Protocol) -> anyhow::Result<Target> {
        let rest = match protocol {
            Protocol::Tcp => text.strip_prefix("tcp://").unwrap_or(text),
            _ => text
                .strip_prefix("http://")
                .with_context(|| format!("{text:?}: expected http://HOST:PORT/PATH"))?,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let address = std::net::ToSocketAddrs::to_socket_addrs(authority)
            .with_context(|| format!("{authority:?} is not HOST:PORT"))?
            .next()
            .with_context(|| format!("{authority:?} resolves to no address"))?;
        Ok(Target {
            address,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// One request at a time, over one connection or one stream.
enum Lane {
    Http1(http1::Connection),
    H2(h2::Lane),
    GrpcStream(h2::StreamLane),
    Tcp(tcp::Connection),
}

impl Lane {
    /// One exchange: the body bytes received, or what went wrong.
    async fn call(&mut self) -> Result<u64, String> {
        match self {
            Lane::Http1(c) => c.call().await,
            Lane::H2(l) => l.call().await,
            Lane::GrpcStream(l) => l.call().await,
            Lane::Tcp(c) => c.call().await,
        }
    }
}

/// The extra headers of lane `lane`.
fn lane_headers(options: &Options, lane: usize) -> anyhow::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    for header in &options.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("--header {header:?}: expected NAME:VALUE"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    if let Some(name) = &options.vary_header {
        headers.push((name.clone(), lane.to_string()));
    }
    Ok(headers)
}

/// The lanes of connection number `connection`.
async fn open(target: &Target, options: &Options, connection: usize) -> anyhow::Result<Vec<Lane>> {
    let first_lane = connection * options.streams;
    let lanes = match options.protocol {
        Protocol::Http1 => {
            let headers = lane_headers(options, first_lane)?;
            vec![Lane::Http1(
                http1::Connection::open(target, &headers).await?,
            )]
        }
        Protocol::Tcp => vec![Lane::Tcp(
            tcp::Connection::open(target, options.size).await?,
        )],
        Protocol::H2c | Protocol::Grpc => {
            let client = h2::connect(target).await?;
            let grpc = options.protocol == Protocol::Grpc;
            let mut lanes = Vec::with_capacity(options.streams);
            for stream in 0..options.streams {
                let headers = lane_headers(options, first_lane + stream)?;
                lanes.push(Lane::H2(h2::Lane::new(
                    &client,
                    target,
                    &headers,
                    grpc,
                    options.size,
                )?));
            }
            lanes
        }
        Protocol::GrpcStream => {
            let client = h2::connect(target).await?;
            let mut lanes = Vec::with_capacity(options.streams);
            for stream in 0..options.streams {
                let headers = lane_headers(options, first_lane + stream)?;
                lanes.push(Lane::GrpcStream(
                    h2::StreamLane::open(&client, target, &headers, options.size).await?,
                ));
            }
            lanes
        }
    };
    Ok(lanes)
}

/// How a lane paces itself.
#[derive(Clone, Copy)]
enum Pace {
    Closed,
    /// The first request at `offset` after the start, then one every `interval`.
    Open {
        offset: Duration,
        interval: f64,
    },
}

#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    bytes: u64,
    last: Option<Instant>,
    first_error: Option<String>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn drive(
    mut lane: Lane,
    pace: Pace,
    start: Instant,
    deadline: Instant,
) -> (Histogram<u64>, Tally) {
    let mut histogram = new_histogram();
    let mut tally = Tally::default();
    let mut k: u64 = 0;
    loop {
        let now = Instant::now();
        let sent = match pace {
            Pace::Closed => now,
            Pace::Open { offset, interval } => {
                let intended = start + offset + Duration::from_secs_f64(interval * k as f64);
                k += 1;
                if intended > now {
                    if intended >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(intended.into()).await;
                    // Idle until the timer: measured from the real send.
                    Instant::now()
                } else {
                    // Late because the last answer was late: measured from
                    // when this request should have gone.
                    intended
                }
            }
        };
        if sent >= deadline {
            break;
        }
        match lane.call().await {
            Ok(bytes) => {
                let done = Instant::now();
                let micros = done.saturating_duration_since(sent).as_micros() as u64;
                histogram.saturating_record(micros.max(1));
                tally.requests += 1;
                tally.bytes += bytes;
                tally.last = Some(done);
            }
            Err(error) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(error);
                // A dead peer fails fast; do not spin on it.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    (histogram, tally)
}

/// Runs the load described by `options` and measures it.
pub fn measure(options: &Options) -> anyhow::Result<Report> {
    let target = Target::parse(&options.target, options.protocol)?;
    if options.connections == 0 || options.streams == 0 || options.threads == 0 {
        bail!("--connections, --streams and --threads must be at least 1");
    }
    if options.streams > 1 && matches!(options.protocol, Protocol::Http1 | Protocol::Tcp) {
        bail!("--streams applies to h2c and gRPC; HTTP/1.1 and TCP use one lane per connection");
    }
    if let Some(rate) = options.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate {rate} must be above 0");
    }
    let lanes_total = options.connections * options.streams;
    let threads = options.threads.min(options.connections);
    // Everyone connects, then the clock starts for all at once.
    let connected = Arc::new(Barrier::new(threads + 1));
    let started = Arc::new(Barrier::new(threads + 1));
    let start_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut handles = Vec::new();
    for thread in 0..threads {
        let (target, options) = (target.clone(), options.clone());
        let (connected, started, start_at) = (connected.clone(), started.clone(), start_at.clone());
        handles.push(std::thread::spawn(move || -> anyhow::Result<_> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mine: Vec<usize> = (thread..options.connections).step_by(threads).collect();
            let opened = runtime.block_on(async {
                let mut lanes = Vec::new();
                for &connection in &mine {
                    for (stream, lane) in open(&target, &options, connection)
                        .await?
                        .into_iter()
                        .enumerate()
                    {
                        lanes.push((connection * options.streams + stream, lane));
                    }
                }
                anyhow::Ok(lanes)
            });
            connected.wait();
            started.wait();
            let lanes = opened?;
            let start = start_at
                .lock()
                .unwrap()
                .expect("the start is set before the second barrier");
            let deadline = start + options.duration;
            let results = runtime.block_on(async {
                let mut tasks = tokio::task::JoinSet::new();
                for (index, lane) in lanes {
                    let pace = match options.rate {
                        None => Pace::Closed,
                        Some(rate) => {
                            let interval = lanes_total as f64 / rate;
                            Pace::Open {
                                offset: Duration::from_secs_f64(
                                    interval * index as f64 / lanes_total as f64,
                                ),
                                interval,
                            }
                        }
                    };
                    tasks.spawn(drive(lane, pace, start, deadline));
                }
                let mut results = Vec::new();
                while let Some(result) = tasks.join_next().await {
                    results.push(result.expect("a lane does not panic"));
                }
                results
            });
            Ok(results)
        }));
    }
    connected.wait();
    *start_at.lock().unwrap() = Some(Instant::now() + Duration::from_millis(10));
    started.wait();
    let start = start_at.lock().unwrap().expect("set above");

    let mut histogram = new_histogram();
    let mut tally = Tally::default();
    for handle in handles {
        let results = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        for (h, t) in results {
            histogram.add(&h).expect("same bounds");
            tally.requests += t.requests;
            tally.errors += t.errors;
            tally.bytes += t.bytes;
            tally.last = tally.last.max(t.last);
            if tally.first_error.is_none() {
                tally.first_error = t.first_error;
            }
        }
    }
    let end = tally
        .last
        .unwrap_or(start + options.duration)
        .max(start + Duration::from_millis(1));
    let seconds = (end - start).as_secs_f64();
    Ok(Report {
        protocol: options.protocol,
        connections: options.connections,
        streams: options.streams,
        target_rate: options.rate,
        seconds,
        requests: tally.requests,
        errors: tally.errors,
        rate: tally.requests as f64 / seconds,
        bytes: tally.bytes,
        latency_us: Latency::of(&histogram),
        first_error: tally.first_error,
    })
}

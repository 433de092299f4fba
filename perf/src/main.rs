//! `remora-perf`: how Remora measures speed and memory (shared/PERF.md,
//! docs/benchmarks.md).
//!
//! - `upstream`: a small, fast test server (HTTP/1.1, h2c, gRPC unary and
//!   streaming echo, TCP echo), so results do not depend on another server;
//! - `load`: a load generator, closed loop or open loop (coordinated
//!   omission corrected), with HdrHistogram percentiles and JSON output;
//! - `bench`: runs the scenarios against the upstream directly, Remora,
//!   Envoy and HAProxy, alternating targets over rounds, and writes JSON, a
//!   Markdown table of ratios and an SVG latency plot;
//! - `conns`: holds many idle keep-alive connections through a proxy and
//!   reports the proxy's memory per connection;
//! - `sidecar`: Remora and Envoy as transparent sidecars on both ends of a
//!   call (iptables capture in two network namespaces): CPU per request over
//!   both hops, added latency, and the delay a server-first banner sees;
//! - `banner`: times connects to a server's first byte;
//! - `limits`: adaptive concurrency against a saturated upstream, and a
//!   global (Redis) rate limit against a local one;
//! - `cache`: the response cache's hit path vs the proxied path and vs
//!   nginx's `proxy_cache`;
//! - `tracing`: CPU per request with tracing off, at 1 % and 100 %
//!   sampling, and with a tap open;
//! - `mtls`: two hops configured by the control plane, mTLS vs plaintext,
//!   Remora vs Envoy: CPU per keep-alive request and per handshake.

mod bench;
mod cache;
mod child;
mod conns;
mod duration;
mod limits;
mod load;
mod mtls;
mod procfs;
mod sidecar;
mod tracing;
mod upstream;
mod xds_clients;
mod xds_kubernetes;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "remora-perf", version, about = "Remora's benchmark tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A test upstream: HTTP/1.1 + h2c + gRPC echo on one port, TCP echo on another.
    Upstream(upstream::Options),
    /// Sends load to a target and prints what it measured.
    Load(load::Options),
    /// Runs the benchmark scenarios against direct / Remora / Envoy / HAProxy.
    Bench(bench::Options),
    /// Holds N idle keep-alive connections through a proxy; reports RSS per connection.
    Conns(conns::Options),
    /// Remora vs Envoy as transparent sidecars on both ends of a call (needs root).
    Sidecar(sidecar::Options),
    /// Adaptive concurrency and global (Redis) rate limits: what they buy and cost.
    Limits(limits::Options),
    /// The response cache's hit path vs Remora proxying and vs nginx proxy_cache.
    Cache(cache::Options),
    /// What tracing (1 % and 100 % sampled) and a live tap cost per request.
    Tracing(tracing::Options),
    /// Remora vs Envoy in a two-hop mesh, mTLS vs plaintext (CPU per request and per handshake).
    Mtls(mtls::Options),
    /// Times connects to a server's first byte (a server-first banner).
    Banner(sidecar::BannerOptions),
    /// Simulates N ADS clients against the control plane; measures convergence and RSS.
    XdsClients(xds_clients::Options),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Upstream(options) => upstream::run(options),
        Command::Load(options) => load::run(options),
        Command::Bench(options) => bench::run(options),
        Command::Conns(options) => conns::run(options),
        Command::XdsClients(options) => xds_clients::run(options),
        Command::Sidecar(options) => sidecar::run(options),
        Command::Banner(options) => sidecar::banner(options),
        Command::Mtls(options) => mtls::run(options),
        Command::Limits(options) => limits::run(options),
        Command::Cache(options) => cache::run(options),
        Command::Tracing(options) => tracing::run(options),
    };
    if let Err(error) = result {
        eprintln!("remora-perf: {error:#}");
        std::process::exit(1);
    }
}

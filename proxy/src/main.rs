//! `remora-proxy`: run the data plane from a config file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use remora_proxy::config::{EnvOverrides, XdsConfig, load_file};
use remora_proxy::snapshot::{Mode, Snapshot};
use remora_proxy::telemetry::Telemetry;
use remora_proxy::telemetry::logging::LogControl;
use remora_proxy::worker::Workers;
use remora_proxy::{Proxy, ProxyOptions, admin, reload};

/// Remora's sidecar proxy: HTTP/1.1, HTTP/2, gRPC and TCP.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The YAML config file; it is watched and reloaded on change (and on
    /// SIGHUP). Optional with --xds.
    #[arg(long, short, required_unless_present = "xds")]
    config: Option<PathBuf>,
    /// Get listeners and clusters from this ADS server (`HOST:PORT`); sets
    /// or overrides the file's `xds.address`.
    #[arg(long, value_name = "HOST:PORT")]
    xds: Option<String>,
    /// The node id sent to the xDS server (`xds.node_id`); required with --xds.
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// `node.cluster` sent to the xDS server (`xds.cluster`).
    #[arg(long, value_name = "NAME")]
    node_cluster: Option<String>,
    /// Use incremental (delta) xDS (`xds.delta`).
    #[arg(long)]
    delta: bool,
    /// Validate the config (with REMORA_* overrides) and exit: 0 if valid.
    #[arg(long)]
    check: bool,
    /// Get this proxy's certificate from the mesh's CA at `HOST:PORT`
    /// (`identity.ca`); needs --token-file.
    #[arg(long, value_name = "HOST:PORT", requires = "token_file")]
    ca: Option<String>,
    /// The token that proves the identity to the CA (`identity.token_file`):
    /// a bootstrap token, or a projected service-account token in
    /// Kubernetes.
    #[arg(long, value_name = "PATH", requires = "ca")]
    token_file: Option<PathBuf>,
    /// Write the admin server's bound address to this file once it listens
    /// (useful with admin address port 0).
    #[arg(long)]
    admin_address_path: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Install the iptables rules that capture this network namespace's TCP
    /// for the proxy (what a sidecar's init container runs); see
    /// docs/sidecar.md.
    Init(InitArgs),
    /// Watch live requests on a running proxy (its admin server's /tap) as
    /// a table, one row per request as it finishes.
    Tap(TapArgs),
}

#[derive(clap::Args, Debug)]
struct TapArgs {
    /// The proxy's admin server.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: String,
    /// Only this listener's requests.
    #[arg(long)]
    listener: Option<String>,
    /// Only this route's requests.
    #[arg(long)]
    route: Option<String>,
    /// Only requests whose path starts with this.
    #[arg(long)]
    path_prefix: Option<String>,
    /// Stop after this many requests (the proxy's default: 1000).
    #[arg(long)]
    limit: Option<u64>,
    /// Stop after this long, e.g. 30s (the proxy's default: 60s).
    #[arg(long, value_parser = remora_proxy::config::scalar::parse_duration)]
    duration: Option<std::time::Duration>,
}

#[derive(clap::Args, Debug)]
struct InitArgs {
    /// The proxy's user id: its own connections are never captured.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// The proxy's group id: its own connections are never captured.
    #[arg(long, default_value_t = 1337)]
    proxy_gid: u32,
    /// Where outbound TCP is redirected.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Where inbound TCP is redirected.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// The proxy's other ports (admin): inbound connections to them are
    /// never redirected.
    #[arg(long, value_delimiter = ',', default_value = "15000")]
    proxy_ports: Vec<u16>,
    /// Inbound ports left alone (e.g. 22).
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone (10.0.0.0/8,fd00::/8).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<remora_proxy::capture::Cidr>,
    /// Only these outbound destinations are captured; `*` (the default):
    /// all.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    include_outbound_cidrs: Vec<String>,
    /// Which iptables: the one the host uses, nft or legacy.
    #[arg(long, value_enum, default_value = "auto")]
    iptables: remora_proxy::capture::Flavour,
    /// Capture IPv6 too: when the host has it, always, or never.
    #[arg(long, value_enum, default_value = "auto")]
    ipv6: remora_proxy::capture::Ipv6,
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
    /// Remove every rule init added.
    #[arg(long)]
    clean: bool,
}

fn main() -> ExitCode {
    remora_proxy::tls::install_default_provider();
    let args = Args::parse();
    if let Some(Command::Tap(tap)) = &args.command {
        let request = remora_proxy::admin::tap_cli::TapRequest {
            admin: tap.admin.clone(),
            listener: tap.listener.clone(),
            route: tap.route.clone(),
            path_prefix: tap.path_prefix.clone(),
            limit: tap.limit,
            duration: tap.duration,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let result = runtime.map_err(anyhow::Error::from).and_then(|runtime| {
            runtime.block_on(remora_proxy::admin::tap_cli::run(
                &request,
                &mut std::io::stdout().lock(),
            ))
        });
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("remora-proxy tap: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Init(init)) = args.command {
        return match run_init(init) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("remora-proxy init: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("remora-proxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let env = EnvOverrides::from_env().context("invalid environment")?;
    let mut config = match &args.config {
        Some(path) => {
            load_file(path).with_context(|| format!("invalid config {}", path.display()))?
        }
        None => remora_proxy::config::parse_yaml("").context("the default config")?,
    };
    env.apply(&mut config);
    apply_xds_flags(&args, &mut config)?;
    if let (Some(ca), Some(token_file)) = (&args.ca, &args.token_file) {
        let lifetime = config.identity.as_ref().map(|i| i.lifetime);
        let mut identity: remora_proxy::config::IdentityConfig =
            serde_json::from_value(serde_json::json!({"ca": ca, "token_file": token_file}))
                .context("--ca, --token-file")?;
        if let Some(lifetime) = lifetime {
            identity.lifetime = lifetime;
        }
        config.identity = Some(identity);
    }
    if args.check {
        let snapshot = Snapshot::compile(config, None, &Telemetry::new(), 0, Mode::Check)
            .with_context(|| format!("invalid config {}", source_name(&args)))?;
        println!(
            "{}: valid ({} listeners, {} clusters)",
            source_name(&args),
            snapshot.listeners.len(),
            snapshot.clusters.len()
        );
        return Ok(ExitCode::SUCCESS);
    }

    let log = Arc::new(LogControl::install(&config.log).map_err(anyhow::Error::msg)?);
    let workers = config
        .workers
        .map(|w| w.get())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Every runtime is a current-thread one. Its FIFO run queue lets the
    // HTTP/2 frames several streams queue in one tick leave in one write,
    // and it skips the work-stealing machinery (docs/architecture.md). One
    // worker runs everything on this thread; with more, each worker is a
    // thread of its own that accepts on its own socket of every listener,
    // and this thread keeps the proxy's own work (reloads, discovery,
    // health checks).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let worker_threads = Workers::start(workers).context("cannot start the worker threads")?;
    runtime.block_on(serve(args, config, env, log, worker_threads, workers))
}

fn run_init(args: InitArgs) -> anyhow::Result<String> {
    use remora_proxy::capture::{CaptureOptions, Cidr, InitRequest, init};
    let include_outbound_cidrs = args
        .include_outbound_cidrs
        .iter()
        .filter(|c| c.as_str() != "*")
        .map(|c| c.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--include-outbound-cidrs: {e}"))?;
    let request = InitRequest {
        options: CaptureOptions {
            proxy_uid: args.proxy_uid,
            proxy_gid: args.proxy_gid,
            outbound_port: args.outbound_port,
            inbound_port: args.inbound_port,
            proxy_ports: args.proxy_ports,
            exclude_inbound_ports: args.exclude_inbound_ports,
            exclude_outbound_ports: args.exclude_outbound_ports,
            exclude_outbound_cidrs: args.exclude_outbound_cidrs,
            include_outbound_cidrs,
        },
        flavour: args.iptables,
        ipv6: args.ipv6,
        dry_run: args.dry_run,
        clean: args.clean,
    };
    Ok(init(&request)?)
}

fn source_name(args: &Args) -> String {
    match &args.config {
        Some(path) => path.display().to_string(),
        None => "the command line".into(),
    }
}

/// `--xds`, `--node-id`, `--node-cluster` and `--delta` over the file's `xds:`.
fn apply_xds_flags(args: &Args, config: &mut remora_proxy::config::Config) -> anyhow::Result<()> {
    if let Some(address) = &args.xds {
        let node_id = args
            .node_id
            .clone()
            .or_else(|| config.xds.as_ref().map(|x| x.node_id.clone()))
            .context("--xds needs --node-id (or xds.node_id in the file)")?;
        config.xds = Some(XdsConfig {
            address: address.clone(),
            node_id,
            cluster: config
                .xds
                .as_ref()
                .map(|x| x.cluster.clone())
                .unwrap_or_default(),
            delta: config.xds.as_ref().is_some_and(|x| x.delta),
        });
    }
    match &mut config.xds {
        Some(xds) => {
            if let Some(id) = &args.node_id {
                xds.node_id = id.clone();
            }
            if let Some(cluster) = &args.node_cluster {
                xds.cluster = cluster.clone();
            }
            xds.delta |= args.delta;
            if xds.node_id.is_empty() {
                anyhow::bail!("xds.node_id: must not be empty");
            }
            if xds.address.trim().is_empty() {
                anyhow::bail!("xds.address: must not be empty");
            }
        }
        None if args.node_id.is_some() || args.delta || args.node_cluster.is_some() => {
            anyhow::bail!("--node-id, --node-cluster and --delta need --xds (or xds: in the file)")
        }
        None => {}
    }
    Ok(())
}

async fn serve(
    args: Args,
    config: remora_proxy::config::Config,
    env: EnvOverrides,
    log: Arc<LogControl>,
    worker_threads: Workers,
    workers: usize,
) -> anyhow::Result<ExitCode> {
    let admin_address = config.admin.address;
    let xds = config.xds.clone();
    let identity = config.identity.clone();
    let admin_listener = std::net::TcpListener::bind(admin_address)
        .with_context(|| format!("admin.address: cannot bind {admin_address}"))?;
    admin_listener.set_nonblocking(true)?;
    let admin_bound = admin_listener.local_addr()?;

    let proxy = Proxy::start(
        config,
        ProxyOptions {
            env,
            log: Some(log),
            workers: worker_threads,
        },
    )
    .with_context(|| format!("cannot start from {}", source_name(&args)))?;

    let admin_proxy = proxy.clone();
    std::thread::Builder::new()
        .name("remora-admin".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(admin_listener) {
                        Ok(listener) => admin::serve(listener, admin_proxy).await,
                        Err(error) => tracing::error!(%error, "admin server cannot start"),
                    }
                }),
                Err(error) => tracing::error!(%error, "admin server cannot start"),
            }
        })?;
    // Signal handlers are in place before anyone can learn the admin
    // address: a SIGHUP or SIGTERM that came earlier would kill the process.
    let _watcher = match &args.config {
        Some(path) => Some(
            reload::watch(proxy.clone(), path.clone())
                .with_context(|| format!("cannot watch {}", path.display()))?,
        ),
        None => None,
    };
    if let Some(identity) = identity {
        tracing::info!(ca = %identity.ca, "identity: asking the mesh's CA for a certificate");
        proxy.spawn_identity(identity);
    }
    if let Some(xds) = xds {
        tracing::info!(server = %xds.address, node = %xds.node_id, delta = xds.delta, "xDS client starting");
        proxy.spawn_xds(xds);
    }
    let signals = DrainSignals::install()?;
    if let Some(path) = &args.admin_address_path {
        std::fs::write(path, admin_bound.to_string())
            .with_context(|| format!("cannot write --admin-address-path {}", path.display()))?;
    }
    tracing::info!(
        admin = %admin_bound,
        workers,
        version = env!("CARGO_PKG_VERSION"),
        listeners = proxy.listeners().len(),
        "remora-proxy started"
    );

    tokio::spawn(drain_on_signal(proxy.clone(), signals));
    let finished = proxy.drained().await;
    tracing::info!(clean = finished, "drained; exiting");
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT drains; a second one exits at once.
/// SIGTERM and SIGINT, registered at once (not when a task first runs).
struct DrainSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl DrainSignals {
    fn install() -> anyhow::Result<DrainSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(DrainSignals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }
}

async fn drain_on_signal(proxy: Proxy, signals: DrainSignals) {
    let DrainSignals { mut term, mut int } = signals;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    proxy.begin_drain();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting without waiting for the drain");
    std::process::exit(1);
}

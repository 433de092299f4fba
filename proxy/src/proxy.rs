//! The running proxy: starts from a config, swaps in new snapshots on reload,
//! and drains on shutdown. Cheap to clone; the admin server, the config
//! watcher and signal handlers all hold one.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::{BoundListener, ListenerSet, Spawner};
use crate::config::{
    ClusterConfig, Config, ConfigError, ConfigErrors, EnvOverrides, ListenerConfig, load_file,
};
use crate::discovery::ResolverHandle;
use crate::snapshot::{Mode, Snapshot};
use crate::sync::lock;
use crate::telemetry::Telemetry;
use crate::telemetry::logging::LogControl;
use crate::worker::Workers;

#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    telemetry: Arc<Telemetry>,
    snapshot: ArcSwap<Snapshot>,
    /// Held for the whole of a reload, so reloads apply one at a time.
    listeners: Mutex<ListenerSet>,
    /// What the running snapshot was composed from; locked after `listeners`.
    sources: Mutex<Sources>,
    /// False until the first xDS update is applied, when xDS is configured.
    xds_synced: AtomicBool,
    xds_status: Arc<crate::xds::Status>,
    /// The workload certificate, when `identity:` is configured.
    identity: Arc<crate::identity::IdentityState>,
    spawner: Spawner,
    resolver: ResolverHandle,
    env: EnvOverrides,
    log: Option<Arc<LogControl>>,
    draining: AtomicBool,
    drain_started: Notify,
}

/// What a proxy starts with besides its config.
#[derive(Default)]
pub struct ProxyOptions {
    /// Re-applied over every reloaded file.
    pub env: EnvOverrides,
    /// Lets reloads and the admin server change the log level.
    pub log: Option<Arc<LogControl>>,
    /// The data-plane workers: each accepts on its own socket of every
    /// listener (`SO_REUSEPORT`). None: listeners accept on the runtime
    /// `start` is called on.
    pub workers: Workers,
}

impl Proxy {
    /// Compiles `config`, binds its listeners and starts serving on the
    /// current tokio runtime.
    pub fn start(config: Config, options: ProxyOptions) -> Result<Proxy, ConfigErrors> {
        let telemetry = Arc::new(Telemetry::new());
        let sources = Sources {
            file: config.clone(),
            xds: Dynamic::default(),
        };
        let xds_synced = AtomicBool::new(config.xds.is_none());
        let admin_port = config.admin.address.port();
        let identity: Arc<crate::identity::IdentityState> = Arc::default();
        let snapshot = Snapshot::compile(config, None, &telemetry, 1, Mode::Serve(&identity))?;
        let spawner = Spawner {
            runtime: tokio::runtime::Handle::current(),
            workers: options.workers,
            telemetry: telemetry.clone(),
            drain: CancellationToken::new(),
            tracker: TaskTracker::new(),
            connections: Arc::default(),
            targets: Arc::default(),
            admin_port: Some(admin_port),
        };
        let resolver = ResolverHandle::default();
        prepare_discovery(&snapshot, &resolver)?;
        let mut listeners = ListenerSet::default();
        listeners.apply(&snapshot.listeners, &spawner)?;
        activate(&snapshot, &resolver, &spawner.workers);
        spawn_upkeep(Arc::downgrade(&telemetry));
        Ok(Proxy {
            inner: Arc::new(Inner {
                telemetry,
                snapshot: ArcSwap::from_pointee(snapshot),
                listeners: Mutex::new(listeners),
                sources: Mutex::new(sources),
                xds_synced,
                xds_status: Arc::default(),
                identity,
                spawner,
                resolver,
                env: options.env,
                log: options.log,
                draining: AtomicBool::new(false),
                drain_started: Notify::new(),
            }),
        })
    }

    /// Replaces the running config. On any error (invalid config, an address
    /// that cannot be bound) nothing changes and the error is returned.
    pub fn reload(&self, config: Config) -> Result<u64, ConfigErrors> {
        let result = self.try_reload(config);
        self.inner.telemetry.record_reload(result.is_ok());
        result
    }

    /// Reads `path`, applies the environment overrides, and reloads.
    pub fn reload_file(&self, path: &Path) -> Result<u64, ConfigErrors> {
        let result = load_file(path).and_then(|mut config| {
            self.inner.env.apply(&mut config);
            self.try_reload(config)
        });
        self.inner.telemetry.record_reload(result.is_ok());
        result
    }

    fn try_reload(&self, config: Config) -> Result<u64, ConfigErrors> {
        let mut listeners = lock(&self.inner.listeners);
        let mut sources = lock(&self.inner.sources);
        if sources.file.xds != config.xds {
            tracing::warn!("xds takes effect on restart only");
        }
        let composed = sources.xds.compose(&config);
        let version = self.apply(&mut listeners, composed)?;
        sources.file = config;
        Ok(version)
    }

    /// Replaces the listeners and clusters that came over xDS (the file's
    /// stay). Errors name the xDS resource (`xds listener "NAME".routes[2]`).
    /// Applying the same resources again changes nothing.
    pub fn apply_xds(
        &self,
        listeners: Vec<ListenerConfig>,
        clusters: Vec<ClusterConfig>,
        tracing: Option<crate::config::TracingConfig>,
    ) -> Result<u64, ConfigErrors> {
        let mut bound = lock(&self.inner.listeners);
        let mut sources = lock(&self.inner.sources);
        let dynamic = Dynamic {
            listeners,
            clusters,
            tracing,
        };
        if dynamic == sources.xds && self.inner.xds_synced.load(Ordering::Acquire) {
            return Ok(self.inner.snapshot.load().version);
        }
        let composed = dynamic.compose(&sources.file);
        let result = self
            .apply(&mut bound, composed)
            .map_err(|errors| dynamic.relabel(&sources.file, errors));
        self.inner.telemetry.record_reload(result.is_ok());
        let version = result?;
        sources.xds = dynamic;
        self.inner.xds_synced.store(true, Ordering::Release);
        Ok(version)
    }

    /// Starts the xDS client for `config` on the current runtime; it runs
    /// until the proxy drains.
    pub fn spawn_xds(&self, config: crate::config::XdsConfig) {
        let _runtime = self.inner.spawner.runtime.enter();
        crate::xds::spawn(
            self.clone(),
            &self.inner.telemetry,
            self.inner.xds_status.clone(),
            self.inner.spawner.drain.clone(),
            config,
        );
    }

    /// Starts getting and renewing the proxy's certificate from the mesh's
    /// CA; `/ready` waits for the first one.
    pub fn spawn_identity(&self, config: crate::config::IdentityConfig) {
        let _runtime = self.inner.spawner.runtime.enter();
        crate::identity::spawn(
            config,
            self.inner.identity.clone(),
            &self.inner.telemetry,
            self.inner.spawner.drain.clone(),
        );
    }

    /// The proxy's identity and certificate.
    pub fn identity(&self) -> &Arc<crate::identity::IdentityState> {
        &self.inner.identity
    }

    /// The xDS client's state, for the admin server.
    pub fn xds_status(&self) -> &Arc<crate::xds::Status> {
        &self.inner.xds_status
    }

    fn apply(&self, listeners: &mut ListenerSet, config: Config) -> Result<u64, ConfigErrors> {
        // What a reload starts (DNS, health checks, sweeps) runs on the
        // proxy's own runtime, whichever thread asked for the reload.
        let _runtime = self.inner.spawner.runtime.enter();
        if self.is_draining() {
            return Err(ConfigErrors::one(
                "",
                "the proxy is draining; reloads are refused",
            ));
        }
        let previous = self.inner.snapshot.load_full();
        let version = previous.version + 1;
        let snapshot = Snapshot::compile(
            config,
            Some(&previous),
            &self.inner.telemetry,
            version,
            Mode::Serve(&self.inner.identity),
        )?;
        prepare_discovery(&snapshot, &self.inner.resolver)?;
        listeners.apply(&snapshot.listeners, &self.inner.spawner)?;
        activate(&snapshot, &self.inner.resolver, &self.inner.spawner.workers);
        let (old, new) = (&previous.config, &snapshot.config);
        if old.log.level != new.log.level
            && let Some(log) = &self.inner.log
            && let Err(error) = log.set(&new.log.level)
        {
            tracing::warn!(%error, "log level not changed");
        }
        if old.workers != new.workers
            || old.admin.address != new.admin.address
            || old.log.format != new.log.format
            || old.identity != new.identity
        {
            tracing::warn!(
                "workers, admin.address, log.format and identity take effect on restart only"
            );
        }
        self.inner.snapshot.store(Arc::new(snapshot));
        Ok(version)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.load_full()
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    pub fn log_control(&self) -> Option<&LogControl> {
        self.inner.log.as_deref()
    }

    pub fn listeners(&self) -> Vec<BoundListener> {
        lock(&self.inner.listeners).bound()
    }

    /// The bound address of the listener called `name`.
    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.listeners()
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.address)
    }

    /// Ready once listeners are bound and DNS clusters have had their first
    /// answer (or failure); not ready once draining.
    pub fn is_ready(&self) -> bool {
        !self.is_draining()
            && self.inner.xds_synced.load(Ordering::Acquire)
            && self.inner.identity.is_ready()
            && self.inner.snapshot.load().is_warm()
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Stops accepting and asks every connection to finish: HTTP/1 responses
    /// get `Connection: close`, HTTP/2 connections a GOAWAY. Idempotent.
    pub fn begin_drain(&self) {
        let _listeners = lock(&self.inner.listeners);
        if self.inner.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(
            "draining: no new connections; in-flight requests get drain_timeout to finish"
        );
        self.inner.spawner.drain.cancel();
        self.inner.spawner.tracker.close();
        self.inner.drain_started.notify_waiters();
    }

    /// Resolves once a drain has begun and every connection has finished,
    /// or `drain_timeout` after it began. `true` when everything finished.
    pub async fn drained(&self) -> bool {
        let started = self.inner.drain_started.notified();
        if !self.is_draining() {
            started.await;
        }
        let timeout = self.snapshot().config.drain_timeout;
        let finished = tokio::time::timeout(timeout, self.inner.spawner.tracker.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(
                connections = self.inner.spawner.tracker.len(),
                "drain_timeout expired with connections still open"
            );
        }
        finished
    }
}

impl crate::xds::Target for Proxy {
    fn apply(
        &self,
        listeners: Vec<ListenerConfig>,
        clusters: Vec<ClusterConfig>,
        tracing: Option<crate::config::TracingConfig>,
    ) -> Result<u64, ConfigErrors> {
        self.apply_xds(listeners, clusters, tracing)
    }
}

/// Builds the DNS resolver when the snapshot has DNS clusters (or reuses it
/// when `dns_resolver` is unchanged).
fn prepare_discovery(snapshot: &Snapshot, resolver: &ResolverHandle) -> Result<(), ConfigErrors> {
    if !snapshot.clusters.iter().any(|c| c.dns.is_some()) {
        return Ok(());
    }
    resolver
        .update(snapshot.config.dns_resolver.as_ref())
        .map_err(|message| ConfigErrors::one("dns_resolver", message))
}

/// Starts each new cluster's background work (DNS, idle sweeps, warm-up).
fn activate(snapshot: &Snapshot, resolver: &ResolverHandle, workers: &Workers) {
    snapshot.apply_endpoint_updates();
    for cluster in snapshot.clusters.iter() {
        cluster.activate(resolver, workers);
    }
}

/// Folds histogram samples into buckets every few seconds, until the
/// telemetry is gone.
fn spawn_upkeep(telemetry: Weak<Telemetry>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::telemetry::UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            match telemetry.upgrade() {
                Some(telemetry) => telemetry.run_upkeep(),
                None => break,
            }
        }
    });
}

/// The file's config and the xDS resources, composed into one config.
struct Sources {
    file: Config,
    xds: Dynamic,
}

#[derive(Debug, Default, PartialEq)]
struct Dynamic {
    listeners: Vec<ListenerConfig>,
    clusters: Vec<ClusterConfig>,
    /// An HTTP connection manager's OpenTelemetry tracer; the file's
    /// `tracing:` wins over it.
    tracing: Option<crate::config::TracingConfig>,
}

impl Dynamic {
    /// The file's listeners and clusters first, then these.
    fn compose(&self, file: &Config) -> Config {
        let mut config = file.clone();
        config.listeners.extend(self.listeners.iter().cloned());
        config.clusters.extend(self.clusters.iter().cloned());
        if config.tracing.is_none() {
            config.tracing = self.tracing.clone();
        }
        config
    }

    /// `listeners[7].routes[0]` → `xds listener "NAME".routes[0]` for the
    /// entries that came from xDS.
    fn relabel(&self, file: &Config, errors: ConfigErrors) -> ConfigErrors {
        let relabel = |error: ConfigError| {
            for (field, offset, names) in [
                (
                    "listeners",
                    file.listeners.len(),
                    self.listeners
                        .iter()
                        .map(|l| l.name.as_str())
                        .collect::<Vec<_>>(),
                ),
                (
                    "clusters",
                    file.clusters.len(),
                    self.clusters.iter().map(|c| c.name.as_str()).collect(),
                ),
            ] {
                let Some(rest) = error
                    .path
                    .strip_prefix(field)
                    .and_then(|r| r.strip_prefix('['))
                else {
                    continue;
                };
                let Some((index, rest)) = rest.split_once(']') else {
                    continue;
                };
                if let Some(name) = index
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| i.checked_sub(offset))
                    .and_then(|i| names.get(i))
                {
                    let kind = &field[..field.len() - 1];
                    return ConfigError::new(format!("xds {kind} {name:?}{rest}"), error.message);
                }
            }
            error
        };
        ConfigErrors(errors.0.into_iter().map(relabel).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::Instant;

    use super::*;
    use crate::config::parse_yaml;

    /// A drain waits for a request in flight up to `drain_timeout` and no
    /// longer, in virtual time (the upstream never answers).
    #[tokio::test(start_paused = true)]
    async fn a_drain_gives_up_on_a_stuck_request_at_drain_timeout() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_address = upstream.local_addr().unwrap();
        let (reached_tx, reached) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = reached_tx.send(());
            std::future::pending::<()>().await;
        });
        let config = parse_yaml(&format!(
            "drain_timeout: 30s
listeners:
  - {{name: web, address: 127.0.0.1:0, routes: [{{name: all, timeout: 1h, backends: [{{cluster: up}}]}}]}}
clusters:
  - {{name: up, endpoints: ['{upstream_address}']}}
"
        ))
        .unwrap();
        let proxy = Proxy::start(config, ProxyOptions::default()).unwrap();
        let mut client = TcpStream::connect(proxy.listener_address("web").unwrap())
            .await
            .unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        reached.await.unwrap();

        let began = Instant::now();
        proxy.begin_drain();
        assert!(!proxy.drained().await, "the stuck request did not finish");
        assert_eq!(began.elapsed(), Duration::from_secs(30));
        assert!(!proxy.is_ready());
    }
}

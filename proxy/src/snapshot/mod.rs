//! The snapshot: one immutable, compiled picture of the whole config —
//! listeners with their route tables, clusters with their endpoints and
//! balancers, resolved metric handles. Every config source compiles into it;
//! the data path reads nothing else. Compiling also validates: each problem
//! comes back with its field path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cluster::Cluster;
use crate::config::{Config, ConfigError, ConfigErrors, ProbeHandler};
use crate::endpoint::EndpointList;
use crate::listener::{self as state, ListenerContext, ListenerState};
use crate::telemetry::Telemetry;
use crate::telemetry::access_log::AccessLog;

#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub(crate) loaded_at: SystemTime,
    pub config: Arc<Config>,
    pub listeners: Box<[Arc<ListenerState>]>,
    pub clusters: Box<[Arc<Cluster>]>,
    access_log: Option<Arc<AccessLog>>,
    tracer: Option<Arc<crate::trace::Tracer>>,
    /// Clusters taken over from the previous snapshot with a new endpoint
    /// list, applied by [`Snapshot::apply_endpoint_updates`] when this
    /// snapshot goes live.
    endpoint_updates: Vec<(Arc<Cluster>, EndpointList)>,
}

/// What compiling may do beyond checking.
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    /// Build a snapshot to serve from: opens the access log; mTLS uses the
    /// proxy's identity.
    Serve(&'a Arc<crate::identity::IdentityState>),
    /// Only validate (`--check`): touches no files.
    Check,
}

impl Snapshot {
    /// Validates and compiles `config`. Clusters and the access log whose
    /// config did not change are taken over from `previous`.
    pub fn compile(
        config: Config,
        previous: Option<&Snapshot>,
        telemetry: &Telemetry,
        version: u64,
        mode: Mode<'_>,
    ) -> Result<Snapshot, ConfigErrors> {
        let mut errors = Vec::new();
        let identity = match mode {
            Mode::Serve(identity) => identity.clone(),
            Mode::Check => Arc::default(),
        };
        check_mtls(&config, &mut errors);

        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
            errors.push(ConfigError::new(
                "log.level",
                format!("invalid log level {:?}: {error}", config.log.level),
            ));
        }

        let previous_clusters: HashMap<&str, &Arc<Cluster>> = previous
            .map(|p| p.clusters.iter().map(|c| (&*c.name, c)).collect())
            .unwrap_or_default();
        let mut clusters = Vec::with_capacity(config.clusters.len());
        let mut endpoint_updates = Vec::new();
        let mut by_name: HashMap<&str, Arc<Cluster>> = HashMap::new();
        for (i, cluster) in config.clusters.iter().enumerate() {
            let at = format!("clusters[{i}]");
            if cluster.name.is_empty() {
                errors.push(ConfigError::new(format!("{at}.name"), "must not be empty"));
                continue;
            }
            if by_name.contains_key(cluster.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    format!("duplicate cluster name {:?}", cluster.name),
                ));
                continue;
            }
            let previous = previous_clusters.get(cluster.name.as_str()).copied();
            let (compiled, endpoints) =
                Cluster::compile(cluster, &at, previous, telemetry, &identity, &mut errors);
            if let Some(endpoints) = endpoints {
                endpoint_updates.push((compiled.clone(), endpoints));
            }
            by_name.insert(&cluster.name, compiled.clone());
            clusters.push(compiled);
        }

        let access_log = match (&config.access_log, mode) {
            (None, _) => None,
            (Some(log), _) if log.path.trim().is_empty() => {
                errors.push(ConfigError::new("access_log.path", "must not be empty"));
                None
            }
            (Some(_), Mode::Check) => None,
            (Some(log), Mode::Serve(_)) => {
                match previous.filter(|p| p.config.access_log.as_ref() == Some(log)) {
                    Some(previous) => previous.access_log.clone(),
                    None => match AccessLog::open(log) {
                        Ok(opened) => Some(Arc::new(opened)),
                        Err(error) => {
                            errors.push(ConfigError::new(
                                "access_log.path",
                                format!("cannot open {:?}: {error}", log.path),
                            ));
                            None
                        }
                    },
                }
            }
        };

        let tracer = config.tracing.as_ref().and_then(|tracing| {
            match previous.and_then(|p| p.tracer.as_ref()) {
                Some(kept) if kept.config == *tracing && matches!(mode, Mode::Serve(_)) => {
                    Some(kept.clone())
                }
                _ => {
                    let instance = config
                        .xds
                        .as_ref()
                        .map(|x| x.node_id.clone())
                        .or_else(|| std::env::var("HOSTNAME").ok())
                        .unwrap_or_else(|| format!("remora-proxy-{}", std::process::id()));
                    crate::trace::Tracer::compile(
                        tracing,
                        &instance,
                        matches!(mode, Mode::Serve(_)),
                        telemetry,
                        &mut errors,
                    )
                }
            }
        });

        if let Some(resolver) = &config.dns_resolver {
            crate::discovery::check(resolver, &mut errors);
        }
        if let Some(identity) = &config.identity {
            errors.extend(crate::identity::check(identity));
        }
        for (path, probe) in &config.app_probes {
            let at = format!("app_probes[{path:?}]");
            if !path.starts_with("/app-health/") {
                errors.push(ConfigError::new(
                    at.clone(),
                    "a probe's admin path starts with /app-health/ (e.g. /app-health/web/readyz)",
                ));
            }
            match probe.handler() {
                Err(message) => errors.push(ConfigError::new(at.clone(), message)),
                Ok(ProbeHandler::HttpGet(get)) => {
                    if !matches!(get.scheme.as_str(), "HTTP" | "HTTPS") {
                        errors.push(ConfigError::new(
                            format!("{at}.httpGet.scheme"),
                            format!("{:?}: HTTP or HTTPS", get.scheme),
                        ));
                    }
                    if get.port == 0 {
                        errors.push(ConfigError::new(
                            format!("{at}.httpGet.port"),
                            "must be 1-65535",
                        ));
                    }
                    if !get.path.starts_with('/') {
                        errors.push(ConfigError::new(
                            format!("{at}.httpGet.path"),
                            "must start with /",
                        ));
                    }
                }
                Ok(ProbeHandler::TcpSocket(tcp)) => {
                    if tcp.port == 0 {
                        errors.push(ConfigError::new(
                            format!("{at}.tcpSocket.port"),
                            "must be 1-65535",
                        ));
                    }
                }
                Ok(ProbeHandler::Grpc(grpc)) => {
                    if grpc.port == 0 {
                        errors.push(ConfigError::new(
                            format!("{at}.grpc.port"),
                            "must be 1-65535",
                        ));
                    }
                }
            }
            if probe.timeout_seconds == 0 {
                errors.push(ConfigError::new(
                    format!("{at}.timeoutSeconds"),
                    "must be at least 1",
                ));
            }
        }

        state::check_unique(&config.listeners, &mut errors);
        let caches: crate::route::PreviousCaches<'_> = previous
            .into_iter()
            .flat_map(|p| p.listeners.iter())
            .filter_map(|l| Some((&*l.name, l.http_routes()?)))
            .flat_map(|(listener, http)| {
                http.table
                    .routes()
                    .iter()
                    .filter_map(move |r| Some(((listener, &*r.name), r.cache.as_ref()?)))
            })
            .collect();
        let cx = ListenerContext {
            caches: &caches,
            identity: &identity,
            clusters: &by_name,
            telemetry,
            access_log: access_log.as_ref(),
            tracer: tracer.as_ref(),
            drain_timeout: config.drain_timeout,
            proxy_max_connections: config.max_connections.map(|m| m.get()),
        };
        let listeners: Vec<Arc<ListenerState>> = config
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, listener)| {
                ListenerState::compile(listener, &format!("listeners[{i}]"), &cx, &mut errors)
            })
            .map(Arc::new)
            .collect();

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        drop(by_name);
        Ok(Snapshot {
            version,
            loaded_at: SystemTime::now(),
            config: Arc::new(config),
            listeners: listeners.into(),
            clusters: clusters.into(),
            access_log,
            tracer,
            endpoint_updates,
        })
    }

    /// Gives the clusters taken over with a new endpoint list their new
    /// endpoints (once, when the snapshot goes live); returns how many
    /// clusters changed.
    pub(crate) fn apply_endpoint_updates(&self) -> usize {
        self.endpoint_updates
            .iter()
            .filter(|(cluster, endpoints)| cluster.replace_endpoints(endpoints))
            .count()
    }

    /// Whether every cluster has its endpoints (DNS clusters after their first lookup).
    pub(crate) fn is_warm(&self) -> bool {
        self.clusters.iter().all(|c| c.is_warm())
    }

    #[cfg(test)]
    pub(crate) fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.iter().find(|c| &*c.name == name)
    }
}

/// mTLS needs the proxy's certificate: `identity:`.
fn check_mtls(config: &Config, errors: &mut Vec<ConfigError>) {
    if config.identity.is_some() {
        return;
    }
    for (i, listener) in config.listeners.iter().enumerate() {
        if listener
            .mtls
            .is_some_and(|m| m != crate::config::MtlsMode::Disabled)
        {
            errors.push(ConfigError::new(
                format!("listeners[{i}].mtls"),
                "needs identity: (the proxy's certificate from the mesh's CA)",
            ));
        }
    }
    for (i, cluster) in config.clusters.iter().enumerate() {
        if cluster.mtls.is_some() {
            errors.push(ConfigError::new(
                format!("clusters[{i}].mtls"),
                "needs identity: (the proxy's certificate from the mesh's CA)",
            ));
        }
    }
}

#[cfg(test)]
mod tests;

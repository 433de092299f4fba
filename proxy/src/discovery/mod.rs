//! Service discovery by DNS: a cluster with `dns: NAME:PORT` has one endpoint
//! per A and AAAA record of the name. The name is re-resolved when the
//! answer's TTL runs out (within `min_refresh`..`max_refresh`). A failed
//! lookup, including "no such name" and "no records", keeps the last good
//! endpoints, is logged and counted, and is retried after `min_refresh`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use metrics::Counter;
use serde::Serialize;

use crate::config::{ConfigError, DnsConfig, DnsResolverConfig, scalar};
use crate::endpoint::EndpointList;
use crate::sync::lock;
use crate::telemetry::{self, Telemetry};

/// A name to resolve and how often.
#[derive(Debug, Clone)]
pub(crate) struct DnsTarget {
    pub host: String,
    pub port: u16,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    resolved: Counter,
    failed: Counter,
}

impl DnsTarget {
    pub(crate) fn parse(
        config: &DnsConfig,
        path: &str,
        cluster: &str,
        telemetry: &Telemetry,
        errors: &mut Vec<ConfigError>,
    ) -> Option<DnsTarget> {
        let bad = || {
            format!(
                "invalid DNS address {:?}: expected NAME:PORT such as api.internal:8080",
                config.address
            )
        };
        let Some((host, port)) = config.address.rsplit_once(':') else {
            errors.push(ConfigError::new(path, bad()));
            return None;
        };
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        let Ok(port) = port.parse::<u16>() else {
            errors.push(ConfigError::new(path, bad()));
            return None;
        };
        if !valid_host || port == 0 {
            errors.push(ConfigError::new(path, bad()));
            return None;
        }
        if config.min_refresh.is_zero() || config.min_refresh > config.max_refresh {
            errors.push(ConfigError::new(
                path,
                format!(
                    "refresh bounds must satisfy 0 < min_refresh ({}) <= max_refresh ({})",
                    scalar::format_duration(config.min_refresh),
                    scalar::format_duration(config.max_refresh)
                ),
            ));
            return None;
        }
        let counter = |result| {
            telemetry.counter(
                telemetry::DNS_RESOLUTIONS_TOTAL,
                &[("cluster", cluster), ("result", result)],
            )
        };
        Some(DnsTarget {
            host: host.to_string(),
            port,
            min_refresh: config.min_refresh,
            max_refresh: config.max_refresh,
            resolved: counter("success"),
            failed: counter("failure"),
        })
    }
}

/// What the admin server shows of a DNS cluster.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct DnsStatus {
    pub resolutions: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    /// Seconds until the next lookup, as of the last one.
    pub next_refresh_secs: f64,
}

/// The resolver every DNS cluster uses; replaced when `dns_resolver` changes.
#[derive(Debug, Default)]
pub(crate) struct ResolverSlot {
    current: ArcSwapOption<TokioResolver>,
    config: std::sync::Mutex<Option<Option<DnsResolverConfig>>>,
}

pub(crate) type ResolverHandle = Arc<ResolverSlot>;

impl ResolverSlot {
    /// Builds the resolver for `config` unless the current one was built
    /// from the same settings.
    pub(crate) fn update(&self, config: Option<&DnsResolverConfig>) -> Result<(), String> {
        let mut built_from = lock(&self.config);
        if built_from.as_ref().is_some_and(|c| c.as_ref() == config) {
            return Ok(());
        }
        let resolver = build(config)?;
        self.current.store(Some(Arc::new(resolver)));
        *built_from = Some(config.cloned());
        Ok(())
    }

    /// The resolver, once one is built.
    pub(crate) fn get(&self) -> Option<Arc<TokioResolver>> {
        self.current.load_full()
    }
}

/// Checks `dns_resolver` without building anything (for `--check`).
pub(crate) fn check(config: &DnsResolverConfig, errors: &mut Vec<ConfigError>) {
    for (i, server) in config.nameservers.iter().enumerate() {
        if let Err(message) = scalar::parse_socket_addr(server) {
            errors.push(ConfigError::new(
                format!("dns_resolver.nameservers[{i}]"),
                message,
            ));
        }
    }
    if config.timeout.is_zero() {
        errors.push(ConfigError::new(
            "dns_resolver.timeout",
            "must be greater than 0",
        ));
    }
    if config.attempts == 0 {
        errors.push(ConfigError::new(
            "dns_resolver.attempts",
            "must be at least 1",
        ));
    }
}

fn build(config: Option<&DnsResolverConfig>) -> Result<TokioResolver, String> {
    let explicit = config.filter(|c| !c.nameservers.is_empty());
    let mut builder = match explicit {
        Some(config) => {
            let mut servers = Vec::new();
            for server in &config.nameservers {
                let address = scalar::parse_socket_addr(server)?;
                let mut udp = ConnectionConfig::udp();
                udp.port = address.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = address.port();
                servers.push(NameServerConfig::new(address.ip(), true, vec![udp, tcp]));
            }
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        }
        None => Resolver::builder_tokio()
            .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?,
    };
    let options = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    if let Some(config) = config {
        options.timeout = config.timeout;
        options.attempts = config.attempts as usize;
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

impl DnsTarget {
    /// One lookup: the endpoints of the answer (sorted, one per address) and
    /// when to look again (its TTL within the refresh bounds). Counted in
    /// `remora_dns_resolutions_total`.
    pub(crate) async fn lookup(
        &self,
        resolver: &TokioResolver,
    ) -> Result<(EndpointList, Duration), String> {
        match resolver.lookup_ip(self.host.as_str()).await {
            Ok(lookup) => {
                let mut endpoints: EndpointList = lookup
                    .iter()
                    .map(|ip| (SocketAddr::new(ip, self.port), NonZeroU32::MIN))
                    .collect();
                endpoints.sort();
                endpoints.dedup();
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(Instant::now());
                self.resolved.increment(1);
                Ok((endpoints, ttl.clamp(self.min_refresh, self.max_refresh)))
            }
            Err(error) => {
                self.failed.increment(1);
                Err(error.to_string())
            }
        }
    }
}

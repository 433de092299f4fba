//! A listener's compiled state: what a new connection or request on it
//! follows. Swapped whole on reload (through its [`ListenerSlot`]); a
//! request keeps the state it started with. Binding and accepting are in
//! `accept/`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge};

use crate::cluster::Cluster;
use crate::config::{
    ConfigError, Http2Config, Http2KeepaliveConfig, ListenerConfig, ListenerProtocol, Unmatched,
};
use crate::ratelimit::RateLimit;
use crate::route::RouteTable;
use crate::socket::SocketOptions;
use crate::telemetry::{
    self, CountersBy, RequestStats, Telemetry, access_log::AccessLog, label_values,
};

/// A bound listener's current state, swapped atomically on reload.
pub(crate) struct ListenerSlot {
    state: ArcSwap<ListenerState>,
    /// Connections open on this socket (for `max_connections`, across reloads).
    open: AtomicUsize,
}

impl ListenerSlot {
    pub(crate) fn new(state: Arc<ListenerState>) -> ListenerSlot {
        ListenerSlot {
            state: ArcSwap::new(state),
            open: AtomicUsize::new(0),
        }
    }

    pub(crate) fn current(&self) -> Arc<ListenerState> {
        self.state.load_full()
    }

    /// Swaps in a reloaded state; requests under way keep theirs.
    pub(crate) fn store(&self, state: Arc<ListenerState>) {
        self.state.store(state);
    }

    /// The socket's count of open connections (for `max_connections`).
    pub(crate) fn open(&self) -> &AtomicUsize {
        &self.open
    }
}

/// Takes one place under `max` in `count` (no limit: always), or none if
/// it is full. Taken and checked in one step, so connections accepted at
/// once on several workers cannot together pass the limit.
pub(crate) fn take_place(count: &AtomicUsize, max: Option<usize>) -> bool {
    let taken = count.fetch_add(1, Ordering::AcqRel) + 1;
    if max.is_some_and(|max| taken > max) {
        count.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    true
}

#[derive(Debug)]
pub struct ListenerState {
    pub(crate) name: Arc<str>,
    /// As configured; port 0 means "any free port".
    pub(crate) address: SocketAddr,
    pub kind: ListenerKind,
    pub(crate) request_headers_timeout: Duration,
    pub(crate) max_request_head_bytes: usize,
    pub(crate) drain_timeout: Duration,
    /// No request in flight (HTTP) or no bytes (TCP) for this long closes a connection.
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_connection_age: Option<Duration>,
    pub(crate) socket: SocketOptions,
    pub(crate) http2: Http2Config,
    pub(crate) http2_keepalive: Option<Http2KeepaliveConfig>,
    pub(crate) connections_active: Gauge,
    pub(crate) access_log: Option<Arc<AccessLog>>,
    /// HTTP: a limit over all of the listener's requests.
    pub(crate) rate_limit: Option<RateLimit>,
    /// `remora_rate_limited_total{listener,route=""}`.
    pub(crate) rate_limited: Counter,
    pub(crate) connection_rate: Option<RateLimit>,
    pub(crate) max_connections: Option<usize>,
    /// The top-level `max_connections`, over every listener.
    pub(crate) proxy_max_connections: Option<usize>,
    /// Connections closed on accept by the limits above.
    pub(crate) rejected: CountersBy<Refusal>,
    /// `false`: reached only through a capture listener, by `address`.
    pub(crate) bind: bool,
}

/// Why a connection was closed on accept: the `reason` label of
/// `remora_listener_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    MaxConnections,
    /// The top-level `max_connections`, over every listener.
    ProxyMaxConnections,
    ConnectionRateLimit,
}

label_values!(Refusal {
    MaxConnections => "max_connections",
    ProxyMaxConnections => "proxy_max_connections",
    ConnectionRateLimit => "connection_rate_limit",
});

#[derive(Debug)]
pub enum ListenerKind {
    Http(HttpRoutes),
    Tcp(TcpTarget),
    /// `original_destination: true`.
    Capture(CaptureTarget),
}

/// A capture listener: connections go on to the listener of their
/// original destination.
#[derive(Debug)]
pub struct CaptureTarget {
    pub(crate) unmatched: Unmatched,
    /// Passed-through bytes from the client (`rx`) and to it (`tx`).
    pub(crate) bytes_rx: Counter,
    pub(crate) bytes_tx: Counter,
    /// Connections sent on to their original destination, unmatched.
    pub(crate) passthrough: Counter,
}

#[derive(Debug)]
pub struct HttpRoutes {
    pub table: RouteTable,
    /// Stats for requests that matched no route.
    pub(crate) no_route: RequestStats,
}

#[derive(Debug)]
pub struct TcpTarget {
    pub(crate) cluster: Arc<Cluster>,
    /// Bytes from the client (`direction="rx"`) and to it (`direction="tx"`).
    pub(crate) bytes_rx: Counter,
    pub(crate) bytes_tx: Counter,
}

/// Everything a listener compile needs from the rest of the snapshot.
pub(crate) struct ListenerContext<'a> {
    pub(crate) clusters: &'a HashMap<&'a str, Arc<Cluster>>,
    pub(crate) telemetry: &'a Telemetry,
    pub(crate) access_log: Option<&'a Arc<AccessLog>>,
    pub(crate) drain_timeout: Duration,
    pub(crate) proxy_max_connections: Option<usize>,
}

impl ListenerState {
    pub(crate) fn compile(
        config: &ListenerConfig,
        at: &str,
        cx: &ListenerContext<'_>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ListenerState> {
        let name = config.name.as_str();
        let kind = match config.protocol {
            _ if config.original_destination => {
                if !config.bind {
                    errors.push(ConfigError::new(
                        format!("{at}.bind"),
                        "a capture listener (original_destination: true) must bind its port",
                    ));
                }
                if !config.routes.is_empty() || config.cluster.is_some() {
                    errors.push(ConfigError::new(
                        format!("{at}.original_destination"),
                        "a capture listener has no routes or cluster: it hands each connection to the listener of its original destination",
                    ));
                }
                let bytes = |direction| {
                    cx.telemetry.counter(
                        telemetry::TCP_BYTES_TOTAL,
                        &[("listener", name), ("direction", direction)],
                    )
                };
                ListenerKind::Capture(CaptureTarget {
                    unmatched: config.unmatched,
                    bytes_rx: bytes("rx"),
                    bytes_tx: bytes("tx"),
                    passthrough: cx.telemetry.counter(
                        telemetry::PASSTHROUGH_CONNECTIONS_TOTAL,
                        &[("listener", name)],
                    ),
                })
            }
            ListenerProtocol::Http => {
                if config.cluster.is_some() {
                    errors.push(ConfigError::new(
                        format!("{at}.cluster"),
                        "only TCP listeners take a cluster; HTTP listeners send traffic through routes[].backends",
                    ));
                }
                ListenerKind::Http(HttpRoutes {
                    table: RouteTable::compile(
                        &config.routes,
                        name,
                        &format!("{at}.routes"),
                        cx.clusters,
                        cx.telemetry,
                        errors,
                    ),
                    no_route: RequestStats::new(cx.telemetry, name, "", ""),
                })
            }
            ListenerProtocol::Tcp => {
                if !config.routes.is_empty() {
                    errors.push(ConfigError::new(
                        format!("{at}.routes"),
                        "TCP listeners have no routes; set cluster instead",
                    ));
                }
                let Some(cluster_name) = &config.cluster else {
                    errors.push(ConfigError::new(
                        format!("{at}.cluster"),
                        "required for protocol: tcp",
                    ));
                    return None;
                };
                let Some(cluster) = cx.clusters.get(cluster_name.as_str()) else {
                    errors.push(ConfigError::new(
                        format!("{at}.cluster"),
                        format!("no cluster named {cluster_name:?}"),
                    ));
                    return None;
                };
                let bytes = |direction| {
                    cx.telemetry.counter(
                        telemetry::TCP_BYTES_TOTAL,
                        &[("listener", name), ("direction", direction)],
                    )
                };
                ListenerKind::Tcp(TcpTarget {
                    cluster: cluster.clone(),
                    bytes_rx: bytes("rx"),
                    bytes_tx: bytes("tx"),
                })
            }
        };
        if !config.bind && config.address.port() == 0 {
            errors.push(ConfigError::new(
                format!("{at}.address"),
                "a listener with bind: false stands for an original destination, so it needs a port (not 0)",
            ));
        }
        if !config.original_destination && config.unmatched != Unmatched::default() {
            errors.push(ConfigError::new(
                format!("{at}.unmatched"),
                "only a capture listener (original_destination: true) has unmatched connections",
            ));
        }
        if config.request_headers_timeout.is_zero() {
            errors.push(ConfigError::new(
                format!("{at}.request_headers_timeout"),
                "must be greater than 0",
            ));
        }
        if config.max_connection_age.is_some_and(|age| age.is_zero()) {
            errors.push(ConfigError::new(
                format!("{at}.max_connection_age"),
                "must be greater than 0 (leave it out for no limit)",
            ));
        }
        config.keepalive.check(&format!("{at}.keepalive"), errors);
        config.http2.check(&format!("{at}.http2"), errors);
        if config.max_connections == Some(0) {
            errors.push(ConfigError::new(
                format!("{at}.max_connections"),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        let rate_limit = match (&config.rate_limit, config.protocol) {
            (Some(_), ListenerProtocol::Tcp) => {
                errors.push(ConfigError::new(
                    format!("{at}.rate_limit"),
                    "limits HTTP requests; TCP listeners take connection_rate_limit",
                ));
                None
            }
            (Some(r), ListenerProtocol::Http) => RateLimit::compile(
                ("requests_per_second", r.requests_per_second),
                r.burst,
                &r.key,
                &format!("{at}.rate_limit"),
                errors,
            ),
            (None, _) => None,
        };
        let connection_rate = config.connection_rate_limit.as_ref().and_then(|r| {
            RateLimit::compile(
                ("connections_per_second", r.connections_per_second),
                r.burst,
                "none",
                &format!("{at}.connection_rate_limit"),
                errors,
            )
        });
        if !(1..=1024).contains(&config.max_request_headers_kb) {
            errors.push(ConfigError::new(
                format!("{at}.max_request_headers_kb"),
                format!("{} is outside 1..=1024", config.max_request_headers_kb),
            ));
        }
        Some(ListenerState {
            name: Arc::from(name),
            address: config.address,
            kind,
            request_headers_timeout: config.request_headers_timeout,
            max_request_head_bytes: config.max_request_headers_kb as usize * 1024,
            drain_timeout: cx.drain_timeout,
            idle_timeout: (!config.idle_timeout.is_zero()).then_some(config.idle_timeout),
            max_connection_age: config.max_connection_age,
            socket: SocketOptions {
                nodelay: config.tcp_nodelay,
                keepalive: config.keepalive.tcp.clone(),
            },
            http2: config.http2.clone(),
            http2_keepalive: config.keepalive.http2.clone(),
            connections_active: cx.telemetry.gauge(
                telemetry::DOWNSTREAM_CONNECTIONS_ACTIVE,
                &[("listener", name)],
            ),
            access_log: cx.access_log.cloned(),
            rate_limit,
            rate_limited: cx.telemetry.counter(
                telemetry::RATE_LIMITED_TOTAL,
                &[("listener", name), ("route", "")],
            ),
            connection_rate,
            max_connections: config.max_connections.map(|m| m as usize),
            proxy_max_connections: cx.proxy_max_connections,
            bind: config.bind,
            rejected: CountersBy::register(
                cx.telemetry,
                telemetry::LISTENER_REJECTED_TOTAL,
                &[("listener", name)],
                "reason",
            ),
        })
    }
}

/// Duplicate listener names and addresses, reported by path.
pub(crate) fn check_unique(configs: &[ListenerConfig], errors: &mut Vec<ConfigError>) {
    let mut names = HashSet::new();
    let mut addresses = HashMap::new();
    for (i, listener) in configs.iter().enumerate() {
        if listener.name.is_empty() {
            errors.push(ConfigError::new(
                format!("listeners[{i}].name"),
                "must not be empty",
            ));
        } else if !names.insert(listener.name.as_str()) {
            errors.push(ConfigError::new(
                format!("listeners[{i}].name"),
                format!("duplicate listener name {:?}", listener.name),
            ));
        }
        if listener.address.port() != 0
            && let Some(first) = addresses.insert(listener.address, i)
        {
            errors.push(ConfigError::new(
                format!("listeners[{i}].address"),
                format!("{} is already used by listeners[{first}]", listener.address),
            ));
        }
    }
}

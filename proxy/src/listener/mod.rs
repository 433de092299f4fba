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
    ConfigError, DEFAULT_DETECT_TIMEOUT, DEFAULT_OPAQUE_PORTS, Direction, Http2Config,
    Http2KeepaliveConfig, ListenerConfig, ListenerProtocol, MtlsMode, Unmatched,
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
    /// `tracing:` (HTTP listeners).
    pub(crate) tracer: Option<Arc<crate::trace::Tracer>>,
    /// Live taps, fed as requests finish.
    pub(crate) taps: Arc<crate::telemetry::tap::Taps>,
    /// mTLS listeners: requests by the peer's identity.
    pub(crate) peer_stats: Option<crate::telemetry::PeerStats>,
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
    pub(crate) direction: Direction,
    /// TLS termination (`tls:`), and its handshake failures.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// `mtls: permissive`: a client that does not start a TLS handshake
    /// is served in plaintext.
    pub(crate) permissive: bool,
    /// `generate_request_id`.
    pub(crate) generate_request_id: bool,
    /// Who may call (`authorization:`).
    pub(crate) authz: crate::authz::Authorization,
    /// `adaptive_concurrency:` over every request the listener forwards.
    pub(crate) adaptive: Option<Arc<crate::adaptive::Adaptive>>,
    pub(crate) tls_errors: crate::tls::HandshakeErrors,
    /// `remora_tls_handshakes_total{listener,session}`: full, resumed.
    pub(crate) tls_handshakes: [metrics::Counter; 2],
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
    /// `protocol: auto` (reached through a capture listener): HTTP to the
    /// routes, the rest opaque.
    Auto(AutoTarget),
}

/// How a connection a capture listener handed over got here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Captured {
    pub(crate) direction: Direction,
    /// The address the client dialled, before `init`'s redirect.
    pub(crate) original: SocketAddr,
}

/// How a connection came: handed over by a capture listener, and the
/// identity its TLS client presented.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    pub(crate) captured: Option<Captured>,
    /// The SPIFFE ID of an mTLS peer's certificate.
    pub(crate) peer_identity: Option<Arc<str>>,
    /// The port the client connected to (the original destination's, for
    /// a captured connection).
    pub(crate) port: Option<u16>,
}

impl Origin {
    pub(crate) fn captured(captured: Captured) -> Origin {
        Origin {
            captured: Some(captured),
            peer_identity: None,
            port: Some(captured.original.port()),
        }
    }

    pub(crate) fn at_port(port: Option<u16>) -> Origin {
        Origin {
            port,
            ..Origin::default()
        }
    }
}

/// A `protocol: auto` listener: detected HTTP follows `http` (none: it is
/// opaque too), opaque TCP goes to `opaque` (none: to the original
/// destination).
#[derive(Debug)]
pub struct AutoTarget {
    pub(crate) http: Option<HttpRoutes>,
    pub(crate) opaque: Option<TcpTarget>,
}

/// What a captured connection turned out to be: the `protocol` label of
/// `remora_captured_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CapturedAs {
    Http1,
    Http2,
    Tls,
    Tcp,
}

label_values!(CapturedAs {
    Http1 => "http1",
    Http2 => "http2",
    Tls => "tls",
    Tcp => "tcp",
});

/// A capture listener's protocol detection (`protocol: auto`).
#[derive(Debug)]
pub(crate) struct Detect {
    pub(crate) timeout: Duration,
    /// Sorted: original destination ports that skip detection.
    pub(crate) opaque_ports: Box<[u16]>,
    /// `remora_protocol_detect_timeouts_total{listener}`.
    pub(crate) timeouts: Counter,
}

impl Detect {
    pub(crate) fn skips(&self, port: u16) -> bool {
        self.opaque_ports.binary_search(&port).is_ok()
    }
}

/// A capture listener: connections go on to the listener of their
/// original destination.
#[derive(Debug)]
pub struct CaptureTarget {
    pub(crate) unmatched: Unmatched,
    pub(crate) direction: Direction,
    /// None: `protocol: tcp`, no detection.
    pub(crate) detect: Option<Detect>,
    /// `remora_captured_connections_total{listener,direction,protocol}`.
    pub(crate) captured: CountersBy<CapturedAs>,
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
    /// The proxy's mesh identity, for `mtls:`.
    pub(crate) identity: &'a Arc<crate::identity::IdentityState>,
    pub(crate) clusters: &'a HashMap<&'a str, Arc<Cluster>>,
    pub(crate) telemetry: &'a Telemetry,
    pub(crate) access_log: Option<&'a Arc<AccessLog>>,
    pub(crate) tracer: Option<&'a Arc<crate::trace::Tracer>>,
    pub(crate) drain_timeout: Duration,
    pub(crate) proxy_max_connections: Option<usize>,
    /// Response caches a route with an unchanged `cache:` takes over.
    pub(crate) caches: &'a crate::route::PreviousCaches<'a>,
}

impl ListenerState {
    pub(crate) fn compile(
        config: &ListenerConfig,
        at: &str,
        cx: &ListenerContext<'_>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ListenerState> {
        let name = config.name.as_str();
        let protocol = config.protocol();
        let kind = if config.original_destination {
            Self::capture(config, at, cx, errors)
        } else {
            if config.detect_timeout.is_some() || config.opaque_ports.is_some() {
                let field = if config.detect_timeout.is_some() {
                    "detect_timeout"
                } else {
                    "opaque_ports"
                };
                errors.push(ConfigError::new(
                    format!("{at}.{field}"),
                    "only a capture listener (original_destination: true) detects protocols",
                ));
            }
            match protocol {
                ListenerProtocol::Http => {
                    if config.cluster.is_some() {
                        errors.push(ConfigError::new(
                            format!("{at}.cluster"),
                            "only TCP listeners take a cluster; HTTP listeners send traffic through routes[].backends",
                        ));
                    }
                    ListenerKind::Http(Self::routes(config, at, cx, errors))
                }
                ListenerProtocol::Tcp => {
                    if !config.routes.is_empty() {
                        errors.push(ConfigError::new(
                            format!("{at}.routes"),
                            "TCP listeners have no routes; set cluster instead",
                        ));
                    }
                    if config.cluster.is_none() {
                        errors.push(ConfigError::new(
                            format!("{at}.cluster"),
                            "required for protocol: tcp",
                        ));
                        return None;
                    }
                    ListenerKind::Tcp(tcp_target(config, at, cx, errors)?)
                }
                ListenerProtocol::Auto => {
                    if config.bind {
                        errors.push(ConfigError::new(
                            format!("{at}.protocol"),
                            "auto detects captured traffic: only for a listener with bind: false (or a capture listener)",
                        ));
                    }
                    let http =
                        (!config.routes.is_empty()).then(|| Self::routes(config, at, cx, errors));
                    let opaque = match config.cluster {
                        Some(_) => Some(tcp_target(config, at, cx, errors)?),
                        None => None,
                    };
                    ListenerKind::Auto(AutoTarget { http, opaque })
                }
            }
        };
        let mtls = config.mtls.unwrap_or_default();
        let tls = match &config.tls {
            None if mtls != MtlsMode::Disabled => {
                if config.original_destination {
                    errors.push(ConfigError::new(
                        format!("{at}.mtls"),
                        "a capture listener passes connections on as they are; put mtls on the listener it hands them to",
                    ));
                    None
                } else if protocol == ListenerProtocol::Auto {
                    errors.push(ConfigError::new(
                        format!("{at}.mtls"),
                        "terminating TLS needs a declared protocol (http or tcp), not auto",
                    ));
                    None
                } else {
                    Some(crate::tls::mesh_server(
                        cx.identity,
                        protocol == ListenerProtocol::Http,
                    ))
                }
            }
            Some(_) if mtls != MtlsMode::Disabled => {
                errors.push(ConfigError::new(
                    format!("{at}.mtls"),
                    "set either tls (certificate files) or mtls (the mesh identity), not both",
                ));
                None
            }
            None => None,
            Some(_) if config.original_destination => {
                errors.push(ConfigError::new(
                    format!("{at}.tls"),
                    "a capture listener passes connections on as they are; put tls on the listener it hands them to",
                ));
                None
            }
            Some(tls) if protocol == ListenerProtocol::Auto => {
                let _ = tls;
                errors.push(ConfigError::new(
                    format!("{at}.tls"),
                    "terminating TLS needs a declared protocol (http or tcp), not auto",
                ));
                None
            }
            Some(tls) => crate::tls::server_config(
                tls,
                protocol == ListenerProtocol::Http,
                &format!("{at}.tls"),
                errors,
            ),
        };
        if config.original_destination && !config.authorization.is_empty() {
            errors.push(ConfigError::new(
                format!("{at}.authorization"),
                "a capture listener passes connections on; authorize on the listener it hands them to",
            ));
        }
        let authz = crate::authz::Authorization::compile(
            &config.authorization,
            name,
            protocol != ListenerProtocol::Tcp,
            &format!("{at}.authorization"),
            cx.telemetry,
            errors,
        );
        let adaptive = config.adaptive_concurrency.as_ref().and_then(|ac| {
            let at = format!("{at}.adaptive_concurrency");
            if protocol == ListenerProtocol::Tcp || config.original_destination {
                errors.push(ConfigError::new(
                    at,
                    "limits HTTP requests: only on an HTTP listener (or a cluster's)",
                ));
                return None;
            }
            ac.check(&at, errors);
            Some(crate::adaptive::Adaptive::new(
                ac,
                cx.telemetry
                    .counter(telemetry::ADAPTIVE_REJECTED_TOTAL, &[("listener", name)]),
                cx.telemetry
                    .gauge(telemetry::ADAPTIVE_LIMIT, &[("listener", name)]),
                cx.telemetry
                    .gauge(telemetry::ADAPTIVE_MIN_RTT, &[("listener", name)]),
            ))
        });
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
        let rate_limit = match (&config.rate_limit, protocol) {
            (Some(_), ListenerProtocol::Tcp) => {
                errors.push(ConfigError::new(
                    format!("{at}.rate_limit"),
                    "limits HTTP requests; TCP listeners take connection_rate_limit",
                ));
                None
            }
            (Some(r), ListenerProtocol::Http | ListenerProtocol::Auto) => RateLimit::compile(
                ("requests_per_second", r.requests_per_second),
                r.burst,
                &r.key,
                &format!("{at}.rate_limit"),
                errors,
            )
            .map(|limit| {
                limit.with_global(
                    r,
                    &format!("listener/{name}"),
                    &format!("{at}.rate_limit"),
                    cx.telemetry,
                    errors,
                )
            }),
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
            tracer: cx.tracer.cloned(),
            taps: cx.telemetry.taps.clone(),
            peer_stats: config
                .mtls
                .is_some_and(|m| m != MtlsMode::Disabled)
                .then(|| crate::telemetry::PeerStats::new(cx.telemetry, name)),
            rate_limit,
            rate_limited: cx.telemetry.counter(
                telemetry::RATE_LIMITED_TOTAL,
                &[("listener", name), ("route", "")],
            ),
            connection_rate,
            max_connections: config.max_connections.map(|m| m as usize),
            proxy_max_connections: cx.proxy_max_connections,
            bind: config.bind,
            direction: config.direction(),
            tls,
            permissive: mtls == MtlsMode::Permissive,
            generate_request_id: config.generate_request_id,
            authz,
            adaptive,
            tls_handshakes: ["full", "resumed"].map(|session| {
                cx.telemetry.counter(
                    telemetry::TLS_HANDSHAKES_TOTAL,
                    &[("listener", name), ("session", session)],
                )
            }),
            tls_errors: CountersBy::register(
                cx.telemetry,
                telemetry::TLS_HANDSHAKE_ERRORS_TOTAL,
                &[("listener", name)],
                "reason",
            ),
            rejected: CountersBy::register(
                cx.telemetry,
                telemetry::LISTENER_REJECTED_TOTAL,
                &[("listener", name)],
                "reason",
            ),
        })
    }
}

impl ListenerState {
    fn routes(
        config: &ListenerConfig,
        at: &str,
        cx: &ListenerContext<'_>,
        errors: &mut Vec<ConfigError>,
    ) -> HttpRoutes {
        let name = config.name.as_str();
        HttpRoutes {
            table: RouteTable::compile(
                &config.routes,
                name,
                &format!("{at}.routes"),
                cx.clusters,
                cx.telemetry,
                cx.caches,
                errors,
            ),
            no_route: RequestStats::new(cx.telemetry, name, "", ""),
        }
    }

    fn capture(
        config: &ListenerConfig,
        at: &str,
        cx: &ListenerContext<'_>,
        errors: &mut Vec<ConfigError>,
    ) -> ListenerKind {
        let name = config.name.as_str();
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
        let detect = match config.protocol() {
            ListenerProtocol::Auto => {
                let timeout = config.detect_timeout.unwrap_or(DEFAULT_DETECT_TIMEOUT);
                if timeout.is_zero() {
                    errors.push(ConfigError::new(
                        format!("{at}.detect_timeout"),
                        "must be greater than 0 (protocol: tcp turns detection off)",
                    ));
                }
                let mut opaque_ports = config
                    .opaque_ports
                    .clone()
                    .unwrap_or_else(|| DEFAULT_OPAQUE_PORTS.to_vec());
                if let Some(i) = opaque_ports.iter().position(|&p| p == 0) {
                    errors.push(ConfigError::new(
                        format!("{at}.opaque_ports[{i}]"),
                        "0 is not a port",
                    ));
                }
                opaque_ports.sort_unstable();
                opaque_ports.dedup();
                Some(Detect {
                    timeout,
                    opaque_ports: opaque_ports.into(),
                    timeouts: cx.telemetry.counter(
                        telemetry::PROTOCOL_DETECT_TIMEOUTS_TOTAL,
                        &[("listener", name)],
                    ),
                })
            }
            ListenerProtocol::Tcp => {
                for (field, set) in [
                    ("detect_timeout", config.detect_timeout.is_some()),
                    ("opaque_ports", config.opaque_ports.is_some()),
                ] {
                    if set {
                        errors.push(ConfigError::new(
                            format!("{at}.{field}"),
                            "protocol: tcp does no detection; leave it out or use protocol: auto",
                        ));
                    }
                }
                None
            }
            ListenerProtocol::Http => {
                errors.push(ConfigError::new(
                    format!("{at}.protocol"),
                    "a capture listener is auto (detect each connection) or tcp (no detection); HTTP is for the listeners it hands connections to",
                ));
                None
            }
        };
        let bytes = |direction| {
            cx.telemetry.counter(
                telemetry::TCP_BYTES_TOTAL,
                &[("listener", name), ("direction", direction)],
            )
        };
        let direction = config.direction();
        ListenerKind::Capture(CaptureTarget {
            unmatched: config.unmatched,
            direction,
            detect,
            bytes_rx: bytes("rx"),
            bytes_tx: bytes("tx"),
            passthrough: cx.telemetry.counter(
                telemetry::PASSTHROUGH_CONNECTIONS_TOTAL,
                &[("listener", name)],
            ),
            captured: CountersBy::register(
                cx.telemetry,
                telemetry::CAPTURED_CONNECTIONS_TOTAL,
                &[("listener", name), ("direction", direction.as_str())],
                "protocol",
            ),
        })
    }

    /// The routes HTTP requests on this listener follow.
    pub(crate) fn http_routes(&self) -> Option<&HttpRoutes> {
        match &self.kind {
            ListenerKind::Http(routes) => Some(routes),
            ListenerKind::Auto(auto) => auto.http.as_ref(),
            ListenerKind::Tcp(_) | ListenerKind::Capture(_) => None,
        }
    }

    /// Where opaque TCP on this listener goes, if to a cluster.
    pub(crate) fn tcp_target(&self) -> Option<&TcpTarget> {
        match &self.kind {
            ListenerKind::Tcp(target) => Some(target),
            ListenerKind::Auto(auto) => auto.opaque.as_ref(),
            ListenerKind::Http(_) | ListenerKind::Capture(_) => None,
        }
    }
}

/// The cluster of a TCP listener (or of an `auto` one's opaque traffic).
fn tcp_target(
    config: &ListenerConfig,
    at: &str,
    cx: &ListenerContext<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<TcpTarget> {
    let cluster_name = config.cluster.as_deref()?;
    let Some(cluster) = cx.clusters.get(cluster_name) else {
        errors.push(ConfigError::new(
            format!("{at}.cluster"),
            format!("no cluster named {cluster_name:?}"),
        ));
        return None;
    };
    if cluster.originates_tls() {
        errors.push(ConfigError::new(
            format!("{at}.cluster"),
            format!("cluster {cluster_name:?} has tls:, which TCP listeners do not originate yet"),
        ));
    }
    let bytes = |direction| {
        cx.telemetry.counter(
            telemetry::TCP_BYTES_TOTAL,
            &[("listener", config.name.as_str()), ("direction", direction)],
        )
    };
    Some(TcpTarget {
        cluster: cluster.clone(),
        bytes_rx: bytes("rx"),
        bytes_tx: bytes("tx"),
    })
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

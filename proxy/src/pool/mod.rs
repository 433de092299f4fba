//! Upstream connections to one endpoint: HTTP/1.1 keep-alive connections
//! (one request at a time, back to the idle list when the response ends),
//! HTTP/2 connections (shared by many requests; another is opened when every
//! one is at its stream limit), and plain TCP connections for the TCP proxy
//! and upgrades.
//!
//! Every connection holds one of the endpoint's `max_connections` slots for
//! as long as it lives; a request that finds none free waits for a
//! connection to come back or close. Idle connections are closed after
//! `idle_timeout`, connections are retired after `max_requests_per_connection`
//! requests or `max_connection_age`, and `min_idle` connections can be opened
//! ahead of traffic.

mod http1;
mod http2;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use metrics::{Counter, Gauge};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::breaker::{Held, Limit, Limits};
use crate::config::{ClusterConfig, Http2Config, Http2KeepaliveConfig};
use crate::socket::SocketOptions;
use crate::sync::lock;
use crate::telemetry::LabelValue;

pub(crate) use http1::Http1Lease;
pub(crate) use http2::Http2Lease;

/// The worker's bit in `State::http2_connecting`.
fn worker_bit(worker: u32) -> u64 {
    1 << (worker % 64)
}

/// Connection metrics of one cluster, shared by its endpoints' pools.
#[derive(Debug, Clone)]
pub struct ConnStats {
    pub active: Gauge,
    pub created: Counter,
    pub connect_failures: Counter,
}

/// How a cluster's pools connect and what limits them; shared by all of its endpoints.
#[derive(Debug)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub socket: SocketOptions,
    pub http2: Http2Config,
    pub http2_keepalive: Option<Http2KeepaliveConfig>,
    pub max_connections: Option<usize>,
    pub max_idle: usize,
    pub idle_timeout: Option<Duration>,
    pub max_requests: Option<u32>,
    pub max_age: Option<Duration>,
    pub min_idle: usize,
    pub stats: ConnStats,
    /// The cluster's circuit breakers (connections and pending requests are taken here).
    pub limits: Arc<Limits>,
    /// TLS to the endpoints (`tls:`).
    pub(crate) tls: Option<crate::tls::UpstreamTls>,
}

impl PoolSettings {
    pub(crate) fn new(
        config: &ClusterConfig,
        stats: ConnStats,
        limits: Arc<Limits>,
        tls: Option<crate::tls::UpstreamTls>,
    ) -> PoolSettings {
        let pool = &config.pool;
        PoolSettings {
            connect_timeout: config.connect_timeout,
            socket: SocketOptions {
                nodelay: config.tcp_nodelay,
                keepalive: config.keepalive.tcp.clone(),
            },
            http2: config.http2.clone(),
            http2_keepalive: config.keepalive.http2.clone(),
            max_connections: pool.max_connections.map(|m| m as usize),
            max_idle: pool.max_idle_per_endpoint as usize,
            idle_timeout: (!pool.idle_timeout.is_zero()).then_some(pool.idle_timeout),
            max_requests: pool.max_requests_per_connection,
            max_age: pool.max_connection_age,
            min_idle: pool.min_idle as usize,
            stats,
            limits,
            tls,
        }
    }

    #[cfg(test)]
    pub fn detached() -> PoolSettings {
        let stats = ConnStats {
            active: Gauge::noop(),
            created: Counter::noop(),
            connect_failures: Counter::noop(),
        };
        let config = &crate::config::parse_yaml("clusters: [{name: c}]")
            .unwrap()
            .clusters[0];
        let limits = Arc::new(Limits::new(
            &config.circuit_breakers,
            "c",
            &crate::telemetry::Telemetry::new(),
        ));
        PoolSettings::new(config, stats, limits, None)
    }

    /// Whether a connection born at `born` that served `served` requests is done.
    fn retired(&self, born: Instant, served: u32, now: Instant) -> bool {
        self.max_requests.is_some_and(|max| served >= max)
            || self
                .max_age
                .is_some_and(|age| now.saturating_duration_since(born) >= age)
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Io(io::Error),
    #[error("connect timeout ({} elapsed)", crate::config::scalar::format_duration(*.0))]
    Timeout(Duration),
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(hyper::Error),
    /// The TLS handshake with the endpoint failed (a connect failure, as
    /// Envoy counts it).
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("connection limit reached ({0} connections to this endpoint)")]
    Full(usize),
    /// A circuit breaker is open: no connection, or no place in the queue for one.
    #[error("circuit breaker open: the cluster is at {}", .0.label())]
    Overloaded(Limit),
}

#[derive(Debug)]
pub struct EndpointPool {
    address: SocketAddr,
    settings: Arc<PoolSettings>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Woken when a connection goes idle, a stream or slot frees, or an
    /// HTTP/2 connection comes up.
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Connections alive, counted against `max_connections`.
    open: usize,
    idle: Vec<http1::Idle>,
    http2: Vec<Arc<http2::Http2Conn>>,
    /// Workers opening an HTTP/2 connection now, one bit each (worker % 64).
    http2_connecting: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// One of `max_connections`, held by a connection (or a connect in progress)
/// until it drops.
#[derive(Debug)]
struct Slot {
    shared: Arc<Shared>,
    gauge: Option<Gauge>,
    /// The slot's share of the cluster's `max_connections`.
    _cluster: Held,
}

impl Slot {
    /// Marks the slot's connection as up, counting it in the cluster's gauge.
    fn connected(&mut self, stats: &ConnStats) {
        stats.active.increment(1.0);
        self.gauge = Some(stats.active.clone());
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(gauge) = &self.gauge {
            gauge.decrement(1.0);
        }
        self.shared.lock().open -= 1;
        self.shared.changed.notify_one();
    }
}

/// An upstream HTTP connection's bytes: plain TCP, or TLS over it.
pub(crate) enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for UpstreamIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpstreamIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An upstream TCP connection that holds a pool slot until it drops (TCP
/// proxy and upgraded connections).
#[derive(Debug)]
pub struct PooledStream {
    pub stream: TcpStream,
    _slot: Slot,
}

impl EndpointPool {
    pub fn new(address: SocketAddr, settings: Arc<PoolSettings>) -> EndpointPool {
        EndpointPool {
            address,
            settings,
            shared: Arc::new(Shared {
                state: Mutex::default(),
                changed: Notify::new(),
            }),
        }
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Runs `attempt` until it yields something, waiting for a change in the
    /// pool between tries. Registers for wake-ups only after a try came up
    /// empty (then tries once more, so a change in between is not missed).
    /// A request that has to wait counts against the cluster's
    /// `max_pending_requests`; when that is full it fails at once.
    async fn when_available<T>(
        &self,
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Result<T, ConnectError> {
        if let Some(found) = attempt() {
            return Ok(found);
        }
        let _pending = self
            .settings
            .limits
            .take(Limit::Pending)
            .map_err(ConnectError::Overloaded)?;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = attempt() {
                return Ok(found);
            }
            changed.await;
        }
    }

    /// Takes a slot for warm-up if one is free, never over the cluster's
    /// `max_connections` (and without counting a trip).
    fn try_slot(&self) -> Option<Slot> {
        let mut state = self.shared.lock();
        if self.endpoint_full(&state) {
            return None;
        }
        let held = self.settings.limits.take_quietly(Limit::Connections)?;
        Some(self.open_slot(&mut state, held))
    }

    /// A slot for a request's new connection, within the endpoint's
    /// `pool.max_connections` and the cluster's `max_connections` circuit
    /// breaker. Each time the cluster's cap stops a connection it counts as
    /// a trip, and the request waits for a connection of this endpoint. An
    /// endpoint with no connection at all may open one over the cap.
    fn reserve(&self, state: &mut State) -> Option<Slot> {
        if self.endpoint_full(state) {
            return None;
        }
        let limits = &self.settings.limits;
        let held = match limits.take(Limit::Connections) {
            Ok(held) => held,
            Err(_) if state.open == 0 => limits.take_beyond(Limit::Connections),
            Err(_) => return None,
        };
        Some(self.open_slot(state, held))
    }

    fn endpoint_full(&self, state: &State) -> bool {
        self.settings
            .max_connections
            .is_some_and(|max| state.open >= max)
    }

    fn open_slot(&self, state: &mut State, cluster: Held) -> Slot {
        state.open += 1;
        Slot {
            shared: self.shared.clone(),
            gauge: None,
            _cluster: cluster,
        }
    }

    /// A slot now, or the reason there is none.
    fn slot_now(&self) -> Result<Slot, ConnectError> {
        let mut state = self.shared.lock();
        if self.endpoint_full(&state) {
            return Err(ConnectError::Full(state.open));
        }
        let held = self
            .settings
            .limits
            .take(Limit::Connections)
            .map_err(ConnectError::Overloaded)?;
        Ok(self.open_slot(&mut state, held))
    }

    /// A TCP connection with the cluster's socket options, bounded by the
    /// connect timeout; holds a slot. Fails at once when no slot is free.
    pub async fn connect_stream(&self) -> Result<PooledStream, ConnectError> {
        let slot = self.slot_now()?;
        let (stream, slot) = self.connect(slot).await?;
        Ok(PooledStream {
            stream,
            _slot: slot,
        })
    }

    async fn connect(&self, mut slot: Slot) -> Result<(TcpStream, Slot), ConnectError> {
        let settings = &self.settings;
        let connected =
            tokio::time::timeout(settings.connect_timeout, TcpStream::connect(self.address)).await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                settings.stats.connect_failures.increment(1);
                return Err(ConnectError::Io(error));
            }
            Err(_) => {
                settings.stats.connect_failures.increment(1);
                return Err(ConnectError::Timeout(settings.connect_timeout));
            }
        };
        if let Err(error) = settings.socket.apply(&stream) {
            tracing::debug!(address = %self.address, %error, "cannot set socket options");
        }
        settings.stats.created.increment(1);
        slot.connected(&settings.stats);
        Ok((stream, slot))
    }

    /// A connection for HTTP: TCP, then TLS when the cluster has `tls:`
    /// (ALPN `h2` for an HTTP/2 connection, `http/1.1` otherwise), both
    /// within the connect timeout.
    async fn connect_http(
        &self,
        slot: Slot,
        http2: bool,
    ) -> Result<(UpstreamIo, Slot), ConnectError> {
        let started = tokio::time::Instant::now();
        let (stream, slot) = self.connect(slot).await?;
        let Some(tls) = &self.settings.tls else {
            return Ok((UpstreamIo::Plain(stream), slot));
        };
        let left = self
            .settings
            .connect_timeout
            .saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tls.connect(stream, http2)).await {
            Ok(Ok(stream)) => Ok((UpstreamIo::Tls(Box::new(stream)), slot)),
            Ok(Err(error)) => {
                self.settings.stats.connect_failures.increment(1);
                Err(ConnectError::Tls(error))
            }
            Err(_) => {
                self.settings.stats.connect_failures.increment(1);
                Err(ConnectError::Timeout(self.settings.connect_timeout))
            }
        }
    }

    /// Drives a client connection in a task of its own; the slot is freed
    /// when it ends.
    fn spawn_connection<C>(&self, connection: C, slot: Slot)
    where
        C: Future<Output = hyper::Result<()>> + Send + 'static,
    {
        let address = self.address;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%address, %error, "upstream connection ended with an error");
            }
            drop(slot);
        });
    }

    /// Closes connections idle for longer than `idle_timeout` or past their
    /// age; returns how many were closed.
    pub fn evict_idle(&self, now: Instant) -> usize {
        let settings = &self.settings;
        let mut state = self.shared.lock();
        let before = state.idle.len() + state.http2.len();
        state.idle.retain(|idle| !idle.expired(settings, now));
        state.http2.retain(|conn| !conn.expired(settings, now));
        before - state.idle.len() - state.http2.len()
    }

    /// Opens connections ahead of traffic: `min_idle` idle HTTP/1.1
    /// connections, or one HTTP/2 connection.
    pub async fn warm(&self, http2: bool) {
        if self.settings.min_idle == 0 {
            return;
        }
        if http2 {
            if let Err(error) = self.http2().await {
                tracing::debug!(address = %self.address, %error, "warm-up connection failed");
            }
            return;
        }
        let mut leases = Vec::new();
        for _ in 0..self.settings.min_idle {
            let Some(slot) = self.try_slot() else { break };
            match self.open_http1(slot, false).await {
                Ok(lease) => leases.push(lease),
                Err(error) => {
                    tracing::debug!(address = %self.address, %error, "warm-up connection failed");
                    break;
                }
            }
        }
        for lease in leases {
            self.release_http1(lease.unused());
        }
    }

    /// Connections by state, for the admin view.
    pub fn sizes(&self) -> PoolSizes {
        let state = self.shared.lock();
        PoolSizes {
            open: state.open,
            idle_http1: state.idle.len(),
            http2_connections: state.http2.len(),
            http2_streams: state.http2.iter().map(|c| c.active()).sum(),
        }
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PoolSizes {
    pub open: usize,
    pub idle_http1: usize,
    pub http2_connections: usize,
    pub http2_streams: usize,
}

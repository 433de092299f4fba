//! Upstream connections to one endpoint: an HTTP/1.1 keep-alive pool (a
//! connection serves one request at a time and goes back idle when its
//! response ends), one multiplexed HTTP/2 connection, and plain TCP connects
//! for the TCP proxy and upgrades. Every connection counts in its cluster's
//! `remora_upstream_connections_active` while it lives.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use metrics::{Counter, Gauge};
use tokio::net::TcpStream;

use crate::http::body::RequestBody;

/// Idle HTTP/1 connections kept per endpoint; more are closed when released.
const MAX_IDLE_HTTP1: usize = 1024;

pub type Http1Sender = http1::SendRequest<RequestBody>;
pub type Http2Sender = http2::SendRequest<RequestBody>;

/// Connection metrics of one cluster, shared by its endpoints' pools.
#[derive(Debug, Clone)]
pub struct ConnStats {
    pub active: Gauge,
    pub created: Counter,
    pub connect_failures: Counter,
}

impl ConnStats {
    #[cfg(test)]
    pub fn detached() -> ConnStats {
        ConnStats {
            active: Gauge::noop(),
            created: Counter::noop(),
            connect_failures: Counter::noop(),
        }
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
}

#[derive(Debug)]
pub struct EndpointPool {
    address: SocketAddr,
    connect_timeout: Duration,
    stats: ConnStats,
    idle_http1: Mutex<Vec<Http1Sender>>,
    http2: Mutex<Option<Http2Sender>>,
    http2_connecting: tokio::sync::Mutex<()>,
}

impl EndpointPool {
    pub fn new(address: SocketAddr, connect_timeout: Duration, stats: ConnStats) -> EndpointPool {
        EndpointPool {
            address,
            connect_timeout,
            stats,
            idle_http1: Mutex::new(Vec::new()),
            http2: Mutex::new(None),
            http2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// An idle HTTP/1 connection, or a new one. The `bool` says whether it was
    /// reused (a reused connection may have been closed by the peer meanwhile).
    pub async fn http1(&self) -> Result<(Http1Sender, bool), ConnectError> {
        while let Some(mut sender) = self.pop_idle() {
            if sender.is_closed() {
                continue;
            }
            // A connection is released when its response ends; its task may
            // need a moment more to be ready for the next request.
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Ok((sender, true));
            }
        }
        self.connect_http1(false).await.map(|s| (s, false))
    }

    /// Returns a connection whose exchange finished cleanly.
    pub fn release_http1(&self, sender: Http1Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle_http1.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_HTTP1 {
            idle.push(sender);
        }
    }

    pub fn idle_http1(&self) -> usize {
        self.idle_http1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn pop_idle(&self) -> Option<Http1Sender> {
        self.idle_http1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
    }

    /// A new HTTP/1 connection outside the pool; with `upgrades` it can be
    /// taken over after a `101 Switching Protocols`.
    pub async fn connect_http1(&self, upgrades: bool) -> Result<Http1Sender, ConnectError> {
        let stream = self.connect_tcp().await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        if upgrades {
            self.spawn_connection(conn.with_upgrades());
        } else {
            self.spawn_connection(conn);
        }
        Ok(sender)
    }

    /// The endpoint's HTTP/2 connection, opened on first use and shared by
    /// every request until it closes.
    pub async fn http2(&self) -> Result<(Http2Sender, bool), ConnectError> {
        if let Some(sender) = self.current_http2() {
            return Ok((sender, true));
        }
        let _connecting = self.http2_connecting.lock().await;
        if let Some(sender) = self.current_http2() {
            return Ok((sender, true));
        }
        let stream = self.connect_tcp().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        self.spawn_connection(conn);
        *self.http2.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok((sender, false))
    }

    /// Forgets the shared HTTP/2 connection after it failed a request, so the
    /// next request opens a fresh one.
    pub fn discard_http2(&self) {
        self.http2.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub fn has_http2(&self) -> bool {
        self.current_http2().is_some()
    }

    fn current_http2(&self) -> Option<Http2Sender> {
        let slot = self.http2.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Drives a client connection in a task of its own, counted as active
    /// while it lives.
    fn spawn_connection<C>(&self, connection: C)
    where
        C: Future<Output = hyper::Result<()>> + Send + 'static,
    {
        let guard = ActiveConnection::new(&self.stats);
        let address = self.address;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%address, %error, "upstream connection ended with an error");
            }
            drop(guard);
        });
    }

    /// A TCP connection with `TCP_NODELAY`, bounded by the connect timeout.
    pub async fn connect_tcp(&self) -> Result<TcpStream, ConnectError> {
        let result = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.address),
        )
        .await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(ConnectError::Io(error)),
            Err(_) => Err(ConnectError::Timeout(self.connect_timeout)),
        };
        match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                self.stats.created.increment(1);
                Ok(stream)
            }
            Err(error) => {
                self.stats.connect_failures.increment(1);
                Err(error)
            }
        }
    }

    pub fn stats(&self) -> &ConnStats {
        &self.stats
    }
}

/// Counts one open upstream connection in its cluster's gauge.
pub struct ActiveConnection(Gauge);

impl ActiveConnection {
    pub fn new(stats: &ConnStats) -> ActiveConnection {
        stats.active.increment(1.0);
        ActiveConnection(stats.active.clone())
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

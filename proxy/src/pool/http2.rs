//! HTTP/2 connections: many requests share one connection, each a stream.
//! A request takes the first connection with a free stream (so as few
//! connections as possible carry the load); when every connection is at its
//! stream limit (the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, capped by the
//! cluster's `http2.max_concurrent_streams`), another is opened if a slot is
//! free, else the request waits for a stream. A retired connection takes no
//! new streams and closes once its last one ends.
//!
//! With several workers, each worker's requests use a connection its own
//! runtime drives: a worker without one opens one if a slot is free (as
//! Envoy's per-worker pools do), and shares another worker's when none is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{ConnectError, EndpointPool, PoolSettings, Shared, Slot, worker_bit};
use crate::body::RequestBody;

pub(crate) type Http2Sender = http2::SendRequest<RequestBody>;
/// Sends on the request's own task (Remora's hyper patch, `vendor/hyper/REMORA.md`).
pub(crate) type Http2Direct = http2::DirectSender<RequestBody>;

/// How often a new connection is checked for the peer's SETTINGS.
const SETTLING_CHECK: Duration = Duration::from_millis(2);
/// How often a settled connection's stream limit is re-read.
const SETTLED_CHECK: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct Http2Conn {
    /// Keeps hyper's connection task running; sends CONNECT requests.
    sender: Http2Sender,
    /// Sends every other request.
    direct: Http2Direct,
    born: Instant,
    /// The peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, published by the connection task.
    peer_limit: Arc<AtomicUsize>,
    served: AtomicU32,
    streams: AtomicUsize,
    retired: AtomicBool,
    /// Milliseconds after `born` when the last stream ended.
    idle_since_ms: AtomicU64,
    /// The worker whose runtime drives the connection.
    worker: u32,
}

impl Http2Conn {
    pub(super) fn active(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    pub(super) fn expired(&self, settings: &PoolSettings, now: Instant) -> bool {
        if self.sender.is_closed() || self.retired.load(Ordering::Relaxed) {
            return true;
        }
        let idle_since =
            self.born + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        self.active() == 0
            && (settings
                .idle_timeout
                .is_some_and(|t| now.saturating_duration_since(idle_since) >= t)
                || settings
                    .max_age
                    .is_some_and(|age| now.saturating_duration_since(self.born) >= age))
    }

    /// The peer's SETTINGS have not come yet.
    fn is_settling(&self) -> bool {
        self.peer_limit.load(Ordering::Relaxed) == 0 && !self.retired.load(Ordering::Relaxed)
    }

    fn stream_limit(&self, settings: &PoolSettings) -> usize {
        let peer = self.peer_limit.load(Ordering::Relaxed);
        settings
            .http2
            .max_concurrent_streams
            .map_or(peer, |mine| peer.min(mine as usize))
    }
}

/// A stream on a shared HTTP/2 connection, held by one exchange.
#[derive(Debug)]
pub struct Http2Lease {
    conn: Arc<Http2Conn>,
    shared: Arc<Shared>,
    /// Whether the connection carried a request before.
    pub reused: bool,
}

impl Http2Lease {
    pub fn sender(&self) -> Http2Sender {
        self.conn.sender.clone()
    }

    pub fn direct(&self) -> &Http2Direct {
        &self.conn.direct
    }
}

impl Drop for Http2Lease {
    fn drop(&mut self) {
        if self.conn.streams.fetch_sub(1, Ordering::Relaxed) == 1 {
            let idle_ms = self.conn.born.elapsed().as_millis() as u64;
            self.conn.idle_since_ms.store(idle_ms, Ordering::Relaxed);
        }
        self.shared.changed.notify_one();
    }
}

enum Next {
    Stream(Http2Lease),
    Connect(Slot),
}

impl EndpointPool {
    /// A stream on an HTTP/2 connection to this endpoint.
    pub async fn http2(&self) -> Result<Http2Lease, ConnectError> {
        loop {
            match self.when_available(|| self.try_http2()).await? {
                Next::Stream(lease) => return Ok(lease),
                Next::Connect(slot) => {
                    let opened = self.open_http2(slot).await;
                    let mut state = self.shared.lock();
                    state.http2_connecting &= !worker_bit(crate::worker::current());
                    if let Ok(conn) = &opened {
                        state.http2.push(conn.clone());
                    }
                    drop(state);
                    self.shared.changed.notify_waiters();
                    opened?;
                }
            }
        }
    }

    /// A stream on a connection with room, or a slot to open a connection;
    /// `None` to wait (at the limit, or a connection is still coming up).
    fn try_http2(&self) -> Option<Next> {
        let mut state = self.shared.lock();
        let now = Instant::now();
        let settings = &self.settings;
        state
            .http2
            .retain(|conn| !conn.sender.is_closed() && !conn.retired.load(Ordering::Relaxed));
        // A connection of this worker first (its runtime drives it).
        let here = crate::worker::current();
        let has_room = |conn: &Arc<Http2Conn>| conn.active() < conn.stream_limit(settings);
        let mut free = state
            .http2
            .iter()
            .position(|conn| conn.worker == here && has_room(conn));
        if free.is_none() {
            let mine = state.http2_connecting & worker_bit(here) != 0
                || state.http2.iter().any(|conn| conn.worker == here);
            if !mine && let Some(slot) = self.reserve(&mut state) {
                state.http2_connecting |= worker_bit(here);
                return Some(Next::Connect(slot));
            }
            free = state.http2.iter().position(has_room);
        }
        if let Some(index) = free {
            let conn = state.http2[index].clone();
            conn.streams.fetch_add(1, Ordering::Relaxed);
            let served = conn.served.fetch_add(1, Ordering::Relaxed) + 1;
            if settings.retired(conn.born, served, now) {
                conn.retired.store(true, Ordering::Relaxed);
                state.http2.remove(index);
            }
            return Some(Next::Stream(Http2Lease {
                reused: served > 1,
                conn,
                shared: self.shared.clone(),
            }));
        }
        if state.http2_connecting != 0 || state.http2.iter().any(|c| c.is_settling()) {
            return None;
        }
        let slot = self.reserve(&mut state)?;
        state.http2_connecting |= worker_bit(here);
        Some(Next::Connect(slot))
    }

    async fn open_http2(&self, slot: Slot) -> Result<Arc<Http2Conn>, ConnectError> {
        let (stream, slot) = self.connect_http(slot, true).await?;
        let settings = &self.settings;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        if let Some(window) = settings.http2.initial_stream_window_size {
            builder.initial_stream_window_size(window);
        }
        if let Some(window) = settings.http2.initial_connection_window_size {
            builder.initial_connection_window_size(window);
        }
        // No streams until the peer's SETTINGS say how many it takes (hyper
        // would assume 100): until then the connection is settling, and
        // requests wait for it rather than pile onto it or open more.
        builder.initial_max_send_streams(0);
        if let Some(keepalive) = &settings.http2_keepalive {
            builder
                .keep_alive_interval(keepalive.interval)
                .keep_alive_timeout(keepalive.timeout)
                .keep_alive_while_idle(true);
        }
        let (sender, mut conn) = builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let direct = conn.direct_sender();
        let peer_limit = Arc::new(AtomicUsize::new(conn.current_max_send_streams()));
        let published = peer_limit.clone();
        let shared = self.shared.clone();
        // hyper reads the peer's SETTINGS in a task of its own and tells no
        // one, so the limit is read here: often while the connection
        // settles, then now and then to follow changes.
        let watched = async move {
            let mut check = tokio::time::interval(SETTLING_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    result = &mut conn => return result,
                    _ = check.tick() => {
                        let limit = conn.current_max_send_streams();
                        if published.swap(limit, Ordering::Relaxed) != limit {
                            // Waiting requests may fit now.
                            shared.changed.notify_waiters();
                        }
                        if limit > 0 && check.period() == SETTLING_CHECK {
                            check = tokio::time::interval_at(tokio::time::Instant::now() + SETTLED_CHECK, SETTLED_CHECK);
                        }
                    }
                }
            }
        };
        self.spawn_connection(watched, slot);
        let conn = Arc::new(Http2Conn {
            sender,
            direct,
            born: Instant::now(),
            peer_limit,
            served: AtomicU32::new(0),
            streams: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            worker: crate::worker::current(),
        });
        // A peer that never sends its SETTINGS is given up on.
        let (settling, shared, timeout) =
            (conn.clone(), self.shared.clone(), settings.connect_timeout);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if settling.is_settling() {
                settling.retired.store(true, Ordering::Relaxed);
                shared.changed.notify_waiters();
            }
        });
        Ok(conn)
    }

    /// Stops giving out streams on the lease's connection after it failed a
    /// request at the connection level.
    pub fn discard_http2(&self, lease: &Http2Lease) {
        lease.conn.retired.store(true, Ordering::Relaxed);
        self.shared
            .lock()
            .http2
            .retain(|conn| !Arc::ptr_eq(conn, &lease.conn));
    }
}

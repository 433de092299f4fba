//! HTTP/1.1 connections: one request at a time. A lease lends a connection
//! to one exchange; when the response ends cleanly the connection goes back
//! to the endpoint's idle list (newest first, so few connections stay warm),
//! unless it is retired or the list is full. With several workers, a
//! request takes an idle connection of its own worker (whose runtime drives
//! the connection), else opens one if a slot is free, else takes another
//! worker's.

use tokio::time::Instant;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::{ConnectError, EndpointPool, PoolSettings, Slot};
use crate::body::RequestBody;

pub(crate) type Http1Sender = http1::SendRequest<RequestBody>;

#[derive(Debug)]
pub(super) struct Idle {
    sender: Http1Sender,
    born: Instant,
    served: u32,
    since: Instant,
    /// The worker whose runtime drives the connection.
    worker: u32,
}

impl Idle {
    pub(super) fn expired(&self, settings: &PoolSettings, now: Instant) -> bool {
        self.sender.is_closed()
            || settings
                .idle_timeout
                .is_some_and(|t| now.saturating_duration_since(self.since) >= t)
            || settings.retired(self.born, self.served, now)
    }
}

/// An HTTP/1.1 connection lent to one exchange.
#[derive(Debug)]
pub struct Http1Lease {
    pub sender: Http1Sender,
    born: Instant,
    served: u32,
    worker: u32,
    /// Whether it served a request before (the peer may have closed it since).
    pub reused: bool,
}

impl Http1Lease {
    /// A warm-up connection that served nothing.
    pub(super) fn unused(mut self) -> Http1Lease {
        self.served = self.served.saturating_sub(1);
        self
    }
}

enum Next {
    Idle(Idle),
    Connect(Slot),
}

impl EndpointPool {
    /// An idle connection, or a new one if a slot is free, or the next one
    /// that comes back or frees a slot.
    pub async fn http1(&self) -> Result<Http1Lease, ConnectError> {
        loop {
            match self.when_available(|| self.try_http1()).await? {
                Next::Idle(mut idle) => {
                    // A connection is released when its response ends; its task
                    // may need a moment more to be ready for the next request.
                    if idle.sender.is_ready() || idle.sender.ready().await.is_ok() {
                        return Ok(Http1Lease {
                            sender: idle.sender,
                            born: idle.born,
                            served: idle.served + 1,
                            worker: idle.worker,
                            reused: true,
                        });
                    }
                }
                Next::Connect(slot) => return self.open_http1(slot, false).await,
            }
        }
    }

    fn try_http1(&self) -> Option<Next> {
        let mut state = self.shared.lock();
        let now = Instant::now();
        let here = crate::worker::current();
        // Newest first, from the list's end; expired ones met on the way go.
        let mut index = state.idle.len();
        while index > 0 {
            index -= 1;
            if state.idle[index].expired(&self.settings, now) {
                state.idle.remove(index);
            } else if state.idle[index].worker == here {
                return Some(Next::Idle(state.idle.remove(index)));
            }
        }
        if let Some(slot) = self.reserve(&mut state) {
            return Some(Next::Connect(slot));
        }
        state.idle.pop().map(Next::Idle)
    }

    /// A new connection outside the idle list, if a slot is free now; with
    /// `upgrades` it can be taken over after a `101 Switching Protocols`.
    pub async fn connect_http1(&self, upgrades: bool) -> Result<Http1Lease, ConnectError> {
        let slot = self.slot_now()?;
        self.open_http1(slot, upgrades).await
    }

    pub(super) async fn open_http1(
        &self,
        slot: Slot,
        upgrades: bool,
    ) -> Result<Http1Lease, ConnectError> {
        let (stream, slot) = self.connect_http(slot, false).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        if upgrades {
            self.spawn_connection(conn.with_upgrades(), slot);
        } else {
            self.spawn_connection(conn, slot);
        }
        Ok(Http1Lease {
            sender,
            born: Instant::now(),
            served: 1,
            worker: crate::worker::current(),
            reused: false,
        })
    }

    /// Takes back a connection whose exchange finished cleanly.
    pub fn release_http1(&self, lease: Http1Lease) {
        let now = Instant::now();
        if lease.sender.is_closed() || self.settings.retired(lease.born, lease.served, now) {
            return;
        }
        let mut state = self.shared.lock();
        if state.idle.len() < self.settings.max_idle {
            state.idle.push(Idle {
                sender: lease.sender,
                born: lease.born,
                served: lease.served,
                since: now,
                worker: lease.worker,
            });
            drop(state);
            self.shared.changed.notify_one();
        }
    }
}

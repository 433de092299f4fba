//! Listeners: binding sockets, accepting connections, and handing each to the
//! HTTP server or the TCP proxy. On reload the set of bound sockets is
//! brought in line with the new snapshot: a socket whose address is still
//! wanted stays bound (so no connection is refused during a reload) and
//! takes the new state; new addresses are bound before anything else
//! changes, so a reload that cannot bind is rejected whole; listeners no
//! longer wanted stop accepting and drain their connections.

pub mod state;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, ConfigErrors, ListenerProtocol};
use state::{ListenerKind, ListenerState};

/// A bound listener's current state, swapped atomically on reload.
pub struct ListenerSlot {
    state: ArcSwap<ListenerState>,
    /// Connections open on this socket (for `max_connections`, across reloads).
    open: AtomicUsize,
}

impl ListenerSlot {
    pub fn current(&self) -> Arc<ListenerState> {
        self.state.load_full()
    }
}

/// What every listener's tasks are spawned with.
#[derive(Clone)]
pub struct Spawner {
    pub runtime: tokio::runtime::Handle,
    /// Cancelled when the proxy drains; every listener's stop token is a child.
    pub drain: CancellationToken,
    /// Tracks every connection, so a drain can wait for them.
    pub tracker: TaskTracker,
}

struct Bound {
    slot: Arc<ListenerSlot>,
    local: SocketAddr,
    stop: CancellationToken,
}

/// A listener as it is bound right now.
#[derive(Debug, Clone, Serialize)]
pub struct BoundListener {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: ListenerProtocol,
}

#[derive(Default)]
pub struct ListenerSet {
    bound: Vec<Bound>,
}

impl ListenerSet {
    /// Makes the bound listeners match `wanted` (in config order).
    pub fn apply(
        &mut self,
        wanted: &[Arc<ListenerState>],
        spawner: &Spawner,
    ) -> Result<(), ConfigErrors> {
        let _runtime = spawner.runtime.enter();
        let mut claimed = vec![false; self.bound.len()];
        let mut plan = Vec::with_capacity(wanted.len());
        let mut errors = Vec::new();
        for (i, state) in wanted.iter().enumerate() {
            match self.reusable(state, &claimed) {
                Some(index) => {
                    claimed[index] = true;
                    plan.push(Plan::Reuse(index));
                }
                None => match bind(state.address) {
                    Ok(listener) => plan.push(Plan::New(listener)),
                    Err(error) => errors.push(ConfigError::new(
                        format!("listeners[{i}].address"),
                        format!("cannot bind {}: {error}", state.address),
                    )),
                },
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }

        let mut old: Vec<Option<Bound>> = self.bound.drain(..).map(Some).collect();
        for (state, plan) in wanted.iter().zip(plan) {
            let bound = match plan {
                Plan::Reuse(index) => {
                    let bound = old[index]
                        .take()
                        .expect("each old listener is claimed once");
                    bound.slot.state.store(state.clone());
                    bound
                }
                Plan::New(listener) => {
                    let local = listener.local_addr().unwrap_or(state.address);
                    let slot = Arc::new(ListenerSlot {
                        state: ArcSwap::new(state.clone()),
                        open: AtomicUsize::new(0),
                    });
                    let stop = spawner.drain.child_token();
                    spawner.runtime.spawn(accept_loop(
                        listener,
                        slot.clone(),
                        stop.clone(),
                        spawner.tracker.clone(),
                    ));
                    tracing::info!(listener = %state.name, address = %local, "listening");
                    Bound { slot, local, stop }
                }
            };
            self.bound.push(bound);
        }
        for gone in old.into_iter().flatten() {
            tracing::info!(listener = %gone.slot.current().name, address = %gone.local, "listener removed; draining its connections");
            gone.stop.cancel();
        }
        Ok(())
    }

    /// An existing socket for `state`: same configured address, and for
    /// "any port" addresses (port 0) also the same name.
    fn reusable(&self, state: &ListenerState, claimed: &[bool]) -> Option<usize> {
        self.bound.iter().enumerate().position(|(i, bound)| {
            let current = bound.slot.current();
            !claimed[i]
                && current.address == state.address
                && (state.address.port() != 0 || current.name == state.name)
        })
    }

    pub fn bound(&self) -> Vec<BoundListener> {
        self.bound
            .iter()
            .map(|b| {
                let state = b.slot.current();
                let protocol = match state.kind {
                    ListenerKind::Http(_) => ListenerProtocol::Http,
                    ListenerKind::Tcp(_) => ListenerProtocol::Tcp,
                };
                BoundListener {
                    name: state.name.to_string(),
                    address: b.local,
                    protocol,
                }
            })
            .collect()
    }
}

enum Plan {
    Reuse(usize),
    New(TcpListener),
}

fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

async fn accept_loop(
    listener: TcpListener,
    slot: Arc<ListenerSlot>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let state = slot.current();
                if let Some(reason) = refusal(&state, &slot, peer) {
                    state.rejected[reason].increment(1);
                    let reason = state::REJECT_REASONS[reason];
                    tracing::debug!(listener = %state.name, %peer, reason, "connection closed on accept");
                    drop(stream);
                    continue;
                }
                tracker.spawn(connection(
                    stream,
                    peer,
                    slot.clone(),
                    state,
                    stop.clone(),
                    tracker.clone(),
                ));
            }
            Err(error) => {
                // Out of file descriptors or memory: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Why a new connection is refused, if it is.
/// Which limit refuses a new connection: an index into
/// [`state::REJECT_REASONS`].
fn refusal(state: &ListenerState, slot: &ListenerSlot, peer: SocketAddr) -> Option<usize> {
    if state
        .max_connections
        .is_some_and(|max| slot.open.load(Ordering::Relaxed) >= max)
    {
        return Some(0);
    }
    match &state.connection_rate {
        Some(rate) if rate.check(&http::HeaderMap::new(), peer.ip()).is_err() => Some(1),
        _ => None,
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<ListenerSlot>,
    state: Arc<ListenerState>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    if let Err(error) = state.socket.apply(&stream) {
        tracing::debug!(%peer, %error, "cannot set socket options");
    }
    let gauge = state.connections_active.clone();
    gauge.increment(1.0);
    slot.open.fetch_add(1, Ordering::Relaxed);
    let counted = slot.clone();
    match &state.kind {
        ListenerKind::Http(_) => {
            crate::http::serve_connection(stream, peer, slot, state, stop, tracker).await
        }
        ListenerKind::Tcp(_) => crate::tcp::proxy_connection(stream, peer, state, stop).await,
    }
    counted.open.fetch_sub(1, Ordering::Relaxed);
    gauge.decrement(1.0);
}

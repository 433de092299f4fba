//! Accepting: binding listeners' sockets, accepting connections, and handing
//! each to the HTTP server or the TCP proxy. On reload the set of bound sockets is
//! brought in line with the new snapshot: a socket whose address is still
//! wanted stays bound (so no connection is refused during a reload) and
//! takes the new state; new addresses are bound before anything else
//! changes, so a reload that cannot bind is rejected whole; listeners no
//! longer wanted stop accepting and drain their connections.
//!
//! With several workers (one current-thread runtime each), every listener
//! is bound once per worker with `SO_REUSEPORT`: the kernel spreads new
//! connections over the workers' sockets, and a connection lives on the
//! worker that accepted it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::Counter;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, ConfigErrors, Direction, ListenerProtocol, Unmatched};
use crate::listener::{
    CaptureTarget, Captured, CapturedAs, ListenerKind, ListenerSlot, ListenerState, Origin,
    Refusal, take_place,
};
use crate::sniff::{Sniffed, sniff};
use crate::tcp::Taken;
use crate::telemetry::{self, LabelValue, Telemetry};
use crate::worker::Workers;

/// What every listener's tasks are spawned with.
#[derive(Clone)]
pub(crate) struct Spawner {
    /// The proxy's own runtime (reloads, discovery, health checks).
    pub runtime: tokio::runtime::Handle,
    /// The data-plane workers, one accept loop and socket each per
    /// listener; none: listeners accept on `runtime`.
    pub workers: Workers,
    pub telemetry: Arc<Telemetry>,
    /// Cancelled when the proxy drains; every listener's stop token is a child.
    pub drain: CancellationToken,
    /// Tracks every connection, so a drain can wait for them.
    pub tracker: TaskTracker,
    /// Downstream connections open over every listener (for the
    /// top-level `max_connections`).
    pub connections: Arc<AtomicUsize>,
    /// The listeners that open no socket (`bind: false`), which capture
    /// listeners hand connections to by original destination.
    pub targets: Arc<ArcSwap<Targets>>,
    /// The admin server's port: inbound capture never forwards to it.
    pub admin_port: Option<u16>,
}

/// The unbound listeners, by the address and direction they stand for,
/// and the proxy's own ports.
#[derive(Default)]
pub(crate) struct Targets {
    slots: Vec<(SocketAddr, Direction, Arc<ListenerSlot>)>,
    /// Every bound listener's port and the admin port, sorted.
    own_ports: Vec<u16>,
}

impl Targets {
    /// The listener for a captured connection's original destination, among
    /// those of the capture listener's direction: the exact address first,
    /// then one for any address on that port.
    fn find(&self, original: SocketAddr, direction: Direction) -> Option<&Arc<ListenerSlot>> {
        let mut slots = self.slots.iter().filter(|(_, d, _)| *d == direction);
        let exact = slots.clone().find(|(address, _, _)| *address == original);
        exact
            .or_else(|| {
                slots.find(|(address, _, _)| {
                    address.ip().is_unspecified()
                        && address.port() == original.port()
                        && address.is_ipv4() == original.is_ipv4()
                })
            })
            .map(|(_, _, slot)| slot)
    }

    fn is_own_port(&self, port: u16) -> bool {
        self.own_ports.binary_search(&port).is_ok()
    }
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
pub(crate) struct ListenerSet {
    bound: Vec<Bound>,
}

impl ListenerSet {
    /// Makes the bound listeners match `wanted` (in config order).
    pub(crate) fn apply(
        &mut self,
        wanted: &[Arc<ListenerState>],
        spawner: &Spawner,
    ) -> Result<(), ConfigErrors> {
        let _runtime = spawner.runtime.enter();
        // Unbound listeners only go into the targets table; a reloaded one
        // keeps its slot, so its connections see the new state.
        let previous = spawner.targets.load_full();
        let slots = wanted
            .iter()
            .filter(|state| !state.bind)
            .map(|state| {
                let kept = previous.slots.iter().find(|(address, _, slot)| {
                    *address == state.address && slot.current().name == state.name
                });
                let slot = match kept {
                    Some((_, _, slot)) => {
                        slot.store(state.clone());
                        slot.clone()
                    }
                    None => Arc::new(ListenerSlot::new(state.clone())),
                };
                (state.address, state.direction, slot)
            })
            .collect::<Vec<_>>();
        let wanted: Vec<Arc<ListenerState>> = wanted.iter().filter(|s| s.bind).cloned().collect();
        let wanted = &wanted[..];
        let mut claimed = vec![false; self.bound.len()];
        let mut plan = Vec::with_capacity(wanted.len());
        let mut errors = Vec::new();
        for (i, state) in wanted.iter().enumerate() {
            match self.reusable(state, &claimed) {
                Some(index) => {
                    claimed[index] = true;
                    plan.push(Plan::Reuse(index));
                }
                None => match bind_all(state.address, spawner.workers.count()) {
                    Ok(sockets) => plan.push(Plan::New(sockets)),
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
                    bound.slot.store(state.clone());
                    bound
                }
                Plan::New(sockets) => {
                    let local = sockets[0].local_addr().unwrap_or(state.address);
                    let slot = Arc::new(ListenerSlot::new(state.clone()));
                    let stop = spawner.drain.child_token();
                    let workers = sockets.len();
                    for (worker, socket) in sockets.into_iter().enumerate() {
                        let runtime = spawner
                            .workers
                            .runtimes()
                            .get(worker)
                            .unwrap_or(&spawner.runtime);
                        runtime.spawn(accept_loop(
                            socket,
                            worker,
                            slot.clone(),
                            stop.clone(),
                            spawner.clone(),
                        ));
                    }
                    tracing::info!(listener = %state.name, address = %local, workers, "listening");
                    Bound { slot, local, stop }
                }
            };
            self.bound.push(bound);
        }
        let mut own_ports: Vec<u16> = self.bound.iter().map(|b| b.local.port()).collect();
        own_ports.extend(spawner.admin_port);
        own_ports.sort_unstable();
        own_ports.dedup();
        spawner
            .targets
            .store(Arc::new(Targets { slots, own_ports }));
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

    pub(crate) fn bound(&self) -> Vec<BoundListener> {
        self.bound
            .iter()
            .map(|b| {
                let state = b.slot.current();
                let protocol = match state.kind {
                    ListenerKind::Http(_) => ListenerProtocol::Http,
                    ListenerKind::Tcp(_) => ListenerProtocol::Tcp,
                    ListenerKind::Capture(_) | ListenerKind::Auto(_) => ListenerProtocol::Auto,
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
    /// One socket per worker.
    New(Vec<std::net::TcpListener>),
}

/// `count` sockets listening on `address`: one as before, or with
/// `SO_REUSEPORT` one per worker on the same port (for port 0, the port the
/// first one got).
fn bind_all(address: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let reuse_port = count > 1;
    let first = bind(address, reuse_port)?;
    let mut address = address;
    address.set_port(first.local_addr()?.port());
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(bind(address, reuse_port)?);
    }
    Ok(sockets)
}

/// A non-blocking listening socket, made a tokio listener by the runtime
/// that accepts on it (a socket belongs to the reactor it is registered in).
fn bind(address: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// `remora_downstream_connections_total{listener,worker}` for the
/// listener's current name (a reload may rename a listener that keeps its
/// socket).
struct Accepted {
    name: Arc<str>,
    worker: String,
    counter: Counter,
}

impl Accepted {
    fn new(telemetry: &Telemetry, name: Arc<str>, worker: usize) -> Accepted {
        let worker = worker.to_string();
        let counter = telemetry.counter(
            telemetry::DOWNSTREAM_CONNECTIONS_TOTAL,
            &[("listener", &name), ("worker", &worker)],
        );
        Accepted {
            name,
            worker,
            counter,
        }
    }

    fn count(&mut self, telemetry: &Telemetry, name: &Arc<str>) {
        if !Arc::ptr_eq(&self.name, name) {
            if self.name != *name {
                self.counter = telemetry.counter(
                    telemetry::DOWNSTREAM_CONNECTIONS_TOTAL,
                    &[("listener", name), ("worker", &self.worker)],
                );
            }
            self.name = name.clone();
        }
        self.counter.increment(1);
    }
}

async fn accept_loop(
    socket: std::net::TcpListener,
    worker: usize,
    slot: Arc<ListenerSlot>,
    stop: CancellationToken,
    spawner: Spawner,
) {
    let Spawner {
        telemetry,
        tracker,
        connections: open,
        targets,
        ..
    } = spawner;
    let listener = match TcpListener::from_std(socket) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(listener = %slot.current().name, worker, %error, "cannot accept on the listener's socket");
            return;
        }
    };
    let mut counted = Accepted::new(&telemetry, slot.current().name.clone(), worker);
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let peer = canonical(peer);
                let state = slot.current();
                counted.count(&telemetry, &state.name);
                let admitted = match admit(&state, &slot, &open, peer) {
                    Ok(admitted) => admitted,
                    Err(reason) => {
                        state.rejected.increment(reason);
                        tracing::debug!(listener = %state.name, %peer, reason = reason.label(), "connection closed on accept");
                        drop(stream);
                        continue;
                    }
                };
                tracker.spawn(connection(
                    stream,
                    peer,
                    slot.clone(),
                    state,
                    stop.clone(),
                    Handoff {
                        tracker: tracker.clone(),
                        admitted,
                        targets: targets.clone(),
                    },
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

/// What a connection task takes along besides its socket and listener.
struct Handoff {
    tracker: TaskTracker,
    admitted: Admitted,
    targets: Arc<ArcSwap<Targets>>,
}

/// A connection's places under the proxy-wide and the listener's
/// `max_connections`, given back when it closes.
struct Admitted {
    proxy: Arc<AtomicUsize>,
    slot: Arc<ListenerSlot>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.proxy.fetch_sub(1, Ordering::AcqRel);
        self.slot.open().fetch_sub(1, Ordering::AcqRel);
    }
}

/// Admits a new connection under every limit, or says which refuses it.
fn admit(
    state: &ListenerState,
    slot: &Arc<ListenerSlot>,
    open: &Arc<AtomicUsize>,
    peer: SocketAddr,
) -> Result<Admitted, Refusal> {
    if !take_place(open, state.proxy_max_connections) {
        return Err(Refusal::ProxyMaxConnections);
    }
    if !take_place(slot.open(), state.max_connections) {
        open.fetch_sub(1, Ordering::AcqRel);
        return Err(Refusal::MaxConnections);
    }
    let admitted = Admitted {
        proxy: open.clone(),
        slot: slot.clone(),
    };
    match &state.connection_rate {
        Some(rate)
            if rate
                .check(crate::ratelimit::Caller {
                    headers: &http::HeaderMap::new(),
                    authority: None,
                    ip: peer.ip(),
                    identity: None,
                })
                .is_err() =>
        {
            Err(Refusal::ConnectionRateLimit)
        }
        _ => Ok(admitted),
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<ListenerSlot>,
    state: Arc<ListenerState>,
    stop: CancellationToken,
    handoff: Handoff,
) {
    let Handoff {
        tracker,
        admitted,
        targets,
    } = handoff;
    if let Err(error) = state.socket.apply(&stream) {
        tracing::debug!(%peer, %error, "cannot set socket options");
    }
    let gauge = state.connections_active.clone();
    gauge.increment(1.0);
    // The port the client dialled, for authorization's `ports` (a syscall:
    // only when there are policies).
    let port = if state.authz.is_empty() {
        None
    } else {
        stream.local_addr().ok().map(|a| a.port())
    };
    if state.tls.is_some() {
        over_tls(
            stream,
            peer,
            slot,
            state,
            stop,
            tracker,
            Origin::at_port(port),
        )
        .await;
        drop(admitted);
        gauge.decrement(1.0);
        return;
    }
    match &state.kind {
        ListenerKind::Http(_) => {
            crate::http::serve_connection(
                stream,
                peer,
                slot,
                state,
                stop,
                tracker,
                Origin::at_port(port),
            )
            .await
        }
        ListenerKind::Tcp(_) => {
            let taken = Taken {
                port,
                ..Taken::default()
            };
            crate::tcp::proxy_connection(stream, peer, state, stop, taken).await
        }
        ListenerKind::Capture(_) => captured(stream, peer, &state, stop, tracker, &targets).await,
        // Compiled only for bind: false listeners, which accept nothing.
        ListenerKind::Auto(_) => crate::socket::reset(stream),
    }
    drop(admitted);
    gauge.decrement(1.0);
}
/// A connection a capture listener accepted: it goes on to the listener of
/// its original destination, or (unmatched) through to that destination or
/// reset. A connection made straight to the capture port (not redirected),
/// or inbound to one of the proxy's own ports, is reset: sending it on
/// would loop into the proxy.
async fn captured(
    stream: TcpStream,
    peer: SocketAddr,
    state: &Arc<ListenerState>,
    stop: CancellationToken,
    tracker: TaskTracker,
    targets: &ArcSwap<Targets>,
) {
    let ListenerKind::Capture(capture) = &state.kind else {
        return;
    };
    let local = stream.local_addr().ok().map(canonical);
    let original = match crate::socket::original_destination(&stream).map(canonical) {
        Ok(original) if Some(original) != local => original,
        Ok(_) => {
            tracing::debug!(listener = %state.name, %peer, "a connection to the capture port itself; reset");
            crate::socket::reset(stream);
            return;
        }
        Err(error) => {
            tracing::debug!(listener = %state.name, %peer, %error, "no original destination; reset");
            crate::socket::reset(stream);
            return;
        }
    };
    let targets = targets.load_full();
    if capture.direction == Direction::Inbound && targets.is_own_port(original.port()) {
        tracing::debug!(listener = %state.name, %peer, %original, "inbound to one of the proxy's own ports; reset");
        crate::socket::reset(stream);
        return;
    }
    let started = crate::tcp::Started::default();
    let captured = Captured {
        direction: capture.direction,
        original,
    };
    let Some(slot) = targets.find(original, capture.direction).cloned() else {
        drop(targets);
        match capture.unmatched {
            Unmatched::Passthrough => {
                let detect = capture.detect.as_ref();
                let taken = Taken {
                    started,
                    captured: Some(captured),
                    peer_identity: None,
                    port: Some(original.port()),
                    sniffed: None,
                };
                crate::tcp::passthrough(stream, peer, taken, state.clone(), detect, stop).await
            }
            Unmatched::Reject => {
                tracing::debug!(listener = %state.name, %peer, %original, "no listener for the original destination; reset");
                crate::socket::reset(stream);
            }
        }
        return;
    };
    drop(targets);
    let target = slot.current();
    tracing::trace!(listener = %state.name, %peer, %original, target = %target.name, "captured");
    if target.tls.is_some() {
        capture.captured.increment(CapturedAs::Tls);
        return over_tls(
            stream,
            peer,
            slot,
            target,
            stop,
            tracker,
            Origin::captured(captured),
        )
        .await;
    }
    let sniffed = match &target.kind {
        ListenerKind::Http(_) => None,
        ListenerKind::Tcp(_) => {
            capture.captured.increment(CapturedAs::Tcp);
            let taken = Taken {
                started,
                captured: Some(captured),
                peer_identity: None,
                port: Some(original.port()),
                sniffed: None,
            };
            return crate::tcp::proxy_connection(stream, peer, target, stop, taken).await;
        }
        ListenerKind::Capture(_) => return crate::socket::reset(stream),
        ListenerKind::Auto(_) => Some(detect(&stream, capture, original.port()).await),
    };
    let http = sniffed.as_ref().is_none_or(|(s, _)| s.is_http());
    if http && target.http_routes().is_some() {
        let counted = match &sniffed {
            Some((sniffed, _)) => crate::tcp::captured_as(Some(sniffed)),
            // A declared HTTP listener: HTTP/1 or HTTP/2, told apart by the
            // HTTP server; counted as HTTP/1 unless detection ran.
            None => CapturedAs::Http1,
        };
        capture.captured.increment(counted);
        crate::http::serve_connection(
            stream,
            peer,
            slot,
            target,
            stop,
            tracker,
            Origin::captured(captured),
        )
        .await;
        return;
    }
    if let Some((Sniffed::Closed, _)) = sniffed {
        return;
    }
    let taken = Taken {
        started,
        captured: Some(captured),
        peer_identity: None,
        port: Some(original.port()),
        sniffed,
    };
    if target.tcp_target().is_some() {
        capture.captured.increment(crate::tcp::captured_as(
            taken.sniffed.as_ref().map(|(s, _)| s),
        ));
        crate::tcp::proxy_connection(stream, peer, target, stop, taken).await;
    } else {
        // Detection already ran; the passthrough only relays.
        crate::tcp::passthrough(stream, peer, taken, state.clone(), None, stop).await;
    }
}

/// A connection to a listener with `tls:` or `mtls:`: the handshake, then
/// HTTP or the TCP relay over it (or, `mtls: permissive`, in plaintext); a
/// failed handshake is counted by reason.
async fn over_tls(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<ListenerSlot>,
    state: Arc<ListenerState>,
    stop: CancellationToken,
    tracker: TaskTracker,
    mut origin: Origin,
) {
    let Some(tls) = &state.tls else {
        return;
    };
    let timeout = state.request_headers_timeout;
    let accepted = match crate::tls::accept(tls, stream, timeout, state.permissive).await {
        Ok(accepted) => accepted,
        Err(failure) => {
            state.tls_errors.increment(failure);
            tracing::debug!(listener = %state.name, %peer, reason = failure.label(), "TLS handshake failed");
            return;
        }
    };
    match accepted {
        crate::tls::Accepted::Tls(stream) => {
            let resumed =
                stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            state.tls_handshakes[usize::from(resumed)].increment(1);
            origin.peer_identity = crate::tls::peer_identity(stream.get_ref().1);
            serve_over(*stream, peer, slot, state, stop, tracker, origin).await
        }
        crate::tls::Accepted::Plain(stream) => {
            serve_over(stream, peer, slot, state, stop, tracker, origin).await
        }
    }
}

/// HTTP, or the TCP relay, over an accepted stream.
async fn serve_over<S: crate::socket::Stream + crate::tcp::Halves>(
    stream: S,
    peer: SocketAddr,
    slot: Arc<ListenerSlot>,
    state: Arc<ListenerState>,
    stop: CancellationToken,
    tracker: TaskTracker,
    origin: Origin,
) {
    match &state.kind {
        ListenerKind::Http(_) => {
            crate::http::serve_connection(stream, peer, slot, state, stop, tracker, origin).await
        }
        ListenerKind::Tcp(_) => {
            let taken = Taken {
                captured: origin.captured,
                peer_identity: origin.peer_identity,
                port: origin.port,
                ..Taken::default()
            };
            crate::tcp::proxy_connection(stream, peer, state, stop, taken).await
        }
        // Refused by validation.
        ListenerKind::Capture(_) | ListenerKind::Auto(_) => {}
    }
}

/// An IPv4-mapped IPv6 address (on a dual-stack socket) as the IPv4 one.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// Detection for a connection to a `protocol: auto` listener: none on an
/// opaque port or when the capture listener says `protocol: tcp`.
async fn detect(stream: &TcpStream, capture: &CaptureTarget, port: u16) -> (Sniffed, &'static str) {
    let Some(detect) = &capture.detect else {
        return (Sniffed::Opaque, "off");
    };
    if detect.skips(port) {
        return (Sniffed::Opaque, "opaque_port");
    }
    match sniff(stream, detect.timeout).await {
        Ok(Sniffed::Timeout) => {
            detect.timeouts.increment(1);
            (Sniffed::Timeout, "timeout")
        }
        Ok(sniffed) => (sniffed, "detected"),
        Err(_) => (Sniffed::Closed, "detected"),
    }
}

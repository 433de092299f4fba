//! Opaque TCP proxying: each client connection is paired with a new
//! connection to one endpoint of the listener's cluster (or, for a captured
//! connection no listener claims, to its original destination), and bytes
//! flow both ways until both sides are done. A half-close is passed on:
//! when one side stops sending, the other side's write half is shut down
//! and the opposite direction keeps flowing. No bytes either way for
//! `idle_timeout` closes both. Each connection gets an access-log line when
//! it ends.

mod relay;

pub(crate) use relay::Halves;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Direction;
use crate::listener::{Captured, CapturedAs, Detect, ListenerKind, ListenerState};
use crate::sniff::{Sniffed, sniff};
use crate::telemetry::access_log::ConnectionRecord;

/// How a connection came to be opaque TCP, for its access-log line.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// When the connection was accepted (before any detection).
    pub(crate) started: Started,
    /// Handed over by a capture listener.
    pub(crate) captured: Option<Captured>,
    /// The SPIFFE ID an mTLS client presented.
    pub(crate) peer_identity: Option<Arc<str>>,
    /// The port the client connected to (for authorization).
    pub(crate) port: Option<u16>,
    /// What detection found, and how it decided (`timeout`, `opaque_port`,
    /// `server_first`, `detected`).
    pub(crate) sniffed: Option<(Sniffed, &'static str)>,
}

pub(crate) async fn proxy_connection<S: relay::Halves>(
    downstream: S,
    peer: SocketAddr,
    state: Arc<ListenerState>,
    stop: CancellationToken,
    taken: Taken,
) {
    let Some(target) = state.tcp_target() else {
        return;
    };
    let subject = crate::authz::Subject {
        identity: taken.peer_identity.as_deref(),
        port: taken.port,
        request: None,
    };
    if let Err(denied) = state.authz.check(&subject) {
        tracing::debug!(listener = %state.name, %peer, policy = denied.0, "connection denied by authorization");
        taken.started.log(
            &state,
            peer,
            &taken,
            ("", None),
            &relay::Moved::default(),
            Some("authz_denied"),
        );
        return;
    }
    let cluster = &target.cluster;
    let Some(active) = cluster.pick(None) else {
        tracing::warn!(listener = %state.name, cluster = %cluster.name, %peer, "closing connection: the cluster has no healthy endpoints");
        taken.started.log(
            &state,
            peer,
            &taken,
            (&cluster.name, None),
            &relay::Moved::default(),
            Some("no_healthy_upstream"),
        );
        return;
    };
    let endpoint = active.endpoint();
    let upstream = match endpoint.pool.connect_stream().await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::warn!(
                listener = %state.name, cluster = %cluster.name, endpoint = %endpoint.address, %peer, %error,
                "closing connection: cannot connect upstream"
            );
            taken.started.log(
                &state,
                peer,
                &taken,
                (&cluster.name, Some(endpoint.address)),
                &relay::Moved::default(),
                Some("connect_failure"),
            );
            return;
        }
    };
    let moved = relay::Moved::default();
    relay_until_drained(
        downstream,
        upstream.stream,
        peer,
        &state,
        (&target.bytes_rx, &target.bytes_tx),
        &moved,
        &stop,
    )
    .await;
    taken.started.log(
        &state,
        peer,
        &taken,
        (&cluster.name, Some(endpoint.address)),
        &moved,
        None,
    );
}

/// A captured connection that no listener claims (or an `auto` listener's
/// opaque traffic without a cluster), passed on as opaque TCP to its
/// original destination and counted under `capture`, the capture listener
/// that took it. Inbound, the application is dialled on loopback first (an
/// application may listen there only), then at the original address.
///
/// With `detect`, the client's first bytes are looked at for the access log
/// once the upstream is connected; a server that speaks first ends the
/// wait at once, so a banner is never held back. The proxy's own
/// connection is not captured again: `remora-proxy init` exempts its UID.
pub(crate) async fn passthrough(
    downstream: TcpStream,
    peer: SocketAddr,
    mut taken: Taken,
    capture: Arc<ListenerState>,
    detect: Option<&Detect>,
    stop: CancellationToken,
) {
    let (ListenerKind::Capture(target), Some(captured)) = (&capture.kind, taken.captured) else {
        return;
    };
    target.passthrough.increment(1);
    let original = captured.original;
    let upstream = match connect_original(captured).await {
        Ok(upstream) => upstream,
        Err(failure) => {
            tracing::debug!(listener = %capture.name, %peer, %original, failure, "passthrough: cannot connect to the original destination");
            target.captured.increment(CapturedAs::Tcp);
            taken.started.log(
                &capture,
                peer,
                &taken,
                ("passthrough", Some(original)),
                &relay::Moved::default(),
                Some(failure),
            );
            crate::socket::reset(downstream);
            return;
        }
    };
    let upstream_address = upstream.peer_addr().ok();
    let _ = upstream.set_nodelay(true);
    let sniffed = match detect {
        None => taken.sniffed.take(),
        Some(detect) if detect.skips(original.port()) => Some((Sniffed::Opaque, "opaque_port")),
        Some(detect) => {
            tokio::select! {
                biased;
                sniffed = sniff(&downstream, detect.timeout) => match sniffed {
                    Ok(Sniffed::Timeout) => {
                        detect.timeouts.increment(1);
                        Some((Sniffed::Timeout, "timeout"))
                    }
                    Ok(sniffed) => Some((sniffed, "detected")),
                    Err(_) => Some((Sniffed::Closed, "detected")),
                },
                _ = upstream.readable() => Some((Sniffed::Opaque, "server_first")),
            }
        }
    };
    target
        .captured
        .increment(captured_as(sniffed.as_ref().map(|(s, _)| s)));
    taken.sniffed = sniffed;
    let moved = relay::Moved::default();
    relay_until_drained(
        downstream,
        upstream,
        peer,
        &capture,
        (&target.bytes_rx, &target.bytes_tx),
        &moved,
        &stop,
    )
    .await;
    taken.started.log(
        &capture,
        peer,
        &taken,
        ("passthrough", upstream_address),
        &moved,
        None,
    );
}

/// The `protocol` label of a captured connection.
pub(crate) fn captured_as(sniffed: Option<&Sniffed>) -> CapturedAs {
    match sniffed {
        Some(Sniffed::Http1) => CapturedAs::Http1,
        Some(Sniffed::Http2) => CapturedAs::Http2,
        Some(Sniffed::Tls(_)) => CapturedAs::Tls,
        _ => CapturedAs::Tcp,
    }
}

/// Connects to a passed-through connection's destination: outbound the
/// original destination; inbound the application on loopback, then at the
/// original address if nothing listens on loopback.
async fn connect_original(captured: Captured) -> Result<TcpStream, &'static str> {
    let original = captured.original;
    if captured.direction == Direction::Inbound && !original.ip().is_loopback() {
        let loopback: IpAddr = match original {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        if let Ok(Ok(stream)) = tokio::time::timeout(
            PASSTHROUGH_CONNECT_TIMEOUT,
            TcpStream::connect((loopback, original.port())),
        )
        .await
        {
            return Ok(stream);
        }
    }
    match tokio::time::timeout(PASSTHROUGH_CONNECT_TIMEOUT, TcpStream::connect(original)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(_)) => Err("connect_failure"),
        Err(_) => Err("connect_timeout"),
    }
}

/// How long a passthrough connection to an original destination may take.
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// When a connection started, for its access-log line.
#[derive(Debug)]
pub(crate) struct Started {
    time: SystemTime,
    at: Instant,
}

impl Default for Started {
    fn default() -> Started {
        Started {
            time: SystemTime::now(),
            at: Instant::now(),
        }
    }
}

impl Started {
    fn log(
        &self,
        state: &ListenerState,
        peer: SocketAddr,
        taken: &Taken,
        (cluster, upstream): (&str, Option<SocketAddr>),
        moved: &relay::Moved,
        failure: Option<&'static str>,
    ) {
        let Some(log) = &state.access_log else {
            return;
        };
        let sniffed = taken.sniffed.as_ref();
        log.write(&ConnectionRecord {
            time: self.time,
            listener: &state.name,
            downstream: peer.to_string(),
            protocol: match sniffed {
                Some((Sniffed::Tls(_), _)) => "tls",
                _ => "tcp",
            },
            sni: sniffed.and_then(|(s, _)| s.sni()),
            detect: sniffed.map(|(_, how)| *how),
            duration_ms: self.at.elapsed().as_secs_f64() * 1000.0,
            cluster,
            upstream: upstream.map(|u| u.to_string()),
            bytes_received: moved.received.load(Ordering::Relaxed),
            bytes_sent: moved.sent.load(Ordering::Relaxed),
            failure,
            direction: taken.captured.map(|c| c.direction.as_str()),
            original_dst: taken.captured.map(|c| c.original.to_string()),
            peer_identity: taken.peer_identity.as_deref(),
        });
    }
}

async fn relay_until_drained<S: relay::Halves>(
    downstream: S,
    upstream: TcpStream,
    peer: SocketAddr,
    state: &ListenerState,
    counters: (&metrics::Counter, &metrics::Counter),
    moved: &relay::Moved,
    stop: &CancellationToken,
) {
    let relay = relay::relay(downstream, upstream, counters, moved, state.idle_timeout);
    // On drain (or when the listener is removed) a TCP stream cannot be told
    // to wind down, so it gets the drain timeout to finish on its own.
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(state.drain_timeout).await;
    };
    tokio::select! {
        result = relay => match result {
            Ok(relay::Ended::Closed) => {}
            Ok(relay::Ended::Idle) => tracing::debug!(listener = %state.name, %peer, "closing idle TCP connection"),
            Err(error) => tracing::debug!(listener = %state.name, %peer, %error, "TCP connection ended with an error"),
        },
        () = deadline => tracing::debug!(listener = %state.name, %peer, "closing TCP connection at the end of the drain"),
    }
}

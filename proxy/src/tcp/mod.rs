//! Opaque TCP proxying: each client connection is paired with a new
//! connection to one endpoint of the listener's cluster, and bytes flow both
//! ways until both sides are done. A half-close is passed on: when one side
//! stops sending, the other side's write half is shut down and the opposite
//! direction keeps flowing. No bytes either way for `idle_timeout` closes
//! both.

mod relay;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::listener::{ListenerKind, ListenerState};

pub(crate) async fn proxy_connection(
    downstream: TcpStream,
    peer: SocketAddr,
    state: Arc<ListenerState>,
    stop: CancellationToken,
) {
    let ListenerKind::Tcp(target) = &state.kind else {
        return;
    };
    let cluster = &target.cluster;
    let Some(active) = cluster.pick(None) else {
        tracing::warn!(listener = %state.name, cluster = %cluster.name, %peer, "closing connection: the cluster has no healthy endpoints");
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
            return;
        }
    };
    relay_until_drained(
        downstream,
        upstream.stream,
        peer,
        &state,
        (&target.bytes_rx, &target.bytes_tx),
        &stop,
    )
    .await;
}

/// A captured connection that no listener claims, passed on as opaque TCP
/// to its original destination (`unmatched: passthrough`). The proxy's own
/// connection is not captured again: `remora-proxy init` exempts its UID.
pub(crate) async fn passthrough(
    downstream: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
    state: Arc<ListenerState>,
    stop: CancellationToken,
) {
    let ListenerKind::Capture(capture) = &state.kind else {
        return;
    };
    capture.passthrough.increment(1);
    let connect = tokio::time::timeout(PASSTHROUGH_CONNECT_TIMEOUT, TcpStream::connect(original));
    let upstream = match connect.await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => {
            tracing::debug!(listener = %state.name, %peer, %original, %error, "passthrough: cannot connect to the original destination");
            crate::socket::reset(downstream);
            return;
        }
        Err(_) => {
            tracing::debug!(listener = %state.name, %peer, %original, "passthrough: connect timed out");
            crate::socket::reset(downstream);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    relay_until_drained(
        downstream,
        upstream,
        peer,
        &state,
        (&capture.bytes_rx, &capture.bytes_tx),
        &stop,
    )
    .await;
}

/// How long a passthrough connection to an original destination may take.
const PASSTHROUGH_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn relay_until_drained(
    downstream: TcpStream,
    upstream: TcpStream,
    peer: SocketAddr,
    state: &ListenerState,
    (rx, tx): (&metrics::Counter, &metrics::Counter),
    stop: &CancellationToken,
) {
    let relay = relay::relay(downstream, upstream, rx, tx, state.idle_timeout);
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

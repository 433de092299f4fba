//! The HTTP side of the data path: serving a downstream connection (HTTP/1.1
//! or h2c, detected per connection), routing each request, and forwarding it
//! upstream with bodies and trailers streamed through.

mod attempt;
mod authority;
pub(crate) mod body;
mod cached;
pub mod deadline;
mod detect;
mod exchange;
mod forward;
mod handler;
mod header_timer;
pub mod hop;
mod lifetime;
pub(crate) mod local_reply;
mod tries;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listener::ListenerState;
use crate::listener::{ListenerSlot, Origin};
use detect::{Detected, ServerIo};
use handler::ConnContext;
use header_timer::HeaderTimer;
use lifetime::Activity;

/// Runs a hyper server connection; when it should wind down (drain, idle
/// timeout, max age), asks it to finish gracefully and waits for it. (A
/// macro: hyper's connection types share `graceful_shutdown` by name only.)
macro_rules! drive {
    ($connection:expr, $conn:expr, $stop:expr, $state:expr) => {{
        let mut connection = std::pin::pin!($connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            reason = $conn.activity.wind_down(&$stop, $state.idle_timeout, $state.max_connection_age) => {
                tracing::debug!(peer = %$conn.peer, reason, "winding the connection down");
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            tracing::debug!(peer = %$conn.peer, %error, "downstream connection ended with an error");
        }
    }};
}

/// Serves one downstream connection until it closes, shutting it down
/// gracefully (`Connection: close` / GOAWAY) when `stop` fires.
pub(crate) async fn serve_connection<S: crate::socket::Stream>(
    mut stream: S,
    peer: SocketAddr,
    slot: Arc<ListenerSlot>,
    state: Arc<ListenerState>,
    stop: CancellationToken,
    tracker: TaskTracker,
    origin: Origin,
) {
    let headers_timeout = state.request_headers_timeout;
    let detected = tokio::select! {
        detected = tokio::time::timeout(headers_timeout, detect::detect(&mut stream)) => detected,
        () = stop.cancelled() => return,
    };
    let (protocol, prefix) = match detected {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "connection failed before its first request");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "client sent nothing within request_headers_timeout; closing");
            return;
        }
    };
    let peer_stats = state
        .peer_stats
        .as_ref()
        .zip(origin.peer_identity.as_ref())
        .map(|(stats, identity)| stats.of(identity));
    let conn = Arc::new(ConnContext {
        slot,
        peer,
        tracker,
        activity: Activity::default(),
        origin,
        peer_stats,
    });
    let service = {
        let conn = conn.clone();
        // Boxed per request: hyper keeps the service's future type in an
        // allocation for the connection's whole life, and the request
        // future is ~8 KB; an idle connection should not hold that.
        service_fn(move |request| Box::pin(handler::handle(conn.clone(), request)))
    };
    match protocol {
        Detected::Http1 => {
            let reads = Arc::new(AtomicU64::new(0));
            let io = TokioIo::new(ServerIo::new(stream, prefix, Some(reads.clone())));
            let connection = http1::Builder::new()
                .timer(HeaderTimer::new(reads))
                .header_read_timeout(headers_timeout)
                .max_header_size(state.max_request_head_bytes)
                .serve_connection(io, service)
                .with_upgrades();
            drive!(connection, conn, stop, state);
        }
        Detected::Http2 => {
            let io = TokioIo::new(ServerIo::new(stream, prefix, None));
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(state.max_request_head_bytes as u32);
            if let Some(streams) = state.http2.max_concurrent_streams {
                builder.max_concurrent_streams(streams);
            }
            if let Some(window) = state.http2.initial_stream_window_size {
                builder.initial_stream_window_size(window);
            }
            if let Some(window) = state.http2.initial_connection_window_size {
                builder.initial_connection_window_size(window);
            }
            if let Some(keepalive) = &state.http2_keepalive {
                builder
                    .keep_alive_interval(keepalive.interval)
                    .keep_alive_timeout(keepalive.timeout);
            }
            let connection = builder.serve_connection(io, service);
            drive!(connection, conn, stop, state);
        }
    }
}

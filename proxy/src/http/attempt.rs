//! One try of a request upstream: the request rewritten for the upstream's
//! HTTP version, sent on a pooled connection, and, if it fails, what kind of
//! failure it was (which is what retries and outlier detection decide on).
//!
//! A request that a reused connection never sent (the peer had closed it
//! while idle) is sent again at once on a fresh connection: it never reached
//! the upstream, so this is safe for any method and is not a retry.

use std::net::SocketAddr;

use http::header::{EXPECT, HOST, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version, request};
use hyper::body::Incoming;

use super::exchange::Exchange;
use super::hop;
use crate::body::{RequestBody, is_client_fault};
use crate::breaker::Limit;
use crate::endpoint::Endpoint;
use crate::pool::ConnectError;
use crate::retry::Failure;
use crate::route::Route;

/// Why a try got no response from its endpoint.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("{0}")]
    Connect(ConnectError),
    /// hyper's message alone ("connection error") hides the cause, so its
    /// source is shown too.
    #[error("{error}{}", with_cause(.error))]
    Send { error: hyper::Error },
    /// The route's `per_try_timeout` passed before the response headers.
    #[error("no response headers within the per-try timeout ({})", crate::config::scalar::format_duration(*.0))]
    PerTryTimeout(std::time::Duration),
}

impl UpstreamError {
    /// The status of the local reply: 503 when no connection could be had,
    /// 502 when the upstream failed the exchange, 504 when it was too slow.
    pub(crate) fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::Connect(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            UpstreamError::Send { .. } => http::StatusCode::BAD_GATEWAY,
            UpstreamError::PerTryTimeout(_) => http::StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The span's `error.type`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect_failure",
            UpstreamError::Send { .. } => "upstream_reset",
            UpstreamError::PerTryTimeout(_) => "per_try_timeout",
        }
    }

    /// The first words of the local reply's body.
    pub(crate) fn summary(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "upstream connect error",
            UpstreamError::Send { .. } => "upstream error",
            UpstreamError::PerTryTimeout(_) => "upstream per-try timeout",
        }
    }
}

fn with_cause(error: &hyper::Error) -> String {
    std::error::Error::source(error)
        .map(|cause| format!(": {cause}"))
        .unwrap_or_default()
}

/// Why a try got no response.
#[derive(Debug)]
pub(super) enum TryError {
    /// A circuit breaker refused: not the endpoint's fault, not retried.
    Overloaded(Limit),
    Failed {
        failure: Failure,
        error: UpstreamError,
    },
}

impl TryError {
    fn connect(error: ConnectError) -> TryError {
        match error {
            ConnectError::Overloaded(limit) => TryError::Overloaded(limit),
            error => TryError::Failed {
                failure: Failure::Connect,
                error: UpstreamError::Connect(error),
            },
        }
    }

    fn send(error: hyper::Error) -> TryError {
        TryError::Failed {
            failure: send_failure(&error),
            error: UpstreamError::Send { error },
        }
    }
}

/// Who caused a failed exchange. The client, when its request body failed
/// (over HTTP/1.1 the body's error is in the chain; over HTTP/2 the pipe
/// resets the stream itself, a reset neither the peer nor the h2 library
/// made). Otherwise the upstream: REFUSED_STREAM means it did not process
/// the request; anything else after sending may have reached it.
fn send_failure(error: &hyper::Error) -> Failure {
    if is_client_fault(error) {
        return Failure::ClientBody;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Failure::RefusedStream;
            }
            if h2.is_reset() && !h2.is_remote() && !h2.is_library() {
                return Failure::ClientBody;
            }
        }
        source = cause.source();
    }
    Failure::Reset
}

/// Sends on a pooled connection, keeping the connection with the exchange
/// until its response ends.
pub(super) async fn send(
    endpoint: &Endpoint,
    mut request: Request<RequestBody>,
    version: Version,
    exchange: &mut Exchange,
) -> Result<Response<Incoming>, TryError> {
    fill_authority(&mut request, version, endpoint.address);
    let pool = &endpoint.pool;
    if version == Version::HTTP_2 {
        let lease = pool.http2().await.map_err(TryError::connect)?;
        if request.method() == Method::CONNECT {
            // Only hyper's own sender handles CONNECT (extended CONNECT).
            let response = lease
                .sender()
                .send_request(request)
                .await
                .map_err(TryError::send)?;
            exchange.hold_http2(lease);
            return Ok(response);
        }
        // The stream is opened and its response awaited on this task.
        return match lease.direct().try_send_request(request).await {
            Ok(response) => {
                exchange.hold_http2(lease);
                Ok(response)
            }
            Err(mut error) => {
                // A stream the upstream reset is that stream's problem; only a
                // connection that is gone or refuses new streams is replaced.
                let unsent = error.take_message();
                if unsent.is_some() || lease.direct().is_closed() {
                    pool.discard_http2(&lease);
                }
                match unsent {
                    Some(request) if lease.reused => {
                        drop(lease);
                        let lease = pool.http2().await.map_err(TryError::connect)?;
                        let response = lease
                            .direct()
                            .try_send_request(request)
                            .await
                            .map_err(|error| TryError::send(error.into_error()))?;
                        exchange.hold_http2(lease);
                        Ok(response)
                    }
                    _ => Err(TryError::send(error.into_error())),
                }
            }
        };
    }
    let mut lease = pool.http1().await.map_err(TryError::connect)?;
    let response = match lease.sender.try_send_request(request).await {
        Ok(response) => response,
        Err(mut error) => match error.take_message() {
            Some(request) if lease.reused => {
                drop(lease);
                lease = pool.http1().await.map_err(TryError::connect)?;
                lease
                    .sender
                    .send_request(request)
                    .await
                    .map_err(TryError::send)?
            }
            _ => return Err(TryError::send(error.into_error())),
        },
    };
    exchange.hold_http1(lease);
    Ok(response)
}

/// Rewrites a downstream request for the upstream: hop-by-hop headers out,
/// the route's header edits in, and the target in the form the upstream's
/// HTTP version wants (origin-form plus `Host` for HTTP/1.1; scheme and
/// `:authority` for HTTP/2). The authority is the client's `Host` (or
/// `:authority`), unless the route rewrote `host`.
pub(super) fn prepare(parts: &mut request::Parts, version: Version, route: &Route) {
    hop::strip(&mut parts.headers, false);
    // The proxy answered (or will answer) `100-continue` itself when it reads the body.
    parts.headers.remove(EXPECT);
    route.request_headers.apply(&mut parts.headers);

    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    if version == Version::HTTP_2 {
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = parts
            .headers
            .remove(HOST)
            .and_then(|host| Authority::try_from(host.as_bytes()).ok())
            .or_else(|| parts.uri.authority().cloned());
    } else if !parts.headers.contains_key(HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        // An HTTP/2 client sent only `:authority`; HTTP/1.1 needs `Host`.
        parts.headers.insert(HOST, value);
    }
    if let Ok(target) = Uri::from_parts(uri) {
        parts.uri = target;
    }
    parts.version = version;
}

/// A request with no authority at all (HTTP/1.0 without `Host`) is sent
/// with the endpoint's address as its authority.
fn fill_authority<B>(request: &mut Request<B>, version: Version, endpoint: SocketAddr) {
    if version == Version::HTTP_2 {
        if request.uri().authority().is_none() {
            let mut parts = request.uri().clone().into_parts();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Authority::try_from(endpoint.to_string()).ok();
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    } else if !request.headers().contains_key(HOST)
        && let Ok(value) = HeaderValue::from_str(&endpoint.to_string())
    {
        request.headers_mut().insert(HOST, value);
    }
}

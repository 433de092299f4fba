//! Forwarding a routed request: pick a backend and an endpoint, rewrite the
//! request for the upstream's HTTP version, send it on a pooled connection,
//! and turn the response (or the failure) into the downstream response.
//!
//! A request that a reused connection never sent (the peer had closed it
//! while idle) is sent again on a fresh connection: it never reached the
//! upstream, so this is safe for any method. Retries of requests that did
//! reach it are a route policy, not done here.

use std::net::SocketAddr;

use http::header::{EXPECT, HOST, HeaderValue, SET_COOKIE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version, request};
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::body::{RequestBody, ResponseBody};
use super::exchange::{Exchange, StatsAt};
use super::{hop, local_reply, upgrade};
use crate::balance::HashInput;
use crate::cluster::{Cluster, Endpoint};
use crate::config::scalar::format_duration;
use crate::config::{LbPolicy, UpstreamProtocol};
use crate::pool::ConnectError;
use crate::route::{Route, WeightedBackends};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Connect(ConnectError),
    /// hyper's message alone ("connection error") hides the cause, so its
    /// source is shown too.
    #[error("{error}{}", with_cause(.error))]
    Send { error: hyper::Error },
}

fn with_cause(error: &hyper::Error) -> String {
    std::error::Error::source(error)
        .map(|cause| format!(": {cause}"))
        .unwrap_or_default()
}

pub async fn forward(
    request: Request<Incoming>,
    client: SocketAddr,
    route_index: usize,
    route: &Route,
    backends: &WeightedBackends,
    mut exchange: Exchange,
    tracker: &TaskTracker,
) -> Response<ResponseBody> {
    let grpc = local_reply::is_grpc(request.headers());
    let (backend_index, backend) = backends.pick();
    exchange.set_stats(StatsAt::Backend {
        route: route_index,
        backend: backend_index,
    });
    let cluster = &backend.cluster;

    let mut set_cookie = None;
    let hash = match route
        .hash
        .as_ref()
        .or(cluster.hash_policy())
        .filter(|_| cluster.is_hash_based())
    {
        None => None,
        Some(policy) => match policy.input(request.headers(), request.uri(), client.ip()) {
            HashInput::Key(hash) => Some(hash),
            HashInput::Missing => None,
            HashInput::NewCookie {
                hash,
                set_cookie: cookie,
            } => {
                set_cookie = Some(cookie);
                Some(hash)
            }
        },
    };
    let Some(active) = cluster.pick(hash) else {
        let message = format!(
            "no endpoint available: cluster {:?} has no healthy endpoints",
            cluster.name
        );
        return local_reply::reply(exchange, StatusCode::SERVICE_UNAVAILABLE, &message, grpc);
    };
    let endpoint = active.endpoint().clone();
    exchange.set_upstream(active);

    if upgrade::is_upgrade(&request) {
        return upgrade::forward(request, cluster, &endpoint, route, exchange, tracker).await;
    }

    let version = match (cluster.protocol, request.version()) {
        (UpstreamProtocol::Http2, _) | (UpstreamProtocol::SameAsDownstream, Version::HTTP_2) => {
            Version::HTTP_2
        }
        _ => Version::HTTP_11,
    };
    let (mut parts, body) = request.into_parts();
    prepare(&mut parts, version, route, endpoint.address);
    let request = Request::from_parts(parts, RequestBody::new(body));

    let deadline = route.timeout.map(|timeout| Instant::now() + timeout);
    let sent_at = std::time::Instant::now();
    let sent = send(&endpoint, request, version, &mut exchange);
    let result = match deadline {
        None => sent.await,
        Some(deadline) => match tokio::time::timeout_at(deadline, sent).await {
            Ok(result) => result,
            Err(_) => {
                let timeout = format_duration(route.timeout.unwrap_or_default());
                let message = format!(
                    "upstream timeout: route {:?} timeout of {timeout} expired before cluster {:?} endpoint {} responded",
                    route.name, cluster.name, endpoint.address
                );
                return local_reply::reply(exchange, StatusCode::GATEWAY_TIMEOUT, &message, grpc);
            }
        },
    };
    match result {
        Ok(mut response) => {
            if cluster.lb.policy == LbPolicy::PeakEwma {
                let now = std::time::Instant::now();
                endpoint.ewma.observe(now - sent_at, now, cluster.lb.decay);
            }
            hop::strip(response.headers_mut(), false);
            route.response_headers.apply(response.headers_mut());
            if let Some(cookie) = set_cookie {
                response.headers_mut().append(SET_COOKIE, cookie);
            }
            exchange.set_status(response.status());
            let (mut parts, body) = response.into_parts();
            parts.version = Version::HTTP_11;
            Response::from_parts(parts, ResponseBody::upstream(body, deadline, exchange))
        }
        Err(error) => failure_reply(exchange, cluster, &endpoint, error, grpc),
    }
}

/// Sends on a pooled connection; a request that a reused connection handed
/// back unsent goes once more on a fresh connection.
async fn send(
    endpoint: &Endpoint,
    request: Request<RequestBody>,
    version: Version,
    exchange: &mut Exchange,
) -> Result<Response<Incoming>, UpstreamError> {
    let pool = &endpoint.pool;
    let send_error = |error| UpstreamError::Send { error };
    if version == Version::HTTP_2 {
        let lease = pool.http2().await.map_err(UpstreamError::Connect)?;
        let mut sender = lease.sender();
        return match sender.try_send_request(request).await {
            Ok(response) => {
                exchange.hold_http2(lease);
                Ok(response)
            }
            Err(mut error) => {
                // A stream the upstream reset is that stream's problem; only a
                // connection that is gone or refuses new streams is replaced.
                let unsent = error.take_message();
                if unsent.is_some() || sender.is_closed() {
                    pool.discard_http2(&lease);
                }
                match unsent {
                    Some(request) if lease.reused => {
                        drop(lease);
                        let lease = pool.http2().await.map_err(UpstreamError::Connect)?;
                        let response = lease
                            .sender()
                            .send_request(request)
                            .await
                            .map_err(send_error)?;
                        exchange.hold_http2(lease);
                        Ok(response)
                    }
                    _ => Err(send_error(error.into_error())),
                }
            }
        };
    }
    let mut lease = pool.http1().await.map_err(UpstreamError::Connect)?;
    let response = match lease.sender.try_send_request(request).await {
        Ok(response) => response,
        Err(mut error) => match error.take_message() {
            Some(request) if lease.reused => {
                drop(lease);
                lease = pool.http1().await.map_err(UpstreamError::Connect)?;
                lease
                    .sender
                    .send_request(request)
                    .await
                    .map_err(send_error)?
            }
            _ => return Err(send_error(error.into_error())),
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
fn prepare(parts: &mut request::Parts, version: Version, route: &Route, endpoint: SocketAddr) {
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
            .or_else(|| parts.uri.authority().cloned())
            .or_else(|| Authority::try_from(endpoint.to_string()).ok());
    } else if !parts.headers.contains_key(HOST) {
        // An HTTP/2 client sent only `:authority`; HTTP/1.1 needs `Host`.
        let authority = parts
            .uri
            .authority()
            .map_or_else(|| endpoint.to_string(), |a| a.to_string());
        if let Ok(value) = HeaderValue::from_str(&authority) {
            parts.headers.insert(HOST, value);
        }
    }
    if let Ok(target) = Uri::from_parts(uri) {
        parts.uri = target;
    }
    parts.version = version;
}

/// 503 when no connection could be had, 502 when the upstream failed the
/// exchange; the body names the cluster, the endpoint and the cause.
pub fn failure_reply(
    exchange: Exchange,
    cluster: &Cluster,
    endpoint: &Endpoint,
    error: UpstreamError,
    grpc: bool,
) -> Response<ResponseBody> {
    let (status, what) = match error {
        UpstreamError::Connect(_) => (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error"),
        UpstreamError::Send { .. } => (StatusCode::BAD_GATEWAY, "upstream error"),
    };
    let message = format!(
        "{what}: cluster {:?} endpoint {}: {error}",
        cluster.name, endpoint.address
    );
    tracing::debug!(%message, "request failed upstream");
    local_reply::reply(exchange, status, &message, grpc)
}

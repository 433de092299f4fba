//! Forwarding a routed request: faults, the `max_requests` breaker, the
//! deadline, the hash input, and then the tries (see [`tries`](super::tries))
//! until a response goes back to the client or a local reply says why not.

use std::net::SocketAddr;

use http::header::SET_COOKIE;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::attempt;
use super::body::ResponseBody;
use super::deadline::{self, Deadline};
use super::exchange::Exchange;
use super::tries::{Stop, Tries};
use super::{hop, local_reply, upgrade};
use crate::adaptive::Adaptive;
use crate::balance::HashInput;
use crate::body::{RequestBody, StreamIdle};
use crate::breaker::Limit;
use crate::cluster::{Cluster, FailedBy};
use crate::config::UpstreamProtocol;
use crate::route::{Backend, Route};

/// A request body as [`forward`] takes it: the client's, still streaming,
/// or one a response cache read first.
pub(super) enum Outgoing {
    Client(Incoming),
    Ready(RequestBody),
}

pub(super) async fn forward(
    request: Request<Outgoing>,
    client: SocketAddr,
    route: &Route,
    backend: &Backend,
    listener_adaptive: Option<(&std::sync::Arc<Adaptive>, &str)>,
    mut exchange: Exchange,
    tracker: &TaskTracker,
) -> Response<ResponseBody> {
    let grpc = local_reply::is_grpc(request.headers());
    if let Some(fault) = &route.fault {
        if let Some(delay) = fault.delay() {
            tokio::time::sleep(delay).await;
        }
        if let Some(abort) = fault.abort() {
            return local_reply::aborted(exchange, abort, grpc);
        }
    }
    let cluster = &backend.cluster;
    match cluster.limits().take(Limit::Requests) {
        Ok(held) => exchange.hold_limit(held),
        Err(limit) => return local_reply::overloaded(exchange, cluster, limit, grpc),
    }
    // The listener's limit, then the cluster's (a request refused by one
    // holds no place under the other).
    if let Some((adaptive, listener)) = listener_adaptive {
        match adaptive.try_acquire() {
            Some(permit) => exchange.hold_adaptive(permit, false),
            None => {
                let scope = format!("listener {listener:?}");
                return local_reply::adaptive_limited(exchange, &scope, grpc);
            }
        }
    }
    if let Some(adaptive) = &cluster.adaptive {
        match adaptive.try_acquire() {
            Some(permit) => exchange.hold_adaptive(permit, true),
            None => {
                let scope = format!("cluster {:?}", cluster.name);
                return local_reply::adaptive_limited(exchange, &scope, grpc);
            }
        }
    }
    if let Some(budget) = &backend.budget {
        budget.record_request();
    }
    let grpc_timeout = if grpc {
        deadline::grpc_timeout(request.headers())
    } else {
        None
    };
    let deadline = Deadline::of(
        route.timeout,
        grpc_timeout,
        route.max_grpc_timeout,
        Instant::now(),
    );

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

    let request = match request.into_parts() {
        (parts, Outgoing::Client(body)) if upgrade::is_upgrade_head(&parts) => {
            let Some(active) = cluster.pick(hash) else {
                return local_reply::no_endpoint(exchange, cluster, grpc);
            };
            let endpoint = active.endpoint().clone();
            exchange.set_upstream(active);
            let request = Request::from_parts(parts, body);
            return upgrade::forward(request, cluster, &endpoint, route, exchange, tracker).await;
        }
        (parts, body) => Request::from_parts(parts, body),
    };

    let version = match (cluster.protocol, request.version()) {
        (UpstreamProtocol::Http2, _) | (UpstreamProtocol::SameAsDownstream, Version::HTTP_2) => {
            Version::HTTP_2
        }
        _ => Version::HTTP_11,
    };
    let (mut parts, body) = request.into_parts();
    attempt::prepare(&mut parts, version, route);
    let idle = route.stream_idle_timeout.map(StreamIdle::new);
    let body = match (body, &route.retry) {
        (Outgoing::Ready(body), _) => body,
        (Outgoing::Client(body), Some(policy)) => {
            RequestBody::replayable(body, policy.buffer_limit)
        }
        (Outgoing::Client(body), None) => RequestBody::streaming(body),
    }
    .with_idle(idle.clone());

    let tries = Tries {
        route,
        backend,
        parts,
        version,
        grpc,
        deadline,
        hash,
    };
    let (mut response, first) = match tries.run(body, &mut exchange).await {
        Ok(answer) => answer,
        Err(stop) => return stopped(exchange, cluster, stop, grpc),
    };
    exchange.response_started();
    hop::strip(response.headers_mut(), false);
    route.response_headers.apply(response.headers_mut());
    if let Some(cookie) = set_cookie {
        response.headers_mut().append(SET_COOKIE, cookie);
    }
    exchange.set_response_head(response.status(), response.headers());
    let (mut parts, body) = response.into_parts();
    parts.version = Version::HTTP_11;
    Response::from_parts(
        parts,
        ResponseBody::upstream(body, first, deadline.map(|d| d.at), idle, exchange),
    )
}

/// The local reply for tries that ended without a response to pass on.
fn stopped(
    exchange: Exchange,
    cluster: &Cluster,
    stop: Stop,
    grpc: bool,
) -> Response<ResponseBody> {
    let mut exchange = exchange;
    match stop {
        Stop::Deadline { message } => {
            exchange.failed(FailedBy::Upstream, "route_timeout");
            local_reply::reply(exchange, StatusCode::GATEWAY_TIMEOUT, &message, grpc)
        }
        Stop::Upstream { status, message } => {
            let what = match status {
                StatusCode::SERVICE_UNAVAILABLE => "connect_failure",
                StatusCode::GATEWAY_TIMEOUT => "per_try_timeout",
                _ => "upstream_reset",
            };
            exchange.failed(FailedBy::Upstream, what);
            local_reply::reply(exchange, status, &message, grpc)
        }
        Stop::Client { message } => {
            exchange.failed(FailedBy::Client, "client_body");
            local_reply::reply(exchange, StatusCode::BAD_REQUEST, &message, grpc)
        }
        Stop::BodyNotReplayable { message } => {
            exchange.failed(FailedBy::Proxy, "retry_buffer_overflow");
            local_reply::reply(exchange, StatusCode::BAD_GATEWAY, &message, grpc)
        }
        Stop::Overloaded(limit) => local_reply::overloaded(exchange, cluster, limit, grpc),
        Stop::NoEndpoint => local_reply::no_endpoint(exchange, cluster, grpc),
    }
}

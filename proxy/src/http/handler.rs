//! A request's way through an HTTP listener: load the listener's current
//! state, match a route, then answer directly or forward.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use super::body::ResponseBody;
use super::exchange::{Exchange, StatsAt};
use super::lifetime::Activity;
use super::{authority, cached, forward, local_reply};
use crate::listener::{ListenerSlot, ListenerState, Origin};
use crate::ratelimit::Caller;
use crate::route::{RequestView, RouteAction};
use crate::telemetry::{Classification, CountersBy};

/// What every request on one downstream connection shares.
pub(crate) struct ConnContext {
    pub(crate) slot: Arc<ListenerSlot>,
    pub(crate) peer: SocketAddr,
    pub(crate) tracker: TaskTracker,
    pub(crate) activity: Activity,
    /// A capture listener's hand-over, an mTLS peer's identity.
    pub(crate) origin: Origin,
    /// `remora_peer_requests_total` for the mTLS peer's identity.
    pub(crate) peer_stats: Option<CountersBy<Classification>>,
}

/// The request id header, as Envoy names it.
pub(crate) const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A random (version 4) UUID, formatted in place: one allocation.
fn new_request_id() -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hi = (crate::rand::next_u64() & !0xf000) | 0x4000; // version 4
    let lo = (crate::rand::next_u64() & !(0b11 << 62)) | (0b10 << 62); // RFC 4122 variant
    let bits = (u128::from(hi) << 64) | u128::from(lo);
    let mut text = [b'-'; 36];
    let mut nibble = 0;
    for (i, byte) in text.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        *byte = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
        nibble += 1;
    }
    http::HeaderValue::from_bytes(&text).expect("hex digits and dashes")
}

pub(super) async fn handle(
    conn: Arc<ConnContext>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    // The state loaded here serves the whole request, even if a reload lands meanwhile.
    let listener = conn.slot.current();
    let (peer, tracker) = (conn.peer, conn.tracker.clone());
    let mut request = request;
    if listener.generate_request_id && !request.headers().contains_key(REQUEST_ID) {
        request.headers_mut().insert(REQUEST_ID, new_request_id());
    }
    let authority = authority::normalize(&mut request);
    let denied = if listener.authz.is_empty() {
        None
    } else {
        let subject = crate::authz::Subject {
            identity: conn.origin.peer_identity.as_deref(),
            port: conn.origin.port,
            request: Some((request.method(), request.uri().path(), request.headers())),
        };
        listener.authz.check(&subject).err()
    };
    let exchange = Exchange::start(listener.clone(), conn, &request);
    if let Err(problem) = authority {
        let grpc = local_reply::is_grpc(request.headers());
        let message = format!("bad request: {problem}");
        return Ok(local_reply::reply(
            exchange,
            StatusCode::BAD_REQUEST,
            &message,
            grpc,
        ));
    }
    if let Some(denied) = denied {
        tracing::debug!(listener = %listener.name, %peer, policy = denied.0, "request denied by authorization");
        let grpc = local_reply::is_grpc(request.headers());
        return Ok(local_reply::reply(
            exchange,
            StatusCode::FORBIDDEN,
            "RBAC: access denied",
            grpc,
        ));
    }
    Ok(route(&listener, request, exchange, peer, &tracker).await)
}

async fn route(
    listener: &Arc<ListenerState>,
    request: Request<Incoming>,
    mut exchange: Exchange,
    client: SocketAddr,
    tracker: &TaskTracker,
) -> Response<ResponseBody> {
    let Some(http) = listener.http_routes() else {
        let message = format!("listener {:?} no longer serves HTTP", listener.name);
        let grpc = local_reply::is_grpc(request.headers());
        return local_reply::reply(exchange, StatusCode::SERVICE_UNAVAILABLE, &message, grpc);
    };
    let grpc = local_reply::is_grpc(request.headers());
    if let Some(limit) = &listener.rate_limit {
        let caller = Caller {
            headers: request.headers(),
            authority: request.uri().authority().map(|a| a.as_str()),
            ip: client.ip(),
            identity: exchange.peer_identity(),
        };
        if let Err(wait) = limit.admit(caller).await {
            listener.rate_limited.increment(1);
            let scope = format!("listener {:?}", listener.name);
            return local_reply::rate_limited(exchange, wait, &scope, grpc);
        }
    }
    let view = RequestView::new(request.method(), request.uri(), request.headers());
    let Some((index, route)) = http.table.find(&view) else {
        let message = format!(
            "no route matched {} {}{} on listener {:?}",
            view.method, view.host, view.path, listener.name
        );
        return local_reply::reply(exchange, StatusCode::NOT_FOUND, &message, grpc);
    };
    let (backend_index, backend) = match &route.action {
        RouteAction::Respond(_) => {
            exchange.set_stats(StatsAt::Direct { route: index });
            (0, None)
        }
        RouteAction::Forward(backends) => {
            let (backend_index, backend) = backends.pick();
            exchange.set_stats(StatsAt::Backend {
                route: index,
                backend: backend_index,
            });
            (backend_index, Some(backend))
        }
    };
    if let Some(limit) = &route.rate_limit {
        let caller = Caller {
            headers: request.headers(),
            authority: request.uri().authority().map(|a| a.as_str()),
            ip: client.ip(),
            identity: exchange.peer_identity(),
        };
        if let Err(wait) = limit.admit(caller).await {
            route.rate_limited.increment(1);
            let scope = format!("route {:?}", route.name);
            return local_reply::rate_limited(exchange, wait, &scope, grpc);
        }
    }
    match (&route.action, backend) {
        (RouteAction::Respond(direct), _) => {
            exchange.set_status(direct.status);
            exchange.add_bytes_sent(direct.body.len());
            let mut response = Response::new(ResponseBody::local(direct.body.clone()));
            *response.status_mut() = direct.status;
            if !direct.body.is_empty() {
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
            }
            route.response_headers.apply(response.headers_mut());
            response
        }
        (RouteAction::Forward(_), Some(backend)) => {
            if let Some(cache) = &route.cache {
                let at = cached::Routed {
                    listener,
                    route: index,
                    backend: backend_index,
                    client,
                    tracker,
                };
                return cached::serve(cache, at, request, exchange).await;
            }
            let adaptive = listener.adaptive.as_ref().map(|a| (a, &*listener.name));
            let request = request.map(forward::Outgoing::Client);
            forward::forward(request, client, route, backend, adaptive, exchange, tracker).await
        }
        (RouteAction::Forward(_), None) => {
            unreachable!("a forwarding route picked a backend above")
        }
    }
}

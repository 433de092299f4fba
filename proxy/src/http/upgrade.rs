//! HTTP/1.1 `Upgrade` (WebSocket and friends): the request goes upstream on a
//! connection of its own; on `101 Switching Protocols` both connections are
//! handed over and bytes flow both ways until either side closes.
//! `Upgrade: h2c` is not passed on (the proxy speaks h2c itself).

use http::header::{CONNECTION, UPGRADE};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use super::attempt::UpstreamError;
use super::body::ResponseBody;
use super::exchange::Exchange;
use super::hop;
use super::local_reply::failure_reply;
use crate::body::RequestBody;
use crate::cluster::Cluster;
use crate::endpoint::Endpoint;
use crate::route::Route;

/// An HTTP/1.1 request asking to switch protocols (other than to h2c).
pub(super) fn is_upgrade<B>(request: &Request<B>) -> bool {
    is_upgrade_of(request.version(), request.headers())
}

pub(super) fn is_upgrade_head(parts: &http::request::Parts) -> bool {
    is_upgrade_of(parts.version, &parts.headers)
}

fn is_upgrade_of(version: Version, headers: &http::HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers
            .get(UPGRADE)
            .is_some_and(|u| !u.as_bytes().eq_ignore_ascii_case(b"h2c"))
        && headers.get_all(CONNECTION).iter().any(|value| {
            value
                .to_str()
                .unwrap_or_default()
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

pub(super) async fn forward(
    mut request: Request<Incoming>,
    cluster: &Cluster,
    endpoint: &Endpoint,
    route: &Route,
    mut exchange: Exchange,
    tracker: &TaskTracker,
) -> Response<ResponseBody> {
    let downstream = hyper::upgrade::on(&mut request);
    let (mut parts, body) = request.into_parts();
    hop::strip(&mut parts.headers, true);
    route.request_headers.apply(&mut parts.headers);
    if let Some(path) = parts.uri.path_and_query().cloned() {
        parts.uri = path.as_str().parse().unwrap_or(parts.uri);
    }
    let request = Request::from_parts(parts, RequestBody::streaming(body));

    let mut lease = match endpoint.pool.connect_http1(true).await {
        Ok(lease) => lease,
        Err(error) => {
            return failure_reply(
                exchange,
                cluster,
                endpoint,
                UpstreamError::Connect(error),
                false,
            );
        }
    };
    let mut response = match lease.sender.send_request(request).await {
        Ok(response) => response,
        Err(error) => {
            return failure_reply(
                exchange,
                cluster,
                endpoint,
                UpstreamError::Send { error },
                false,
            );
        }
    };

    exchange.set_status(response.status());
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        hop::strip(response.headers_mut(), false);
        route.response_headers.apply(response.headers_mut());
        return response.map(|body| ResponseBody::upstream(body, None, None, None, exchange));
    }

    let upstream = hyper::upgrade::on(&mut response);
    let address = endpoint.address;
    tracker.spawn(async move {
        let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%address, %error, "upgrade failed");
                return;
            }
        };
        let mut downstream = TokioIo::new(downstream);
        let mut upstream = TokioIo::new(upstream);
        if let Err(error) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
            tracing::debug!(%address, %error, "upgraded connection ended with an error");
        }
        drop(lease);
    });
    hop::strip(response.headers_mut(), true);
    route.response_headers.apply(response.headers_mut());
    let (parts, _) = response.into_parts();
    drop(exchange);
    Response::from_parts(parts, ResponseBody::empty())
}

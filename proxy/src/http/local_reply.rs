//! Responses the proxy makes itself (no route, no endpoint, upstream failure,
//! timeout). A gRPC client gets a trailers-only gRPC response carrying the
//! matching `grpc-status`, as Envoy sends, so its library reports a proper
//! status instead of a protocol error.

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};

use super::attempt::UpstreamError;
use super::body::ResponseBody;
use super::exchange::Exchange;
use crate::breaker::Limit;
use crate::cluster::{Cluster, FailedBy};
use crate::endpoint::Endpoint;
use crate::fault::Abort;
use crate::telemetry::LabelValue;

/// Header on responses refused by a circuit breaker (as Envoy's `x-envoy-overloaded`).
pub(crate) const OVERLOADED: &str = "x-remora-overloaded";

pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// Answers with `status` and `message`, settling the exchange now.
pub(crate) fn reply(
    mut exchange: Exchange,
    status: StatusCode,
    message: &str,
    grpc: bool,
) -> Response<ResponseBody> {
    let response = local_response(status, message, grpc);
    exchange.set_response_head(response.status(), response.headers());
    exchange.replied_locally();
    response
}

pub(crate) fn local_response(
    status: StatusCode,
    message: &str,
    grpc: bool,
) -> Response<ResponseBody> {
    if grpc {
        let mut response = Response::new(ResponseBody::empty());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(grpc_status(status)));
        if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
            headers.insert("grpc-message", value);
        }
        return response;
    }
    let mut body = String::with_capacity(message.len() + 1);
    body.push_str(message);
    body.push('\n');
    let mut response = Response::new(ResponseBody::local(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The gRPC status for an HTTP status the proxy produced (gRPC's
/// http-grpc-status-mapping, with 504 as DEADLINE_EXCEEDED and 429 as
/// RESOURCE_EXHAUSTED since the proxy itself decided those).
pub(crate) fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 => 8,
        504 => 4,
        502 | 503 => 14,
        _ => 2,
    }
}

/// gRPC's `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// 503 for a failure before any upstream exchange (no connection), naming
/// the cluster, the endpoint and the cause; also used for upgrades.
pub(crate) fn failure_reply(
    exchange: Exchange,
    cluster: &Cluster,
    endpoint: &Endpoint,
    error: UpstreamError,
    grpc: bool,
) -> Response<ResponseBody> {
    let mut exchange = exchange;
    let what = match error {
        UpstreamError::Connect(_) => "connect_failure",
        UpstreamError::Send { .. } => "upstream_reset",
        UpstreamError::PerTryTimeout(_) => "per_try_timeout",
    };
    exchange.failed(FailedBy::Upstream, what);
    let message = format!(
        "{}: cluster {:?} endpoint {}: {error}",
        error.summary(),
        cluster.name,
        endpoint.address
    );
    reply(exchange, error.status(), &message, grpc)
}

pub(crate) fn no_endpoint(
    exchange: Exchange,
    cluster: &Cluster,
    grpc: bool,
) -> Response<ResponseBody> {
    let mut exchange = exchange;
    exchange.failed(FailedBy::Proxy, "no_healthy_upstream");
    let message = format!(
        "no endpoint available: cluster {:?} has no healthy endpoints",
        cluster.name
    );
    reply(exchange, StatusCode::SERVICE_UNAVAILABLE, &message, grpc)
}

/// 503 at once, with `x-remora-overloaded: true`, when a circuit breaker is open.
pub(crate) fn overloaded(
    exchange: Exchange,
    cluster: &Cluster,
    limit: Limit,
    grpc: bool,
) -> Response<ResponseBody> {
    let mut exchange = exchange;
    exchange.failed(FailedBy::Proxy, "circuit_breaker");
    let message = format!(
        "overloaded: cluster {:?} is at its {} circuit breaker",
        cluster.name,
        limit.label()
    );
    let mut response = reply(exchange, StatusCode::SERVICE_UNAVAILABLE, &message, grpc);
    response
        .headers_mut()
        .insert(OVERLOADED, HeaderValue::from_static("true"));
    response
}

/// Over the cluster's adaptive concurrency limit: 503 at once.
pub(crate) fn adaptive_limited(
    mut exchange: Exchange,
    scope: &str,
    grpc: bool,
) -> Response<ResponseBody> {
    exchange.failed(FailedBy::Proxy, "adaptive_concurrency");
    let message = format!("overloaded: {scope} is at its adaptive concurrency limit");
    let mut response = reply(exchange, StatusCode::SERVICE_UNAVAILABLE, &message, grpc);
    response
        .headers_mut()
        .insert(OVERLOADED, HeaderValue::from_static("adaptive-concurrency"));
    response
}

pub(crate) fn aborted(exchange: Exchange, abort: Abort, grpc: bool) -> Response<ResponseBody> {
    match abort {
        Abort::Http(status) => reply(exchange, status, "fault injected: aborted", grpc),
        Abort::Grpc(code) => {
            let mut response = reply(exchange, StatusCode::OK, "fault injected: aborted", true);
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from(code));
            response
        }
    }
}

/// 429 (or RESOURCE_EXHAUSTED) with `retry-after` in whole seconds.
pub(crate) fn rate_limited(
    exchange: Exchange,
    wait: std::time::Duration,
    scope: &str,
    grpc: bool,
) -> Response<ResponseBody> {
    let message = format!(
        "rate limited by {scope}; retry after {:.3}s",
        wait.as_secs_f64()
    );
    let mut response = reply(exchange, StatusCode::TOO_MANY_REQUESTS, &message, grpc);
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_replies_are_trailers_only_with_a_status() {
        let response = local_response(StatusCode::SERVICE_UNAVAILABLE, "no endpoint: 100%", true);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(response.headers()["grpc-message"], "no endpoint: 100%25");
        assert!(http_body::Body::is_end_stream(response.body()));
    }

    #[test]
    fn plain_replies_carry_the_message() {
        let response = local_response(StatusCode::NOT_FOUND, "no route", false);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(http_body::Body::size_hint(response.body()).exact(), Some(9));
    }
}

//! The admin server, on its own port (loopback by default):
//!
//! | path | what |
//! |---|---|
//! | `GET /ready` | 200 once listeners are bound, 503 while draining |
//! | `GET /live` | 200 while the process runs |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /config_dump` | the live snapshot's config as JSON, with its version |
//! | `GET /clusters` | endpoints per cluster with weight, health, active requests |
//! | `GET /listeners` | bound listeners and their actual addresses |
//! | `GET /xds` | the xDS client: server, connection, versions, ACK/NACK counts, last NACK, warming |
//! | `GET /logging`, `PUT`/`POST /logging?level=...` | read or change the log filter |
//! | `POST /drain` | stop accepting, finish in-flight requests, exit |
//! | `GET /tap?listener=&route=&path_prefix=&limit=&duration=` | live request summaries as JSON lines (streamed) |
//! | `GET /cache` | every route's response cache: entries, bytes, config |
//! | `POST /cache/purge?listener=&route=&key_prefix=` | remove cached responses (all, or a route's, or under a path prefix) |
//! | `GET /app-health/...` | the application's probe configured at that path (`app_probes`) |
//!
//! A peer that is not on loopback (the kubelet, Prometheus, when the admin
//! address is the pod's) gets only `/ready`, `/live`, `/metrics` and
//! `/app-health/...`; everything else answers 403 to it, as Linkerd's
//! admin server keeps `/shutdown` to loopback.

mod probes;
pub mod tap_cli;
mod views;

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::proxy::Proxy;

/// Serves the admin API on `listener` forever.
pub async fn serve(listener: TcpListener, proxy: Proxy) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let proxy = proxy.clone();
                async move {
                    let read = request.method() == Method::GET || request.method() == Method::HEAD;
                    let path = request.uri().path();
                    if !peer.ip().to_canonical().is_loopback() && !open_to_network(path) {
                        return Ok(text(
                            StatusCode::FORBIDDEN,
                            format!("{path} answers loopback peers only (the network gets /ready, /live, /metrics and /app-health/...)\n"),
                        )
                        .map(BodyExt::boxed));
                    }
                    if read && path.starts_with("/app-health/") {
                        return Ok::<_, Infallible>(
                            app_probe(&proxy, path).await.map(BodyExt::boxed),
                        );
                    }
                    if read && path == "/tap" {
                        return Ok(tap(&proxy, request.uri().query()));
                    }
                    Ok::<_, Infallible>(handle(&proxy, request).map(BodyExt::boxed))
                }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "admin connection error");
            }
        });
    }
}

/// What a peer off loopback may ask for: health, probes and metrics, never
/// config, tap, drain or log changes.
fn open_to_network(path: &str) -> bool {
    matches!(path, "/ready" | "/live" | "/metrics") || path.starts_with("/app-health/")
}

const INDEX: &str = "remora-proxy admin\n\nGET  /ready\nGET  /live\nGET  /metrics\nGET  /config_dump\nGET  /clusters\nGET  /listeners\nGET  /xds\nGET  /identity\nGET  /logging\nPUT  /logging?level=LEVEL\nPOST /drain\nGET  /tap?listener=NAME&route=NAME&path_prefix=/PATH&limit=N&duration=30s\nGET  /cache\nPOST /cache/purge?listener=NAME&route=NAME&key_prefix=/PATH\nGET  /app-health/CONTAINER/PROBE\n";

fn handle(proxy: &Proxy, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method();
    let read = method == Method::GET || method == Method::HEAD;
    match request.uri().path() {
        "/" if read => text(StatusCode::OK, INDEX),
        "/ready" if read => {
            if proxy.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    if proxy.is_draining() {
                        "draining\n"
                    } else {
                        "not ready: waiting for the first xDS config, the first DNS answers or the first certificate\n"
                    },
                )
            }
        }
        "/live" if read => text(StatusCode::OK, "live\n"),
        "/metrics" if read => with_type(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            proxy.telemetry().render(),
        ),
        "/config_dump" if read => json(&views::config_dump(&proxy.snapshot())),
        "/clusters" if read => json(&views::clusters(&proxy.snapshot())),
        "/listeners" if read => json(&proxy.listeners()),
        "/xds" if read => json(&proxy.xds_status().view()),
        "/identity" if read => json(&proxy.identity().view()),
        "/logging" if read => match proxy.log_control() {
            Some(log) => text(StatusCode::OK, format!("{}\n", log.current())),
            None => text(
                StatusCode::NOT_IMPLEMENTED,
                "this process does not manage its log level\n",
            ),
        },
        "/logging" if method == Method::PUT || method == Method::POST => {
            set_logging(proxy, request.uri().query())
        }
        "/drain" if method == Method::POST => {
            proxy.begin_drain();
            text(StatusCode::OK, "draining\n")
        }
        "/cache" if read => json(&views::caches(&proxy.snapshot())),
        "/cache/purge" if method == Method::POST => {
            let param = |name: &str| {
                request
                    .uri()
                    .query()
                    .into_iter()
                    .flat_map(|q| q.split('&'))
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                    .map(percent_decode)
            };
            let (listener, route) = (param("listener"), param("route"));
            let prefix = param("key_prefix").unwrap_or_default();
            match views::purge(
                &proxy.snapshot(),
                listener.as_deref(),
                route.as_deref(),
                &prefix,
            ) {
                Some(purged) => json(&purged),
                None => text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no route with a cache matches listener={} route={}\n",
                        listener.as_deref().unwrap_or("*"),
                        route.as_deref().unwrap_or("*")
                    ),
                ),
            }
        }
        "/" | "/ready" | "/live" | "/metrics" | "/config_dump" | "/clusters" | "/listeners"
        | "/xds" | "/identity" | "/logging" | "/drain" | "/cache" | "/cache/purge" | "/tap" => {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here\n\n{INDEX}"),
            )
        }
        path => text(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {path}\n\n{INDEX}"),
        ),
    }
}

/// Query parameter `name`, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .map(percent_decode)
}

/// `GET /tap`: request summaries as they finish, one JSON line each,
/// until `limit` lines or `duration`; then a last line with the count of
/// summaries the tap dropped (over its rate or its queue).
fn tap(proxy: &Proxy, query: Option<&str>) -> Response<AdminBody> {
    use crate::telemetry::tap::{DEFAULT_DURATION, DEFAULT_LIMIT, TapFilter};
    let param = |name| query_param(query, name);
    let limit = match param("limit").map(|l| l.parse::<u64>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(limit)) if limit > 0 => limit,
        Some(_) => {
            return text(StatusCode::BAD_REQUEST, "limit: a whole number above 0\n")
                .map(BodyExt::boxed);
        }
    };
    let duration = match param("duration").map(|d| crate::config::scalar::parse_duration(&d)) {
        None => DEFAULT_DURATION,
        Some(Ok(duration)) if !duration.is_zero() => duration,
        Some(_) => {
            return text(StatusCode::BAD_REQUEST, "duration: such as 30s or 2m\n")
                .map(BodyExt::boxed);
        }
    };
    let filter = TapFilter {
        listener: param("listener"),
        route: param("route"),
        path_prefix: param("path_prefix"),
    };
    let stream = proxy.telemetry().taps.open(filter);
    let deadline = tokio::time::Instant::now() + duration;
    let lines =
        futures_util::stream::unfold((Some(stream), 0u64), move |(stream, sent)| async move {
            let mut stream = stream?;
            let next = if sent < limit {
                tokio::time::timeout_at(deadline, stream.lines.recv())
                    .await
                    .ok()
                    .flatten()
            } else {
                None
            };
            let frame = match next {
                Some(line) => (Some(stream), sent + 1, line),
                None => {
                    let dropped = stream.dropped.load(std::sync::atomic::Ordering::Relaxed);
                    let end = format!("{{\"end\":true,\"sent\":{sent},\"dropped\":{dropped}}}\n");
                    (None, sent, end)
                }
            };
            let (stream, sent, line) = frame;
            Some((
                Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(line))),
                (stream, sent),
            ))
        });
    let mut response = Response::new(http_body_util::StreamBody::new(lines).boxed());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

type AdminBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// `GET /app-health/...`: the application's probe configured at that path.
async fn app_probe(proxy: &Proxy, path: &str) -> Response<Full<Bytes>> {
    let probe = proxy.snapshot().config.app_probes.get(path).cloned();
    match probe {
        Some(probe) => {
            let (status, body) = probes::run(&probe).await;
            text(status, body)
        }
        None => text(
            StatusCode::NOT_FOUND,
            format!("no application probe at {path} (app_probes, REMORA_APP_PROBES)\n"),
        ),
    }
}

fn set_logging(proxy: &Proxy, query: Option<&str>) -> Response<Full<Bytes>> {
    let Some(log) = proxy.log_control() else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "this process does not manage its log level\n",
        );
    };
    let level = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("level="))
        .map(percent_decode);
    match level {
        None => text(
            StatusCode::BAD_REQUEST,
            "missing ?level=, e.g. /logging?level=debug\n",
        ),
        Some(level) => match log.set(&level) {
            Ok(()) => {
                tracing::info!(%level, "log level changed through the admin server");
                text(StatusCode::OK, format!("log level set to {level}\n"))
            }
            Err(error) => text(StatusCode::BAD_REQUEST, format!("{error}\n")),
        },
    }
}

/// Decodes `%XX` and `+` in a query value (`info%2Cremora_proxy%3Ddebug`).
fn percent_decode(value: &str) -> String {
    unescape(value, true)
}

/// Decodes `%XX` escapes, and `+` as a space when `plus_is_space` (a query
/// value; not a gRPC message, whose percent-encoding keeps `+`).
pub(super) fn unescape(value: &str, plus_is_space: bool) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (None, b'+') if plus_is_space => out.push(b' '),
            (None, byte) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn json<T: serde::Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => with_type(StatusCode::OK, "application/json", body),
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render JSON: {error}\n"),
        ),
    }
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            percent_decode("info%2Cremora_proxy%3Ddebug"),
            "info,remora_proxy=debug"
        );
        assert_eq!(percent_decode("a+b%"), "a b%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }
}

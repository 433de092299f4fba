//! The admin server: `/ready`, `/live`, `/metrics` (Prometheus) and `/debug/proxies`
//! (each connected node: versions sent and ACKed per type, the last NACK).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::xds::MeshState;
use crate::xds::registry::Registry;

pub async fn serve(
    listener: TcpListener,
    state: watch::Receiver<Arc<MeshState>>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let registry = registry.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = respond(&request, &state, &registry, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

fn respond(
    request: &Request<Incoming>,
    state: &watch::Receiver<Arc<MeshState>>,
    registry: &Registry,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if request.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match request.uri().path() {
        "/ready" => {
            let version = state.borrow().version;
            if metrics
                .source_out_of_sync
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("the mesh's source is not in sync; serving mesh version {version}\n"),
                )
            } else if version > 0 {
                reply(
                    StatusCode::OK,
                    "text/plain",
                    format!("ready: mesh version {version}\n"),
                )
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no mesh loaded\n".into(),
                )
            }
        }
        "/live" => reply(StatusCode::OK, "text/plain", "live\n".into()),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/debug/proxies" => {
            let body = serde_json::to_string_pretty(&registry.list()).unwrap_or_default();
            reply(StatusCode::OK, "application/json", body + "\n")
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /ready, /live, /metrics or /debug/proxies\n".into(),
        ),
    }
}

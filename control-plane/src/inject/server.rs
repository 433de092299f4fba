//! The webhook over HTTPS: `POST /inject` (namespaces labelled
//! `remora.dev/inject=enabled`), `POST /inject/opt-in` (pods annotated
//! `remora.dev/inject: "true"` elsewhere), `GET /healthz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::tls::{CertSource, Resolver};
use super::{InjectConfig, Outcome, Selection};

/// A review larger than this is refused (a Pod is at most ~1.5 MiB in
/// etcd; the review carries it once for CREATE).
const MAX_BODY: usize = 4 << 20;

/// What `serve --webhook-address` starts.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    pub address: SocketAddr,
    pub config: Arc<InjectConfig>,
    pub certs: CertSource,
}

/// Reviews answered, by outcome (`remora_cp_injections_total{result}`).
#[derive(Debug, Default)]
pub struct InjectCounts {
    pub injected: AtomicU64,
    pub skipped: AtomicU64,
    pub denied: AtomicU64,
}

impl InjectCounts {
    fn count(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Injected(_) => &self.injected,
            Outcome::Skipped(_) => &self.skipped,
            Outcome::Denied(_) => &self.denied,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

/// A running webhook.
pub struct Webhook {
    pub address: SocketAddr,
    /// The CA to trust (`caBundle`), when the control plane generated the
    /// serving certificate.
    pub ca_pem: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Webhook {
    pub async fn start(
        options: WebhookOptions,
        counts: Arc<InjectCounts>,
    ) -> anyhow::Result<Webhook> {
        let (resolver, ca_pem) = super::tls::start(options.certs.clone()).await?;
        let listener = TcpListener::bind(options.address).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on --webhook-address {}: {e}",
                options.address
            )
        })?;
        let address = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(resolver)));
        let config = options.config;
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, config, counts) = (acceptor.clone(), config.clone(), counts.clone());
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(socket),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "webhook: TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (config, counts) = (config.clone(), counts.clone());
                        async move { Ok::<_, Infallible>(respond(request, &config, &counts).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        tracing::info!(%address, "sidecar injector listening (HTTPS)");
        Ok(Webhook {
            address,
            ca_pem,
            task,
        })
    }
}

fn server_config(resolver: Arc<Resolver>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

async fn respond(
    request: Request<Incoming>,
    config: &InjectConfig,
    counts: &InjectCounts,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    let selection = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        (&Method::POST, "/inject") => Selection::Namespace,
        (&Method::POST, "/inject/opt-in") => Selection::OptIn,
        (_, "/inject" | "/inject/opt-in") => {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"POST an AdmissionReview\n".to_vec(),
            );
        }
        (_, path) => {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("no webhook at {path}: POST /inject or /inject/opt-in\n").into_bytes(),
            );
        }
    };
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            let message = if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                format!("the review is larger than {MAX_BODY} bytes")
            } else {
                format!("cannot read the review: {error}")
            };
            let (answer, outcome) = super::refusal(message);
            counts.count(&outcome);
            return reply(StatusCode::OK, "application/json", answer);
        }
    };
    let (answer, outcome) = super::review(&body, config, selection);
    counts.count(&outcome);
    match &outcome {
        Outcome::Injected(ops) => tracing::info!(operations = ops.len(), "webhook: pod injected"),
        Outcome::Skipped(why) => tracing::debug!(%why, "webhook: pod not injected"),
        Outcome::Denied(why) => tracing::warn!(%why, "webhook: review refused"),
    }
    reply(StatusCode::OK, "application/json", answer)
}

//! The span exporter: a thread of its own with a current-thread runtime,
//! off the data path. Spans arrive on a bounded queue, which the exporter
//! drains every 25 ms (a span never wakes it); a batch goes out when it is
//! full or `batch_timeout` after its first span, as one OTLP
//! `ExportTraceServiceRequest` over gRPC or HTTP/protobuf, on one
//! connection kept from batch to batch. A batch that fails is dropped and
//! counted (no retry: a slow or dead collector must not grow the proxy's
//! memory); only a batch that met a kept connection the collector had
//! closed meanwhile is sent again, once, on a new one. When the tracer is
//! dropped (a reload with another `tracing:`, or shutdown) the queue
//! closes and the thread sends what it holds, then ends.

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use metrics::Counter;
use prost::Message;
use remora_xds_proto::opentelemetry::proto::collector::trace::v1::ExportTraceServiceResponse;
use remora_xds_proto::opentelemetry::proto::resource::v1::Resource;

use super::SpanRecord;
use tokio::sync::mpsc;

use crate::config::{OtlpProtocol, TracingConfig};

/// How often the exporter looks at its queue (or `batch_timeout`, when
/// shorter).
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(25);

pub(super) struct Counters {
    pub(super) exported: Counter,
    pub(super) failed: Counter,
}

/// Starts the exporter thread; spans go into the returned queue.
pub(super) fn start(
    config: &TracingConfig,
    instance: &str,
    counters: Counters,
) -> std::io::Result<mpsc::Sender<SpanRecord>> {
    let (queue, spans) = mpsc::channel(config.max_queue_spans);
    let mut attributes = vec![
        super::string("service.name", config.service_name.clone()),
        super::string("service.instance.id", instance),
        super::string("telemetry.sdk.name", "remora-proxy"),
        super::string("telemetry.sdk.language", "rust"),
        super::string("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ];
    // In a pod, the Downward API's variables (as the sidecar injector sets
    // them) name the pod, its namespace and its node.
    for (variable, keys) in [
        ("POD_NAME", &["k8s.pod.name"][..]),
        (
            "POD_NAMESPACE",
            &["k8s.namespace.name", "service.namespace"][..],
        ),
        ("NODE_NAME", &["k8s.node.name"][..]),
    ] {
        if let Some(value) = std::env::var(variable).ok().filter(|v| !v.is_empty()) {
            for key in keys {
                attributes.push(super::string(key, value.clone()));
            }
        }
    }
    for (key, value) in &config.resource {
        attributes.retain(|a| a.key != *key);
        attributes.push(super::string(key, value.clone()));
    }
    let exporter = Exporter {
        config: config.clone(),
        resource: Resource {
            attributes,
            ..Resource::default()
        }
        .encode_to_vec(),
        counters,
    };
    std::thread::Builder::new()
        .name("remora-otlp".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => runtime.block_on(exporter.run(spans)),
                Err(error) => tracing::error!(%error, "the span exporter cannot start"),
            }
        })?;
    Ok(queue)
}

struct Exporter {
    config: TracingConfig,
    /// The `Resource` message, encoded once.
    resource: Vec<u8>,
    counters: Counters,
}

/// The collector's gRPC method.
const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

type GrpcClient = tonic::client::Grpc<tonic::transport::Channel>;

type HttpSender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The exporter's connection to the collector, kept from batch to batch
/// (and made again after a failure).
#[derive(Default)]
struct Connection {
    grpc: Option<GrpcClient>,
    http: Option<HttpSender>,
}

impl Exporter {
    /// Drains the queue on a tick instead of waiting on it: a sender never
    /// wakes this thread (no cross-thread wake-up per span), and a batch
    /// leaves when it is full or `batch_timeout` after its first span.
    async fn run(self, mut spans: mpsc::Receiver<SpanRecord>) {
        let mut conn = Connection::default();
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(self.config.max_batch_spans);
        let mut first_at = None;
        let tick = self.config.batch_timeout.min(DRAIN_EVERY);
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let mut closed = false;
            loop {
                match spans.try_recv() {
                    Ok(span) => {
                        first_at.get_or_insert_with(tokio::time::Instant::now);
                        batch.push(span);
                        if batch.len() >= self.config.max_batch_spans {
                            self.send(&mut conn, &mut batch).await;
                            first_at = None;
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let due = first_at.is_some_and(|at| at.elapsed() >= self.config.batch_timeout);
            if !batch.is_empty() && (due || closed) {
                self.send(&mut conn, &mut batch).await;
                first_at = None;
            }
            if closed {
                return;
            }
        }
    }

    async fn send(&self, conn: &mut Connection, batch: &mut Vec<SpanRecord>) {
        let count = batch.len() as u64;
        let request = super::wire::request(&self.resource, batch);
        batch.clear();
        match self.export(conn, request).await {
            Ok(()) => self.counters.exported.increment(count),
            Err(error) => {
                self.counters.failed.increment(count);
                tracing::debug!(endpoint = %self.config.otlp.endpoint, %error, spans = count, "span export failed; spans dropped");
            }
        }
    }

    async fn export(&self, conn: &mut Connection, request: Bytes) -> Result<(), String> {
        let otlp = &self.config.otlp;
        match otlp.protocol {
            OtlpProtocol::Grpc => {
                let client = match &mut conn.grpc {
                    Some(client) => client,
                    None => {
                        let endpoint =
                            tonic::transport::Endpoint::from_shared(otlp.endpoint.clone())
                                .map_err(|e| e.to_string())?
                                .connect_timeout(otlp.timeout)
                                .timeout(otlp.timeout);
                        conn.grpc
                            .insert(tonic::client::Grpc::new(endpoint.connect_lazy()))
                    }
                };
                client.ready().await.map_err(|e| e.to_string())?;
                let codec = tonic_prost::ProstCodec::<
                    super::wire::Encoded,
                    ExportTraceServiceResponse,
                >::default();
                client
                    .unary(
                        tonic::Request::new(super::wire::Encoded(request)),
                        http::uri::PathAndQuery::from_static(EXPORT),
                        codec,
                    )
                    .await
                    .map(|_: tonic::Response<ExportTraceServiceResponse>| ())
                    .map_err(|status| format!("{}: {}", status.code(), status.message()))
            }
            OtlpProtocol::HttpProtobuf => {
                // A batch that times out leaves no connection behind: the
                // next one starts on a new one.
                tokio::time::timeout(otlp.timeout, post(&mut conn.http, &otlp.endpoint, request))
                    .await
                    .map_err(|_| format!("no answer within {:?}", otlp.timeout))?
            }
        }
    }
}

/// One POST of `application/x-protobuf`, on the kept connection when it
/// is still open, else on a new one. A kept connection the collector
/// closed meanwhile (an idle timeout) gets the batch again on a new one.
async fn post(conn: &mut Option<HttpSender>, endpoint: &str, body: Bytes) -> Result<(), String> {
    let uri: Uri = endpoint.parse().map_err(|e| format!("{e}"))?;
    let authority = uri.authority().ok_or("no host")?.clone();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| *p != "/")
        .unwrap_or("/v1/traces");
    let kept = conn.take().filter(|sender| !sender.is_closed());
    let reused = kept.is_some();
    let mut sender = match kept {
        Some(sender) => sender,
        None => connect(&authority).await?,
    };
    let response = match send(&mut sender, path, &authority, body.clone()).await {
        Ok(response) => response,
        Err(_) if reused => {
            sender = connect(&authority).await?;
            send(&mut sender, path, &authority, body).await?
        }
        Err(error) => return Err(error),
    };
    let status = response.status();
    // Read to its end, so the connection can carry the next batch.
    if response.into_body().collect().await.is_ok() {
        *conn = Some(sender);
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {status}"))
    }
}

async fn connect(authority: &http::uri::Authority) -> Result<HttpSender, String> {
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn send(
    sender: &mut HttpSender,
    path: &str,
    authority: &http::uri::Authority,
    body: Bytes,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let request = Request::post(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))
}

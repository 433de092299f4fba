//! Distributed tracing: two proxies in a row export their spans to a real
//! OTLP receiver (the collector's `TraceService` over gRPC, and OTLP over
//! HTTP/protobuf); the spans form one trace with the right parents, in each
//! propagation format; sampling decisions are honoured; a dead collector
//! slows nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;
use remora_xds_proto::opentelemetry::proto::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use remora_xds_proto::opentelemetry::proto::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use remora_xds_proto::opentelemetry::proto::common::v1::any_value;
use remora_xds_proto::opentelemetry::proto::trace::v1::Span;

use crate::support::upstream::Upstream;
use crate::support::{TestProxy, client, eventually};

/// What a receiver got: each span with its resource's `service.name`.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

impl Received {
    fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.0.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on an ephemeral port.
async fn grpc_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let service = TraceServiceServer::new(received.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, received)
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) on an ephemeral port.
async fn http_receiver() -> (SocketAddr, Received) {
    let (addr, received, _) = http_receiver_with(false).await;
    (addr, received)
}

/// An OTLP/HTTP receiver that counts the connections it accepted. With
/// `one_per_connection`, it answers one request per connection (keeping it
/// open, as if for more) and then closes it abruptly when the next request
/// arrives, without reading it: what a collector's idle timeout does to a
/// client that sends just as it fires.
async fn http_receiver_with(
    one_per_connection: bool,
) -> (SocketAddr, Received, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let shared = received.clone();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            accepted.fetch_add(1, Ordering::SeqCst);
            let received = shared.clone();
            let served = Arc::new(AtomicUsize::new(0));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    let received = received.clone();
                    let first = served.fetch_add(1, Ordering::SeqCst) == 0;
                    async move {
                        if one_per_connection && !first {
                            return Err("closed");
                        }
                        let ok = request.uri().path() == "/v1/traces"
                            && request.headers()["content-type"] == "application/x-protobuf";
                        let body: hyper::body::Incoming = request.into_body();
                        let bytes = body.collect().await.unwrap().to_bytes();
                        let status = match ExportTraceServiceRequest::decode(bytes) {
                            Ok(export) if ok => {
                                received.add(export);
                                200
                            }
                            _ => 400,
                        };
                        let mut response = http::Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, &str>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received, connections)
}

fn tracing_yaml(
    service: &str,
    endpoint: &str,
    protocol: &str,
    sampling: f64,
    propagation: &str,
) -> String {
    format!(
        "tracing:
  otlp: {{endpoint: '{endpoint}', protocol: {protocol}}}
  sampling: {sampling}
  propagation: {propagation}
  service_name: {service}
  batch_timeout: 50ms
"
    )
}

/// Proxy `front` → proxy `back` → `upstream`, both tracing.
async fn two_proxies(
    upstream: SocketAddr,
    endpoint: &str,
    protocol: &str,
    sampling: f64,
    front_propagation: &str,
) -> (TestProxy, TestProxy) {
    let back = TestProxy::start(&format!(
        "{}
listeners:
  - {{name: back, address: 127.0.0.1:0, routes: [{{name: to-app, backends: [{{cluster: app}}]}}]}}
clusters:
  - {{name: app, endpoints: ['{upstream}']}}
",
        tracing_yaml("back", endpoint, protocol, sampling, "[w3c]")
    ))
    .await;
    let front = TestProxy::start(&format!(
        "{}
listeners:
  - {{name: front, address: 127.0.0.1:0, routes: [{{name: to-back, backends: [{{cluster: back}}]}}]}}
clusters:
  - {{name: back, endpoints: ['{}']}}
",
        tracing_yaml("front", endpoint, protocol, sampling, front_propagation),
        back.addr("back")
    ))
    .await;
    (front, back)
}

fn span_of<'a>(spans: &'a [(String, Span)], service: &str, kind: i32) -> &'a Span {
    spans
        .iter()
        .find(|(s, span)| s == service && span.kind == kind)
        .map(|(_, span)| span)
        .unwrap_or_else(|| panic!("no span of kind {kind} from {service}: {spans:?}"))
}

fn attribute(span: &Span, key: &str) -> String {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// The four spans of one request through both proxies: one trace, each
/// span the child of the one before.
fn assert_one_trace(spans: &[(String, Span)], caller: Option<(&[u8], &[u8])>) {
    assert_eq!(spans.len(), 4, "{spans:?}");
    let front_server = span_of(spans, "front", SERVER);
    let front_client = span_of(spans, "front", CLIENT);
    let back_server = span_of(spans, "back", SERVER);
    let back_client = span_of(spans, "back", CLIENT);
    let trace = &front_server.trace_id;
    assert_eq!(trace.len(), 16);
    for span in [front_client, back_server, back_client] {
        assert_eq!(&span.trace_id, trace, "one trace");
    }
    match caller {
        Some((caller_trace, caller_span)) => {
            assert_eq!(trace.as_slice(), caller_trace);
            assert_eq!(front_server.parent_span_id.as_slice(), caller_span);
        }
        None => assert!(front_server.parent_span_id.is_empty(), "a new trace's root"),
    }
    assert_eq!(front_client.parent_span_id, front_server.span_id);
    assert_eq!(back_server.parent_span_id, front_client.span_id);
    assert_eq!(back_client.parent_span_id, back_server.span_id);
    // Semantic conventions and Remora's own attributes.
    assert_eq!(attribute(front_server, "http.request.method"), "GET");
    assert_eq!(attribute(front_server, "url.path"), "/traced");
    // The Host header's host, without its port.
    assert_eq!(attribute(front_server, "server.address"), "127.0.0.1");
    assert_eq!(attribute(front_server, "http.response.status_code"), "200");
    assert_eq!(attribute(front_server, "remora.route"), "to-back");
    assert_eq!(attribute(front_server, "remora.cluster"), "back");
    assert_eq!(attribute(back_client, "remora.cluster"), "app");
    assert_eq!(attribute(back_client, "http.response.status_code"), "200");
    assert!(!attribute(back_client, "remora.upstream").is_empty());
    assert_eq!(front_server.name, "GET to-back");
    for (_, span) in spans {
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
        assert!(span.status.is_none(), "no error: {span:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_make_one_trace_in_every_propagation_format() {
    let upstream = Upstream::http1("app").await;
    let (collector, received) = grpc_receiver().await;
    let endpoint = format!("http://{collector}");
    for format in ["[w3c]", "[b3]", "[b3_multi]", "[w3c, b3]"] {
        received.clear();
        let (front, _back) = two_proxies(upstream.addr, &endpoint, "grpc", 1.0, format).await;
        let http = client::http1();
        let reply = client::get(&http, &front.url("front", "/traced")).await;
        assert_eq!(reply.status, 200);
        // The back proxy writes W3C to the app whatever it read.
        assert!(
            reply.header("x-echo-traceparent").starts_with("00-"),
            "{format}"
        );
        eventually("four spans", || received.spans().len() >= 4).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_one_trace(&received.spans(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_trace_and_sampling_decision_are_kept() {
    let upstream = Upstream::http1("app").await;
    let (collector, received) = grpc_receiver().await;
    let endpoint = format!("http://{collector}");
    // Sampling 0: only a caller's decision or the forced header samples.
    let (front, _back) = two_proxies(upstream.addr, &endpoint, "grpc", 0.0, "[w3c]").await;
    let http = client::http1();
    let url = front.url("front", "/traced");
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = client::get_with(
        &http,
        &url,
        &[("traceparent", sampled), ("tracestate", "k=v")],
    )
    .await;
    assert_eq!(reply.header("x-echo-tracestate"), "k=v");
    let echoed = reply.header("x-echo-traceparent");
    assert!(echoed.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(echoed.ends_with("-01"));
    eventually("four spans", || received.spans().len() >= 4).await;
    let trace = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    let span = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
    assert_one_trace(&received.spans(), Some((&trace, &span)));

    // Not sampled by the caller, or by the ratio: no span, but the
    // decision still travels upstream.
    received.clear();
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let reply = client::get_with(&http, &url, &[("traceparent", unsampled)]).await;
    assert!(reply.header("x-echo-traceparent").ends_with("-00"));
    client::get(&http, &url).await;
    // Forced.
    client::get_with(&http, &url, &[("x-remora-force-trace", "1")]).await;
    eventually("the forced request's spans", || received.spans().len() >= 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        received.spans().len(),
        4,
        "only the forced request was sampled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_http_protobuf_too() {
    let upstream = Upstream::http1("app").await;
    let (collector, received) = http_receiver().await;
    let endpoint = format!("http://{collector}/v1/traces");
    let (front, back) = two_proxies(upstream.addr, &endpoint, "http_protobuf", 1.0, "[b3]").await;
    let reply = client::get(&client::http1(), &front.url("front", "/traced")).await;
    assert_eq!(reply.status, 200);
    eventually("four spans", || received.spans().len() >= 4).await;
    assert_one_trace(&received.spans(), None);
    eventually("exports counted", || {
        back.metric("remora_tracing_spans_exported_total") >= 2.0
    })
    .await;
}

/// A proxy tracing every request to `endpoint` over OTLP/HTTP.
async fn proxy_exporting_to(endpoint: &str, upstream: SocketAddr) -> TestProxy {
    TestProxy::start(&format!(
        "{}listeners:
  - {{name: web, address: 127.0.0.1:0, routes: [{{name: all, backends: [{{cluster: app}}]}}]}}
clusters:
  - {{name: app, endpoints: ['{upstream}']}}
",
        tracing_yaml("web", endpoint, "http_protobuf", 1.0, "[w3c]"),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_keeps_its_connection_from_batch_to_batch() {
    let upstream = Upstream::http1("app").await;
    let (collector, received, connections) = http_receiver_with(false).await;
    let proxy = proxy_exporting_to(&format!("http://{collector}/v1/traces"), upstream.addr).await;
    let http = client::http1();
    for i in 1..=5 {
        assert_eq!(client::get(&http, &proxy.url("web", "/")).await.status, 200);
        // Each request's two spans are a batch of their own (50 ms).
        eventually("the batch", || received.spans().len() >= 2 * i).await;
    }
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_on_a_connection_the_collector_closed_is_sent_again() {
    let upstream = Upstream::http1("app").await;
    let (collector, received, connections) = http_receiver_with(true).await;
    let proxy = proxy_exporting_to(&format!("http://{collector}/v1/traces"), upstream.addr).await;
    let http = client::http1();
    for i in 1..=5 {
        assert_eq!(client::get(&http, &proxy.url("web", "/")).await.status, 200);
        eventually("the batch", || received.spans().len() >= 2 * i).await;
    }
    // Batches 2 to 5 each met a closed connection and went on a new one.
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert_eq!(received.spans().len(), 10);
    eventually("the exports counted", || {
        proxy.metric("remora_tracing_spans_exported_total") >= 10.0
    })
    .await;
    assert_eq!(
        proxy.metric("remora_tracing_spans_dropped_total{reason=\"export_failed\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_drops_spans_and_slows_no_request() {
    let upstream = Upstream::http1("app").await;
    // Nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let log = tempfile::NamedTempFile::new().unwrap();
    let proxy = TestProxy::start(&format!(
        "{}access_log: {{path: '{}'}}
listeners:
  - {{name: web, address: 127.0.0.1:0, routes: [{{name: all, backends: [{{cluster: app}}]}}]}}
clusters:
  - {{name: app, endpoints: ['{}']}}
",
        tracing_yaml("lonely", &endpoint, "grpc", 1.0, "[w3c]"),
        log.path().display(),
        upstream.addr
    ))
    .await;
    let http = client::http1();
    let started = std::time::Instant::now();
    for _ in 0..50 {
        let reply = client::get(&http, &proxy.url("web", "/")).await;
        assert_eq!(reply.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually("dropped spans counted", || {
        proxy.metric("remora_tracing_spans_dropped_total{reason=\"export_failed\"}") >= 100.0
    })
    .await;
    // The access log names each request's trace and server span.
    let text = std::fs::read_to_string(log.path()).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["trace_id"].as_str().unwrap().len(), 32);
    assert_eq!(line["span_id"].as_str().unwrap().len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tracing_config_names_the_field() {
    let config = remora_proxy::config::parse_yaml(
        "tracing: {otlp: {endpoint: 'https://collector:4317'}, sampling: 2, propagation: []}",
    )
    .unwrap();
    let errors = remora_proxy::snapshot::Snapshot::compile(
        config,
        None,
        &remora_proxy::telemetry::Telemetry::new(),
        1,
        remora_proxy::snapshot::Mode::Check,
    )
    .unwrap_err()
    .to_string();
    for field in [
        "tracing.sampling",
        "tracing.otlp.endpoint",
        "tracing.propagation",
    ] {
        assert!(errors.contains(field), "{field}: {errors}");
    }
}

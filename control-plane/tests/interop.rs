//! A real Envoy, bootstrapped with ADS to Remora's control plane, routes
//! traffic as the mesh file says, and follows changes to the file: an
//! endpoint moved, then a weighted split. remora-proxy, driven by the same
//! control plane, runs next to it and must route every request the same
//! way. Asserted by traffic, over both state-of-the-world and delta ADS.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use support::*;

fn mesh(
    (listen, remora_listen): (SocketAddr, SocketAddr),
    v1: SocketAddr,
    v2: SocketAddr,
    backend_endpoint: SocketAddr,
    split: Option<(u32, u32)>,
) -> String {
    let routes = match split {
        None => String::new(),
        Some((w1, w2)) => format!(
            "
routes:
  - kind: HTTPRoute
    name: split
    parentRefs: [{{name: backend}}]
    rules:
      - matches: [{{path: {{type: PathPrefix, value: /split}}}}]
        backendRefs: [{{name: backend-v1, weight: {w1}}}, {{name: backend-v2, weight: {w2}}}]
"
        ),
    };
    format!(
        "
services:
  - name: backend
    port: 8080
    endpoints: ['{backend_endpoint}']
  - name: backend-v1
    port: 8080
    endpoints: ['{v1}']
  - name: backend-v2
    port: 8080
    endpoints: ['{v2}']
{routes}
proxies:
  - node_id: client-*
    outbound: [{{service: backend, listen: '{listen}'}}]
  - node_id: remora-*
    outbound: [{{service: backend, listen: '{remora_listen}'}}]
"
    )
}

async fn upstream_of(listen: SocketAddr, path: &str) -> String {
    match get(listen, path).await {
        Ok((200, upstream)) => upstream,
        Ok((status, _)) => format!("status {status}"),
        Err(e) => e,
    }
}

async fn count(listen: SocketAddr, path: &str, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        *seen.entry(upstream_of(listen, path).await).or_default() += 1;
    }
    seen
}

async fn scenario(delta: bool) {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let remora_listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let both = (listen, remora_listen);
    let file = MeshFile::new(&mesh(both, v1.addr, v2.addr, v1.addr, None));
    let cp = control_plane(&file).await;
    let envoy = Envoy::start(
        if delta { "client-delta" } else { "client-sotw" },
        cp.xds_address,
        delta,
    );
    let remora = Remora::start(
        if delta { "remora-delta" } else { "remora-sotw" },
        cp.xds_address,
        delta,
    );

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let last = upstream_of(listen, "/").await;
        if last == "v1" {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("Envoy never served: last {last}\n{}", envoy.log_text());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eventually("remora-proxy serves", 30, || async {
        upstream_of(remora_listen, "/").await == "v1"
    })
    .await;
    assert!(remora.proxy.is_ready());
    same_routing(both, "initial").await;

    // Move the service's endpoint: traffic follows.
    file.write(&mesh(both, v1.addr, v2.addr, v2.addr, None));
    for at in [listen, remora_listen] {
        eventually(
            "Envoy and remora-proxy route to v2 after the endpoint moved",
            10,
            || async { upstream_of(at, "/").await == "v2" },
        )
        .await;
        let after = count(at, "/", 20).await;
        assert_eq!(after.get("v2"), Some(&20), "{at}: {after:?}");
    }
    same_routing(both, "endpoint moved").await;

    // A weighted split on /split: 1:3 between v1 and v2.
    file.write(&mesh(both, v1.addr, v2.addr, v2.addr, Some((1, 3))));
    for at in [listen, remora_listen] {
        eventually(
            "Envoy and remora-proxy split /split between v1 and v2",
            10,
            || async { count(at, "/split", 20).await.contains_key("v1") },
        )
        .await;
        let seen = count(at, "/split", 400).await;
        let (a, b) = (
            seen.get("v1").copied().unwrap_or(0),
            seen.get("v2").copied().unwrap_or(0),
        );
        assert_eq!(a + b, 400, "{at}: every request answered: {seen:?}");
        assert!(
            (60..=140).contains(&a),
            "{at}: about a quarter to v1: {seen:?}"
        );
        // Element-wise prefix: /splitx is not /split, so it goes to the service (v2).
        assert_eq!(upstream_of(at, "/splitx").await, "v2");
        assert_eq!(upstream_of(at, "/split/deeper").await.len(), 2);
    }
    same_routing(both, "weighted split").await;

    // The control plane saw every type ACKed by this node.
    let (status, body) = admin(cp.admin_address, "/debug/proxies").await;
    assert_eq!(status, 200);
    let proxies: serde_json::Value = serde_json::from_str(&body).unwrap();
    let node = proxies
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["entry"] == "client-*")
        .unwrap_or_else(|| panic!("Envoy's node: {body}"));
    assert_eq!(node["protocol"], if delta { "delta" } else { "sotw" });
    for t in ["listener", "route", "cluster", "endpoint"] {
        assert!(
            node["types"][t]["acked_version"].is_string(),
            "{t} acked: {body}"
        );
        assert!(
            node["types"][t]["last_nack"].is_null(),
            "{t} not NACKed: {body}"
        );
    }
    let (_, metrics) = admin(cp.admin_address, "/metrics").await;
    assert!(
        metrics.contains("remora_cp_connected_proxies 2"),
        "{metrics}"
    );
    // remora-proxy ACKed every type and NACKed nothing.
    let status = remora.xds();
    assert_eq!(status["connected"], true, "{status}");
    for t in status["types"].as_array().unwrap() {
        assert!(t["acks"].as_u64().unwrap() >= 1, "{status}");
        assert_eq!(t["nacks"], 0, "{status}");
    }
}

/// Paths whose answer does not depend on chance get the same upstream (or
/// the same status) through Envoy and through remora-proxy.
async fn same_routing((envoy, remora): (SocketAddr, SocketAddr), step: &str) {
    for path in [
        "/",
        "/split",
        "/split/",
        "/splitx",
        "/other/deep?x=1",
        "/Split",
    ] {
        let through_envoy = upstream_of(envoy, path).await;
        let through_remora = upstream_of(remora, path).await;
        if path.starts_with("/split")
            && !path.starts_with("/splitx")
            && through_envoy != through_remora
        {
            // A weighted split picks at random; both must at least pick from the split.
            assert!(
                ["v1", "v2"].contains(&through_envoy.as_str())
                    && ["v1", "v2"].contains(&through_remora.as_str()),
                "{step}: {path}: Envoy {through_envoy}, remora-proxy {through_remora}"
            );
            continue;
        }
        assert_eq!(
            through_envoy, through_remora,
            "{step}: {path} routed differently: Envoy {through_envoy}, remora-proxy {through_remora}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_the_mesh_file_over_state_of_the_world_ads() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_the_mesh_file_over_delta_ads() {
    scenario(true).await;
}

/// What an OTLP/gRPC receiver got: each span with its resource's
/// `service.name`.
#[derive(Clone, Default)]
struct Spans(std::sync::Arc<std::sync::Mutex<Vec<(String, Span)>>>);

use remora_xds_proto::opentelemetry::proto::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use remora_xds_proto::opentelemetry::proto::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use remora_xds_proto::opentelemetry::proto::common::v1::any_value;
use remora_xds_proto::opentelemetry::proto::trace::v1::Span;

#[tonic::async_trait]
impl TraceService for Spans {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
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
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// One request through Envoy (the caller's sidecar) and remora-proxy (the
/// callee's), both given the mesh's OpenTelemetry tracer by the control
/// plane: one trace, remora-proxy's server span the child of Envoy's span,
/// its client span the child of its server span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_remora_spans_join_one_trace() {
    let app = Upstream::start("app").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let spans = Spans::default();
    let service = TraceServiceServer::new(spans.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let front = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let back = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let file = MeshFile::new(&format!(
        "
tracing: {{collector: '{collector}', sampling: 1.0}}
services:
  - {{name: api, port: 8080, endpoints: ['{back}']}}
proxies:
  - node_id: client-*
    outbound: [{{service: api, listen: '{front}'}}]
  - node_id: remora-*
    inbound: [{{service: api, listen: '{back}', target: '{}'}}]
",
        app.addr
    ));
    let cp = control_plane(&file).await;
    let envoy = Envoy::start("client-traced", cp.xds_address, false);
    let _remora = Remora::start("remora-api", cp.xds_address, false);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while upstream_of(front, "/").await != "app" {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "no traffic through Envoy and remora-proxy\n{}",
                envoy.log_text()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(upstream_of(front, "/traced").await, "app");
    let find = || {
        let spans = spans.0.lock().unwrap().clone();
        let server = spans.iter().find(|(service, span)| {
            service == "api.default" && span.kind == 2 && !span.parent_span_id.is_empty()
        })?;
        let parent = spans.iter().find(|(_, span)| {
            span.span_id == server.1.parent_span_id && span.trace_id == server.1.trace_id
        })?;
        let client = spans.iter().find(|(service, span)| {
            service == "api.default" && span.kind == 3 && span.parent_span_id == server.1.span_id
        })?;
        Some((server.clone(), parent.clone(), client.clone()))
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let (server, envoy_span, client) = loop {
        if let Some(found) = find() {
            break found;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "no joined trace; spans: {:?}\n{}",
                spans.0.lock().unwrap(),
                envoy.log_text()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    // Envoy's span is its own (its resource names the caller's side).
    assert_eq!(envoy_span.0, "client-of-api.default", "{envoy_span:?}");
    assert_eq!(server.1.trace_id, client.1.trace_id);
    assert_eq!(server.1.trace_id.len(), 16);
}

//! The admin server's endpoints.

use http::StatusCode;

use crate::support::process::admin_request;
use crate::support::upstream::Upstream;
use crate::support::{TestProxy, client, metric_in};

async fn proxy() -> (Upstream, TestProxy) {
    let upstream = Upstream::http1("up").await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes: [{{name: all, backends: [{{cluster: up}}]}}]
clusters:
  - {{name: up, endpoints: ['{}']}}
  - {{name: spare, endpoints: ['127.0.0.1:1', {{address: '127.0.0.1:2', weight: 3}}]}}
",
        upstream.addr
    ))
    .await;
    (upstream, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer() {
    let (_upstream, proxy) = proxy().await;
    assert_eq!(
        admin_request(proxy.admin, "GET", "/ready").await,
        (200, "ready\n".into())
    );
    assert_eq!(
        admin_request(proxy.admin, "GET", "/live").await,
        (200, "live\n".into())
    );
    let (status, body) = admin_request(proxy.admin, "GET", "/nope").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("GET  /clusters"),
        "the 404 lists the endpoints: {body}"
    );
    assert_eq!(admin_request(proxy.admin, "DELETE", "/ready").await.0, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_with_the_documented_names() {
    let (_upstream, proxy) = proxy().await;
    let client = client::http1();
    let reply = client::get(&client, &proxy.url("web", "/")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let (status, text) = admin_request(proxy.admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "remora_requests_total",
        "remora_request_duration_seconds_bucket",
        "remora_downstream_connections_active",
        "remora_upstream_connections_active",
        "remora_upstream_connections_created_total",
        "remora_config_reloads_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name}")) || text.contains(name),
            "{name} missing from:\n{text}"
        );
    }
    assert_eq!(
        metric_in(
            &text,
            r#"remora_requests_total{listener="web",route="all",cluster="up",status_class="2xx"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_in(
            &text,
            r#"remora_downstream_connections_active{listener="web"}"#
        ),
        1.0,
        "the client's keep-alive connection"
    );
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_clusters_and_listeners_are_json() {
    let (upstream, proxy) = proxy().await;
    let (status, body) = admin_request(proxy.admin, "GET", "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["config"]["listeners"][0]["name"], "web");
    assert_eq!(
        dump["config"]["clusters"][0]["connect_timeout"], "5s",
        "durations are written as configured"
    );
    assert_eq!(dump["config"]["drain_timeout"], "30s");

    let (_, body) = admin_request(proxy.admin, "GET", "/clusters").await;
    let clusters: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(clusters[0]["name"], "up");
    assert_eq!(
        clusters[0]["endpoints"][0]["address"],
        upstream.addr.to_string()
    );
    let spare = &clusters[1]["endpoints"];
    assert_eq!(clusters[1]["name"], "spare");
    assert_eq!(spare[0]["weight"], 1);
    assert_eq!(spare[1]["weight"], 3);
    assert_eq!(spare[0]["healthy"], true);
    assert_eq!(spare[0]["active_requests"], 0);
    assert_eq!(spare[0]["weight_factor"], 1.0);
    assert_eq!(spare[0]["pool"]["open"], 0);
    assert_eq!(clusters[1]["policy"], "round_robin");
    assert_eq!(clusters[1]["healthy"], 2);
    assert_eq!(clusters[1]["panic"], false);
    assert!(
        clusters[1].get("dns").is_none(),
        "static clusters show no DNS state"
    );

    let (_, body) = admin_request(proxy.admin, "GET", "/listeners").await;
    let listeners: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listeners[0]["address"], proxy.addr("web").to_string());
    assert_eq!(listeners[0]["protocol"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_makes_the_proxy_unready_and_refuse_new_connections() {
    let (_upstream, proxy) = proxy().await;
    let address = proxy.addr("web");
    assert_eq!(admin_request(proxy.admin, "POST", "/drain").await.0, 200);
    assert_eq!(
        admin_request(proxy.admin, "GET", "/ready").await,
        (503, "draining\n".into())
    );
    assert!(
        proxy.proxy.drained().await,
        "no connections were open, so the drain finishes at once"
    );
    crate::support::eventually("listener closed", || {
        std::net::TcpStream::connect(address).is_err()
    })
    .await;
}

/// `app_probes`: the kubelet's rewritten probes reach the application
/// through the admin port; the answer is the application's status, 503
/// when it is down or too slow, 404 for a path no probe has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_probes_are_answered_on_the_admin_port() {
    let upstream = Upstream::http1("app").await;
    let port = upstream.addr.port();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = TestProxy::start(&format!(
        "
app_probes:
  /app-health/web/livez: {{httpGet: {{path: /healthz, port: {port}, httpHeaders: [{{name: x-probe, value: kubelet}}]}}}}
  /app-health/web/readyz: {{httpGet: {{path: /status/503, port: {port}}}}}
  /app-health/web/startupz: {{httpGet: {{path: /slow/3000, port: {port}}}, timeoutSeconds: 1}}
  /app-health/gone/livez: {{httpGet: {{port: {closed}}}}}
listeners:
  - {{name: web, address: 127.0.0.1:0, routes: [{{name: all, backends: [{{cluster: app}}]}}]}}
clusters:
  - {{name: app, endpoints: ['{}']}}
",
        upstream.addr
    ))
    .await;
    let (status, body) = admin_request(proxy.admin, "GET", "/app-health/web/livez").await;
    assert_eq!((status, body.as_str()), (200, "application answered 200\n"));
    assert_eq!(upstream.hits(), 1);
    let (status, _) = admin_request(proxy.admin, "GET", "/app-health/web/readyz").await;
    assert_eq!(status, 503);
    let started = std::time::Instant::now();
    let (status, body) = admin_request(proxy.admin, "GET", "/app-health/web/startupz").await;
    assert_eq!(status, 503);
    assert!(body.contains("timed out after 1s"), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_millis(2500));
    let (status, body) = admin_request(proxy.admin, "GET", "/app-health/gone/livez").await;
    assert_eq!(status, 503);
    assert!(body.contains("application probe failed: connect"), "{body}");
    let (status, _) = admin_request(proxy.admin, "GET", "/app-health/other/livez").await;
    assert_eq!(status, 404);
}

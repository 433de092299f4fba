//! The admin server's endpoints.

use http::StatusCode;
use std::sync::atomic::Ordering;

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
    let grpc = crate::support::grpc::start_server().await;
    let rpc = grpc.addr.port();
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
  /app-health/tcp/livez: {{tcpSocket: {{port: {port}}}}}
  /app-health/tcp/readyz: {{tcpSocket: {{port: {closed}}}}}
  /app-health/rpc/livez: {{grpc: {{port: {rpc}}}}}
  /app-health/rpc/readyz: {{grpc: {{port: {rpc}, service: test.Echo}}}}
  /app-health/rpc/startupz: {{grpc: {{port: {rpc}, service: shop.Unknown}}}}
  /app-health/rpc-gone/livez: {{grpc: {{port: {closed}}}}}
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

    // TCP: the application's port itself, not the capture's.
    let (status, body) = admin_request(proxy.admin, "GET", "/app-health/tcp/livez").await;
    assert_eq!(
        (status, body),
        (
            200,
            format!("application port {port} accepts connections\n")
        )
    );
    let (status, body) = admin_request(proxy.admin, "GET", "/app-health/tcp/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("application probe failed: connect"), "{body}");

    // gRPC: grpc.health.v1.Health/Check over h2c, as the kubelet asks it.
    let (status, body) = admin_request(proxy.admin, "GET", "/app-health/rpc/livez").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "application health check: SERVING\n")
    );
    let (status, _) = admin_request(proxy.admin, "GET", "/app-health/rpc/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(grpc.state.health_checks.load(Ordering::SeqCst), 2);
    grpc.state.not_serving.store(true, Ordering::SeqCst);
    let (status, body) = admin_request(proxy.admin, "GET", "/app-health/rpc/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "application health check: NOT_SERVING\n")
    );
    let (status, body) = admin_request(proxy.admin, "GET", "/app-health/rpc/startupz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("gRPC status \"5\": unknown service shop.Unknown"),
        "{body}"
    );
    let (status, body) = admin_request(proxy.admin, "GET", "/app-health/rpc-gone/livez").await;
    assert_eq!(status, 503);
    assert!(body.contains("application probe failed: connect"), "{body}");
}

/// A probe has exactly one of httpGet, tcpSocket and grpc, and a port;
/// a mistake names the probe's path and field.
#[test]
fn application_probes_with_no_or_two_handlers_are_refused() {
    for (probe, says) in [
        (
            "{timeoutSeconds: 2}",
            "needs one of httpGet, tcpSocket and grpc",
        ),
        (
            "{httpGet: {port: 80}, tcpSocket: {port: 80}}",
            "takes only one of httpGet, tcpSocket and grpc",
        ),
        ("{grpc: {port: 0}}", ".grpc.port: must be 1-65535"),
        ("{tcpSocket: {port: 0}}", ".tcpSocket.port: must be 1-65535"),
        ("{exec: {command: [true]}}", "exec"),
    ] {
        let yaml = format!("app_probes:\n  /app-health/web/livez: {probe}\n");
        let error = match remora_proxy::config::parse_yaml(&yaml) {
            Err(error) => error.to_string(),
            Ok(config) => {
                let telemetry = remora_proxy::telemetry::Telemetry::new();
                remora_proxy::snapshot::Snapshot::compile(
                    config,
                    None,
                    &telemetry,
                    0,
                    remora_proxy::snapshot::Mode::Check,
                )
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| panic!("{probe} accepted"))
            }
        };
        assert!(
            error.contains("app_probes") && error.contains(says),
            "{probe}: {error}"
        );
    }
}

/// Reads `GET /tap` lines from the admin server until it ends the stream.
async fn tap_lines(
    admin: std::net::SocketAddr,
    query: &str,
) -> tokio::task::JoinHandle<Vec<String>> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("/tap?{query}"))
        .header("host", "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    tokio::spawn(async move {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_streams_matching_requests_and_ends_by_itself() {
    let (_upstream, proxy) = proxy().await;
    let client = client::http1();
    let api = tap_lines(proxy.admin, "path_prefix=/api&limit=2&duration=10s").await;
    let short = tap_lines(proxy.admin, "route=all&duration=300ms").await;
    let other = tap_lines(proxy.admin, "listener=nope&duration=300ms").await;
    for path in ["/api/1", "/other", "/api/2", "/api/3"] {
        let reply = client::get_with(
            &client,
            &proxy.url("web", path),
            &[("x-request-id", "rid-1")],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let api = crate::support::within("the api tap ends at its limit", api)
        .await
        .unwrap();
    assert_eq!(api.len(), 3, "{api:?}");
    let first: serde_json::Value = serde_json::from_str(&api[0]).unwrap();
    assert_eq!(first["path"], "/api/1");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "all");
    assert_eq!(first["cluster"], "up");
    assert_eq!(first["direction"], "outbound");
    assert_eq!(first["request_id"], "rid-1");
    assert!(first["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        first["upstream"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let second: serde_json::Value = serde_json::from_str(&api[1]).unwrap();
    assert_eq!(second["path"], "/api/2");
    let end: serde_json::Value = serde_json::from_str(&api[2]).unwrap();
    assert_eq!(
        (end["end"].as_bool(), end["sent"].as_u64()),
        (Some(true), Some(2))
    );
    // The duration ends a tap too, after everything it matched.
    let short = crate::support::within("the short tap ends", short)
        .await
        .unwrap();
    assert_eq!(short.len(), 5, "{short:?}");
    let other = crate::support::within("the other tap ends", other)
        .await
        .unwrap();
    assert_eq!(other.len(), 1, "nothing matched: {other:?}");
    assert_eq!(
        admin_request(proxy.admin, "GET", "/tap?limit=0").await.0,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tap_command_prints_a_table() {
    let (_upstream, proxy) = proxy().await;
    let mut tap = std::process::Command::new(crate::support::process::binary())
        .args(["tap", "--admin", &proxy.admin.to_string()])
        .args([
            "--limit",
            "2",
            "--duration",
            "10s",
            "--path-prefix",
            "/seen",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = client::http1();
    // The tap opens once the command has connected: keep sending until it ends.
    let output = crate::support::within("the tap command ends", async {
        loop {
            client::get(&client, &proxy.url("web", "/seen/x")).await;
            if let Ok(Some(_)) = tap.try_wait() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tap.wait_with_output().unwrap()
    })
    .await;
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("TIME"), "{text}");
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[1].contains("/seen/x") && lines[1].contains(" 200 "),
        "{text}"
    );
    assert!(lines[3].starts_with("-- 2 requests shown"), "{text}");
}

/// An admin port open beyond loopback (an injected sidecar's, for the
/// kubelet and Prometheus) gives a peer off loopback only health, probes
/// and metrics; drain, config, tap and log changes answer 403 to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_off_loopback_get_health_and_metrics_only() {
    // This host's address on its default route: not loopback.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let local = match probe
        .connect("192.0.2.200:9")
        .and_then(|()| probe.local_addr())
    {
        Ok(addr) if !addr.ip().is_loopback() && !addr.ip().is_unspecified() => addr.ip(),
        _ => {
            eprintln!("SKIPPED: this host has no address but loopback");
            return;
        }
    };
    let (_upstream, proxy) = proxy().await;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(remora_proxy::admin::serve(listener, proxy.proxy.clone()));
    let outside = std::net::SocketAddr::new(local, port);
    let inside = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for path in ["/ready", "/live", "/metrics"] {
        assert_eq!(admin_request(outside, "GET", path).await.0, 200, "{path}");
    }
    // No probe configured: the path is open, and answers 404.
    assert_eq!(
        admin_request(outside, "GET", "/app-health/web/livez")
            .await
            .0,
        404
    );
    for (method, path) in [
        ("GET", "/config_dump"),
        ("GET", "/tap"),
        ("POST", "/drain"),
        ("PUT", "/logging?level=debug"),
        ("POST", "/cache/purge"),
        ("GET", "/"),
    ] {
        let (status, body) = admin_request(outside, method, path).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(body.contains("loopback peers only"), "{body}");
    }
    assert!(proxy.proxy.is_ready(), "the refused drain did not drain");
    assert_eq!(admin_request(inside, "GET", "/config_dump").await.0, 200);
}

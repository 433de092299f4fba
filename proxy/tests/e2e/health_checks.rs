//! Active health checks against real servers: an HTTP endpoint that starts
//! failing and recovers, a gRPC server that reports NOT_SERVING through the
//! gRPC health protocol, and a TCP check on a closed port.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::client;
use crate::support::grpc::{EchoClient, start_server};
use crate::support::process::{ProxyProcess, admin_request};
use crate::support::upstream::{Protocol, Upstream};
use crate::support::{TestProxy, eventually, metric_in};

async fn endpoints(admin: std::net::SocketAddr, cluster: &str) -> Vec<serde_json::Value> {
    let (_, body) = admin_request(admin, "GET", "/clusters").await;
    let clusters: serde_json::Value = serde_json::from_str(&body).unwrap();
    clusters
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .unwrap_or_else(|| panic!("no cluster {cluster} in {body}"))["endpoints"]
        .as_array()
        .unwrap()
        .clone()
}

async fn health(admin: std::net::SocketAddr, cluster: &str, address: &str) -> serde_json::Value {
    endpoints(admin, cluster)
        .await
        .into_iter()
        .find(|e| e["address"] == address)
        .unwrap_or_else(|| panic!("no endpoint {address}"))["health"]
        .clone()
}

/// Waits until the endpoint's `health.check_failed` is `failed`.
async fn until_check_failed(
    admin: std::net::SocketAddr,
    cluster: &str,
    address: &str,
    failed: bool,
    what: &str,
) {
    // The whole suite shares two cores, so a check 100 ms apart can be
    // late by much more than its interval.
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if health(admin, cluster, address).await["check_failed"] == failed {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_leaves_after_n_failed_checks_and_returns_after_m_passes() {
    let a = Upstream::http1("a").await;
    let b = Upstream::http1("b").await;
    let process = ProxyProcess::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes: [{{name: all, backends: [{{cluster: app}}]}}]
clusters:
  - name: app
    endpoints: ['{}', '{}']
    health_check:
      http: {{path: /health}}
      interval: 300ms
      timeout: 200ms
      jitter: 0s
      unhealthy_threshold: 3
      healthy_threshold: 2
",
        a.addr, b.addr
    ))
    .await;
    let url = format!("http://{}/", process.listener("web").await);
    let b_addr = b.addr.to_string();
    let via_b = |n: usize| {
        let url = url.clone();
        async move {
            let client = client::http1();
            let mut from_b = 0;
            for _ in 0..n {
                let reply = client::get(&client, &url).await;
                assert_eq!(reply.status, 200);
                from_b += usize::from(reply.header("x-upstream") == "b");
            }
            from_b
        }
    };
    eventually("b is checked", || b.health_checks().0 >= 1).await;

    // The exact thresholds and intervals are tested in virtual time
    // (cluster::tests); here the real probes, the admin view and the logs.
    b.set_healthy(false);
    until_check_failed(process.admin, "app", &b_addr, true, "b fails its checks").await;
    let state = health(process.admin, "app", &b_addr).await;
    assert!(
        state["check_failures_in_a_row"].as_u64() >= Some(3),
        "{state}"
    );
    assert!(b.health_checks().1 >= 3, "three failed probes reached b");
    let before = b.requests();
    assert_eq!(via_b(20).await, 0, "a failed endpoint gets no requests");
    assert_eq!(b.requests(), before);
    assert!(
        process
            .output()
            .contains("endpoint failed its health checks; taken out of the balancer"),
        "{}",
        process.output()
    );

    b.set_healthy(true);
    until_check_failed(process.admin, "app", &b_addr, false, "b passes again").await;
    let state = health(process.admin, "app", &b_addr).await;
    assert!(
        state["check_passes_in_a_row"].as_u64() >= Some(2),
        "{state}"
    );
    assert!(via_b(10).await >= 3, "b is back in the balancer");
    let output = process.output();
    assert!(
        output.contains("endpoint passes its health checks again"),
        "{output}"
    );
    let (_, metrics) = process.admin_get("/metrics").await;
    assert!(
        metric_in(
            &metrics,
            r#"remora_health_check_failures_total{cluster="app"}"#
        ) >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_speak_the_health_protocol_and_not_serving_takes_an_endpoint_out() {
    let up = start_server().await;
    let flapping = start_server().await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: grpc
    address: 127.0.0.1:0
    routes: [{{name: echo, backends: [{{cluster: echo}}]}}]
clusters:
  - name: echo
    protocol: http2
    endpoints: ['{up}', '{flapping}']
    health_check: {{grpc: {{service: test.Echo}}, interval: 100ms, timeout: 100ms, jitter: 0s, unhealthy_threshold: 2, healthy_threshold: 1}}
  - name: unknown-service
    protocol: http2
    endpoints: ['{up}']
    health_check: {{grpc: {{service: no.Such}}, interval: 100ms, timeout: 100ms, jitter: 0s, unhealthy_threshold: 1}}
",
        up = up.addr,
        flapping = flapping.addr,
    ))
    .await;
    let flapping_addr = flapping.addr.to_string();
    eventually("both servers are checked", || {
        up.state.health_checks.load(Ordering::SeqCst) >= 2
            && flapping.state.health_checks.load(Ordering::SeqCst) >= 1
    })
    .await;

    flapping.state.not_serving.store(true, Ordering::SeqCst);
    let out = "NOT_SERVING takes the endpoint out";
    until_check_failed(proxy.admin, "echo", &flapping_addr, true, out).await;
    let mut client = EchoClient::connect(proxy.addr("grpc")).await;
    let calls = flapping.state.calls.load(Ordering::SeqCst);
    for i in 0..10 {
        let reply = client.unary(&format!("m{i}")).await.unwrap();
        assert_eq!(reply.into_inner().message, format!("m{i}"));
    }
    assert_eq!(flapping.state.calls.load(Ordering::SeqCst), calls);

    flapping.state.not_serving.store(false, Ordering::SeqCst);
    let back = "SERVING again brings it back";
    until_check_failed(proxy.admin, "echo", &flapping_addr, false, back).await;
    for i in 0..10 {
        client.unary(&format!("n{i}")).await.unwrap();
    }
    assert!(flapping.state.calls.load(Ordering::SeqCst) > calls);

    // A service the server does not know answers NOT_FOUND: a failed check.
    let unknown = health(proxy.admin, "unknown-service", &up.addr.to_string()).await;
    assert_eq!(unknown["check_failed"], true, "{unknown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_takes_out_a_closed_port_until_it_listens_again() {
    let a = Upstream::http1("a").await;
    // The port stays bound without listening until the test opens it: a
    // connection to it is refused, and no other test can take the port in
    // the meantime (a freed port went to a parallel test's server once).
    let placeholder =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    placeholder
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let closed = placeholder.local_addr().unwrap().as_socket().unwrap();
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes: [{{name: all, backends: [{{cluster: app}}]}}]
clusters:
  - name: app
    endpoints: ['{}', '{closed}']
    health_check: {{tcp: {{}}, interval: 100ms, timeout: 100ms, jitter: 0s, unhealthy_threshold: 1, healthy_threshold: 1}}
",
        a.addr
    ))
    .await;
    let out = "the closed port fails its check";
    until_check_failed(proxy.admin, "app", &closed.to_string(), true, out).await;
    assert_eq!(
        health(proxy.admin, "app", &a.addr.to_string()).await["check_failed"],
        false
    );
    let client = client::http1();
    for _ in 0..20 {
        let reply = client::get(&client, &proxy.url("web", "/")).await;
        assert_eq!(reply.status, 200, "no request goes to the closed port");
    }

    drop(placeholder);
    let b = Upstream::start("b", Protocol::Http1, Some(closed)).await;
    let mut seen_b = false;
    for _ in 0..100 {
        let reply = client::get(&client, &proxy.url("web", "/")).await;
        if reply.header("x-upstream") == "b" {
            seen_b = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_b, "the port listens again and gets traffic");
    assert!(b.requests() >= 1);
    assert!(proxy.metric(r#"remora_health_check_failures_total{cluster="app"}"#) >= 1.0);
}

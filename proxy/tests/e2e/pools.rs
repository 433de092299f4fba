//! Connection pools and connection lifetimes, upstream and downstream:
//! limits, retirement, idle eviction, warm-up, HTTP/2 connections opened at
//! the stream limit, dead peers found by HTTP/2 PING, and the downstream idle
//! timeout and maximum age.

use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::blackhole::Blackhole;
use crate::support::client;
use crate::support::upstream::{Options, Protocol, Upstream, raw, tcp_echo};
use crate::support::{TestProxy, eventually, within};

async fn proxy_to(upstream: &str, cluster_extra: &str, listener_extra: &str) -> TestProxy {
    TestProxy::start(&format!(
        "
listeners:
  - {{name: web, address: 127.0.0.1:0, routes: [{{name: all, backends: [{{cluster: up}}]}}]{listener_extra}}}
clusters:
  - {{name: up, endpoints: ['{upstream}']{cluster_extra}}}
"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_caps_the_pool_and_extra_requests_wait() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_to(
        &upstream.addr.to_string(),
        ", pool: {max_connections: 2}",
        "",
    )
    .await;
    let url = proxy.url("web", "/slow/100");
    let requests: Vec<_> = (0..10)
        .map(|_| client::spawn_get(client::http1(), url.clone()))
        .collect();
    for reply in within(
        "ten requests through two connections",
        futures_util::future::join_all(requests),
    )
    .await
    {
        assert_eq!(reply.unwrap().unwrap().status, StatusCode::OK);
    }
    assert_eq!(upstream.connections(), 2, "never more than max_connections");
    assert_eq!(upstream.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_retire_after_max_requests_and_close_when_idle() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_to(
        &upstream.addr.to_string(),
        ", pool: {max_requests_per_connection: 3, idle_timeout: 300ms}",
        "",
    )
    .await;
    let client = client::http1();
    for _ in 0..9 {
        assert_eq!(
            client::get(&client, &proxy.url("web", "/")).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(upstream.connections(), 3, "9 requests, 3 per connection");
    eventually("the idle connection is closed after idle_timeout", || {
        upstream.open() == 0
    })
    .await;
    assert_eq!(
        proxy.metric(r#"remora_upstream_connections_active{cluster="up"}"#),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_opens_connections_before_any_request() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_to(&upstream.addr.to_string(), ", pool: {min_idle: 3}", "").await;
    eventually("three warm connections", || upstream.open() == 3).await;
    let client = client::http1();
    for _ in 0..3 {
        assert_eq!(
            client::get(&client, &proxy.url("web", "/")).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        upstream.connections(),
        3,
        "requests use the warm connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_opens_another_connection_when_streams_run_out() {
    let upstream = Upstream::with(
        "h2",
        Protocol::Http2,
        None,
        Options {
            max_concurrent_streams: Some(2),
            ..Options::default()
        },
    )
    .await;
    let proxy = proxy_to(&upstream.addr.to_string(), ", protocol: http2", "").await;
    // Warm one connection so the proxy has seen the upstream's SETTINGS.
    assert_eq!(
        client::get(&client::http1(), &proxy.url("web", "/"))
            .await
            .status,
        StatusCode::OK
    );
    let url = proxy.url("web", "/slow/300");
    let requests: Vec<_> = (0..6)
        .map(|_| client::spawn_get(client::http1(), url.clone()))
        .collect();
    for reply in within(
        "six concurrent streams",
        futures_util::future::join_all(requests),
    )
    .await
    {
        assert_eq!(reply.unwrap().unwrap().status, StatusCode::OK);
    }
    assert_eq!(upstream.connections(), 3, "6 streams at 2 per connection");
    let (_, clusters) =
        crate::support::process::admin_request(proxy.admin, "GET", "/clusters").await;
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    assert_eq!(clusters[0]["endpoints"][0]["pool"]["http2_connections"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_ping_finds_a_dead_upstream_and_the_next_request_reconnects() {
    let upstream = Upstream::http2("h2").await;
    let blackhole = Blackhole::start(upstream.addr).await;
    let proxy = proxy_to(
        &blackhole.addr.to_string(),
        ", protocol: http2, keepalive: {http2: {interval: 200ms, timeout: 300ms}}",
        "",
    )
    .await;
    let client = client::http1();
    assert_eq!(
        client::get(&client, &proxy.url("web", "/")).await.status,
        StatusCode::OK
    );

    blackhole.pause(true);
    let started = Instant::now();
    let reply = within(
        "the request fails instead of hanging",
        client::get(&client, &proxy.url("web", "/")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    eprintln!("dead upstream detected after {:?}", started.elapsed());

    blackhole.pause(false);
    assert_eq!(
        client::get(&client, &proxy.url("web", "/")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        upstream.connections(),
        2,
        "the dead connection was replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_ping_finds_a_dead_client() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_to(
        &upstream.addr.to_string(),
        "",
        ", keepalive: {http2: {interval: 200ms, timeout: 300ms}}",
    )
    .await;
    let blackhole = Blackhole::start(proxy.addr("web")).await;
    let client = client::http2();
    assert_eq!(
        client::get(&client, &format!("http://{}/", blackhole.addr))
            .await
            .status,
        StatusCode::OK
    );
    let gauge = r#"remora_downstream_connections_active{listener="web"}"#;
    assert_eq!(proxy.metric(gauge), 1.0);
    blackhole.pause(true);
    eventually(
        "the proxy drops the client that stopped answering PINGs",
        || proxy.metric(gauge) == 0.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_downstream_connections_are_closed() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_to(&upstream.addr.to_string(), "", ", idle_timeout: 300ms").await;
    let mut stream = raw(proxy.addr("web")).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = stream.read(&mut buffer).await.unwrap();
    assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    let mut rest = Vec::new();
    within(
        "the idle connection is closed",
        stream.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed by the idle timeout, not at once"
    );

    // A slow request keeps its connection: idleness counts only between requests.
    let client = client::http1();
    assert_eq!(
        client::get(&client, &proxy.url("web", "/slow/600"))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_connections_are_closed_gracefully_after_their_last_request() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_to(
        &upstream.addr.to_string(),
        "",
        ", max_connection_age: 300ms",
    )
    .await;
    for client in [client::http1(), client::http2()] {
        let started = Instant::now();
        let reply = client::get(&client, &proxy.url("web", "/slow/600")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "the in-flight request finishes"
        );
        assert!(started.elapsed() >= Duration::from_millis(600));
        let gauge = r#"remora_downstream_connections_active{listener="web"}"#;
        eventually("the aged connection closes", || proxy.metric(gauge) == 0.0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_are_closed() {
    let (echo, _task) = tcp_echo().await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - {{name: db, address: 127.0.0.1:0, protocol: tcp, cluster: echo, idle_timeout: 300ms}}
clusters:
  - {{name: echo, endpoints: ['{echo}'], keepalive: {{tcp: {{time: 30s, interval: 5s, probes: 3}}}}}}
"
    ))
    .await;
    let mut stream = raw(proxy.addr("db")).await;
    // Traffic keeps it open past the timeout…
    for _ in 0..4 {
        stream.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // …and silence closes it.
    let mut rest = Vec::new();
    within(
        "the idle TCP connection is closed",
        stream.read_to_end(&mut rest),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_reach_the_client() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_to(
        &upstream.addr.to_string(),
        "",
        ", http2: {max_concurrent_streams: 7}",
    )
    .await;
    let stream = raw(proxy.addr("web")).await;
    let (mut sender, mut conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let request = http::Request::get(proxy.url("web", "/"))
        .body(client::empty())
        .unwrap();
    let response = async {
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    };
    // Drive the connection until the response is in; by then the proxy's SETTINGS are too.
    tokio::select! {
        () = response => {}
        _ = &mut conn => panic!("connection ended"),
    }
    assert_eq!(
        conn.current_max_send_streams(),
        7,
        "the listener advertises its max_concurrent_streams"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_list_change_keeps_the_connections_of_the_endpoints_that_stay() {
    let one = Upstream::http1("one").await;
    let two = Upstream::http1("two").await;
    let yaml = |endpoints: String| {
        format!(
            "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes: [{{name: all, backends: [{{cluster: app}}]}}]
clusters:
  - {{name: app, endpoints: [{endpoints}], load_balancer: {{policy: round_robin}}}}
"
        )
    };
    let proxy = TestProxy::start(&yaml(format!("'{}'", one.addr))).await;
    let client = client::http1();
    let url = proxy.url("web", "/");
    for _ in 0..5 {
        assert_eq!(client::get(&client, &url).await.body, "one");
    }
    assert_eq!(one.connections(), 1);

    // As an xDS endpoint update or an edited file does: only the list changes.
    let config =
        remora_proxy::config::parse_yaml(&yaml(format!("'{}', '{}'", one.addr, two.addr))).unwrap();
    proxy.proxy.reload(config).unwrap();
    let mut bodies = Vec::new();
    for _ in 0..10 {
        bodies.push(client::get(&client, &url).await.body);
    }
    assert!(
        bodies.iter().any(|b| b == "one") && bodies.iter().any(|b| b == "two"),
        "{bodies:?}"
    );
    assert_eq!(
        one.connections(),
        1,
        "the endpoint that stayed kept its pooled connection"
    );

    // And back to the list the cluster was first built with.
    let config = remora_proxy::config::parse_yaml(&yaml(format!("'{}'", one.addr))).unwrap();
    proxy.proxy.reload(config).unwrap();
    for _ in 0..5 {
        assert_eq!(client::get(&client, &url).await.body, "one");
    }
    assert_eq!(one.connections(), 1);
}

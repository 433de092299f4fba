//! Bad input and failing upstreams get clear answers and never crash the
//! proxy: 431, 400, slow clients cut, 503/502/504 naming what failed.

use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::client;
use crate::support::upstream::{Upstream, raw};
use crate::support::{TestProxy, within};

async fn proxy_for(upstream: &str, extra: &str) -> TestProxy {
    TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    request_headers_timeout: 300ms
    max_request_headers_kb: 8
    routes:
      - {{name: quick, match: {{path_prefix: /quick}}, timeout: 200ms, backends: [{{cluster: up}}]}}
      - {{name: gated, match: {{path: /gated}}, timeout: 300ms, backends: [{{cluster: up}}]}}
      - {{name: dead, match: {{path_prefix: /dead}}, backends: [{{cluster: dead}}]}}
      - {{name: all, backends: [{{cluster: up}}]}}
clusters:
  - {{name: up, endpoints: ['{upstream}']{extra}}}
  - {{name: dead, endpoints: ['127.0.0.1:1']}}
"
    ))
    .await
}

/// Sends raw bytes and reads until the proxy closes the connection.
async fn exchange_raw(proxy: &TestProxy, bytes: &[u8]) -> String {
    let mut stream = raw(proxy.addr("web")).await;
    stream.write_all(bytes).await.unwrap();
    let mut response = Vec::new();
    within(
        "the proxy closes the connection",
        stream.read_to_end(&mut response),
    )
    .await
    .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_for(&upstream.addr.to_string(), "").await;
    let big = "a".repeat(9 * 1024);
    let response = exchange_raw(
        &proxy,
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_a_closed_connection() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_for(&upstream.addr.to_string(), "").await;
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        b"GET / HTTP/1.1\r\ncontent-length: x\r\n\r\n",
    ] {
        let response = exchange_raw(&proxy, garbage).await;
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "{:?} → {response}",
            String::from_utf8_lossy(garbage)
        );
    }
    assert_eq!(upstream.hits(), 0);
    // The proxy still serves.
    assert_eq!(
        client::get(&client::http1(), &proxy.url("web", "/"))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_for(&upstream.addr.to_string(), "").await;
    for partial in [
        &b""[..],
        b"GET / HTTP/1.1\r\nhost: x\r\n",
        b"PRI * HTTP/2.0\r\n",
    ] {
        let mut stream = raw(proxy.addr("web")).await;
        stream.write_all(partial).await.unwrap();
        let mut buffer = Vec::new();
        within(
            "the proxy cuts a stalled client",
            stream.read_to_end(&mut buffer),
        )
        .await
        .unwrap();
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_not_cut_by_the_headers_timeout() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_for(&upstream.addr.to_string(), "").await;
    let mut stream = raw(proxy.addr("web")).await;
    let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut buffer = vec![0u8; 4096];
    for _ in 0..2 {
        stream.write_all(request).await.unwrap();
        let n = within("response", stream.read(&mut buffer)).await.unwrap();
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
        // Idle for longer than request_headers_timeout (300ms) between requests.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_gets_503_naming_the_cluster() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_for(&upstream.addr.to_string(), "").await;
    for client in [client::http1(), client::http2()] {
        let reply = client::get(&client, &proxy.url("web", "/dead")).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            reply.body.starts_with(
                "upstream connect error: cluster \"dead\" endpoint 127.0.0.1:1: Connection refused"
            ),
            "{}",
            reply.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gets_504_naming_the_timeout() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_for(&upstream.addr.to_string(), "").await;
    let reply = client::get(&client::http1(), &proxy.url("web", "/quick/slow/3000")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        reply
            .body
            .starts_with("upstream timeout: route \"quick\" timeout of 200ms expired"),
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_also_bounds_a_streaming_body() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy_for(&upstream.addr.to_string(), "").await;
    let request = http::Request::get(proxy.url("web", "/gated"))
        .body(client::empty())
        .unwrap();
    // The upstream sends one chunk and then waits forever for its gate.
    let response = client::http1().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body());
    assert!(
        within("the body is cut at the deadline", body)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_hangs_up_gets_502() {
    // Reads the request, then closes without answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer).await;
        }
    });
    let proxy = proxy_for(&addr.to_string(), "").await;
    let reply = client::get(&client::http1(), &proxy.url("web", "/")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply
            .body
            .starts_with(&format!("upstream error: cluster \"up\" endpoint {addr}:")),
        "{}",
        reply.body
    );
}

//! Hostile HTTP/1.1 clients and upstreams, on raw bytes: the request's
//! authority is one thing everywhere (routing, what the upstream sees),
//! hop-by-hop headers never cross, and an upstream response framed two ways
//! reaches the client whole. Each case checks the status, whether the
//! connection closes, and exactly what the upstream received.

use std::time::Duration;

use crate::support::TestProxy;
use crate::support::raw::{RawUpstream, exchange};

const WAIT: Duration = Duration::from_secs(2);

async fn two_hosts() -> (RawUpstream, RawUpstream, TestProxy) {
    let public = RawUpstream::start().await;
    let admin = RawUpstream::start().await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {{name: public, match: {{host: public.example}}, backends: [{{cluster: public}}]}}
      - {{name: admin, match: {{host: admin.example}}, backends: [{{cluster: admin}}]}}
clusters:
  - {{name: public, endpoints: ['{}']}}
  - {{name: admin, endpoints: ['{}']}}
",
        public.addr, admin.addr
    ))
    .await;
    (public, admin, proxy)
}

#[tokio::test]
async fn an_absolute_form_target_decides_the_route_and_replaces_host() {
    let (public, admin, proxy) = two_hosts().await;
    let reply = exchange(
        proxy.addr("web"),
        b"GET http://public.example/p HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let received = public.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].request_line(), "GET /p HTTP/1.1");
    assert_eq!(received[0].header("host"), ["public.example"]);
    assert!(
        admin.received().is_empty(),
        "the Host header must not route"
    );
}

#[tokio::test]
async fn two_host_headers_or_none_are_refused_and_reach_no_upstream() {
    let (public, admin, proxy) = two_hosts().await;
    for request in [
        &b"GET /p HTTP/1.1\r\nHost: public.example\r\nHost: admin.example\r\n\r\n"[..],
        b"GET /p HTTP/1.1\r\nHost: admin.example\r\nHost: public.example\r\n\r\n",
        b"GET /p HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /p HTTP/1.1\r\nHost: public.example/../admin\r\nConnection: close\r\n\r\n",
        b"GET http://user@public.example/p HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n",
    ] {
        let reply = exchange(proxy.addr("web"), request, WAIT).await;
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "{}\n=> {reply}",
            String::from_utf8_lossy(request)
        );
        assert!(reply.contains("bad request: "), "{reply}");
    }
    assert!(public.received().is_empty() && admin.received().is_empty());
    // HTTP/1.0 may leave Host out.
    let reply = exchange(proxy.addr("web"), b"GET /p HTTP/1.0\r\n\r\n", WAIT).await;
    assert!(reply.contains(" 404 "), "no host matches: {reply}");
}

#[tokio::test]
async fn headers_named_by_any_connection_line_never_reach_the_upstream() {
    let (public, _admin, proxy) = two_hosts().await;
    let reply = exchange(
        proxy.addr("web"),
        b"GET /p HTTP/1.1\r\nHost: public.example\r\nConnection: x-one\r\n\
          Connection: X-Two ,\tx-three\r\nConnection: close\r\nx-one: 1\r\nx-two: 2\r\n\
          x-three: 3\r\nkeep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nx-end: 4\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let received = &public.received()[0];
    for hop in [
        "x-one",
        "x-two",
        "x-three",
        "keep-alive",
        "proxy-connection",
        "connection",
    ] {
        assert!(
            received.header(hop).is_empty(),
            "{hop} crossed: {}",
            received.head
        );
    }
    assert_eq!(received.header("x-end"), ["4"]);
}

#[tokio::test]
async fn hop_by_hop_headers_in_a_response_do_not_reach_the_client() {
    let upstream = RawUpstream::answering(
        b"HTTP/1.1 200 OK\r\nconnection: x-secret\r\nconnection: x-other\r\nx-secret: 1\r\n\
          x-other: 2\r\nx-end: 3\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let proxy = TestProxy::forwarding_to(upstream.addr).await;
    let reply = exchange(
        proxy.addr("web"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    let lower = reply.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{reply}");
    assert!(
        !lower.contains("x-secret") && !lower.contains("x-other"),
        "{reply}"
    );
    assert!(lower.contains("x-end: 3"), "{reply}");
}

#[tokio::test]
async fn an_upstream_response_with_transfer_encoding_and_content_length_arrives_whole() {
    let upstream = RawUpstream::answering(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
          b\r\nhello world\r\n0\r\n\r\n",
    )
    .await;
    let proxy = TestProxy::forwarding_to(upstream.addr).await;
    let reply = exchange(
        proxy.addr("web"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    let lower = reply.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{reply}");
    assert!(
        !lower.contains("content-length: 3"),
        "the overridden length must not be passed on: {reply}"
    );
    assert!(reply.contains("hello world"), "the whole body: {reply}");
}

/// A client's broken request body is the client's fault: answered 400 (or
/// nothing, if it went away), never retried, never counted against the
/// endpoint. Before, three of these ejected a healthy endpoint.
#[tokio::test]
async fn a_client_with_a_broken_body_cannot_eject_a_healthy_endpoint() {
    let upstream = crate::support::upstream::Upstream::http1("up").await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {{name: all, backends: [{{cluster: up}}], retry: {{attempts: 2, on: [5xx, reset]}}}}
clusters:
  - name: up
    endpoints: ['{}']
    outlier_detection: {{consecutive_5xx: 2, consecutive_local_origin_failure: 2, interval: 10s, max_ejection_percent: 100}}
",
        upstream.addr
    ))
    .await;
    let web = proxy.addr("web");
    // `/collect` reads the whole body before it answers, so every answer
    // the client sees is the proxy's own. (An upstream that answers early,
    // before the body ends, is relayed, as Envoy relays it.)
    let broken: [&[u8]; 3] = [
        b"POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\nzz\r\n",
        b"POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\nabcd\r\n0\r\n\r\n",
        b"POST /collect HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b",
    ];
    for _ in 0..3 {
        for request in broken {
            // The third one closes its side right after the partial body.
            let mut stream = tokio::net::TcpStream::connect(web).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(request).await.unwrap();
            stream.shutdown().await.unwrap();
            let mut reply = Vec::new();
            let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut reply)).await;
            let reply = String::from_utf8_lossy(&reply);
            assert!(
                reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
                "{}\n=> {reply}",
                String::from_utf8_lossy(request)
            );
        }
    }
    let ejected = r#"remora_endpoints_ejected{cluster="up"}"#;
    assert_eq!(
        proxy.metric(ejected),
        0.0,
        "no endpoint ejected by a client"
    );
    let retries = r#"remora_upstream_retries_total{cluster="up",reason="reset"}"#;
    assert_eq!(
        proxy.metric(retries),
        0.0,
        "a client's fault is not retried"
    );
    let (_, clusters) =
        crate::support::process::admin_request(proxy.admin, "GET", "/clusters").await;
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let up = clusters[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == upstream.addr.to_string())
        .unwrap()
        .clone();
    assert_eq!(up["health"]["ejected"], false, "{up}");
}

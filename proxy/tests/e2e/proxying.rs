//! HTTP/1.1 and h2c through the proxy: protocol translation both ways,
//! streaming in both directions, large bodies, trailers, connection reuse.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

use crate::support::client::{self, BoxError};
use crate::support::upstream::Upstream;
use crate::support::{TestProxy, within};

async fn three_upstreams() -> (Upstream, Upstream, Upstream, TestProxy) {
    let one = Upstream::http1("one").await;
    let two = Upstream::http2("two").await;
    let three = Upstream::auto("three").await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {{name: one, match: {{path_prefix: /one}}, backends: [{{cluster: one}}]}}
      - {{name: two, match: {{path_prefix: /two}}, backends: [{{cluster: two}}]}}
      - {{name: three, match: {{path_prefix: /three}}, backends: [{{cluster: three}}]}}
clusters:
  - {{name: one, endpoints: ['{}'], protocol: http1}}
  - {{name: two, endpoints: ['{}'], protocol: http2}}
  - {{name: three, endpoints: ['{}'], protocol: same_as_downstream}}
",
        one.addr, two.addr, three.addr
    ))
    .await;
    (one, two, three, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_clients_reach_every_upstream_protocol() {
    let (_one, _two, _three, proxy) = three_upstreams().await;
    for (client, client_version) in [
        (client::http1(), Version::HTTP_11),
        (client::http2(), Version::HTTP_2),
    ] {
        for (path, upstream, upstream_version) in [
            ("/one", "one", "HTTP/1.1"),
            ("/two", "two", "HTTP/2.0"),
            (
                "/three",
                "three",
                if client_version == Version::HTTP_2 {
                    "HTTP/2.0"
                } else {
                    "HTTP/1.1"
                },
            ),
        ] {
            let reply = client::get(&client, &proxy.url("web", &format!("{path}/x?q=1"))).await;
            assert_eq!(reply.status, StatusCode::OK, "{client_version:?} {path}");
            assert_eq!(reply.version, client_version);
            assert_eq!(reply.body, upstream);
            assert_eq!(
                reply.header("x-seen-version"),
                upstream_version,
                "{client_version:?} {path}"
            );
            assert_eq!(reply.header("x-seen-path"), format!("{path}/x?q=1"));
            assert_eq!(
                reply.header("x-seen-host"),
                proxy.addr("web").to_string(),
                "the client's authority is kept"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_stream_without_waiting_for_their_end() {
    let (one, two, _three, proxy) = three_upstreams().await;
    for client in [client::http1(), client::http2()] {
        for (path, upstream) in [("/one/gated", &one), ("/two/gated", &two)] {
            let request = Request::get(proxy.url("web", path))
                .body(client::empty())
                .unwrap();
            let response = within("response headers", client.request(request))
                .await
                .unwrap();
            let mut body = response.into_body();
            let first = within(
                "the first chunk, before the upstream finished",
                body.frame(),
            )
            .await;
            assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "first;");
            upstream.open_gate();
            let rest = within("the rest", body.collect()).await.unwrap().to_bytes();
            assert_eq!(rest, "second");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_without_waiting_for_their_end() {
    let (_one, _two, _three, proxy) = three_upstreams().await;
    for client in [client::http1(), client::http2()] {
        for path in ["/one/first-chunk", "/two/first-chunk"] {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (f, rx))
            });
            let request = Request::post(proxy.url("web", path))
                .body(StreamBody::new(stream).boxed())
                .unwrap();
            tx.send(Ok(Frame::data(Bytes::from_static(b"hello"))))
                .await
                .unwrap();
            // The upstream answers after the first chunk; the client has not finished sending.
            let response = within(
                "a response before the request body ended",
                client.request(request),
            )
            .await
            .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let mut body = response.into_body();
            let first = within("the echoed first chunk", body.frame())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(first.into_data().unwrap(), "hello");
            tx.send(Ok(Frame::data(Bytes::from_static(b" world"))))
                .await
                .unwrap();
            drop(tx);
            within("the end of the response", body.collect())
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_arrive_intact_both_ways() {
    let (_one, _two, _three, proxy) = three_upstreams().await;
    let payload: Bytes = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for client in [client::http1(), client::http2()] {
        for path in ["/one/echo", "/two/echo", "/three/echo"] {
            let request = Request::post(proxy.url("web", path))
                .body(client::body(payload.clone()))
                .unwrap();
            let response = within("echo", client.request(request)).await.unwrap();
            let echoed = within("echo body", response.into_body().collect())
                .await
                .unwrap()
                .to_bytes();
            assert!(
                echoed == payload,
                "{path}: {} bytes back, {} sent",
                echoed.len(),
                payload.len()
            );
        }
        let reply = client::get(&client, &proxy.url("web", "/two/bytes/30000000")).await;
        assert_eq!(reply.body.len(), 30_000_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_through_http2() {
    let (_one, _two, _three, proxy) = three_upstreams().await;
    let client = client::http2();
    let request = Request::get(proxy.url("web", "/two/trailers"))
        .body(client::empty())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-trailer"], "yes");
    assert_eq!(collected.to_bytes(), "with trailers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stay_on_their_hop() {
    let (_one, _two, _three, proxy) = three_upstreams().await;
    let client = client::http1();
    let reply = client::get_with(
        &client,
        &proxy.url("web", "/one"),
        &[
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("x-public", "ok"),
            ("te", "gzip"),
        ],
    )
    .await;
    assert_eq!(reply.header("x-echo-public"), "ok");
    assert_eq!(
        reply.header("x-echo-private"),
        "",
        "headers named by Connection are not forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let (one, two, _three, proxy) = three_upstreams().await;
    let client = client::http1();
    for _ in 0..20 {
        assert_eq!(
            client::get(&client, &proxy.url("web", "/one")).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        one.connections(),
        1,
        "sequential HTTP/1.1 requests share one pooled connection"
    );

    let client = client::http1();
    let url = proxy.url("web", "/two/slow/50");
    let requests = (0..20).map(|_| client::spawn_get(client.clone(), url.clone()));
    for reply in futures_util::future::join_all(requests).await {
        assert_eq!(reply.unwrap().unwrap().status, StatusCode::OK);
    }
    assert_eq!(
        two.connections(),
        1,
        "concurrent requests multiplex on one HTTP/2 connection"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    let active = proxy.metric("remora_upstream_connections_active{cluster=\"two\"}");
    assert_eq!(active, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_stream_fails_one_request_and_keeps_the_shared_http2_connection() {
    let (_one, two, _three, proxy) = three_upstreams().await;
    let client = client::http1();
    assert_eq!(
        client::get(&client, &proxy.url("web", "/two/a"))
            .await
            .status,
        StatusCode::OK
    );
    let reset = client::get(&client, &proxy.url("web", "/two/reset")).await;
    assert_eq!(reset.status, StatusCode::BAD_GATEWAY, "{}", reset.body);
    assert!(
        reset.body.starts_with("upstream error: cluster \"two\""),
        "{}",
        reset.body
    );
    assert_eq!(
        client::get(&client, &proxy.url("web", "/two/b"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        two.connections(),
        1,
        "the other streams' connection stays up"
    );
}

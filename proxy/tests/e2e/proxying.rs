//! HTTP/1.1 and h2c through the proxy: protocol translation both ways,
//! streaming in both directions, large bodies, trailers, connection reuse.

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

use crate::support::client::{self, BoxError};
use crate::support::upstream::Upstream;
use crate::support::{TestProxy, eventually, within};

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
    let active = "remora_upstream_connections_active{cluster=\"two\"}";
    eventually("one upstream HTTP/2 connection is counted", || {
        proxy.metric(active) == 1.0
    })
    .await;
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

/// An HTTP/2 upstream built on `h2` itself, to see what hyper's server
/// hides: `/ok` answers 200; any other stream is never answered, and the
/// reason it was reset with is reported with its path. Counts connections.
async fn resetting_h2_upstream() -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<(String, h2::Reason)>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (resets, reported) = mpsc::unbounded_channel();
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let resets = resets.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    let resets = resets.clone();
                    tokio::spawn(async move {
                        let path = request.uri().path().to_string();
                        if path == "/ok" {
                            let response = http::Response::new(());
                            let _ = respond.send_response(response, true);
                            return;
                        }
                        // Keeps the request body open; waits for the reset.
                        let _body = request.into_body();
                        let reason = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
                        if let Ok(reason) = reason {
                            let _ = resets.send((path, reason));
                        }
                    });
                }
            });
        }
    });
    (addr, reported, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_http2_request_resets_its_upstream_stream_and_keeps_the_connection() {
    let (upstream, mut resets, connections) = resetting_h2_upstream().await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {{name: hang, match: {{path_prefix: /hang}}, timeout: 300ms, backends: [{{cluster: up}}]}}
      - {{name: ok, match: {{path: /ok}}, backends: [{{cluster: up}}]}}
clusters:
  - {{name: up, endpoints: ['{upstream}'], protocol: http2}}
"
    ))
    .await;
    let client = client::http1();

    // No request body: the stream's only handle is the response wait.
    let reply = client::get(&client, &proxy.url("web", "/hang/get")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
    let (path, reason) = within("the upstream sees the reset", resets.recv())
        .await
        .unwrap();
    assert_eq!((path.as_str(), reason), ("/hang/get", h2::Reason::CANCEL));

    // A request body still streaming: its pipe must reset the stream too.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let request = Request::post(proxy.url("web", "/hang/body"))
        .body(StreamBody::new(stream).boxed())
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
        .await
        .unwrap();
    let reply = client::send(&client, request).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
    let (path, reason) = within("the upstream sees the reset", resets.recv())
        .await
        .unwrap();
    assert_eq!((path.as_str(), reason), ("/hang/body", h2::Reason::CANCEL));
    drop(tx);

    let reply = client::get(&client, &proxy.url("web", "/ok")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the shared connection outlives its abandoned streams"
    );
}

//! Hostile HTTP/2 clients at the frame and header level.

use http::{Request, StatusCode};

use crate::support::TestProxy;
use crate::support::raw::RawUpstream;

#[tokio::test]
async fn a_host_header_that_differs_from_authority_is_refused() {
    let upstream = RawUpstream::start().await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - {{name: web, address: 127.0.0.1:0, routes: [{{name: all, backends: [{{cluster: up}}]}}]}}
clusters:
  - {{name: up, endpoints: ['{}']}}
",
        upstream.addr
    ))
    .await;
    let stream = tokio::net::TcpStream::connect(proxy.addr("web"))
        .await
        .unwrap();
    let (mut client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let status = |request: Request<()>| {
        let mut client = client.clone();
        async move {
            client = client.ready().await.unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            response.await.unwrap().status()
        }
    };
    let differ = Request::get("http://public.example/p")
        .header("host", "admin.example")
        .body(())
        .unwrap();
    assert_eq!(status(differ).await, StatusCode::BAD_REQUEST);
    let twice = Request::get("http://public.example/p")
        .header("host", "public.example")
        .header("host", "public.example")
        .body(())
        .unwrap();
    assert_eq!(status(twice).await, StatusCode::BAD_REQUEST);
    assert!(upstream.received().is_empty());
    let same = Request::get("http://public.example/p")
        .header("host", "PUBLIC.example")
        .body(())
        .unwrap();
    assert_eq!(status(same).await, StatusCode::OK);
    client = client.ready().await.unwrap();
    drop(client);
    assert_eq!(upstream.received()[0].header("host"), ["public.example"]);
}

/// A client that resets its stream in the middle of the request body is
/// the client's fault: nothing is counted against the endpoint, whether the
/// upstream speaks HTTP/1.1 or HTTP/2.
#[tokio::test]
async fn streams_reset_mid_body_do_not_count_against_the_endpoint() {
    use crate::support::upstream::{Protocol, Upstream};

    for protocol in [Protocol::Http1, Protocol::Http2] {
        let upstream = Upstream::start("up", protocol, None).await;
        let proxy = TestProxy::start(&format!(
            "
listeners:
  - {{name: web, address: 127.0.0.1:0, routes: [{{name: all, backends: [{{cluster: up}}]}}]}}
clusters:
  - name: up
    protocol: {}
    endpoints: ['{}']
    outlier_detection: {{consecutive_5xx: 2, consecutive_local_origin_failure: 2, interval: 10s, max_ejection_percent: 100}}
",
            if protocol == Protocol::Http2 { "http2" } else { "http1" },
            upstream.addr
        ))
        .await;
        let stream = tokio::net::TcpStream::connect(proxy.addr("web"))
            .await
            .unwrap();
        let (client, connection) = h2::client::handshake(stream).await.unwrap();
        tokio::spawn(connection);
        for _ in 0..5 {
            let mut client = client.clone().ready().await.unwrap();
            let request = Request::post("http://a.example/echo").body(()).unwrap();
            let (response, mut body) = client.send_request(request, false).unwrap();
            body.send_data(bytes::Bytes::from_static(b"part of a body"), false)
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            body.send_reset(h2::Reason::CANCEL);
            let _ = response.await;
        }
        crate::support::eventually("the upstream saw the requests", || upstream.hits() >= 1).await;
        let ejected = r#"remora_endpoints_ejected{cluster="up"}"#;
        assert_eq!(proxy.metric(ejected), 0.0, "{protocol:?}: no ejection");
        let mut client = client.clone().ready().await.unwrap();
        let (response, _) = client
            .send_request(Request::get("http://a.example/").body(()).unwrap(), true)
            .unwrap();
        assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    }
}

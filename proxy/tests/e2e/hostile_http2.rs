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

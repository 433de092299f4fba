//! gRPC through the proxy with a real tonic client and server: all four call
//! kinds, with messages, statuses and trailer metadata intact, and proxy
//! failures reported as gRPC statuses.

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tonic::Code;

use crate::support::grpc::{EchoClient, EchoRequest, start_server};
use crate::support::{TestProxy, within};

async fn grpc_proxy(protocol: &str) -> (TestProxy, crate::support::grpc::GrpcUpstream) {
    let upstream = start_server().await;
    let server = upstream.addr;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: grpc
    address: 127.0.0.1:0
    routes:
      - {{name: dead, match: {{path_prefix: /test.Dead/}}, backends: [{{cluster: dead}}]}}
      - {{name: echo, match: {{path_prefix: /test.Echo/}}, backends: [{{cluster: echo}}]}}
clusters:
  - {{name: echo, endpoints: ['{server}'], protocol: {protocol}}}
  - {{name: dead, endpoints: ['127.0.0.1:1'], protocol: http2}}
"
    ))
    .await;
    (proxy, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_keep_messages_statuses_and_trailers() {
    for protocol in ["http2", "same_as_downstream"] {
        let (proxy, _server) = grpc_proxy(protocol).await;
        let mut client = EchoClient::connect(proxy.addr("grpc")).await;
        let reply = client.unary("hello").await.unwrap();
        assert_eq!(reply.into_inner().message, "hello");

        let status = client.unary("fail").await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "bad input");
        assert_eq!(
            status.metadata().get("x-detail").unwrap(),
            "bad-input",
            "trailer metadata survives"
        );
        // The golden metrics count a gRPC error as a failure, though its
        // HTTP status is 200.
        let series = |classification: &str| {
            format!(
                "remora_responses_total{{listener=\"grpc\",route=\"echo\",cluster=\"echo\",classification=\"{classification}\"}}"
            )
        };
        crate::support::eventually("both calls classified", || {
            proxy.metric(&series("success")) == 1.0 && proxy.metric(&series("failure")) == 1.0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_delivers_every_message_then_the_status() {
    let (proxy, _server) = grpc_proxy("http2").await;
    let mut client = EchoClient::connect(proxy.addr("grpc")).await;
    let stream = client.server_stream("m", 100).await.unwrap();
    let messages: Vec<String> = stream.map(|r| r.unwrap().message).collect().await;
    assert_eq!(messages.len(), 100);
    assert_eq!(messages[99], "m-99");

    let mut stream = client.server_stream("fail", 3).await.unwrap();
    for i in 0..3 {
        assert_eq!(
            stream.message().await.unwrap().unwrap().message,
            format!("fail-{i}")
        );
    }
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "stopped on purpose");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_streaming_delivers_every_message() {
    let (proxy, _server) = grpc_proxy("http2").await;
    let mut client = EchoClient::connect(proxy.addr("grpc")).await;
    let messages: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
    let reply = client.client_stream(messages.clone()).await.unwrap();
    assert_eq!(reply.message, messages.join(","));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_streams_interleave_message_by_message() {
    let (proxy, _server) = grpc_proxy("http2").await;
    let mut client = EchoClient::connect(proxy.addr("grpc")).await;
    let (tx, rx) = mpsc::channel(1);
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    tx.send(EchoRequest {
        message: "ping-0".into(),
        count: 0,
    })
    .await
    .unwrap();
    let mut inbound = within("bidi call", client.bidi(outbound)).await.unwrap();
    // Each reply must arrive before the next message is sent: nothing is buffered.
    for i in 0..10 {
        let reply = within("an echo", inbound.message()).await.unwrap().unwrap();
        assert_eq!(reply.message, format!("echo:ping-{i}"));
        tx.send(EchoRequest {
            message: format!("ping-{}", i + 1),
            count: 0,
        })
        .await
        .unwrap();
    }
    assert_eq!(
        within("last echo", inbound.message())
            .await
            .unwrap()
            .unwrap()
            .message,
        "echo:ping-10"
    );
    drop(tx);
    assert!(
        within("end of stream", inbound.message())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_failures_reach_grpc_clients_as_statuses() {
    let (proxy, _server) = grpc_proxy("http2").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.addr("grpc")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<EchoRequest, EchoRequest>::default();
    let request = tonic::Request::new(EchoRequest {
        message: "x".into(),
        count: 0,
    });
    let path = http::uri::PathAndQuery::from_static("/test.Dead/Call");
    let status = grpc.unary(request, path, codec).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("cluster \"dead\""),
        "{}",
        status.message()
    );

    let mut grpc2 = tonic::client::Grpc::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.addr("grpc")))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    grpc2.ready().await.unwrap();
    let request = tonic::Request::new(EchoRequest {
        message: "x".into(),
        count: 0,
    });
    let path = http::uri::PathAndQuery::from_static("/other.Service/Call");
    let status = grpc2
        .unary(
            request,
            path,
            tonic_prost::ProstCodec::<EchoRequest, EchoRequest>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unimplemented,
        "no route maps to UNIMPLEMENTED"
    );
}

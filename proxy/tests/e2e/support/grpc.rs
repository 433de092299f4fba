//! A gRPC echo service on tonic (messages by prost derive; the service is
//! wired by hand as generated code would be), covering all four call kinds.
//!
//! `test.Echo/Unary`: replies with the message; the message `fail` gets
//! `INVALID_ARGUMENT` with trailer metadata `x-detail: bad-input`.
//! `test.Echo/ServerStream`: replies `count` times, then ends with OK, or with
//! `ABORTED` when the message is `fail`. `test.Echo/ClientStream`: joins
//! every message. `test.Echo/Bidi`: echoes each message as it arrives.

use std::net::SocketAddr;
use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError, http};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[derive(Clone)]
pub struct EchoServer;

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "test.Echo";
}

struct Unary;
impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;
    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let message = request.into_inner().message;
            if message == "fail" {
                let mut status = Status::invalid_argument("bad input");
                status
                    .metadata_mut()
                    .insert("x-detail", MetadataValue::from_static("bad-input"));
                return Err(status);
            }
            Ok(Response::new(EchoReply { message }))
        })
    }
}

struct ServerStream;
impl tonic::server::ServerStreamingService<EchoRequest> for ServerStream {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Response<ReplyStream>, Status>;
    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let request = request.into_inner();
            let fail = request.message == "fail";
            let replies = (0..request.count).map(move |i| {
                Ok(EchoReply {
                    message: format!("{}-{i}", request.message),
                })
            });
            let end = fail.then(|| Err(Status::aborted("stopped on purpose")));
            let stream: ReplyStream = Box::pin(futures_util::stream::iter(replies.chain(end)));
            Ok(Response::new(stream))
        })
    }
}

struct ClientStream;
impl tonic::server::ClientStreamingService<EchoRequest> for ClientStream {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;
    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = request.into_inner();
            let mut parts = Vec::new();
            while let Some(message) = stream.message().await? {
                parts.push(message.message);
            }
            Ok(Response::new(EchoReply {
                message: parts.join(","),
            }))
        })
    }
}

struct Bidi;
impl tonic::server::StreamingService<EchoRequest> for Bidi {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Response<ReplyStream>, Status>;
    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        Box::pin(async move {
            let stream = request.into_inner();
            let replies: ReplyStream = Box::pin(stream.map(|m| {
                m.map(|m| EchoReply {
                    message: format!("echo:{}", m.message),
                })
            }));
            Ok(Response::new(replies))
        })
    }
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let codec = ProstCodec::<EchoReply, EchoRequest>::default();
        let mut grpc = tonic::server::Grpc::new(codec);
        match request.uri().path() {
            "/test.Echo/Unary" => Box::pin(async move { Ok(grpc.unary(Unary, request).await) }),
            "/test.Echo/ServerStream" => {
                Box::pin(async move { Ok(grpc.server_streaming(ServerStream, request).await) })
            }
            "/test.Echo/ClientStream" => {
                Box::pin(async move { Ok(grpc.client_streaming(ClientStream, request).await) })
            }
            "/test.Echo/Bidi" => Box::pin(async move { Ok(grpc.streaming(Bidi, request).await) }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// Starts the echo service on an ephemeral port.
pub async fn start_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(EchoServer)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    (addr, task)
}

/// A tonic client for the echo service at `addr`.
pub struct EchoClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EchoClient {
    pub async fn connect(addr: SocketAddr) -> EchoClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        EchoClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    fn codec() -> ProstCodec<EchoRequest, EchoReply> {
        ProstCodec::default()
    }

    pub async fn unary(&mut self, message: &str) -> Result<Response<EchoReply>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let request = Request::new(EchoRequest {
            message: message.into(),
            count: 0,
        });
        self.grpc
            .unary(
                request,
                PathAndQuery::from_static("/test.Echo/Unary"),
                Self::codec(),
            )
            .await
    }

    pub async fn server_stream(
        &mut self,
        message: &str,
        count: u32,
    ) -> Result<Streaming<EchoReply>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let request = Request::new(EchoRequest {
            message: message.into(),
            count,
        });
        let response = self
            .grpc
            .server_streaming(
                request,
                PathAndQuery::from_static("/test.Echo/ServerStream"),
                Self::codec(),
            )
            .await?;
        Ok(response.into_inner())
    }

    pub async fn client_stream(&mut self, messages: Vec<String>) -> Result<EchoReply, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let stream = futures_util::stream::iter(
            messages
                .into_iter()
                .map(|message| EchoRequest { message, count: 0 }),
        );
        let response = self
            .grpc
            .client_streaming(
                Request::new(stream),
                PathAndQuery::from_static("/test.Echo/ClientStream"),
                Self::codec(),
            )
            .await?;
        Ok(response.into_inner())
    }

    pub async fn bidi(
        &mut self,
        outbound: impl Stream<Item = EchoRequest> + Send + 'static,
    ) -> Result<Streaming<EchoReply>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let response = self
            .grpc
            .streaming(
                Request::new(outbound),
                PathAndQuery::from_static("/test.Echo/Bidi"),
                Self::codec(),
            )
            .await?;
        Ok(response.into_inner())
    }
}

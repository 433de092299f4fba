//! A gRPC echo service on tonic (messages by prost derive; the service is
//! wired by hand as generated code would be), covering all four call kinds.
//!
//! `test.Echo/Unary`: replies with the message; the message `fail` gets
//! `INVALID_ARGUMENT` with trailer metadata `x-detail: bad-input`; `slow`
//! answers after a second; while the server is set `unavailable`, every
//! call gets `UNAVAILABLE`. Replies carry `x-seen-grpc-timeout` with the
//! request's `grpc-timeout`. `grpc.health.v1.Health/Check` answers SERVING
//! or NOT_SERVING as set.
//! `test.Echo/ServerStream`: replies `count` times, then ends with OK, or with
//! `ABORTED` when the message is `fail`. `test.Echo/ClientStream`: joins
//! every message. `test.Echo/Bidi`: echoes each message as it arrives.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// What a test can change and see of a running server.
#[derive(Default)]
pub struct ServerState {
    pub unavailable: AtomicBool,
    pub not_serving: AtomicBool,
    pub calls: AtomicUsize,
    /// `grpc.health.v1.Health/Check` calls answered.
    pub health_checks: AtomicUsize,
}

#[derive(Clone)]
pub struct EchoServer {
    state: Arc<ServerState>,
}

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "test.Echo";
}

/// The same server under the health service's name, which tonic routes on.
#[derive(Clone)]
pub struct HealthServer(EchoServer);

impl tonic::server::NamedService for HealthServer {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl<B> Service<http::Request<B>> for HealthServer
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
        self.0.call(request)
    }
}

struct Unary(Arc<ServerState>);
impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;
    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            state.calls.fetch_add(1, Ordering::SeqCst);
            let seen_timeout = request.metadata().get("grpc-timeout").cloned();
            let message = request.into_inner().message;
            if state.unavailable.load(Ordering::SeqCst) {
                return Err(Status::unavailable("this server is down"));
            }
            if message == "slow" {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            if message == "fail" {
                let mut status = Status::invalid_argument("bad input");
                status
                    .metadata_mut()
                    .insert("x-detail", MetadataValue::from_static("bad-input"));
                return Err(status);
            }
            let mut response = Response::new(EchoReply { message });
            if let Some(timeout) = seen_timeout {
                response
                    .metadata_mut()
                    .insert("x-seen-grpc-timeout", timeout);
            }
            Ok(response)
        })
    }
}

struct Health(Arc<ServerState>);
impl tonic::server::UnaryService<HealthCheckRequest> for Health {
    type Response = HealthCheckResponse;
    type Future = BoxFuture<Response<HealthCheckResponse>, Status>;
    fn call(&mut self, request: Request<HealthCheckRequest>) -> Self::Future {
        self.0.health_checks.fetch_add(1, Ordering::SeqCst);
        // As grpc-go's health server: the whole server ("") and the services
        // it knows; NOT_FOUND for any other name.
        let service = request.into_inner().service;
        if !service.is_empty() && service != "test.Echo" {
            return Box::pin(async move {
                Err(Status::not_found(format!("unknown service {service}")))
            });
        }
        let status = if self.0.not_serving.load(Ordering::SeqCst) {
            2
        } else {
            1
        };
        Box::pin(async move { Ok(Response::new(HealthCheckResponse { status })) })
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
            "/test.Echo/Unary" => {
                let unary = Unary(self.state.clone());
                Box::pin(async move { Ok(grpc.unary(unary, request).await) })
            }
            "/grpc.health.v1.Health/Check" => {
                let health = Health(self.state.clone());
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<
                    HealthCheckResponse,
                    HealthCheckRequest,
                >::default());
                Box::pin(async move { Ok(grpc.unary(health, request).await) })
            }
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

/// A running echo server; stops when dropped.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the echo service on an ephemeral port.
pub async fn start_server() -> GrpcUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener);
    let state = Arc::new(ServerState::default());
    let server = EchoServer {
        state: state.clone(),
    };
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(HealthServer(server.clone()))
            .add_service(server)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    GrpcUpstream { addr, state, task }
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

    /// A unary call with a request built by the caller (metadata, timeout).
    pub async fn unary_request(
        &mut self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
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

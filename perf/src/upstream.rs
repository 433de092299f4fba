//! The test upstream. One port serves HTTP/1.1 and h2c (detected per
//! connection) and gRPC; another, optional, echoes TCP bytes.
//!
//! - HTTP: any method and path gets `200` with a fixed body of
//!   `--body-size` bytes (the request body, if any, is read and dropped).
//! - gRPC (`content-type: application/grpc…`): any method echoes the
//!   request's messages back as they arrive, then `grpc-status: 0`. This
//!   serves unary calls and bidirectional streams alike, without protobuf:
//!   the frames pass through byte for byte.
//! - `--latency` delays every answer; `--failure-rate` answers that share
//!   of requests with `503` (gRPC: `UNAVAILABLE`), evenly spread.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// HTTP/1.1, h2c and gRPC on this address (repeat for several endpoints).
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub listen: Vec<SocketAddr>,
    /// Also echo TCP bytes on this address.
    #[arg(long)]
    pub tcp_echo: Option<SocketAddr>,
    /// Also speak first on this address (repeatable): a server-first
    /// protocol's banner (`220 remora-perf ready`) on accept, then close.
    #[arg(long)]
    pub banner: Vec<SocketAddr>,
    /// Bytes in each HTTP response body.
    #[arg(long, default_value_t = 20)]
    pub body_size: usize,
    /// Added before every answer (e.g. 5ms).
    #[arg(long, value_parser = crate::duration::parse, default_value = "0")]
    pub latency: Duration,
    /// Share of requests answered with 503 / UNAVAILABLE, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// At most this many requests are in `--latency` at once; the rest
    /// queue for a turn (a server with that many workers: latency grows
    /// with concurrency past it). 0: no cap.
    #[arg(long, default_value_t = 0)]
    pub capacity: usize,
}

struct State {
    body: Bytes,
    latency: Duration,
    capacity: Option<tokio::sync::Semaphore>,
    failure_rate: f64,
    served: AtomicU64,
}

impl State {
    /// Fails request n when n × rate crosses a whole number: exactly the
    /// rate, spread evenly, and the same in every run.
    fn should_fail(&self) -> bool {
        if self.failure_rate <= 0.0 {
            return false;
        }
        let n = self.served.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.failure_rate).floor() > (n * self.failure_rate).floor()
    }
}

pub fn run(options: Options) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&options.failure_rate) {
        anyhow::bail!(
            "--failure-rate {} is outside 0.0..=1.0",
            options.failure_rate
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.workers.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(serve(options))
}

async fn serve(options: Options) -> anyhow::Result<()> {
    let state = Arc::new(State {
        body: Bytes::from(vec![b'x'; options.body_size]),
        latency: options.latency,
        capacity: (options.capacity > 0).then(|| tokio::sync::Semaphore::new(options.capacity)),
        failure_rate: options.failure_rate,
        served: AtomicU64::new(0),
    });
    if let Some(address) = options.tcp_echo {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("--tcp-echo {address}"))?;
        eprintln!(
            "remora-perf upstream: TCP echo on {}",
            listener.local_addr()?
        );
        tokio::spawn(tcp_echo(listener));
    }
    for address in &options.banner {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("--banner {address}"))?;
        eprintln!("remora-perf upstream: banner on {}", listener.local_addr()?);
        tokio::spawn(banner(listener));
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(1024);
    let builder = Arc::new(builder);
    let mut servers = tokio::task::JoinSet::new();
    for address in &options.listen {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("--listen {address}"))?;
        eprintln!(
            "remora-perf upstream: HTTP/1.1, h2c and gRPC on {} ({} byte bodies)",
            listener.local_addr()?,
            options.body_size
        );
        servers.spawn(accept_loop(listener, state.clone(), builder.clone()));
    }
    while servers.join_next().await.is_some() {}
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    builder: Arc<auto::Builder<TokioExecutor>>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors: wait rather than spin.
                eprintln!("remora-perf upstream: accept: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (state, builder) = (state.clone(), builder.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(state.clone(), request));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Reply = Either<Full<Bytes>, GrpcEcho>;

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Reply>, Infallible> {
    if !state.latency.is_zero() {
        let _turn = match &state.capacity {
            Some(capacity) => capacity.acquire().await.ok(),
            None => None,
        };
        tokio::time::sleep(state.latency).await;
    }
    let fail = state.should_fail();
    let grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let body = GrpcEcho {
            inner: request.into_body(),
            status: if fail { 14 } else { 0 },
            done: false,
        };
        let mut response = Response::new(Either::Right(body));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        return Ok(response);
    }
    let body = request.into_body();
    if !body.is_end_stream() {
        let _ = body.collect().await;
    }
    let mut response = Response::new(Either::Left(Full::new(state.body.clone())));
    if fail {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

/// Echoes a gRPC request's bytes (its length-prefixed messages) as they
/// arrive, then ends with `grpc-status` in trailers. A failing call echoes
/// nothing.
struct GrpcEcho {
    inner: Incoming,
    status: u8,
    done: bool,
}

impl Body for GrpcEcho {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && self.status == 0
                    {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Some(Err(error)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
                None => {
                    self.done = true;
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from(u16::from(self.status)));
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
        }
    }
}

/// Accepts forever, serving each connection on a task of its own.
async fn each_connection<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream));
    }
}

async fn tcp_echo(listener: TcpListener) {
    each_connection(listener, |mut stream| async move {
        let (mut reader, mut writer) = stream.split();
        let _ = tokio::io::copy(&mut reader, &mut writer).await;
    })
    .await
}

/// The first bytes a banner server sends.
pub const BANNER: &[u8] = b"220 remora-perf ready\r\n";

async fn banner(listener: TcpListener) {
    each_connection(listener, |mut stream| async move {
        use tokio::io::AsyncWriteExt;
        let _ = stream.write_all(BANNER).await;
        let _ = stream.shutdown().await;
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_rate_is_exact_and_evenly_spread() {
        let state = State {
            body: Bytes::new(),
            latency: Duration::ZERO,
            capacity: None,
            failure_rate: 0.25,
            served: AtomicU64::new(0),
        };
        let fails: Vec<bool> = (0..8).map(|_| state.should_fail()).collect();
        assert_eq!(
            fails,
            [false, false, false, true, false, false, false, true]
        );
    }
}

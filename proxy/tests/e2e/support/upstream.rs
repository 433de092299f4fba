//! Upstream servers for tests: an HTTP server (HTTP/1.1, h2c, or both) that
//! reports what it saw, a TCP echo server and a WebSocket echo server.
//!
//! HTTP paths: `/` and anything else answer 200 with the server's name as
//! body; `/echo` streams the request body back; `/collect` reads the whole
//! request body before it answers with it (400 if the body fails); `/slow/MS` answers after MS
//! milliseconds; `/busy/MS` takes one of four workers for MS milliseconds
//! (latency grows with concurrency past four); `/status/CODE` answers CODE; `/bytes/N` sends N bytes in
//! 64 KiB chunks; `/gated` sends one chunk, then waits for [`Upstream::open_gate`]
//! before the second; `/first-chunk` answers with the request body's first
//! chunk before reading the rest; `/trailers` sends a body and trailers;
//! a path ending in `/reset` resets the stream (HTTP/2) or connection.
//! Every response carries `x-upstream`, `x-seen-version`, `x-seen-host`,
//! `x-seen-path`, and `x-echo-NAME` for each request header `x-NAME` (and
//! for the trace headers `traceparent`, `tracestate` and `b3`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

type Body = BoxBody<Bytes, hyper::Error>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Protocol {
    Http1,
    Http2,
    Auto,
}

/// A running upstream; stops (closing every connection) when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

/// How an upstream behaves beyond its protocol.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Added before every answer.
    pub delay: Duration,
    /// HTTP/2: the `SETTINGS_MAX_CONCURRENT_STREAMS` it advertises.
    pub max_concurrent_streams: Option<u32>,
}

struct State {
    name: String,
    options: Options,
    hits: AtomicUsize,
    connections: AtomicUsize,
    open: AtomicUsize,
    gate: Notify,
    /// What `/health` answers: 200 or 503.
    healthy: std::sync::atomic::AtomicBool,
    checks_passed: AtomicUsize,
    checks_failed: AtomicUsize,
    /// `/busy/MS`: four workers, each busy MS per request; requests beyond
    /// four wait their turn, so latency grows with concurrency.
    workers: tokio::sync::Semaphore,
    /// `/busy/MS` requests here now, waiting or worked on.
    busy: AtomicUsize,
    /// How many there were (this one included) when each arrived.
    busy_seen: std::sync::Mutex<Vec<usize>>,
}

impl Upstream {
    pub async fn http1(name: &str) -> Upstream {
        Self::start(name, Protocol::Http1, None).await
    }

    pub async fn http2(name: &str) -> Upstream {
        Self::start(name, Protocol::Http2, None).await
    }

    pub async fn auto(name: &str) -> Upstream {
        Self::start(name, Protocol::Auto, None).await
    }

    /// Starts on a given address (to bring a stopped upstream back).
    pub async fn start(name: &str, protocol: Protocol, addr: Option<SocketAddr>) -> Upstream {
        Self::with(name, protocol, addr, Options::default()).await
    }

    pub async fn with(
        name: &str,
        protocol: Protocol,
        addr: Option<SocketAddr>,
        options: Options,
    ) -> Upstream {
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_string(),
            options,
            hits: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            gate: Notify::new(),
            healthy: std::sync::atomic::AtomicBool::new(true),
            checks_passed: AtomicUsize::new(0),
            checks_failed: AtomicUsize::new(0),
            workers: tokio::sync::Semaphore::new(4),
            busy: AtomicUsize::new(0),
            busy_seen: std::sync::Mutex::new(Vec::new()),
        });

        let task = tokio::spawn(serve(listener, protocol, state.clone()));
        Upstream {
            addr,
            name: name.to_string(),
            state,
            task,
        }
    }

    /// For each `/busy/MS` request since the last call: how many were at
    /// this upstream (it included) when it arrived. Its queue, as the
    /// requests found it.
    pub fn take_busy_seen(&self) -> Vec<usize> {
        std::mem::take(&mut *self.state.busy_seen.lock().unwrap())
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    pub fn open_gate(&self) {
        self.state.gate.notify_one();
    }

    /// Makes `/health` answer 200 (healthy) or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// `/health` requests answered so far: (with 200, with 503).
    pub fn health_checks(&self) -> (usize, usize) {
        (
            self.state.checks_passed.load(Ordering::SeqCst),
            self.state.checks_failed.load(Ordering::SeqCst),
        )
    }

    /// Requests other than `/health`.
    pub fn requests(&self) -> usize {
        let (passed, failed) = self.health_checks();
        self.hits() - passed - failed
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, protocol: Protocol, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        state.open.fetch_add(1, Ordering::SeqCst);
        let state = state.clone();
        connections.spawn(async move {
            let options = state.options;
            let open = OpenGuard(state.clone());
            let service = service_fn(move |request| handle(state.clone(), request));
            let io = TokioIo::new(stream);
            let _ = match protocol {
                Protocol::Http1 => hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .with_upgrades()
                    .await
                    .map_err(|e| e.to_string()),
                Protocol::Http2 => hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(options.max_concurrent_streams)
                    .serve_connection(io, service)
                    .await
                    .map_err(|e| e.to_string()),
                Protocol::Auto => {
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(io, service)
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            drop(open);
        });
        while connections.try_join_next().is_some() {}
    }
}

struct OpenGuard(Arc<State>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if request.uri().path() == "/health" {
        let status = if state.healthy.load(Ordering::SeqCst) {
            state.checks_passed.fetch_add(1, Ordering::SeqCst);
            StatusCode::OK
        } else {
            state.checks_failed.fetch_add(1, Ordering::SeqCst);
            StatusCode::SERVICE_UNAVAILABLE
        };

        let mut response = Response::new(full(String::new()));
        *response.status_mut() = status;
        return Ok(response);
    }
    if !state.options.delay.is_zero() {
        tokio::time::sleep(state.options.delay).await;
    }
    if request.uri().path().ends_with("/reset") {
        // An error from the service: hyper resets the HTTP/2 stream (or closes
        // the HTTP/1.1 connection) without answering.
        return Err(std::io::Error::other("reset on purpose"));
    }
    let path = request.uri().path().to_string();
    let mut seen = HeaderMap::new();
    seen.insert("x-upstream", HeaderValue::from_str(&state.name).unwrap());
    seen.insert(
        "x-seen-version",
        HeaderValue::from_str(&format!("{:?}", request.version())).unwrap(),
    );
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    seen.insert("x-seen-host", HeaderValue::from_str(&host).unwrap());
    seen.insert(
        "x-seen-path",
        HeaderValue::from_str(request.uri().path_and_query().map_or("/", |p| p.as_str())).unwrap(),
    );
    for (name, value) in request.headers() {
        let echoed = match name.as_str() {
            "traceparent" | "tracestate" | "b3" => Some(name.as_str()),
            other => other.strip_prefix("x-"),
        };
        if let Some(rest) = echoed {
            seen.append(
                HeaderName::from_bytes(format!("x-echo-{rest}").as_bytes()).unwrap(),
                value.clone(),
            );
        }
    }
    // Commands may follow a route prefix: `/one/slow/5` runs `slow/5`.
    const COMMANDS: &[&str] = &[
        "echo",
        "collect",
        "slow",
        "busy",
        "status",
        "bytes",
        "gated",
        "first-chunk",
        "trailers",
    ];
    let segments: Vec<&str> = path.split('/').collect();
    let start = segments
        .iter()
        .position(|s| COMMANDS.contains(s))
        .unwrap_or(segments.len());
    let command: Vec<&str> = std::iter::once("")
        .chain(segments[start..].iter().copied())
        .collect();
    let (status, body): (StatusCode, Body) = match command.as_slice() {
        ["", "echo"] => (StatusCode::OK, request.into_body().boxed()),
        ["", "collect"] => match request.into_body().collect().await {
            Ok(body) => (
                StatusCode::OK,
                Full::new(body.to_bytes())
                    .map_err(|never| match never {})
                    .boxed(),
            ),
            Err(_) => (StatusCode::BAD_REQUEST, full(state.name.clone())),
        },
        ["", "slow", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            (StatusCode::OK, full(state.name.clone()))
        }
        ["", "busy", ms] => {
            let here = state.busy.fetch_add(1, Ordering::SeqCst) + 1;
            state.busy_seen.lock().unwrap().push(here);
            let worker = state.workers.acquire().await.unwrap();
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            drop(worker);
            state.busy.fetch_sub(1, Ordering::SeqCst);
            (StatusCode::OK, full(state.name.clone()))
        }
        ["", "status", code] => (
            StatusCode::from_u16(code.parse().unwrap()).unwrap(),
            full(state.name.clone()),
        ),
        ["", "bytes", n] => (StatusCode::OK, bytes_body(n.parse().unwrap())),
        ["", "gated"] => (StatusCode::OK, gated_body(state.clone())),
        ["", "first-chunk"] => {
            let mut body = request.into_body();
            let first = loop {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            break data;
                        }
                    }
                    _ => break Bytes::new(),
                }
            };
            // Keep reading the rest in the background so the client can finish.
            tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
            (
                StatusCode::OK,
                Full::new(first).map_err(|never| match never {}).boxed(),
            )
        }
        ["", "trailers"] => {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-trailer", HeaderValue::from_static("yes"));
            let frames = vec![
                Ok(Frame::data(Bytes::from_static(b"with trailers"))),
                Ok(Frame::trailers(trailers)),
            ];
            (
                StatusCode::OK,
                StreamBody::new(futures_util::stream::iter(frames)).boxed(),
            )
        }
        _ => (StatusCode::OK, full(state.name.clone())),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().extend(seen);
    Ok(response)
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

fn bytes_body(total: usize) -> Body {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let mut left = total;
    let frames = std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(chunk.len());
        left -= n;
        Some(Ok::<_, hyper::Error>(Frame::data(chunk.slice(..n))))
    });
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

fn gated_body(state: Arc<State>) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(1);
    tokio::spawn(async move {
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"first;"))))
            .await;
        state.gate.notified().await;
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"second"))))
            .await;
    });
    StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (f, rx))
    }))
    .boxed()
}

/// Echoes every byte; after the client's half-close it sends `bye` and closes.
pub async fn tcp_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.write_all(b"bye").await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// A WebSocket server that echoes text and binary messages.
pub async fn websocket_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        if ws.send(message).await.is_err() {
                            break;
                        }
                    } else if message.is_close() {
                        break;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Accepts connections, reads whatever comes, and never answers.
pub async fn hanging() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            held.push(tokio::spawn(async move {
                let mut stream = stream;
                let mut sink = vec![0u8; 4096];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                std::future::pending::<()>().await;
            }));
        }
    });
    (addr, task)
}

/// A raw connection for speaking bytes at the proxy.
pub async fn raw(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Reads each request whole (headers and a `content-length` or chunked
/// body), then closes the connection without answering: a failure after the
/// body was sent. Counts the body bytes it read, and the requests.
pub async fn swallowing() -> (
    SocketAddr,
    Arc<(AtomicUsize, AtomicUsize)>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let counts = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let counts = counts.clone();
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                let head_end = loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read.extend_from_slice(&buf[..n]),
                    }
                    if let Some(i) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&read[..head_end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                let chunked = head.contains("transfer-encoding: chunked");
                while read.len() - head_end < length
                    || (chunked && !read[head_end..].ends_with(b"0\r\n\r\n"))
                {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read.extend_from_slice(&buf[..n]),
                    }
                }
                let body_bytes = if chunked {
                    let mut rest = &read[head_end..];
                    let mut total = 0;
                    loop {
                        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
                        let size = usize::from_str_radix(
                            std::str::from_utf8(&rest[..line_end]).unwrap().trim(),
                            16,
                        )
                        .unwrap();
                        if size == 0 {
                            break total;
                        }
                        total += size;
                        rest = &rest[line_end + 2 + size + 2..];
                    }
                } else {
                    length
                };
                counts.0.fetch_add(body_bytes, Ordering::SeqCst);
                counts.1.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen, task)
}

//! Request bodies on their way upstream: streamed once, or kept (up to a
//! limit) so that a retry can send them again, and the stream-idle clock
//! both directions touch. The pools send these; the response side lives in
//! `http/body.rs`.

mod replay;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use replay::ReplayBody;

/// A request body on its way upstream.
#[derive(Debug)]
pub struct RequestBody {
    source: Source,
    /// Counts this stream's activity for `stream_idle_timeout`.
    idle: Option<Arc<StreamIdle>>,
}

#[derive(Debug)]
enum Source {
    /// Streamed once, straight from the client.
    Streaming(Incoming),
    /// Streamed and kept for retries.
    Replay(ReplayBody),
    /// No body (every try may send it).
    Empty,
    /// Read whole before it went upstream (a cached route's POST or gRPC
    /// request, keyed by its digest): every try may send it.
    Buffered {
        data: Option<Bytes>,
        trailers: Option<http::HeaderMap>,
    },
    /// The part read before the body turned out too large to buffer, then
    /// the rest from the client: sent once.
    Prefixed {
        prefix: Option<Bytes>,
        rest: Incoming,
    },
}

impl RequestBody {
    pub fn streaming(inner: Incoming) -> RequestBody {
        RequestBody {
            source: Source::Streaming(inner),
            idle: None,
        }
    }

    /// A body that retries can send again: empty bodies cost nothing, others
    /// are kept up to `limit` bytes.
    pub fn replayable(inner: Incoming, limit: usize) -> RequestBody {
        let source = if inner.is_end_stream() {
            Source::Empty
        } else {
            Source::Replay(ReplayBody::new(inner, limit))
        };
        RequestBody { source, idle: None }
    }

    /// A body read whole (data, then trailers if any): every try may send it.
    pub fn buffered(data: Bytes, trailers: Option<http::HeaderMap>) -> RequestBody {
        let source = if data.is_empty() && trailers.is_none() {
            Source::Empty
        } else {
            Source::Buffered {
                data: (!data.is_empty()).then_some(data),
                trailers,
            }
        };
        RequestBody { source, idle: None }
    }

    /// `prefix`, already read from the client, then the rest of `rest`.
    pub fn prefixed(prefix: Bytes, rest: Incoming) -> RequestBody {
        RequestBody {
            source: Source::Prefixed {
                prefix: (!prefix.is_empty()).then_some(prefix),
                rest,
            },
            idle: None,
        }
    }

    pub fn with_idle(mut self, idle: Option<Arc<StreamIdle>>) -> RequestBody {
        self.idle = idle;
        self
    }

    /// Whether [`replay`](Self::replay) would give a body now.
    pub fn can_replay(&self) -> bool {
        match &self.source {
            Source::Streaming(_) | Source::Prefixed { .. } => false,
            Source::Replay(body) => body.can_replay(),
            Source::Empty | Source::Buffered { .. } => true,
        }
    }

    /// The body for another try, if it can be sent again.
    pub fn replay(&self) -> Option<RequestBody> {
        let source = match &self.source {
            Source::Streaming(_) | Source::Prefixed { .. } => return None,
            Source::Replay(body) => Source::Replay(body.replay()?),
            Source::Empty => Source::Empty,
            Source::Buffered { data, trailers } => Source::Buffered {
                data: data.clone(),
                trailers: trailers.clone(),
            },
        };
        Some(RequestBody {
            source,
            idle: self.idle.clone(),
        })
    }
}

/// The client's request body failed on its way through the proxy: framing
/// that does not parse (a bad chunk size), or a client that went away
/// mid-body. The client's fault, never the upstream's: the pools' senders
/// carry it in their error's source chain, where [`is_client_fault`]
/// finds it.
#[derive(Debug)]
pub struct ClientBodyError(hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client's request body failed: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Whether `error` (anywhere in its source chain) is the client's body
/// failing.
pub(crate) fn is_client_fault(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<ClientBodyError>() {
            return true;
        }
        next = error.source();
    }
    false
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.source {
            Source::Streaming(inner) => Pin::new(inner).poll_frame(cx),
            Source::Replay(inner) => Pin::new(inner).poll_frame(cx),
            Source::Empty => Poll::Ready(None),
            Source::Buffered { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            Source::Prefixed { prefix, rest } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        };
        if let (Poll::Ready(Some(Ok(_))), Some(idle)) = (&polled, &this.idle) {
            idle.touch();
        }
        polled.map(|frame| frame.map(|result| result.map_err(ClientBodyError)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Streaming(inner) => inner.is_end_stream(),
            Source::Replay(inner) => inner.is_end_stream(),
            Source::Empty => true,
            Source::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Source::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Streaming(inner) => inner.size_hint(),
            Source::Replay(inner) => inner.size_hint(),
            Source::Empty => SizeHint::with_exact(0),
            Source::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Source::Prefixed { prefix, rest } => plus(rest.size_hint(), prefix.as_ref()),
        }
    }
}

/// `inner`'s size hint with `prefix`'s bytes in front.
pub(crate) fn plus(inner: SizeHint, prefix: Option<&Bytes>) -> SizeHint {
    let extra = prefix.map_or(0, |p| p.len() as u64);
    let mut hint = SizeHint::new();
    hint.set_lower(inner.lower() + extra);
    if let Some(upper) = inner.upper() {
        hint.set_upper(upper + extra);
    }
    hint
}

/// When a stream last moved data either way, for `stream_idle_timeout`.
#[derive(Debug)]
pub struct StreamIdle {
    base: tokio::time::Instant,
    last_ms: AtomicU64,
    pub timeout: Duration,
}

impl StreamIdle {
    pub fn new(timeout: Duration) -> Arc<StreamIdle> {
        Arc::new(StreamIdle {
            base: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            timeout,
        })
    }

    pub fn touch(&self) {
        self.last_ms
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// When the stream times out unless it moves again.
    pub fn deadline(&self) -> tokio::time::Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + self.timeout
    }
}

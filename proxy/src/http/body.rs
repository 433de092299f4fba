//! Message bodies as the proxy passes them on. Bodies stream frame by frame
//! (data and trailers); nothing is buffered whole.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::exchange::Exchange;
use super::replay::ReplayBody;

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

    pub fn with_idle(mut self, idle: Option<Arc<StreamIdle>>) -> RequestBody {
        self.idle = idle;
        self
    }

    /// Whether [`replay`](Self::replay) would give a body now.
    pub fn can_replay(&self) -> bool {
        match &self.source {
            Source::Streaming(_) => false,
            Source::Replay(body) => body.can_replay(),
            Source::Empty => true,
        }
    }

    /// The body for another try, if it can be sent again.
    pub fn replay(&self) -> Option<RequestBody> {
        let source = match &self.source {
            Source::Streaming(_) => return None,
            Source::Replay(body) => Source::Replay(body.replay()?),
            Source::Empty => Source::Empty,
        };
        Some(RequestBody {
            source,
            idle: self.idle.clone(),
        })
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.source {
            Source::Streaming(inner) => Pin::new(inner).poll_frame(cx),
            Source::Replay(inner) => Pin::new(inner).poll_frame(cx),
            Source::Empty => Poll::Ready(None),
        };
        if let (Poll::Ready(Some(Ok(_))), Some(idle)) = (&polled, &this.idle) {
            idle.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Streaming(inner) => inner.is_end_stream(),
            Source::Replay(inner) => inner.is_end_stream(),
            Source::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Streaming(inner) => inner.size_hint(),
            Source::Replay(inner) => inner.size_hint(),
            Source::Empty => SizeHint::with_exact(0),
        }
    }
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

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream body: {0}")]
    Upstream(hyper::Error),
    /// The route's timeout expired while the body was still streaming.
    #[error("route timeout expired while streaming the response")]
    Timeout,
    /// No data either way for the route's `stream_idle_timeout`.
    #[error("stream idle timeout: no data either way for too long")]
    StreamIdle,
}

pin_project! {
    /// A response body on its way downstream: either the upstream's, which
    /// carries the request's [`Exchange`] until it ends, or a local reply.
    #[project = ResponseBodyProj]
    pub enum ResponseBody {
        Upstream {
            // A frame already read (while waiting for a gRPC status), sent first.
            first: Option<Frame<Bytes>>,
            #[pin]
            inner: Incoming,
            #[pin]
            deadline: Option<tokio::time::Sleep>,
            idle: Option<Arc<StreamIdle>>,
            #[pin]
            idle_check: Option<tokio::time::Sleep>,
            exchange: Exchange,
        },
        Local {
            data: Option<Bytes>,
        },
    }
}

impl ResponseBody {
    pub fn upstream(
        inner: Incoming,
        first: Option<Frame<Bytes>>,
        deadline: Option<tokio::time::Instant>,
        idle: Option<Arc<StreamIdle>>,
        mut exchange: Exchange,
    ) -> ResponseBody {
        if first.is_none() && inner.is_end_stream() {
            // hyper will not poll an empty body, so finish the exchange now.
            exchange.body_finished();
        }
        let idle_check = idle
            .as_ref()
            .map(|i| tokio::time::sleep_until(i.deadline()));
        ResponseBody::Upstream {
            first,
            inner,
            deadline: deadline.map(tokio::time::sleep_until),
            idle,
            idle_check,
            exchange,
        }
    }

    pub fn local(data: impl Into<Bytes>) -> ResponseBody {
        let data = data.into();
        ResponseBody::Local {
            data: (!data.is_empty()).then_some(data),
        }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::Local { data: None }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            ResponseBodyProj::Local { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            ResponseBodyProj::Upstream {
                first,
                mut inner,
                deadline,
                idle,
                mut idle_check,
                exchange,
            } => match first
                .take()
                .map(|f| Poll::Ready(Some(Ok(f))))
                .unwrap_or_else(|| inner.as_mut().poll_frame(cx))
            {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        exchange.add_bytes_sent(data.len());
                    }
                    if let Some(idle) = idle {
                        idle.touch();
                    }
                    // With a known length hyper stops polling after the last
                    // byte, so the end is seen here rather than as `None`.
                    if inner.is_end_stream() {
                        exchange.body_finished();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(BodyError::Upstream(error)))),
                Poll::Ready(None) => {
                    exchange.body_finished();
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    if let Some(Poll::Ready(())) = deadline.as_pin_mut().map(|d| d.poll(cx)) {
                        exchange.timed_out_streaming(crate::cluster::TimeoutKind::Route);
                        return Poll::Ready(Some(Err(BodyError::Timeout)));
                    }
                    // The request side may have moved meanwhile: wait for the
                    // latest deadline before calling the stream idle.
                    while let (Some(idle), Some(mut check)) =
                        (idle.as_ref(), idle_check.as_mut().as_pin_mut())
                    {
                        if check.as_mut().poll(cx).is_pending() {
                            break;
                        }
                        let latest = idle.deadline();
                        if latest <= tokio::time::Instant::now() {
                            exchange.timed_out_streaming(crate::cluster::TimeoutKind::StreamIdle);
                            return Poll::Ready(Some(Err(BodyError::StreamIdle)));
                        }
                        check.reset(latest);
                    }
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Local { data } => data.is_none(),
            ResponseBody::Upstream { first, inner, .. } => first.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Local { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

//! Response bodies as the proxy passes them downstream. Bodies stream frame
//! by frame (data and trailers); nothing is buffered whole.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::exchange::Exchange;
use crate::body::StreamIdle;

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
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
    pub(crate) enum ResponseBody {
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
        /// A response from the cache: its body, then its trailers.
        Stored {
            data: Option<Bytes>,
            trailers: Option<http::HeaderMap>,
        },
        /// Data read ahead of the client (a response cache reading an
        /// upstream body it may store, or answering from an entry), then
        /// the error that cut the body short, then the rest of the body
        /// (which carries the exchange), then trailers read ahead.
        Prefixed {
            prefix: Option<Bytes>,
            error: Option<BodyError>,
            rest: Pin<Box<ResponseBody>>,
            trailers: Option<http::HeaderMap>,
        },
    }
}

impl ResponseBody {
    pub(crate) fn upstream(
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

    pub(crate) fn local(data: impl Into<Bytes>) -> ResponseBody {
        let data = data.into();
        ResponseBody::Local {
            data: (!data.is_empty()).then_some(data),
        }
    }

    pub(crate) fn stored(data: Bytes, trailers: Option<http::HeaderMap>) -> ResponseBody {
        ResponseBody::Stored {
            data: (!data.is_empty()).then_some(data),
            trailers,
        }
    }

    pub(crate) fn prefixed(
        prefix: Bytes,
        error: Option<BodyError>,
        rest: Pin<Box<ResponseBody>>,
        trailers: Option<http::HeaderMap>,
    ) -> ResponseBody {
        ResponseBody::Prefixed {
            prefix: (!prefix.is_empty()).then_some(prefix),
            error,
            rest,
            trailers,
        }
    }

    /// The exchange an upstream body carries (to set the status the client
    /// gets when a cache answers in its place).
    pub(crate) fn exchange_mut(self: Pin<&mut Self>) -> Option<&mut Exchange> {
        match self.project() {
            ResponseBodyProj::Upstream { exchange, .. } => Some(exchange),
            ResponseBodyProj::Prefixed { rest, .. } => rest.as_mut().exchange_mut(),
            ResponseBodyProj::Local { .. } | ResponseBodyProj::Stored { .. } => None,
        }
    }

    pub(crate) fn empty() -> ResponseBody {
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
            ResponseBodyProj::Stored { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            ResponseBodyProj::Prefixed {
                prefix,
                error,
                rest,
                trailers,
            } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                // A body the cache read to its end is not polled again.
                let polled = if rest.is_end_stream() {
                    Poll::Ready(None)
                } else {
                    rest.as_mut().poll_frame(cx)
                };
                match polled {
                    Poll::Ready(None) => {
                        Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
                    }
                    other => other,
                }
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
                    } else if let Some(trailers) = frame.trailers_ref() {
                        exchange.note_grpc_status(trailers);
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
                Poll::Ready(Some(Err(error))) => {
                    exchange.upstream_body_failed();
                    Poll::Ready(Some(Err(BodyError::Upstream(error))))
                }
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
            ResponseBody::Stored { data, trailers } => data.is_none() && trailers.is_none(),
            ResponseBody::Prefixed {
                prefix,
                error,
                rest,
                trailers,
            } => prefix.is_none() && error.is_none() && rest.is_end_stream() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Local { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
            ResponseBody::Stored { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Prefixed { prefix, rest, .. } => {
                crate::body::plus(rest.size_hint(), prefix.as_ref())
            }
        }
    }
}

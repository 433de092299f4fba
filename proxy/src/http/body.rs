//! Message bodies as the proxy passes them on. Bodies stream frame by frame
//! (data and trailers); nothing is buffered whole.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::exchange::Exchange;

/// A request body on its way upstream.
pub struct RequestBody {
    inner: Incoming,
}

impl RequestBody {
    pub fn new(inner: Incoming) -> RequestBody {
        RequestBody { inner }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
}

pin_project! {
    /// A response body on its way downstream: either the upstream's, which
    /// carries the request's [`Exchange`] until it ends, or a local reply.
    #[project = ResponseBodyProj]
    pub enum ResponseBody {
        Upstream {
            #[pin]
            inner: Incoming,
            #[pin]
            deadline: Option<tokio::time::Sleep>,
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
        deadline: Option<tokio::time::Instant>,
        mut exchange: Exchange,
    ) -> ResponseBody {
        if inner.is_end_stream() {
            // hyper will not poll an empty body, so finish the exchange now.
            exchange.body_finished();
        }
        ResponseBody::Upstream {
            inner,
            deadline: deadline.map(tokio::time::sleep_until),
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
                mut inner,
                deadline,
                exchange,
            } => match inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        exchange.add_bytes_sent(data.len());
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
                Poll::Pending => match deadline.as_pin_mut().map(|d| d.poll(cx)) {
                    Some(Poll::Ready(())) => {
                        exchange.timed_out_streaming();
                        Poll::Ready(Some(Err(BodyError::Timeout)))
                    }
                    _ => Poll::Pending,
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Local { data } => data.is_none(),
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
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

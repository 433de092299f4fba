//! The HTTP/1 request-headers timeout, started by the request's first byte.
//!
//! hyper arms its header-read timer as soon as it waits for a request head,
//! which on a keep-alive connection means "as soon as the previous response
//! ends": used directly it would close every idle keep-alive connection after
//! `request_headers_timeout`. This timer hands hyper a sleep that does not
//! start counting until the connection has read new bytes, so only a client
//! that starts a request and stalls is cut, as Envoy's
//! `request_headers_timeout` does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use pin_project_lite::pin_project;

/// One per connection; shares the read counter with the connection's [`ServerIo`](super::detect::ServerIo).
#[derive(Clone)]
pub(super) struct HeaderTimer {
    reads: Arc<AtomicU64>,
}

impl HeaderTimer {
    pub(super) fn new(reads: Arc<AtomicU64>) -> HeaderTimer {
        HeaderTimer { reads }
    }
}

impl Timer for HeaderTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(PlainSleep {
            inner: tokio::time::sleep(duration),
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            reads: self.reads.clone(),
            armed_at: self.reads.load(Ordering::Relaxed),
            duration: deadline.saturating_duration_since(Instant::now()),
            running: None,
        })
    }
}

pin_project! {
    struct HeadSleep {
        reads: Arc<AtomicU64>,
        armed_at: u64,
        duration: Duration,
        #[pin]
        running: Option<tokio::time::Sleep>,
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if this.running.is_none() {
            // hyper polls this again whenever the socket yields bytes that do
            // not yet complete a head, so no waker is needed while idle.
            if this.reads.load(Ordering::Relaxed) == *this.armed_at {
                return Poll::Pending;
            }
            this.running.set(Some(tokio::time::sleep(*this.duration)));
        }
        match this.running.as_pin_mut() {
            Some(sleep) => sleep.poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Sleep for HeadSleep {}

pin_project! {
    struct PlainSleep {
        #[pin]
        inner: tokio::time::Sleep,
    }
}

impl Future for PlainSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().inner.poll(cx)
    }
}

impl Sleep for PlainSleep {}

//! A request body that can be sent more than once, for retries (as Linkerd's
//! `ReplayBody`). The first try streams the client's body upstream and keeps
//! a copy of each data frame (sharing the bytes, not copying them) up to a
//! limit; a retry replays the copy, then continues from the client if the
//! body has not ended. A body larger than the limit drops its copy and can
//! no longer be replayed: such a request is not retried once sent.
//!
//! Only the newest try reads: starting a replay fences off the older ones,
//! so two tries never pull the client's body at the same time.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use crate::sync::lock;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

#[derive(Debug)]
pub(super) struct ReplayBody {
    shared: Arc<Mutex<Recording>>,
    generation: u32,
    /// Data frames of the recording this try has sent.
    sent: usize,
    trailers_sent: bool,
    size_hint: SizeHint,
}

#[derive(Debug)]
struct Recording {
    source: Incoming,
    data: Vec<Bytes>,
    bytes: usize,
    limit: usize,
    trailers: Option<HeaderMap>,
    /// The copy was dropped (too large) or the source failed: no more replays.
    broken: bool,
    ended: bool,
    generation: u32,
}

impl ReplayBody {
    pub(super) fn new(source: Incoming, limit: usize) -> ReplayBody {
        let size_hint = source.size_hint();
        let broken = size_hint.lower() > limit as u64;
        let ended = source.is_end_stream();
        let recording = Recording {
            source,
            data: Vec::new(),
            bytes: 0,
            limit,
            trailers: None,
            broken,
            ended,
            generation: 0,
        };
        ReplayBody {
            shared: Arc::new(Mutex::new(recording)),
            generation: 0,
            sent: 0,
            trailers_sent: false,
            size_hint,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Recording> {
        lock(&self.shared)
    }

    /// Whether [`replay`](Self::replay) would give a body: always before the
    /// first try (which streams the body even when it is too large to keep),
    /// after that only while the copy is kept.
    pub(super) fn can_replay(&self) -> bool {
        let recording = self.lock();
        !recording.broken || recording.generation == 0
    }

    /// A body for the next try, replaying from the start; `None` when the
    /// copy was not kept.
    pub(super) fn replay(&self) -> Option<ReplayBody> {
        let mut recording = self.lock();
        if recording.broken && recording.generation > 0 {
            return None;
        }
        recording.generation += 1;
        Some(ReplayBody {
            shared: self.shared.clone(),
            generation: recording.generation,
            sent: 0,
            trailers_sent: false,
            size_hint: self.size_hint,
        })
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut recording = lock(&this.shared);
        if recording.generation != this.generation {
            // A newer try took over; this one is abandoned.
            return Poll::Ready(None);
        }
        if !recording.broken && this.sent < recording.data.len() {
            let data = recording.data[this.sent].clone();
            this.sent += 1;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if recording.ended {
            if !this.trailers_sent
                && let Some(trailers) = recording.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        match Pin::new(&mut recording.source).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !recording.broken {
                        if recording.bytes + data.len() > recording.limit {
                            recording.broken = true;
                            recording.data = Vec::new();
                        } else {
                            recording.bytes += data.len();
                            recording.data.push(data.clone());
                            this.sent = recording.data.len();
                        }
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    recording.trailers = Some(trailers.clone());
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                recording.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                recording.broken = true;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        let recording = self.lock();
        recording.ended
            && self.sent >= recording.data.len()
            && (self.trailers_sent || recording.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

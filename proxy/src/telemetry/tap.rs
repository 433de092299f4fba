//! Live taps (`GET /tap` on the admin port): summaries of requests as they
//! finish, as JSON lines, for whoever is watching. With no tap open a
//! request pays one relaxed atomic load. With taps open, each finished
//! request is matched against their filters; a tap takes at most
//! [`MAX_PER_SECOND`] summaries a second and holds at most [`QUEUE`]
//! unread, and drops (and counts) the rest: a tap can never slow the
//! proxy or grow its memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

/// Summaries a tap takes per second at most.
pub const MAX_PER_SECOND: u64 = 500;
/// Summaries a tap holds unread at most.
pub const QUEUE: usize = 1024;

/// Every open tap of a proxy.
#[derive(Default)]
pub struct Taps {
    open: AtomicUsize,
    subscribers: std::sync::Mutex<Vec<Arc<Subscriber>>>,
}

impl std::fmt::Debug for Taps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taps")
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish()
    }
}

/// What a tap wants to see; every field given must match.
#[derive(Debug, Clone, Default)]
pub struct TapFilter {
    pub listener: Option<String>,
    pub route: Option<String>,
    pub path_prefix: Option<String>,
}

struct Subscriber {
    filter: TapFilter,
    queue: mpsc::Sender<String>,
    started: Instant,
    /// Summaries taken in the current second, and that second.
    window: AtomicU64,
    taken: AtomicU64,
    dropped: Arc<AtomicU64>,
}

/// One finished request, as a tap line says it.
#[derive(Serialize)]
pub(crate) struct TapEvent<'a> {
    pub(crate) time: String,
    pub(crate) direction: &'static str,
    pub(crate) listener: &'a str,
    pub(crate) route: &'a str,
    pub(crate) method: &'a str,
    pub(crate) authority: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) grpc_status: Option<u32>,
    pub(crate) latency_ms: f64,
    pub(crate) cluster: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upstream: Option<String>,
    pub(crate) bytes_sent: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peer_identity: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_id: Option<&'a str>,
}

/// A tap's end of the stream: lines until it is dropped.
pub struct TapStream {
    pub lines: mpsc::Receiver<String>,
    /// Summaries this tap dropped (over its rate or its queue).
    pub dropped: Arc<AtomicU64>,
    taps: Arc<Taps>,
    subscriber: Arc<Subscriber>,
}

impl Drop for TapStream {
    fn drop(&mut self) {
        let mut subscribers = crate::sync::lock(&self.taps.subscribers);
        subscribers.retain(|s| !Arc::ptr_eq(s, &self.subscriber));
        self.taps.open.store(subscribers.len(), Ordering::Relaxed);
    }
}

impl Taps {
    /// Whether any tap is open (one relaxed load).
    pub(crate) fn any(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    /// Opens a tap.
    pub fn open(self: &Arc<Self>, filter: TapFilter) -> TapStream {
        let (queue, lines) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let subscriber = Arc::new(Subscriber {
            filter,
            queue,
            started: Instant::now(),
            window: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            dropped: dropped.clone(),
        });
        let mut subscribers = crate::sync::lock(&self.subscribers);
        subscribers.push(subscriber.clone());
        self.open.store(subscribers.len(), Ordering::Relaxed);
        TapStream {
            lines,
            dropped,
            taps: self.clone(),
            subscriber,
        }
    }

    /// Offers a finished request to every open tap whose filter it matches
    /// (`listener`, `route`, `path`); its line is made only when a tap
    /// takes it.
    pub(crate) fn publish<'a>(
        &self,
        listener: &str,
        route: &str,
        path: &str,
        event: impl FnOnce() -> TapEvent<'a>,
    ) {
        let subscribers = crate::sync::lock(&self.subscribers);
        let mut event = Some(event);
        let mut line: Option<String> = None;
        for subscriber in subscribers.iter() {
            let f = &subscriber.filter;
            let matches = f.listener.as_deref().is_none_or(|l| l == listener)
                && f.route.as_deref().is_none_or(|r| r == route)
                && f.path_prefix.as_deref().is_none_or(|p| path.starts_with(p));
            if !matches {
                continue;
            }
            if !subscriber.admit() {
                subscriber.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if line.is_none() {
                let Some(make) = event.take() else {
                    continue;
                };
                let mut text = serde_json::to_string(&make()).unwrap_or_default();
                text.push('\n');
                line = Some(text);
            }
            let text = line.clone().unwrap_or_default();
            if subscriber.queue.try_send(text).is_err() {
                subscriber.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Subscriber {
    /// The rate cap: at most [`MAX_PER_SECOND`] in each second since the
    /// tap opened.
    fn admit(&self) -> bool {
        let second = self.started.elapsed().as_secs();
        if self.window.swap(second, Ordering::Relaxed) != second {
            self.taken.store(0, Ordering::Relaxed);
        }
        self.taken.fetch_add(1, Ordering::Relaxed) < MAX_PER_SECOND
    }
}

/// How long a tap stays open when it does not say.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(60);
/// How many lines a tap sends when it does not say.
pub const DEFAULT_LIMIT: u64 = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(listener: &'a str, path: &'a str) -> TapEvent<'a> {
        TapEvent {
            time: String::new(),
            direction: "outbound",
            listener,
            route: "r",
            method: "GET",
            authority: "a",
            path,
            status: 200,
            grpc_status: None,
            latency_ms: 1.0,
            cluster: "c",
            upstream: None,
            bytes_sent: 0,
            trace_id: None,
            peer_identity: None,
            request_id: None,
        }
    }

    #[test]
    fn taps_see_what_their_filters_match_and_close_when_dropped() {
        let taps = Arc::new(Taps::default());
        assert!(!taps.any());
        let mut api = taps.open(TapFilter {
            listener: Some("web".into()),
            path_prefix: Some("/api".into()),
            ..TapFilter::default()
        });
        let mut all = taps.open(TapFilter::default());
        assert!(taps.any());
        for (listener, path) in [("web", "/api/x"), ("web", "/other"), ("admin", "/api/y")] {
            taps.publish(listener, "r", path, || event(listener, path));
        }
        assert!(api.lines.try_recv().unwrap().contains("\"/api/x\""));
        assert!(api.lines.try_recv().is_err());
        for _ in 0..3 {
            assert!(all.lines.try_recv().unwrap().ends_with('\n'));
        }
        drop(api);
        drop(all);
        assert!(!taps.any());
    }

    #[test]
    fn a_tap_takes_a_bounded_number_per_second() {
        let taps = Arc::new(Taps::default());
        let tap = taps.open(TapFilter::default());
        for _ in 0..(MAX_PER_SECOND + 10) {
            taps.publish("web", "r", "/", || event("web", "/"));
        }
        assert_eq!(tap.dropped.load(Ordering::Relaxed), 10);
    }
}

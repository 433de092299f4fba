//! When a downstream HTTP connection should wind down gracefully: the proxy
//! drains, the connection has had no request in flight for `idle_timeout`,
//! or it has lived `max_connection_age`. Winding down means GOAWAY on
//! HTTP/2 and `Connection: close` after the current response on HTTP/1.1
//! (an idle HTTP/1.1 connection closes at once).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A stream the client resets within this long of its start, before its
/// response is complete, is a premature reset (Envoy's
/// `premature_reset_min_stream_lifetime_seconds`).
pub(crate) const PREMATURE_RESET_LIFETIME: Duration = Duration::from_secs(1);

/// Once a connection has had this many streams, more than half of them
/// reset prematurely winds it down (Envoy's
/// `premature_reset_total_stream_count`): the 2023 "rapid reset" pattern,
/// fast or slow, costs the upstream at most about this many requests per
/// connection, while a client that cancels now and then (gRPC deadlines,
/// browsers) is never near half.
const PREMATURE_RESET_MIN_STREAMS: u32 = 500;

/// Requests in flight on one connection, when the last one ended, and how
/// many of its streams the client reset prematurely.
#[derive(Debug)]
pub(crate) struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` when the connection last became idle.
    idle_since_ms: AtomicU64,
    requests: AtomicU32,
    premature_resets: AtomicU32,
    /// Told once the premature resets pass their bound.
    calm_down: Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            requests: AtomicU32::new(0),
            premature_resets: AtomicU32::new(0),
            calm_down: Notify::new(),
        }
    }
}

impl Activity {
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The client reset a stream early (see [`PREMATURE_RESET_LIFETIME`]);
    /// past the bound the connection winds down.
    pub(crate) fn premature_reset(&self) {
        let resets = self.premature_resets.fetch_add(1, Ordering::Relaxed) + 1;
        let requests = self.requests.load(Ordering::Relaxed);
        if requests >= PREMATURE_RESET_MIN_STREAMS && resets * 2 > requests {
            self.calm_down.notify_one();
        }
    }

    pub(crate) fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let ms = self.born.elapsed().as_millis() as u64;
            self.idle_since_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// Resolves once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = if self.in_flight.load(Ordering::Relaxed) == 0 {
                self.born
                    + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed))
                    + timeout
            } else {
                Instant::now() + timeout
            };
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
            if self.in_flight.load(Ordering::Relaxed) == 0
                && self.born
                    + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed))
                    + timeout
                    <= Instant::now()
            {
                return;
            }
        }
    }

    /// The first reason to wind the connection down.
    pub(crate) async fn wind_down(
        &self,
        stop: &CancellationToken,
        idle_timeout: Option<Duration>,
        max_age: Option<Duration>,
    ) -> &'static str {
        let idle = async {
            match idle_timeout {
                Some(timeout) => self.idle_for(timeout).await,
                None => std::future::pending().await,
            }
        };
        let age = async {
            match max_age {
                Some(age) => tokio::time::sleep_until(self.born + age).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => "draining",
            () = idle => "idle_timeout",
            () = age => "max_connection_age",
            () = self.calm_down.notified() => "premature_resets",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idleness_counts_from_the_last_request() {
        let activity = Activity::default();
        let stop = CancellationToken::new();
        activity.begin();
        let started = Instant::now();
        let wind_down = activity.wind_down(&stop, Some(Duration::from_secs(10)), None);
        tokio::pin!(wind_down);
        // Busy for 25 s: no idle timeout while a request is in flight.
        tokio::select! {
            _ = &mut wind_down => panic!("wound down while busy"),
            () = tokio::time::sleep(Duration::from_secs(25)) => {}
        }
        activity.end();
        assert_eq!(wind_down.await, "idle_timeout");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(35) && elapsed < Duration::from_secs(36),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn age_and_drain_end_a_busy_connection() {
        let activity = Activity::default();
        activity.begin();
        let stop = CancellationToken::new();
        assert_eq!(
            activity
                .wind_down(
                    &stop,
                    Some(Duration::from_secs(1)),
                    Some(Duration::from_secs(60))
                )
                .await,
            "max_connection_age"
        );
        stop.cancel();
        assert_eq!(activity.wind_down(&stop, None, None).await, "draining");
    }
}

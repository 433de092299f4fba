//! Constant load: clients that each send GETs one after another until
//! stopped, counting every request and every one that did not get a 200.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::StatusCode;

use super::client::{self, HttpClient};
use super::within;

pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// One worker per client, each with its own (keep-alive) client.
    pub fn start(url: &str, clients: Vec<HttpClient>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let workers = clients
            .into_iter()
            .map(|client| {
                let (url, stop, sent, failed) =
                    (url.to_string(), stop.clone(), sent.clone(), failed.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let request = http::Request::get(url.as_str())
                            .body(client::empty())
                            .unwrap();
                        match client::try_send(&client, request).await {
                            Ok(reply) if reply.status == StatusCode::OK => {}
                            other => {
                                eprintln!("failed request: {other:?}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            workers,
        }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until `more` requests beyond those sent so far have been sent
    /// (a phase of the load, measured in requests rather than time).
    pub async fn run_for(&self, more: usize) {
        let target = self.sent() + more;
        super::eventually(&format!("{more} more requests under load"), || {
            self.sent() >= target
        })
        .await;
    }

    /// Stops the workers after their current request: (sent, failed).
    pub async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            within("load stops", worker).await.unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// How many of `arrivals` (offsets from the start, in any order) an ideal
/// token bucket admits: `burst` tokens at the start, `rate` more a second,
/// never more than `burst`.
///
/// A limit's accuracy is judged against this rather than against
/// `burst + rate × elapsed`: that is only what a bucket admits under load
/// that never pauses, and a starved test machine pauses the load.
pub fn ideal_token_bucket(rate: f64, burst: f64, arrivals: &[std::time::Duration]) -> usize {
    let mut arrivals = arrivals.to_vec();
    arrivals.sort_unstable();
    let (mut tokens, mut last, mut admitted) = (burst, 0.0, 0);
    for at in arrivals {
        let at = at.as_secs_f64();
        tokens = (tokens + (at - last) * rate).min(burst);
        last = at;
        if tokens >= 1.0 {
            tokens -= 1.0;
            admitted += 1;
        }
    }
    admitted
}

//! The tries of one request: the first one and any retries, until a
//! response goes back to the client or the request fails.
//!
//! Each try asks the cluster for an endpoint (a retry asks it to avoid the
//! ones tried), sends the request (see [`attempt`](super::attempt)) within
//! the try's bound, and ends in one [`TryOutcome`]. The cluster hears every
//! outcome (outlier detection, latency estimates). Whether a failed or
//! retriable outcome is tried again is decided in one place,
//! [`Tries::retry`]: the route's policy, the replayable body, the retry
//! budget and the `max_retries` breaker. The response the client gets is
//! always from the last try, so a response that has started streaming is
//! never retried.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version, request};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::attempt::{self, TryError, UpstreamError};
use super::deadline::{self, Deadline};
use super::exchange::{Exchange, TryEnd};
use crate::body::RequestBody;
use crate::breaker::{Held, Limit};
use crate::cluster::{Cluster, TimeoutKind};
use crate::config::RetryOn;
use crate::endpoint::Endpoint;
use crate::outlier::Outcome;
use crate::pool::ConnectError;
use crate::retry::Failure;
use crate::route::{Backend, Route};

/// How one try ended.
pub(super) enum TryOutcome {
    /// A response, which is passed on unless its status is retried.
    Response {
        response: Response<Incoming>,
        /// A body frame already read (while looking for a gRPC status).
        first: Option<Frame<Bytes>>,
        grpc_status: Option<u32>,
    },
    /// No response: the failure's class decides whether to try again.
    Failed {
        failure: Failure,
        error: UpstreamError,
        endpoint: SocketAddr,
    },
    /// The request ends now, whatever the retry policy says.
    Stop(Stop),
}

/// Why the tries ended without an upstream response to pass on: each is a
/// local reply that says what happened.
pub(super) enum Stop {
    /// The request's deadline (route timeout or `grpc-timeout`): 504.
    Deadline { message: String },
    /// The last try failed: 503 (no connection), 502 (the upstream failed
    /// the exchange) or 504 (per-try timeout).
    Upstream { status: StatusCode, message: String },
    /// The client's request body failed (bad framing, or the client went
    /// away mid-body): 400, and nothing counted against the endpoint.
    Client { message: String },
    /// A body that outgrew the retry buffer could not be sent again: 502.
    BodyNotReplayable { message: String },
    /// A circuit breaker is open: 503 with `x-remora-overloaded`.
    Overloaded(Limit),
    /// No endpoint can be picked: 503.
    NoEndpoint,
}

/// Everything the tries of one request share.
pub(super) struct Tries<'a> {
    pub(crate) route: &'a Route,
    pub(crate) backend: &'a Backend,
    /// The request as it goes upstream (less its body). A route without
    /// retries moves it into its one try; otherwise each try gets a copy.
    pub(crate) parts: request::Parts,
    pub(crate) version: Version,
    pub(crate) grpc: bool,
    pub(crate) deadline: Option<Deadline>,
    pub(crate) hash: Option<u64>,
}

/// The response that ends the tries, and a first body frame already read.
pub(super) type Answer = (Response<Incoming>, Option<Frame<Bytes>>);

impl Tries<'_> {
    fn cluster(&self) -> &Cluster {
        &self.backend.cluster
    }

    pub(super) async fn run(
        mut self,
        body: RequestBody,
        exchange: &mut Exchange,
    ) -> Result<Answer, Stop> {
        // Without a retry policy the body goes out as it is, once.
        let (mut once, template) = match self.route.retry {
            Some(_) => (None, Some(body)),
            None => (Some(body), None),
        };
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut retry_slot: Option<Held> = None;
        loop {
            let Some(active) = self.cluster().pick_avoiding(self.hash, &tried) else {
                return Err(Stop::NoEndpoint);
            };
            let endpoint = active.endpoint().clone();
            exchange.set_upstream(active);
            let body = match (&template, once.take()) {
                (_, Some(body)) => body,
                (Some(template), None) => template.replay().ok_or_else(|| self.not_replayable())?,
                (None, None) => unreachable!("a request without retries is tried once"),
            };
            let mut request = self.request(body);
            let attempt = tried.len() as u32 + 1;
            let span = exchange.begin_try(attempt, request.headers_mut());
            let outcome = self.one_try(&endpoint, request, exchange).await;
            let failure = match &outcome {
                TryOutcome::Stop(_) => None,
                TryOutcome::Response {
                    response,
                    grpc_status,
                    ..
                } => Some(Failure::Response {
                    status: response.status(),
                    grpc: *grpc_status,
                }),
                TryOutcome::Failed { failure, .. } => Some(*failure),
            };
            let reason = failure
                .and_then(|f| self.retry(f, tried.len(), template.as_ref(), &mut retry_slot));
            if let Some(span) = span {
                let end = match (&outcome, reason) {
                    (TryOutcome::Response { response, .. }, None) => {
                        TryEnd::Kept(response.status())
                    }
                    (TryOutcome::Response { response, .. }, Some(_)) => {
                        TryEnd::Status(response.status())
                    }
                    (TryOutcome::Failed { error, .. }, _) => TryEnd::Failed(error.kind()),
                    (TryOutcome::Stop(_), _) => TryEnd::Failed("stopped"),
                };
                exchange.end_try(span, endpoint.address, end);
            }
            match (reason, outcome) {
                (_, TryOutcome::Stop(stop)) => return Err(stop),
                (Some(reason), _) => {
                    tried.push(endpoint.address);
                    self.before_retry(reason, tried.len()).await?;
                }
                (
                    None,
                    TryOutcome::Response {
                        response, first, ..
                    },
                ) => return Ok((response, first)),
                (
                    None,
                    TryOutcome::Failed {
                        failure,
                        error,
                        endpoint,
                    },
                ) => return Err(self.upstream_failed(endpoint, failure, error)),
            }
        }
    }

    /// One try, bounded by the per-try timeout and the request's deadline;
    /// its outcome goes to the cluster.
    async fn one_try(
        &self,
        endpoint: &Endpoint,
        request: Request<RequestBody>,
        exchange: &mut Exchange,
    ) -> TryOutcome {
        let bound = self.try_bound();
        let sent_at = Instant::now();
        let sent = attempt::send(endpoint, request, self.version, exchange);
        let result = match bound {
            None => sent.await,
            Some(bound) => match tokio::time::timeout_at(bound, sent).await {
                Ok(result) => result,
                Err(_) => return self.local_origin(endpoint, self.bound_reached(endpoint, bound)),
            },
        };
        let cluster = self.cluster();
        let mut response = match result {
            Ok(response) => response,
            Err(TryError::Overloaded(limit)) => return TryOutcome::Stop(Stop::Overloaded(limit)),
            Err(TryError::Failed { failure, error }) => {
                if matches!(error, UpstreamError::Connect(ConnectError::Timeout(_))) {
                    cluster.count_timeout(TimeoutKind::Connect);
                }
                if failure != Failure::ClientBody {
                    cluster.record_outcome(endpoint, Outcome::LocalOrigin);
                }
                return TryOutcome::Failed {
                    failure,
                    error,
                    endpoint: endpoint.address,
                };
            }
        };
        cluster.record_outcome(endpoint, Outcome::of_status(response.status().as_u16()));
        cluster.observe_latency(endpoint, sent_at.elapsed());
        let mut grpc_status = grpc_status_in(response.headers());
        let mut first = None;
        if grpc_status.is_none() && self.waits_for_grpc_status() && !response.body().is_end_stream()
        {
            match self.first_frame(&mut response, endpoint, bound).await {
                Ok(frame) => {
                    grpc_status = frame
                        .as_ref()
                        .and_then(|f| f.trailers_ref())
                        .and_then(grpc_status_in);
                    first = frame;
                }
                Err(outcome) => return self.local_origin(endpoint, outcome),
            }
        }
        TryOutcome::Response {
            response,
            first,
            grpc_status,
        }
    }

    /// A try that got no response counts against its endpoint in outlier
    /// detection (as a local-origin failure).
    fn local_origin(&self, endpoint: &Endpoint, outcome: TryOutcome) -> TryOutcome {
        if let TryOutcome::Failed { .. } = outcome {
            self.cluster()
                .record_outcome(endpoint, Outcome::LocalOrigin);
        }
        outcome
    }

    fn request(&mut self, body: RequestBody) -> Request<RequestBody> {
        let mut request = Request::new(body);
        if self.route.retry.is_none() {
            // The only try: no copy. What is left behind is never read.
            let parts = std::mem::replace(&mut self.parts, Request::new(()).into_parts().0);
            *request.method_mut() = parts.method;
            *request.uri_mut() = parts.uri;
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers;
        } else {
            *request.method_mut() = self.parts.method.clone();
            *request.uri_mut() = self.parts.uri.clone();
            *request.version_mut() = self.parts.version;
            *request.headers_mut() = self.parts.headers.clone();
        }
        if self.grpc
            && let Some(deadline) = self.deadline
        {
            let left = deadline.at.saturating_duration_since(Instant::now());
            request
                .headers_mut()
                .insert("grpc-timeout", deadline::grpc_timeout_value(left));
        }
        request
    }

    fn per_try_timeout(&self) -> Option<Duration> {
        self.route.retry.as_ref().and_then(|p| p.per_try_timeout)
    }

    /// When the try started now must end: its per-try timeout or the
    /// request's deadline, whichever comes first.
    fn try_bound(&self) -> Option<Instant> {
        let per_try = self.per_try_timeout().map(|t| Instant::now() + t);
        match (per_try, self.deadline) {
            (Some(p), Some(d)) => Some(p.min(d.at)),
            (p, d) => p.or(d.map(|d| d.at)),
        }
    }

    /// What a try that ran into its bound amounts to: the request's
    /// deadline (504, no more tries) or the per-try timeout (retriable).
    fn bound_reached(&self, endpoint: &Endpoint, bound: Instant) -> TryOutcome {
        let cluster = self.cluster();
        if let Some(deadline) = self
            .deadline
            .filter(|d| d.at <= bound && d.at <= Instant::now())
        {
            cluster.count_timeout(deadline.kind);
            let message = format!(
                "upstream timeout: {} before cluster {:?} endpoint {} responded",
                deadline.describe(&self.route.name),
                cluster.name,
                endpoint.address
            );
            return TryOutcome::Stop(Stop::Deadline { message });
        }
        cluster.count_timeout(TimeoutKind::PerTry);
        TryOutcome::Failed {
            failure: Failure::PerTryTimeout,
            error: UpstreamError::PerTryTimeout(self.per_try_timeout().unwrap_or_default()),
            endpoint: endpoint.address,
        }
    }

    /// Whether a gRPC response's status should be read before deciding
    /// (the route retries on gRPC statuses).
    fn waits_for_grpc_status(&self) -> bool {
        self.grpc
            && self
                .route
                .retry
                .as_ref()
                .is_some_and(|p| p.has_grpc_conditions())
    }

    /// Reads a response's first body frame: a gRPC error that is not
    /// trailers-only arrives as headers and then a trailers frame.
    async fn first_frame(
        &self,
        response: &mut Response<Incoming>,
        endpoint: &Endpoint,
        bound: Option<Instant>,
    ) -> Result<Option<Frame<Bytes>>, TryOutcome> {
        let frame = response.body_mut().frame();
        let frame = match bound {
            None => frame.await,
            Some(bound) => match tokio::time::timeout_at(bound, frame).await {
                Ok(frame) => frame,
                Err(_) => return Err(self.bound_reached(endpoint, bound)),
            },
        };
        match frame {
            None => Ok(None),
            Some(Ok(frame)) => Ok(Some(frame)),
            Some(Err(error)) => Err(TryOutcome::Failed {
                failure: Failure::Reset,
                error: UpstreamError::Send { error },
                endpoint: endpoint.address,
            }),
        }
    }

    /// The one retry decision: the reason to try again, if the route's
    /// policy matches the failure and has tries left, the body can be sent
    /// again, and the budget and `max_retries` allow one more retry. A body
    /// that outgrew the retry buffer is not retried: the client gets the
    /// failed try's answer.
    fn retry(
        &self,
        failure: Failure,
        retries_so_far: usize,
        template: Option<&RequestBody>,
        slot: &mut Option<Held>,
    ) -> Option<RetryOn> {
        let policy = self.route.retry.as_ref()?;
        if retries_so_far >= policy.attempts as usize {
            return None;
        }
        let reason = policy.matches(failure, &self.parts.method)?;
        if template.is_some_and(|t| !t.can_replay()) {
            return None;
        }
        if let Some(budget) = &self.backend.budget
            && !budget.try_retry()
        {
            return None;
        }
        *slot = Some(self.cluster().limits().take(Limit::Retries).ok()?);
        Some(reason)
    }

    /// Counts the retry and waits its backoff, unless the deadline comes first.
    async fn before_retry(&self, reason: RetryOn, retry: usize) -> Result<(), Stop> {
        let cluster = self.cluster();
        cluster.count_retry(reason);
        let policy = self.route.retry.as_ref().expect("retrying needs a policy");
        let wait_until = Instant::now() + policy.backoff(retry as u32);
        if let Some(deadline) = self.deadline
            && deadline.at <= wait_until
        {
            tokio::time::sleep_until(deadline.at).await;
            cluster.count_timeout(deadline.kind);
            let message = format!(
                "upstream timeout: {} while waiting to retry cluster {:?}",
                deadline.describe(&self.route.name),
                cluster.name
            );
            return Err(Stop::Deadline { message });
        }
        tokio::time::sleep_until(wait_until).await;
        Ok(())
    }

    fn not_replayable(&self) -> Stop {
        Stop::BodyNotReplayable {
            message: format!(
                "upstream error: cluster {:?}: the request body was larger than the retry buffer, so it could not be sent again",
                self.cluster().name
            ),
        }
    }

    /// 503 when no connection could be had, 502 when the upstream failed the
    /// exchange, 504 for a per-try timeout; the body names the cluster, the
    /// endpoint and the cause.
    fn upstream_failed(
        &self,
        endpoint: SocketAddr,
        failure: Failure,
        error: UpstreamError,
    ) -> Stop {
        if failure == Failure::ClientBody {
            let message = format!("bad request: {error}");
            tracing::debug!(%message, cluster = %self.cluster().name, %endpoint, "the client's request body failed");
            return Stop::Client { message };
        }
        let status = error.status();
        let message = format!(
            "{}: cluster {:?} endpoint {endpoint}: {error}",
            error.summary(),
            self.cluster().name
        );
        tracing::debug!(%message, ?failure, "request failed upstream");
        Stop::Upstream { status, message }
    }
}

/// `grpc-status` in a header block (a trailers-only response's headers, or trailers).
fn grpc_status_in(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

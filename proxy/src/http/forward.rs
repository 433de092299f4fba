//! Forwarding a routed request: faults, circuit breakers, the deadline, the
//! endpoint choice, and the tries — the first one and any retries — until
//! a response goes back to the client or the request fails.
//!
//! Each try picks an endpoint (a retry prefers one not tried yet), sends
//! the request (see [`attempt`](super::attempt)), and reports its outcome to
//! outlier detection. A failed try is retried when the route's retry policy
//! says so (see [`crate::retry`]); the response the client gets is always
//! from the last try, so a response that has started streaming is never
//! retried.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER, SET_COOKIE};
use http::{Request, Response, StatusCode, Version, request};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

pub use super::attempt::UpstreamError;
use super::attempt::{self, TryError};
use super::body::{RequestBody, ResponseBody, StreamIdle};
use super::deadline::{self, Deadline};
use super::exchange::Exchange;
use super::{hop, local_reply, upgrade};
use crate::balance::HashInput;
use crate::cluster::limits::Limit;
use crate::cluster::{Cluster, Endpoint, TimeoutKind};
use crate::config::{LbPolicy, UpstreamProtocol};
use crate::fault::Abort;
use crate::outlier::Outcome;
use crate::pool::ConnectError;
use crate::retry::Failure;
use crate::route::{Backend, Route};

/// Header on responses refused by a circuit breaker (as Envoy's `x-envoy-overloaded`).
pub const OVERLOADED: &str = "x-remora-overloaded";

pub async fn forward(
    request: Request<Incoming>,
    client: SocketAddr,
    route: &Route,
    backend: &Backend,
    mut exchange: Exchange,
    tracker: &TaskTracker,
) -> Response<ResponseBody> {
    let grpc = local_reply::is_grpc(request.headers());
    if let Some(fault) = &route.fault {
        if let Some(delay) = fault.delay() {
            tokio::time::sleep(delay).await;
        }
        if let Some(abort) = fault.abort() {
            return aborted(exchange, abort, grpc);
        }
    }
    let cluster = &backend.cluster;
    match cluster.limits().take(Limit::Requests) {
        Ok(held) => exchange.hold_limit(held),
        Err(limit) => return overloaded(exchange, cluster, limit, grpc),
    }
    if let Some(budget) = &backend.budget {
        budget.record_request();
    }
    let grpc_timeout = if grpc {
        deadline::grpc_timeout(request.headers())
    } else {
        None
    };
    let deadline = Deadline::of(
        route.timeout,
        grpc_timeout,
        route.max_grpc_timeout,
        Instant::now(),
    );

    let mut set_cookie = None;
    let hash = match route
        .hash
        .as_ref()
        .or(cluster.hash_policy())
        .filter(|_| cluster.is_hash_based())
    {
        None => None,
        Some(policy) => match policy.input(request.headers(), request.uri(), client.ip()) {
            HashInput::Key(hash) => Some(hash),
            HashInput::Missing => None,
            HashInput::NewCookie {
                hash,
                set_cookie: cookie,
            } => {
                set_cookie = Some(cookie);
                Some(hash)
            }
        },
    };

    if upgrade::is_upgrade(&request) {
        let Some(active) = cluster.pick(hash) else {
            return no_endpoint(exchange, cluster, grpc);
        };
        let endpoint = active.endpoint().clone();
        exchange.set_upstream(active);
        return upgrade::forward(request, cluster, &endpoint, route, exchange, tracker).await;
    }

    let version = match (cluster.protocol, request.version()) {
        (UpstreamProtocol::Http2, _) | (UpstreamProtocol::SameAsDownstream, Version::HTTP_2) => {
            Version::HTTP_2
        }
        _ => Version::HTTP_11,
    };
    let (mut parts, body) = request.into_parts();
    attempt::prepare(&mut parts, version, route);
    let idle = route.stream_idle_timeout.map(StreamIdle::new);
    let body = match &route.retry {
        Some(policy) => RequestBody::replayable(body, policy.buffer_limit),
        None => RequestBody::streaming(body),
    }
    .with_idle(idle.clone());

    let mut tries = Tries {
        route,
        backend,
        cluster,
        parts,
        version,
        grpc,
        deadline,
        hash,
    };
    let result = tries.run(body, &mut exchange).await;
    let (mut response, first) = match result {
        Ok(done) => done,
        Err(Stop::Reply(status, message)) => {
            return local_reply::reply(exchange, status, &message, grpc);
        }
        Err(Stop::Overloaded(limit)) => return overloaded(exchange, cluster, limit, grpc),
        Err(Stop::NoEndpoint) => return no_endpoint(exchange, cluster, grpc),
    };
    hop::strip(response.headers_mut(), false);
    route.response_headers.apply(response.headers_mut());
    if let Some(cookie) = set_cookie {
        response.headers_mut().append(SET_COOKIE, cookie);
    }
    exchange.set_status(response.status());
    let (mut parts, body) = response.into_parts();
    parts.version = Version::HTTP_11;
    Response::from_parts(
        parts,
        ResponseBody::upstream(body, first, deadline.map(|d| d.at), idle, exchange),
    )
}

/// Why the tries ended without an upstream response to pass on.
enum Stop {
    Reply(StatusCode, String),
    Overloaded(Limit),
    NoEndpoint,
}

/// Everything the tries of one request share.
struct Tries<'a> {
    route: &'a Route,
    backend: &'a Backend,
    cluster: &'a Cluster,
    /// The request as it goes upstream (less its body). A route without
    /// retries moves it into its one try; otherwise each try gets a copy.
    parts: request::Parts,
    version: Version,
    grpc: bool,
    deadline: Option<Deadline>,
    hash: Option<u64>,
}

impl Tries<'_> {
    async fn run(
        &mut self,
        body: RequestBody,
        exchange: &mut Exchange,
    ) -> Result<(Response<Incoming>, Option<Frame<Bytes>>), Stop> {
        let (cluster, route) = (self.cluster, self.route);
        // Without a retry policy the body goes out as it is, once.
        let (mut first, template) = match route.retry {
            Some(_) => (None, Some(body)),
            None => (Some(body), None),
        };
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut _retry_slot = None;
        loop {
            let hash = self.hash.map(|h| {
                if tried.is_empty() {
                    h
                } else {
                    rehash(h, tried.len())
                }
            });
            let Some(active) = cluster.pick_avoiding(hash, &tried) else {
                return Err(Stop::NoEndpoint);
            };
            let endpoint = active.endpoint().clone();
            exchange.set_upstream(active);
            let body = match (&template, first.take()) {
                (_, Some(body)) => body,
                (Some(template), None) => template.replay().ok_or_else(|| self.give_up_body())?,
                (None, None) => unreachable!("a request without retries is tried once"),
            };
            let request = self.request(body);
            let sent_at = std::time::Instant::now();
            let outcome = self.one_try(&endpoint, request, exchange).await;
            let failure = match outcome {
                Ok(response) => {
                    let status = response.status();
                    cluster.record_outcome(&endpoint, Outcome::of_status(status.as_u16()));
                    if cluster.lb.policy == LbPolicy::PeakEwma {
                        let now = std::time::Instant::now();
                        endpoint.ewma.observe(now - sent_at, now, cluster.lb.decay);
                    }
                    let mut response = response;
                    let mut grpc_status = grpc_status_in(response.headers());
                    let mut first = None;
                    if grpc_status.is_none()
                        && self.waits_for_grpc_status()
                        && !response.body().is_end_stream()
                    {
                        match self.first_frame(&mut response, &endpoint).await {
                            Ok(frame) => {
                                grpc_status = frame
                                    .as_ref()
                                    .and_then(|f| f.trailers_ref())
                                    .and_then(grpc_status_in);
                                first = frame;
                            }
                            Err(TryOutcome::Stop(stop)) => return Err(stop),
                            Err(TryOutcome::Failed(failure, error)) => {
                                cluster.record_outcome(&endpoint, Outcome::LocalOrigin);
                                match self.retry_reason(failure, tried.len()) {
                                    Some(reason)
                                        if self.may_retry(&mut _retry_slot, template.as_ref()) =>
                                    {
                                        tried.push(endpoint.address);
                                        self.before_retry(reason, tried.len()).await?;
                                        continue;
                                    }
                                    _ => return Err(self.failure_stop(&endpoint, failure, error)),
                                }
                            }
                        }
                    }
                    let failure = Failure::Response {
                        status,
                        grpc: grpc_status,
                    };

                    match self.retry_reason(failure, tried.len()) {
                        Some(reason) if self.may_retry(&mut _retry_slot, template.as_ref()) => {
                            tried.push(endpoint.address);
                            self.before_retry(reason, tried.len()).await?;
                            continue;
                        }
                        _ => return Ok((response, first)),
                    }
                }
                Err(TryOutcome::Stop(stop)) => return Err(stop),
                Err(TryOutcome::Failed(failure, error)) => {
                    cluster.record_outcome(&endpoint, Outcome::LocalOrigin);
                    (failure, error)
                }
            };
            let (failure, error) = failure;
            match self.retry_reason(failure, tried.len()) {
                Some(reason) if self.may_retry(&mut _retry_slot, template.as_ref()) => {
                    tried.push(endpoint.address);
                    self.before_retry(reason, tried.len()).await?;
                }
                _ => return Err(self.failure_stop(&endpoint, failure, error)),
            }
        }
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

    /// When the try started now must end: its per-try timeout or the
    /// request's deadline, whichever comes first.
    fn try_bound(&self) -> Option<Instant> {
        let per_try = self
            .route
            .retry
            .as_ref()
            .and_then(|p| p.per_try_timeout)
            .map(|t| Instant::now() + t);
        match (per_try, self.deadline) {
            (Some(p), Some(d)) => Some(p.min(d.at)),
            (p, d) => p.or(d.map(|d| d.at)),
        }
    }

    /// What a try that ran into its bound amounts to: the request's
    /// deadline (504, no more tries) or the per-try timeout (retriable).
    fn bound_reached(&self, endpoint: &Endpoint, bound: Instant) -> TryOutcome {
        if let Some(deadline) = self
            .deadline
            .filter(|d| d.at <= bound && d.at <= Instant::now())
        {
            self.cluster.count_timeout(deadline.kind);
            let message = self.timeout_message(endpoint, &deadline);
            return TryOutcome::Stop(Stop::Reply(StatusCode::GATEWAY_TIMEOUT, message));
        }
        self.cluster.count_timeout(TimeoutKind::PerTry);
        let per_try = self
            .route
            .retry
            .as_ref()
            .and_then(|p| p.per_try_timeout)
            .unwrap_or_default();
        TryOutcome::Failed(
            Failure::PerTryTimeout,
            UpstreamError::Connect(ConnectError::Timeout(per_try)),
        )
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
    ) -> Result<Option<Frame<Bytes>>, TryOutcome> {
        let frame = response.body_mut().frame();
        let frame = match self.try_bound() {
            None => frame.await,
            Some(bound) => match tokio::time::timeout_at(bound, frame).await {
                Ok(frame) => frame,
                Err(_) => return Err(self.bound_reached(endpoint, bound)),
            },
        };
        match frame {
            None => Ok(None),
            Some(Ok(frame)) => Ok(Some(frame)),
            Some(Err(error)) => Err(TryOutcome::Failed(
                Failure::Reset,
                UpstreamError::Send { error },
            )),
        }
    }

    /// One try, bounded by the per-try timeout and the request's deadline.
    async fn one_try(
        &self,
        endpoint: &Endpoint,
        request: Request<RequestBody>,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, TryOutcome> {
        let bound = self.try_bound();
        let sent = attempt::send(endpoint, request, self.version, exchange);
        let result = match bound {
            None => sent.await,
            Some(bound) => match tokio::time::timeout_at(bound, sent).await {
                Ok(result) => result,
                Err(_) => return Err(self.bound_reached(endpoint, bound)),
            },
        };
        match result {
            Ok(response) => Ok(response),
            Err(TryError::Overloaded(limit)) => Err(TryOutcome::Stop(Stop::Overloaded(limit))),
            Err(TryError::Failed { failure, error }) => {
                if matches!(error, UpstreamError::Connect(ConnectError::Timeout(_))) {
                    self.cluster.count_timeout(TimeoutKind::Connect);
                }
                Err(TryOutcome::Failed(failure, error))
            }
        }
    }

    fn retry_reason(&self, failure: Failure, retries_so_far: usize) -> Option<&'static str> {
        let policy = self.route.retry.as_ref()?;
        if retries_so_far >= policy.attempts as usize {
            return None;
        }
        policy.matches(failure, &self.parts.method)
    }

    /// The body can be sent again, and the budget and `max_retries` allow
    /// one more retry. A body that outgrew the retry buffer is not retried:
    /// the client gets the failed try's answer.
    fn may_retry(
        &self,
        slot: &mut Option<crate::cluster::limits::Held>,
        template: Option<&RequestBody>,
    ) -> bool {
        if template.is_some_and(|t| !t.can_replay()) {
            return false;
        }
        if let Some(budget) = &self.backend.budget
            && !budget.try_retry()
        {
            return false;
        }
        match self.cluster.limits().take(Limit::Retries) {
            Ok(held) => {
                *slot = Some(held);
                true
            }
            Err(_) => false,
        }
    }

    /// Counts the retry and waits its backoff, unless the deadline comes first.
    async fn before_retry(&self, reason: &'static str, retry: usize) -> Result<(), Stop> {
        self.cluster.count_retry(reason);
        let policy = self.route.retry.as_ref().expect("retrying needs a policy");
        let wait_until = Instant::now() + policy.backoff(retry as u32);
        if let Some(deadline) = self.deadline
            && deadline.at <= wait_until
        {
            tokio::time::sleep_until(deadline.at).await;
            self.cluster.count_timeout(deadline.kind);
            let message = format!(
                "upstream timeout: {} while retrying cluster {:?}",
                deadline.describe(&self.route.name),
                self.cluster.name
            );
            return Err(Stop::Reply(StatusCode::GATEWAY_TIMEOUT, message));
        }
        tokio::time::sleep_until(wait_until).await;
        Ok(())
    }

    fn give_up_body(&self) -> Stop {
        Stop::Reply(
            StatusCode::BAD_GATEWAY,
            format!(
                "upstream error: cluster {:?}: the request body was larger than the retry buffer, so it could not be sent again",
                self.cluster.name
            ),
        )
    }

    fn timeout_message(&self, endpoint: &Endpoint, deadline: &Deadline) -> String {
        format!(
            "upstream timeout: {} before cluster {:?} endpoint {} responded",
            deadline.describe(&self.route.name),
            self.cluster.name,
            endpoint.address
        )
    }

    /// 503 when no connection could be had, 502 when the upstream failed the
    /// exchange, 504 for a per-try timeout; the body names the cluster, the
    /// endpoint and the cause.
    fn failure_stop(&self, endpoint: &Endpoint, failure: Failure, error: UpstreamError) -> Stop {
        let (status, what) = match (failure, &error) {
            (Failure::PerTryTimeout, _) => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream per-try timeout")
            }
            (_, UpstreamError::Connect(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error")
            }
            (_, UpstreamError::Send { .. }) => (StatusCode::BAD_GATEWAY, "upstream error"),
        };
        let message = format!(
            "{what}: cluster {:?} endpoint {}: {error}",
            self.cluster.name, endpoint.address
        );
        tracing::debug!(%message, "request failed upstream");
        Stop::Reply(status, message)
    }
}

enum TryOutcome {
    Stop(Stop),
    Failed(Failure, UpstreamError),
}

/// A different but deterministic key for a retry, so a consistent-hash
/// retry can land on another endpoint.
fn rehash(hash: u64, retry: usize) -> u64 {
    xxhash_rust::xxh64::xxh64(&hash.to_le_bytes(), retry as u64)
}

/// `grpc-status` in a header block (a trailers-only response's headers, or trailers).
fn grpc_status_in(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// 503 for a failure before any upstream exchange (no connection), naming
/// the cluster, the endpoint and the cause; also used for upgrades.
pub fn failure_reply(
    exchange: Exchange,
    cluster: &Cluster,
    endpoint: &Endpoint,
    error: UpstreamError,
    grpc: bool,
) -> Response<ResponseBody> {
    let (status, what) = match error {
        UpstreamError::Connect(_) => (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error"),
        UpstreamError::Send { .. } => (StatusCode::BAD_GATEWAY, "upstream error"),
    };
    let message = format!(
        "{what}: cluster {:?} endpoint {}: {error}",
        cluster.name, endpoint.address
    );
    local_reply::reply(exchange, status, &message, grpc)
}

fn no_endpoint(exchange: Exchange, cluster: &Cluster, grpc: bool) -> Response<ResponseBody> {
    let message = format!(
        "no endpoint available: cluster {:?} has no healthy endpoints",
        cluster.name
    );
    local_reply::reply(exchange, StatusCode::SERVICE_UNAVAILABLE, &message, grpc)
}

/// 503 at once, with `x-remora-overloaded: true`, when a circuit breaker is open.
fn overloaded(
    exchange: Exchange,
    cluster: &Cluster,
    limit: Limit,
    grpc: bool,
) -> Response<ResponseBody> {
    let message = format!(
        "overloaded: cluster {:?} is at its {} circuit breaker",
        cluster.name,
        limit.name()
    );
    let mut response =
        local_reply::reply(exchange, StatusCode::SERVICE_UNAVAILABLE, &message, grpc);
    response
        .headers_mut()
        .insert(OVERLOADED, HeaderValue::from_static("true"));
    response
}

fn aborted(exchange: Exchange, abort: Abort, grpc: bool) -> Response<ResponseBody> {
    match abort {
        Abort::Http(status) => {
            local_reply::reply(exchange, status, "fault injected: aborted", grpc)
        }
        Abort::Grpc(code) => {
            let mut response =
                local_reply::reply(exchange, StatusCode::OK, "fault injected: aborted", true);
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from(code));
            response
        }
    }
}

/// 429 (or RESOURCE_EXHAUSTED) with `retry-after` in whole seconds.
pub fn rate_limited(
    exchange: Exchange,
    wait: std::time::Duration,
    scope: &str,
    grpc: bool,
) -> Response<ResponseBody> {
    let message = format!(
        "rate limited by {scope}; retry after {:.3}s",
        wait.as_secs_f64()
    );
    let mut response = local_reply::reply(exchange, StatusCode::TOO_MANY_REQUESTS, &message, grpc);
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

//! One request's bookkeeping from its headers to the end of its response:
//! which stats it counts in, the endpoint it occupies, the pooled HTTP/1
//! connection it borrows, and its access-log line. All of it is settled when
//! the exchange drops, whichever way the request ended.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use std::net::SocketAddr;

use http::{HeaderMap, Method, Request, StatusCode, Version};

use super::handler::ConnContext;
use super::lifetime::PREMATURE_RESET_LIFETIME;
use crate::breaker::Held;
use crate::cluster::{Cluster, FailedBy, TimeoutKind};
use crate::endpoint::ActiveRequest;
use crate::listener::ListenerState;
use crate::pool::{Http1Lease, Http2Lease};
use crate::route::RouteAction;
use crate::telemetry::LabelValue;
use crate::telemetry::access_log::AccessRecord;
use crate::telemetry::tap::TapEvent;
use crate::telemetry::{Classification, RequestStats};
use crate::trace::{self, ClientSpan, Trace, Tracer};

/// Where the request's stats go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StatsAt {
    NoRoute,
    /// A route's direct response.
    Direct {
        route: usize,
    },
    /// A route's backend.
    Backend {
        route: usize,
        backend: usize,
    },
    /// A route's response cache answered.
    Cached {
        route: usize,
    },
}

pub(crate) struct Seed {
    listener: Arc<ListenerState>,
    conn: Arc<ConnContext>,
}

impl Seed {
    pub(crate) fn start<B>(self, request: &Request<B>) -> Exchange {
        Exchange::start(self.listener, self.conn, request)
    }
}

pub(crate) struct Exchange {
    started: Instant,
    listener: Arc<ListenerState>,
    /// The downstream connection, whose in-flight count this request is in.
    conn: Arc<ConnContext>,
    stats_at: StatsAt,
    status: Option<StatusCode>,
    bytes_sent: u64,
    upstream: Option<ActiveRequest>,
    http1: Option<Http1Lease>,
    /// Keeps the HTTP/2 stream counted against its connection until the exchange ends.
    http2: Option<Http2Lease>,
    /// The request's place under the cluster's `max_requests`.
    limit: Option<Held>,
    /// The request's places under adaptive concurrency limits: the
    /// listener's, the cluster's.
    adaptive: [Option<crate::adaptive::Permit>; 2],
    /// Only kept when an access log is configured.
    summary: Option<Box<Summary>>,
    /// The downstream request is HTTP/2 (a stream the client can reset).
    downstream_http2: bool,
    /// Who made the request fail, and how.
    failure: Option<(FailedBy, &'static str)>,
    /// The response ended, cleanly or by the proxy's or upstream's doing;
    /// an exchange dropped before is one the client abandoned.
    ended: bool,
    /// What a route's response cache did (the access log's `cache`).
    cache: Option<&'static str>,
    /// With `tracing:`: the request's trace and its spans.
    trace: Option<Box<Traced>>,
    /// The response's `grpc-status`, from its head or trailers.
    grpc_status: Option<u32>,
}

/// A traced request: its place in the trace, what its spans will say, and
/// the last try's span, which ends with the response.
struct Traced {
    tracer: Arc<Tracer>,
    trace: Trace,
    method: Method,
    /// Only kept when sampled.
    place: Option<trace::PathHost>,
    open_try: Option<(ClientSpan, SocketAddr, StatusCode)>,
}

/// How an upstream try ended, for its span.
pub(crate) enum TryEnd {
    /// A response, retried.
    Status(StatusCode),
    /// The response passed on: its span ends with the exchange.
    Kept(StatusCode),
    /// No response.
    Failed(&'static str),
}

struct Summary {
    time: SystemTime,
    request_id: Option<String>,
    method: Method,
    version: Version,
    authority: String,
    path: String,
}

impl Exchange {
    /// The SPIFFE ID of the connection's mTLS peer.
    pub(super) fn peer_identity(&self) -> Option<&Arc<str>> {
        self.conn.origin.peer_identity.as_ref()
    }

    pub(crate) fn start<B>(
        listener: Arc<ListenerState>,
        conn: Arc<ConnContext>,
        request: &Request<B>,
    ) -> Exchange {
        conn.activity.begin();
        let summarized = listener.access_log.is_some() || listener.taps.any();
        let summary = summarized.then(|| {
            let uri = request.uri();
            let authority = super::authority::of(uri, request.headers());
            Box::new(Summary {
                time: SystemTime::now(),
                request_id: request
                    .headers()
                    .get(super::handler::REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                method: request.method().clone(),
                version: request.version(),
                authority: authority.to_string(),
                path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            })
        });
        let trace = listener.tracer.as_ref().map(|tracer| {
            let trace = tracer.start(request.headers());
            let place = trace.sampled.then(|| {
                let uri = request.uri();
                trace::PathHost::new(uri.path(), super::authority::of(uri, request.headers()))
            });
            Box::new(Traced {
                tracer: tracer.clone(),
                trace,
                method: request.method().clone(),
                place,
                open_try: None,
            })
        });
        Exchange {
            trace,
            started: Instant::now(),
            listener,
            conn,
            stats_at: StatsAt::NoRoute,
            status: None,
            bytes_sent: 0,
            upstream: None,
            http1: None,
            http2: None,
            limit: None,
            adaptive: [None, None],
            summary,
            downstream_http2: request.version() == Version::HTTP_2,
            failure: None,
            ended: false,
            cache: None,
            grpc_status: None,
        }
    }

    /// What starting another exchange on the same connection and listener
    /// takes (a cache's background refresh, or its answer after the
    /// upstream leg failed).
    pub(crate) fn seed(&self) -> Seed {
        Seed {
            listener: self.listener.clone(),
            conn: self.conn.clone(),
        }
    }

    pub(crate) fn stats_at(&self) -> StatsAt {
        self.stats_at
    }

    /// A try begins: its span's context goes upstream in `headers`.
    pub(crate) fn begin_try(
        &mut self,
        attempt: u32,
        headers: &mut HeaderMap,
    ) -> Option<ClientSpan> {
        let traced = self.trace.as_ref()?;
        let span = traced.trace.client(attempt);
        traced.tracer.inject(headers, &traced.trace, &span);
        Some(span)
    }

    /// A try ended: its span is recorded, or, for the response passed on,
    /// kept until the response ends.
    pub(crate) fn end_try(&mut self, span: ClientSpan, endpoint: SocketAddr, end: TryEnd) {
        if !self.trace.as_ref().is_some_and(|t| t.trace.sampled) {
            return;
        }
        let cluster = self.cluster_name();
        let Some(traced) = self.trace.as_mut() else {
            return;
        };
        let (status, failure) = match end {
            TryEnd::Kept(status) => {
                traced.open_try = Some((span, endpoint, status));
                return;
            }
            TryEnd::Status(status) => (Some(status), None),
            TryEnd::Failed(what) => (None, Some(what)),
        };
        let record = client_span(traced, &span, endpoint, status, failure, cluster);
        traced.tracer.export(record);
    }

    fn cluster_name(&self) -> Option<Arc<str>> {
        self.cluster().map(|c| c.name.clone())
    }

    /// The trace and server span ids, for the access log.
    pub(crate) fn trace_ids(&self) -> Option<(String, String)> {
        self.trace
            .as_ref()
            .map(|t| (t.trace.trace_id_hex(), t.trace.span_id_hex()))
    }

    /// Records the spans still open: the last try's, then the server span.
    fn finish_trace(&mut self) {
        let Some(mut traced) = self.trace.take().filter(|t| t.trace.sampled) else {
            return;
        };
        let cluster = self.cluster_name();
        if let Some((span, endpoint, status)) = traced.open_try.take() {
            let failure = self
                .failure
                .filter(|(by, _)| *by == FailedBy::Upstream)
                .map(|f| f.1);
            let record = client_span(
                &traced,
                &span,
                endpoint,
                Some(status),
                failure,
                cluster.clone(),
            );
            traced.tracer.export(record);
        }
        let route = self.route_name();
        let attributes = trace::SpanAttributes {
            method: traced.method.clone(),
            place: traced.place.take(),
            peer: Some(self.conn.peer),
            status: self.status.map(|s| s.as_u16()),
            listener: Some(self.listener.name.clone()),
            route,
            cluster,
            upstream: self.upstream.as_ref().map(|u| u.endpoint().address),
            peer_identity: self.conn.origin.peer_identity.clone(),
            error_type: self.failure.map(|(_, what)| what),
            error: self.status.is_none_or(|s| s.is_server_error()) || self.failure.is_some(),
        };
        traced.tracer.export(traced.trace.record(None, attributes));
    }

    fn route_name(&self) -> Option<Arc<str>> {
        let http = self.listener.http_routes()?;
        match self.stats_at {
            StatsAt::NoRoute => None,
            StatsAt::Direct { route }
            | StatsAt::Cached { route }
            | StatsAt::Backend { route, .. } => Some(http.table.routes()[route].name.clone()),
        }
    }

    /// The route's and cluster's names (empty when none).
    fn route_and_cluster(&self) -> (&str, &str) {
        let Some(http) = self.listener.http_routes() else {
            return ("", "");
        };
        match self.stats_at {
            StatsAt::NoRoute => ("", ""),
            StatsAt::Direct { route } | StatsAt::Cached { route } => {
                (&*http.table.routes()[route].name, "")
            }
            StatsAt::Backend { route, backend } => {
                let route = &http.table.routes()[route];
                let cluster = match &route.action {
                    RouteAction::Forward(backends) => &*backends.get(backend).cluster.name,
                    RouteAction::Respond(_) => "",
                };
                (&*route.name, cluster)
            }
        }
    }

    /// What a route's response cache did with the request.
    pub(crate) fn set_cache(&mut self, what: &'static str) {
        self.cache = Some(what);
    }

    pub(crate) fn set_stats(&mut self, at: StatsAt) {
        self.stats_at = at;
    }

    pub(crate) fn set_status(&mut self, status: StatusCode) {
        self.status = Some(status);
    }

    /// The response's head: its status, and a gRPC status if the head
    /// carries one (trailers-only); a later trailers frame may set it.
    pub(crate) fn set_response_head(&mut self, status: StatusCode, headers: &HeaderMap) {
        self.status = Some(status);
        self.note_grpc_status(headers);
    }

    /// A `grpc-status` in response headers or trailers.
    pub(crate) fn note_grpc_status(&mut self, headers: &HeaderMap) {
        const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
        if let Some(code) = headers
            .get(GRPC_STATUS)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.parse().ok())
        {
            self.grpc_status = Some(code);
        }
    }

    pub(crate) fn set_upstream(&mut self, active: ActiveRequest) {
        self.upstream = Some(active);
    }

    /// Lends the HTTP/1 connection to this exchange until its response ends.
    pub(crate) fn hold_http1(&mut self, lease: Http1Lease) {
        self.http1 = Some(lease);
    }

    pub(crate) fn hold_http2(&mut self, lease: Http2Lease) {
        self.http2 = Some(lease);
    }

    /// `cluster`: the cluster's limit, else the listener's.
    pub(crate) fn hold_adaptive(&mut self, permit: crate::adaptive::Permit, cluster: bool) {
        self.adaptive[usize::from(cluster)] = Some(permit);
    }

    /// The upstream's response headers arrived: adaptive concurrency's
    /// latency sample.
    pub(crate) fn response_started(&mut self) {
        for permit in self.adaptive.iter_mut().flatten() {
            permit.record();
        }
    }

    pub(crate) fn hold_limit(&mut self, held: Held) {
        self.limit = Some(held);
    }

    pub(crate) fn add_bytes_sent(&mut self, bytes: usize) {
        self.bytes_sent += bytes as u64;
    }

    /// The response ended cleanly: the connection may serve another request.
    pub(crate) fn body_finished(&mut self) {
        self.ended = true;
        if let (Some(lease), Some(upstream)) = (self.http1.take(), &self.upstream) {
            upstream.endpoint().pool.release_http1(lease);
        }
    }

    /// A timeout cut the response body short.
    pub(crate) fn timed_out_streaming(&mut self, kind: TimeoutKind) {
        self.ended = true;
        self.http1 = None;
        let what = match kind {
            TimeoutKind::StreamIdle => "stream_idle_timeout",
            _ => "route_timeout",
        };
        self.failed(FailedBy::Upstream, what);
        if let Some(cluster) = self.cluster() {
            cluster.count_timeout(kind);
        }
        tracing::debug!(listener = %self.listener.name, kind = kind.label(), "timeout while streaming a response");
    }

    /// Records who made the request fail and how (the access log's
    /// `failed_by` and `failure`), counted per cluster.
    pub(crate) fn failed(&mut self, by: FailedBy, what: &'static str) {
        self.failure = Some((by, what));
        if let Some(cluster) = self.cluster() {
            cluster.count_failure(by);
        }
    }

    /// The proxy answered itself (the whole response is local).
    pub(crate) fn replied_locally(&mut self) {
        self.ended = true;
    }

    /// The upstream's response body failed.
    pub(crate) fn upstream_body_failed(&mut self) {
        self.ended = true;
        self.failed(FailedBy::Upstream, "upstream_body");
    }

    /// The cluster the request went to, if it was forwarded.
    fn cluster(&self) -> Option<&Arc<Cluster>> {
        let http = self.listener.http_routes()?;
        let StatsAt::Backend { route, backend } = self.stats_at else {
            return None;
        };
        match &http.table.routes()[route].action {
            RouteAction::Forward(backends) => Some(&backends.get(backend).cluster),
            RouteAction::Respond(_) => None,
        }
    }

    fn stats(&self) -> Option<&RequestStats> {
        let http = self.listener.http_routes()?;
        match self.stats_at {
            StatsAt::NoRoute => Some(&http.no_route),
            StatsAt::Cached { route } => {
                http.table.routes()[route].cache.as_ref().map(|c| &c.stats)
            }
            StatsAt::Direct { route } | StatsAt::Backend { route, .. } => {
                match (&http.table.routes()[route].action, self.stats_at) {
                    (RouteAction::Respond(direct), _) => Some(&direct.stats),
                    (RouteAction::Forward(backends), StatsAt::Backend { backend, .. }) => {
                        Some(&backends.get(backend).stats)
                    }
                    _ => None,
                }
            }
        }
    }

    fn tap(&self, summary: &Summary) {
        let (route, cluster) = self.route_and_cluster();
        self.listener
            .taps
            .publish(&self.listener.name, route, &summary.path, || TapEvent {
                time: crate::telemetry::access_log::format_rfc3339_millis(summary.time),
                direction: self.listener.direction.as_str(),
                listener: &self.listener.name,
                route,
                method: summary.method.as_str(),
                authority: &summary.authority,
                path: &summary.path,
                status: self.status.map_or(0, |s| s.as_u16()),
                grpc_status: self.grpc_status,
                latency_ms: self.started.elapsed().as_secs_f64() * 1000.0,
                cluster,
                upstream: self
                    .upstream
                    .as_ref()
                    .map(|u| u.endpoint().address.to_string()),
                bytes_sent: self.bytes_sent,
                trace_id: self.trace.as_ref().map(|t| t.trace.trace_id_hex()),
                peer_identity: self.conn.origin.peer_identity.as_deref(),
                request_id: summary.request_id.as_deref(),
            });
    }

    fn write_access_log(&self, summary: &Summary) {
        let Some(log) = &self.listener.access_log else {
            return;
        };
        if self.listener.http_routes().is_none() {
            return;
        }
        let (route, cluster) = self.route_and_cluster();
        let trace_ids = self.trace_ids();
        log.write(&AccessRecord {
            time: summary.time,
            listener: &self.listener.name,
            route,
            downstream: self.conn.peer.to_string(),
            protocol: version_name(summary.version),
            method: summary.method.as_str(),
            authority: &summary.authority,
            path: &summary.path,
            status: self.status.map_or(0, |s| s.as_u16()),
            duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            cluster,
            upstream: self
                .upstream
                .as_ref()
                .map(|u| u.endpoint().address.to_string()),
            bytes_sent: self.bytes_sent,
            failed_by: self.failure.map(|(by, _)| by.label()),
            failure: self.failure.map(|(_, what)| what),
            direction: self.conn.origin.captured.map(|c| c.direction.as_str()),
            original_dst: self.conn.origin.captured.map(|c| c.original.to_string()),
            peer_identity: self.conn.origin.peer_identity.as_deref(),
            request_id: summary.request_id.as_deref(),
            cache: self.cache,
            trace_id: trace_ids.as_ref().map(|t| t.0.as_str()),
            span_id: trace_ids.as_ref().map(|t| t.1.as_str()),
        });
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.ended && self.upstream.is_some() && self.failure.is_none() {
            self.failed(FailedBy::Client, "client_cancelled");
        }
        let classification = Classification::of(self.status, self.grpc_status);
        if let Some(stats) = self.stats() {
            if let Some(status) = self.status {
                stats.record_status(status);
            }
            stats.record_outcome(classification);
            stats.record_duration(self.started.elapsed());
        }
        if let Some(peer) = &self.conn.peer_stats {
            peer.increment(classification);
        }
        if let Some(summary) = self.summary.take() {
            self.write_access_log(&summary);
            if self.listener.taps.any() {
                self.tap(&summary);
            }
        }
        self.finish_trace();
        if self.downstream_http2
            && !self.ended
            && self.upstream.is_some()
            && self.started.elapsed() < PREMATURE_RESET_LIFETIME
        {
            self.conn.activity.premature_reset();
        }
        self.conn.activity.end();
    }
}

fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

fn client_span(
    traced: &Traced,
    span: &ClientSpan,
    endpoint: SocketAddr,
    status: Option<StatusCode>,
    failure: Option<&'static str>,
    cluster: Option<Arc<str>>,
) -> trace::SpanRecord {
    let attributes = trace::SpanAttributes {
        method: traced.method.clone(),
        peer: Some(endpoint),
        status: status.map(|s| s.as_u16()),
        cluster,
        upstream: Some(endpoint),
        error_type: failure,
        error: failure.is_some() || status.is_some_and(|s| s.is_server_error()),
        ..trace::SpanAttributes::default()
    };
    traced.trace.record(Some(span), attributes)
}

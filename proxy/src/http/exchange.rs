//! One request's bookkeeping from its headers to the end of its response:
//! which stats it counts in, the endpoint it occupies, the pooled HTTP/1
//! connection it borrows, and its access-log line. All of it is settled when
//! the exchange drops, whichever way the request ended.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{Method, Request, StatusCode, Version};

use super::handler::ConnContext;
use super::lifetime::PREMATURE_RESET_LIFETIME;
use crate::breaker::Held;
use crate::cluster::{Cluster, FailedBy, TimeoutKind};
use crate::endpoint::ActiveRequest;
use crate::listener::ListenerState;
use crate::pool::{Http1Lease, Http2Lease};
use crate::route::RouteAction;
use crate::telemetry::LabelValue;
use crate::telemetry::RequestStats;
use crate::telemetry::access_log::AccessRecord;

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
        let summary = listener.access_log.as_ref().map(|_| {
            let uri = request.uri();
            let authority = uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| {
                    request
                        .headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                })
                .unwrap_or_default();
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
        Exchange {
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

    fn write_access_log(&self, summary: &Summary) {
        let Some(log) = &self.listener.access_log else {
            return;
        };
        let Some(http) = self.listener.http_routes() else {
            return;
        };
        let (route, cluster) = match self.stats_at {
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
        };
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
        });
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.ended && self.upstream.is_some() && self.failure.is_none() {
            self.failed(FailedBy::Client, "client_cancelled");
        }
        if let Some(stats) = self.stats() {
            if let Some(status) = self.status {
                stats.record_status(status);
            }
            stats.record_duration(self.started.elapsed());
        }
        if let Some(summary) = self.summary.take() {
            self.write_access_log(&summary);
        }
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

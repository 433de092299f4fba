//! Telemetry: the proxy's own Prometheus registry (no global recorder, so two
//! proxies in one process keep apart), the metric names, and the per-request
//! stat handles that a snapshot resolves once. Also process logs and the
//! access log.

pub(crate) mod access_log;
mod labels;
pub mod logging;
pub mod tap;

use std::time::Duration;

pub(crate) use labels::{CountersBy, LabelValue, label_values};

use http::StatusCode;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub(crate) const REQUESTS_TOTAL: &str = "remora_requests_total";
pub(crate) const REQUEST_DURATION: &str = "remora_request_duration_seconds";
pub(crate) const RESPONSES_TOTAL: &str = "remora_responses_total";
pub(crate) const PEER_REQUESTS_TOTAL: &str = "remora_peer_requests_total";
pub(crate) const DOWNSTREAM_CONNECTIONS_ACTIVE: &str = "remora_downstream_connections_active";
pub(crate) const DOWNSTREAM_CONNECTIONS_TOTAL: &str = "remora_downstream_connections_total";
pub(crate) const UPSTREAM_CONNECTIONS_ACTIVE: &str = "remora_upstream_connections_active";
pub(crate) const UPSTREAM_CONNECTIONS_CREATED: &str = "remora_upstream_connections_created_total";
pub(crate) const UPSTREAM_CONNECT_FAILURES: &str = "remora_upstream_connect_failures_total";
pub(crate) const TCP_BYTES_TOTAL: &str = "remora_tcp_bytes_total";
pub(crate) const LB_FALLBACK_TOTAL: &str = "remora_lb_fallback_total";
pub(crate) const DNS_RESOLUTIONS_TOTAL: &str = "remora_dns_resolutions_total";
pub(crate) const CIRCUIT_OPEN_TOTAL: &str = "remora_circuit_open_total";
pub(crate) const UPSTREAM_RETRIES_TOTAL: &str = "remora_upstream_retries_total";
pub(crate) const REQUEST_FAILURES_TOTAL: &str = "remora_request_failures_total";
pub(crate) const PASSTHROUGH_CONNECTIONS_TOTAL: &str = "remora_passthrough_connections_total";
pub(crate) const AUTHZ_DENIED_TOTAL: &str = "remora_authz_denied_total";
pub(crate) const TLS_HANDSHAKE_ERRORS_TOTAL: &str = "remora_tls_handshake_errors_total";
pub(crate) const TLS_HANDSHAKES_TOTAL: &str = "remora_tls_handshakes_total";
pub(crate) const GLOBAL_RATE_LIMIT_CALLS: &str = "remora_rate_limit_redis_calls_total";
pub(crate) const GLOBAL_RATE_LIMIT_FAILURES: &str = "remora_rate_limit_redis_failures_total";
pub(crate) const ADAPTIVE_REJECTED_TOTAL: &str = "remora_adaptive_concurrency_rejected_total";
pub(crate) const ADAPTIVE_LIMIT: &str = "remora_adaptive_concurrency_limit";
pub(crate) const ADAPTIVE_MIN_RTT: &str = "remora_adaptive_concurrency_min_rtt_seconds";
pub(crate) const CACHE_REQUESTS_TOTAL: &str = "remora_cache_requests_total";
pub(crate) const CACHE_ENTRIES: &str = "remora_cache_entries";
pub(crate) const CACHE_BYTES: &str = "remora_cache_bytes";
pub(crate) const CACHE_EVICTIONS_TOTAL: &str = "remora_cache_evictions_total";
pub(crate) const CACHE_REVALIDATIONS_TOTAL: &str = "remora_cache_revalidations_total";
pub(crate) const CACHE_STALE_IF_ERROR_TOTAL: &str = "remora_cache_stale_if_error_total";
pub(crate) const CACHE_COLLAPSED_TOTAL: &str = "remora_cache_collapsed_total";
pub(crate) const TRACING_SPANS_EXPORTED_TOTAL: &str = "remora_tracing_spans_exported_total";
pub(crate) const TRACING_SPANS_DROPPED_TOTAL: &str = "remora_tracing_spans_dropped_total";
pub(crate) const IDENTITY_CERT_EXPIRY: &str = "remora_identity_cert_expiry_timestamp_seconds";
pub(crate) const IDENTITY_RENEWALS_TOTAL: &str = "remora_identity_renewals_total";
pub(crate) const CAPTURED_CONNECTIONS_TOTAL: &str = "remora_captured_connections_total";
pub(crate) const PROTOCOL_DETECT_TIMEOUTS_TOTAL: &str = "remora_protocol_detect_timeouts_total";
pub(crate) const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "remora_retry_budget_exhausted_total";
pub(crate) const OUTLIER_EJECTIONS_TOTAL: &str = "remora_outlier_ejections_total";
pub(crate) const ENDPOINTS_EJECTED: &str = "remora_endpoints_ejected";
pub(crate) const RATE_LIMITED_TOTAL: &str = "remora_rate_limited_total";
pub(crate) const TIMEOUTS_TOTAL: &str = "remora_timeouts_total";
pub(crate) const HEALTH_CHECK_FAILURES_TOTAL: &str = "remora_health_check_failures_total";
pub(crate) const LISTENER_REJECTED_TOTAL: &str = "remora_listener_connections_rejected_total";
pub(crate) const CONFIG_RELOADS_TOTAL: &str = "remora_config_reloads_total";
pub(crate) const XDS_CONNECTED: &str = "remora_xds_connected";
pub(crate) const XDS_RESPONSES_TOTAL: &str = "remora_xds_responses_total";

/// Upper bounds of the request-duration histogram, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// How often histogram samples are folded into buckets; bounds their memory
/// when nobody scrapes `/metrics`.
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

pub struct Telemetry {
    /// Live taps (`GET /tap`).
    pub(crate) taps: std::sync::Arc<tap::Taps>,
    recorder: std::sync::Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    reloads_ok: Counter,
    reloads_rejected: Counter,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(REQUEST_DURATION.to_string()),
                DURATION_BUCKETS,
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let describe = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_counter(name.into(), unit, help.into());
        };
        describe(
            REQUESTS_TOTAL,
            None,
            "HTTP requests answered, by listener, route, cluster and status class.",
        );
        describe(
            REQUEST_DURATION,
            Some(Unit::Seconds),
            "Time from request headers to the end of the response body.",
        );
        describe(
            RESPONSES_TOTAL,
            None,
            "HTTP requests by listener, route, cluster and classification: failure is a 5xx, a gRPC status other than OK, or no response at all.",
        );
        describe(
            PEER_REQUESTS_TOTAL,
            None,
            "Requests on mTLS listeners by the caller's SPIFFE ID and classification (at most 256 identities per listener; the rest count as other).",
        );
        describe(
            DOWNSTREAM_CONNECTIONS_ACTIVE,
            None,
            "Open client connections per listener.",
        );
        describe(
            DOWNSTREAM_CONNECTIONS_TOTAL,
            None,
            "Client connections accepted, per listener and worker.",
        );
        describe(
            UPSTREAM_CONNECTIONS_ACTIVE,
            None,
            "Open connections to a cluster's endpoints.",
        );
        describe(
            UPSTREAM_CONNECTIONS_CREATED,
            None,
            "Connections opened to a cluster's endpoints.",
        );
        describe(
            UPSTREAM_CONNECT_FAILURES,
            None,
            "Failed or timed-out connection attempts to a cluster's endpoints.",
        );
        describe(
            TCP_BYTES_TOTAL,
            None,
            "Bytes relayed by TCP listeners; direction rx is from the client, tx is to it.",
        );
        describe(
            TRACING_SPANS_EXPORTED_TOTAL,
            None,
            "Spans the OTLP collector accepted.",
        );
        describe(
            TRACING_SPANS_DROPPED_TOTAL,
            None,
            "Spans dropped, by reason: queue_full (the export queue was full), export_failed (the collector failed or was too slow).",
        );
        describe(
            CACHE_REQUESTS_TOTAL,
            None,
            "Requests on routes with a response cache, by listener, route and result (hit, miss, stale, bypass).",
        );
        describe(
            CACHE_ENTRIES,
            None,
            "Entries in a route's response cache (responses and Vary indexes).",
        );
        describe(
            CACHE_BYTES,
            None,
            "Bytes held by a route's response cache: bodies, headers, trailers and keys.",
        );
        describe(
            CACHE_EVICTIONS_TOTAL,
            None,
            "Entries removed from a route's response cache, by reason (capacity: max_entries or max_bytes; expired).",
        );
        describe(
            CACHE_REVALIDATIONS_TOTAL,
            None,
            "Conditional requests for stale entries, by result (not_modified: 304 refreshed the entry; modified: a new response replaced it).",
        );
        describe(
            CACHE_STALE_IF_ERROR_TOTAL,
            None,
            "Stale entries served because the upstream failed (stale_if_error).",
        );
        describe(
            CACHE_COLLAPSED_TOTAL,
            None,
            "Cache misses that waited for a concurrent miss of the same key instead of going upstream.",
        );
        describe(
            AUTHZ_DENIED_TOTAL,
            None,
            "Requests (HTTP: answered 403) and TCP connections (closed) denied by authorization, by listener and policy (default-deny: no allow policy matched).",
        );
        describe(
            TLS_HANDSHAKE_ERRORS_TOTAL,
            None,
            "TLS handshakes a listener refused or lost, by reason (not_tls, client_certificate, protocol, timeout, closed).",
        );
        describe(
            GLOBAL_RATE_LIMIT_CALLS,
            None,
            "Calls to Redis for a global rate limit's leases, by limit (listener/NAME or route/LISTENER/ROUTE).",
        );
        describe(
            GLOBAL_RATE_LIMIT_FAILURES,
            None,
            "Requests that got a global rate limit's failure verdict (open: admitted, closed: 429) because Redis failed or was too slow.",
        );
        describe(
            ADAPTIVE_REJECTED_TOTAL,
            None,
            "Requests answered 503 because the cluster's adaptive concurrency limit was reached.",
        );
        describe(
            ADAPTIVE_LIMIT,
            None,
            "The cluster's adaptive concurrency limit: requests it lets be outstanding.",
        );
        describe(
            ADAPTIVE_MIN_RTT,
            None,
            "The cluster's last measured ideal latency (minRTT) for adaptive concurrency.",
        );
        describe(
            TLS_HANDSHAKES_TOTAL,
            None,
            "TLS handshakes a listener completed, by session (full, or resumed from a session ticket).",
        );
        describe(
            IDENTITY_CERT_EXPIRY,
            None,
            "When the proxy's current certificate expires, Unix seconds.",
        );
        describe(
            IDENTITY_RENEWALS_TOTAL,
            None,
            "Certificate requests to the mesh's CA, by result (ok, error).",
        );
        describe(
            CAPTURED_CONNECTIONS_TOTAL,
            None,
            "Connections a capture listener took, by direction and by the protocol detected (http1, http2, tls, tcp).",
        );
        describe(
            PROTOCOL_DETECT_TIMEOUTS_TOTAL,
            None,
            "Captured connections whose client sent nothing within detect_timeout, passed on as opaque TCP.",
        );
        describe(
            CONFIG_RELOADS_TOTAL,
            None,
            "Config reloads by result (ok or rejected).",
        );
        let counter = |result: &'static str| {
            recorder.register_counter(
                &Key::from_parts(CONFIG_RELOADS_TOTAL, vec![Label::new("result", result)]),
                &METADATA,
            )
        };
        let reloads_ok = counter("ok");
        let reloads_rejected = counter("rejected");
        Telemetry {
            taps: std::sync::Arc::default(),
            recorder: std::sync::Arc::new(recorder),
            handle,
            reloads_ok,
            reloads_rejected,
        }
    }

    pub(crate) fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    pub(crate) fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    pub(crate) fn histogram(
        &self,
        name: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Histogram {
        self.recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    pub(crate) fn record_reload(&self, accepted: bool) {
        if accepted {
            &self.reloads_ok
        } else {
            &self.reloads_rejected
        }
        .increment(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    pub(crate) fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

/// Request counters by status class plus the duration histogram for one
/// (listener, route, cluster) triple, resolved once per snapshot.
#[derive(Clone)]
pub(crate) struct RequestStats {
    by_class: CountersBy<StatusClass>,
    by_outcome: CountersBy<Classification>,
    duration: Histogram,
}

/// Whether a request succeeded, as the golden metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Classification {
    Success,
    Failure,
}

label_values!(Classification {
    Success => "success",
    Failure => "failure",
});

impl Classification {
    /// A failure is no response, a 5xx, or a gRPC status other than OK
    /// (as Linkerd classifies).
    pub(crate) fn of(status: Option<StatusCode>, grpc_status: Option<u32>) -> Classification {
        match (status, grpc_status) {
            (None, _) => Classification::Failure,
            (Some(s), _) if s.is_server_error() => Classification::Failure,
            (_, Some(g)) if g != 0 => Classification::Failure,
            _ => Classification::Success,
        }
    }
}

/// `remora_peer_requests_total` for the identities a listener's mTLS
/// peers present, registered on first sight (once per connection, not per
/// request), at most [`PeerStats::MAX`] of them.
pub(crate) struct PeerStats {
    recorder: std::sync::Arc<PrometheusRecorder>,
    listener: std::sync::Arc<str>,
    known: std::sync::Mutex<
        std::collections::HashMap<std::sync::Arc<str>, CountersBy<Classification>>,
    >,
    other: CountersBy<Classification>,
}

impl std::fmt::Debug for PeerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerStats")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl PeerStats {
    pub(crate) const MAX: usize = 256;

    pub(crate) fn new(telemetry: &Telemetry, listener: &str) -> PeerStats {
        PeerStats {
            recorder: telemetry.recorder.clone(),
            listener: listener.into(),
            known: std::sync::Mutex::default(),
            other: CountersBy::register(
                telemetry,
                PEER_REQUESTS_TOTAL,
                &[("listener", listener), ("peer_identity", "other")],
                "classification",
            ),
        }
    }

    /// The counters for one peer identity (a connection's, looked up when
    /// it is accepted).
    pub(crate) fn of(&self, identity: &std::sync::Arc<str>) -> CountersBy<Classification> {
        let mut known = crate::sync::lock(&self.known);
        if let Some(counters) = known.get(identity) {
            return counters.clone();
        }
        if known.len() >= Self::MAX {
            return self.other.clone();
        }
        let counters = CountersBy::register_with(
            &self.recorder,
            PEER_REQUESTS_TOTAL,
            &[("listener", &self.listener), ("peer_identity", identity)],
            "classification",
        );
        known.insert(identity.clone(), counters.clone());
        counters
    }
}

/// The `status_class` label: `1xx` … `5xx`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatusClass(u8);

impl StatusClass {
    fn of(status: StatusCode) -> StatusClass {
        StatusClass((status.as_u16() / 100).clamp(1, 5) as u8 - 1)
    }
}

impl LabelValue for StatusClass {
    const ALL: &'static [StatusClass] = &[
        StatusClass(0),
        StatusClass(1),
        StatusClass(2),
        StatusClass(3),
        StatusClass(4),
    ];

    fn label(self) -> &'static str {
        ["1xx", "2xx", "3xx", "4xx", "5xx"][self.index()]
    }

    fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Debug for RequestStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestStats")
    }
}

impl RequestStats {
    /// `route` and `cluster` are empty for requests no route (or no cluster) served.
    pub(crate) fn new(telemetry: &Telemetry, listener: &str, route: &str, cluster: &str) -> Self {
        let by_class = CountersBy::register(
            telemetry,
            REQUESTS_TOTAL,
            &[
                ("listener", listener),
                ("route", route),
                ("cluster", cluster),
            ],
            "status_class",
        );
        let by_outcome = CountersBy::register(
            telemetry,
            RESPONSES_TOTAL,
            &[
                ("listener", listener),
                ("route", route),
                ("cluster", cluster),
            ],
            "classification",
        );
        let duration = telemetry.histogram(
            REQUEST_DURATION,
            &[
                ("listener", listener),
                ("route", route),
                ("cluster", cluster),
            ],
        );
        RequestStats {
            by_class,
            by_outcome,
            duration,
        }
    }

    pub(crate) fn record_outcome(&self, classification: Classification) {
        self.by_outcome.increment(classification);
    }

    pub(crate) fn record_status(&self, status: StatusCode) {
        self.by_class.increment(StatusClass::of(status));
    }

    pub(crate) fn record_duration(&self, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the proxy defines: the `remora_*` names of this file.
    fn defined_metrics() -> Vec<String> {
        let source = include_str!("mod.rs");
        source
            .lines()
            .filter(|l| l.starts_with("pub(crate) const ") && l.contains(": &str = \"remora_"))
            .filter_map(|l| l.split('"').nth(1))
            .map(str::to_string)
            .collect()
    }

    /// The Grafana dashboard (charts/remora/dashboards/remora.json) asks only for metrics
    /// the proxy exports (a histogram's `_bucket`, `_sum`, `_count` too),
    /// and every panel has a query.
    #[test]
    fn every_dashboard_query_names_an_exported_metric() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/remora/dashboards/remora.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        let defined = defined_metrics();
        assert!(defined.len() > 30, "{defined:?}");
        let exported = |name: &str| {
            defined.iter().any(|d| {
                name == d
                    || (d == REQUEST_DURATION
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| name == format!("{d}{suffix}")))
            })
        };
        let mut queries = 0;
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(!panels.is_empty());
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        let exprs = panels
            .iter()
            .flat_map(|p| {
                let targets = p["targets"].as_array().unwrap();
                assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
                targets
                    .iter()
                    .map(|t| t["expr"].as_str().unwrap().to_string())
            })
            .chain(
                variables
                    .iter()
                    .filter_map(|v| v["definition"].as_str().map(str::to_string)),
            );
        for expr in exprs {
            queries += 1;
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("remora_"))
                .collect();
            assert!(!names.is_empty(), "a query with no Remora metric: {expr}");
            for name in names {
                assert!(
                    exported(name),
                    "{name} is not a metric the proxy exports: {expr}"
                );
            }
        }
        assert!(queries >= 12, "{queries} queries");
    }

    #[test]
    fn request_stats_render_with_their_labels() {
        let telemetry = Telemetry::new();
        let stats = RequestStats::new(&telemetry, "web", "api", "api-v1");
        stats.record_status(StatusCode::OK);
        stats.record_status(StatusCode::SERVICE_UNAVAILABLE);
        stats.record_duration(Duration::from_millis(3));
        telemetry.run_upkeep();
        let text = telemetry.render();
        assert!(text.contains(r#"remora_requests_total{listener="web",route="api",cluster="api-v1",status_class="2xx"} 1"#), "{text}");
        assert!(text.contains(r#"status_class="5xx"} 1"#), "{text}");
        assert!(text.contains(r#"remora_request_duration_seconds_bucket{listener="web",route="api",cluster="api-v1",le="0.005"} 1"#), "{text}");
        assert!(text.contains("# HELP remora_requests_total"), "{text}");
    }

    #[test]
    fn handles_for_the_same_labels_share_one_series() {
        let telemetry = Telemetry::new();
        RequestStats::new(&telemetry, "web", "r", "c").record_status(StatusCode::OK);
        RequestStats::new(&telemetry, "web", "r", "c").record_status(StatusCode::OK);
        assert!(telemetry.render().contains(r#"status_class="2xx"} 2"#));
    }
}

//! Distributed tracing (docs/observability.md): the caller's trace
//! context is read (W3C or B3), a sampling decision is made once per
//! request (the caller's, a forced one, or the head-sampling ratio), a
//! server span covers the request and a client span each upstream try, and
//! the context goes upstream in the configured formats. Spans are queued
//! without blocking and exported over OTLP by a thread of their own
//! (`export.rs`); a full queue or a failed export drops spans and counts
//! them, never slowing a request.

pub(crate) mod context;
mod export;
mod wire;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use metrics::Counter;
use remora_xds_proto::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
use remora_xds_proto::opentelemetry::proto::trace::v1::span;

use crate::config::{ConfigError, Propagation, TracingConfig};
use crate::telemetry::{self, Telemetry};

/// The compiled `tracing:` and its exporter, shared by every listener of
/// a snapshot and kept across reloads while the config stays the same.
pub(crate) struct Tracer {
    pub(crate) config: TracingConfig,
    propagation: Box<[Propagation]>,
    force: Option<HeaderName>,
    /// `None` when only checking a config.
    queue: Option<tokio::sync::mpsc::Sender<SpanRecord>>,
    dropped_queue_full: Counter,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// Validates `config`; with `serve`, starts its exporter thread.
    /// `instance` names this proxy (`service.instance.id`).
    pub(crate) fn compile(
        config: &TracingConfig,
        instance: &str,
        serve: bool,
        telemetry: &Telemetry,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Arc<Tracer>> {
        let problems = config.check("tracing");
        if !problems.is_empty() {
            errors.extend(problems);
            return None;
        }
        let dropped = |reason: &str| {
            telemetry.counter(
                telemetry::TRACING_SPANS_DROPPED_TOTAL,
                &[("reason", reason)],
            )
        };
        let queue = if serve {
            let counters = export::Counters {
                exported: telemetry.counter(telemetry::TRACING_SPANS_EXPORTED_TOTAL, &[]),
                failed: dropped("export_failed"),
            };
            match export::start(config, instance, counters) {
                Ok(queue) => Some(queue),
                Err(error) => {
                    errors.push(ConfigError::new(
                        "tracing.otlp",
                        format!("cannot start the exporter: {error}"),
                    ));
                    return None;
                }
            }
        } else {
            None
        };
        Some(Arc::new(Tracer {
            config: config.clone(),
            propagation: config.propagation.clone().into(),
            force: (!config.force_sample_header.is_empty())
                .then(|| HeaderName::from_bytes(config.force_sample_header.as_bytes()).ok())
                .flatten(),
            queue,
            dropped_queue_full: dropped("queue_full"),
        }))
    }

    /// The trace a request joins or starts, and its server span's id.
    pub(crate) fn start(&self, headers: &HeaderMap) -> Trace {
        let incoming = context::extract(headers);
        let forced = self.force.as_ref().is_some_and(|h| headers.contains_key(h));
        let sampled = forced
            || incoming
                .sampled
                .unwrap_or_else(|| crate::rand::unit() < self.config.sampling);
        let (trace_id, parent) = match incoming.ids {
            Some((trace, span)) => (trace, Some(span)),
            None => (new_trace_id(), None),
        };
        Trace {
            trace_id,
            span_id: new_span_id(),
            parent,
            sampled,
            tracestate: incoming.tracestate,
            // Spans are recorded only when sampled: no clock otherwise.
            start_ns: if sampled { now_ns() } else { 0 },
        }
    }

    /// Writes the context of a client span upstream.
    pub(crate) fn inject(&self, headers: &mut HeaderMap, trace: &Trace, client: &ClientSpan) {
        context::inject(
            headers,
            &self.propagation,
            &trace.trace_id,
            &client.span_id,
            &trace.span_id,
            trace.sampled,
            trace.tracestate.as_ref(),
        );
    }

    /// Queues a finished span for export; a full queue drops it.
    pub(crate) fn export(&self, span: SpanRecord) {
        if let Some(queue) = &self.queue
            && queue.try_send(span).is_err()
        {
            self.dropped_queue_full.increment(1);
        }
    }
}

/// One request's place in a trace.
#[derive(Debug, Clone)]
pub(crate) struct Trace {
    pub(crate) trace_id: [u8; 16],
    /// The server span: the request as this proxy handled it.
    pub(crate) span_id: [u8; 8],
    /// The caller's span.
    pub(crate) parent: Option<[u8; 8]>,
    pub(crate) sampled: bool,
    tracestate: Option<HeaderValue>,
    start_ns: u64,
}

/// One upstream try's span.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientSpan {
    pub(crate) span_id: [u8; 8],
    pub(crate) attempt: u32,
    start_ns: u64,
}

impl Trace {
    pub(crate) fn client(&self, attempt: u32) -> ClientSpan {
        ClientSpan {
            span_id: new_span_id(),
            attempt,
            start_ns: if self.sampled { now_ns() } else { 0 },
        }
    }

    /// A span of this trace, ended now: the server span, or (with
    /// `client`) a try's client span, its child.
    pub(crate) fn record(
        &self,
        client: Option<&ClientSpan>,
        attributes: SpanAttributes,
    ) -> SpanRecord {
        let (span_id, parent, kind, start) = match client {
            Some(c) => (
                c.span_id,
                Some(self.span_id),
                span::SpanKind::Client,
                c.start_ns,
            ),
            None => (
                self.span_id,
                self.parent,
                span::SpanKind::Server,
                self.start_ns,
            ),
        };
        SpanRecord {
            trace_id: self.trace_id,
            span_id,
            parent,
            sampled: self.sampled,
            tracestate: self.tracestate.clone(),
            kind,
            start_ns: start,
            end_ns: now_ns().max(start),
            resend_count: client.map_or(0, |c| c.attempt.saturating_sub(1)),
            attributes,
        }
    }

    pub(crate) fn trace_id_hex(&self) -> String {
        context::hex_string(&self.trace_id)
    }

    pub(crate) fn span_id_hex(&self) -> String {
        context::hex_string(&self.span_id)
    }
}

/// What a span says, gathered on the data path without formatting
/// anything: the exporter thread turns it into OTLP attributes.
#[derive(Debug, Default)]
pub(crate) struct SpanAttributes {
    pub(crate) method: http::Method,
    /// Server spans: the path and the request's host.
    pub(crate) place: Option<PathHost>,
    /// Server: the client; client: the endpoint.
    pub(crate) peer: Option<std::net::SocketAddr>,
    pub(crate) status: Option<u16>,
    pub(crate) listener: Option<Arc<str>>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) cluster: Option<Arc<str>>,
    pub(crate) upstream: Option<std::net::SocketAddr>,
    pub(crate) peer_identity: Option<Arc<str>>,
    pub(crate) error_type: Option<&'static str>,
    pub(crate) error: bool,
}

/// A finished span on its way to the exporter.
#[derive(Debug)]
pub(crate) struct SpanRecord {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    sampled: bool,
    tracestate: Option<HeaderValue>,
    kind: span::SpanKind,
    start_ns: u64,
    end_ns: u64,
    resend_count: u32,
    attributes: SpanAttributes,
}

/// How many bytes of path and host a span holds in itself.
const INLINE: usize = 96;

/// A server span's `url.path` and `server.address` (the request's host,
/// without its port). Held in the span itself when they are short, as
/// most are: a sampled request allocates nothing for them, and the
/// exporter thread never frees memory the data path allocated.
pub(crate) struct PathHost {
    bytes: PlaceBytes,
    path_len: usize,
}

enum PlaceBytes {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl PathHost {
    /// `authority` is the request's (`host[:port]`).
    pub(crate) fn new(path: &str, authority: &str) -> PathHost {
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        };
        let len = path.len() + host.len();
        let bytes = if len <= INLINE {
            let mut buf = [0; INLINE];
            buf[..path.len()].copy_from_slice(path.as_bytes());
            buf[path.len()..len].copy_from_slice(host.as_bytes());
            PlaceBytes::Inline {
                len: len as u8,
                buf,
            }
        } else {
            let mut joined = Vec::with_capacity(len);
            joined.extend_from_slice(path.as_bytes());
            joined.extend_from_slice(host.as_bytes());
            PlaceBytes::Heap(joined.into_boxed_slice())
        };
        PathHost {
            bytes,
            path_len: path.len(),
        }
    }

    fn all(&self) -> &[u8] {
        match &self.bytes {
            PlaceBytes::Inline { len, buf } => &buf[..usize::from(*len)],
            PlaceBytes::Heap(bytes) => bytes,
        }
    }

    /// UTF-8: both parts came from a `&str`.
    pub(crate) fn path(&self) -> &[u8] {
        &self.all()[..self.path_len]
    }

    /// Empty when the request named no host.
    pub(crate) fn host(&self) -> &[u8] {
        &self.all()[self.path_len..]
    }
}

impl std::fmt::Debug for PathHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathHost")
            .field("path", &String::from_utf8_lossy(self.path()))
            .field("host", &String::from_utf8_lossy(self.host()))
            .finish()
    }
}

pub(crate) fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let mut id = [0; 16];
        id[..8].copy_from_slice(&crate::rand::next_u64().to_be_bytes());
        id[8..].copy_from_slice(&crate::rand::next_u64().to_be_bytes());
        if id != [0; 16] {
            return id;
        }
    }
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id = crate::rand::next_u64();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

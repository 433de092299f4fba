//! A route's response cache: the store (moka, LRU, bounded by entries and
//! bytes, per-entry expiry), cache keys, `Vary` variants, and the misses in
//! flight that concurrent requests for one key wait on (request
//! collapsing). The request flow that uses it is `http/cached.rs`;
//! docs/cache.md is the user's view.

pub(crate) mod rfc;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http::header::{ETAG, LAST_MODIFIED, VARY};
use http::{HeaderMap, HeaderName, Method, StatusCode};
use metrics::{Counter, Gauge};
use moka::notification::RemovalCause;
use tokio::sync::watch;

use crate::config::{CacheConfig, ConfigError};
use crate::telemetry::{self, RequestStats, Telemetry};

const GRPC_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("grpc-accept-encoding");

/// What a request is, to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// `GET`, and `HEAD` answered from a `GET` entry.
    Get,
    /// A `POST` keyed by its body (opt-in).
    Post,
    /// A listed gRPC unary method, keyed by its request message.
    Grpc,
}

impl Class {
    fn tag(self) -> u8 {
        match self {
            Class::Get => b'G',
            Class::Post => b'P',
            Class::Grpc => b'R',
        }
    }
}

/// How long a response stays fresh and how it may be used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Freshness {
    pub(crate) initial_age: Duration,
    pub(crate) fresh_for: Duration,
    pub(crate) must_revalidate: bool,
    pub(crate) auth_ok: bool,
}

/// One stored response.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    /// As it went to the client (hop-by-hop headers gone), without `Age`.
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
    stored: Instant,
    initial_age: Duration,
    fresh_for: Duration,
    /// `must-revalidate` / `proxy-revalidate` / `no-cache`: never answered
    /// stale.
    pub(crate) must_revalidate: bool,
    /// May answer a request that carries `Authorization` (the response said
    /// `public`, `s-maxage` or `must-revalidate`).
    pub(crate) auth_ok: bool,
    size: u64,
}

impl Entry {
    pub(crate) fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        trailers: Option<HeaderMap>,
        freshness: Freshness,
    ) -> Entry {
        let size =
            body.len() as u64 + header_bytes(&headers) + trailers.as_ref().map_or(0, header_bytes);
        Entry {
            status,
            headers,
            body,
            trailers,
            stored: Instant::now(),
            initial_age: freshness.initial_age,
            fresh_for: freshness.fresh_for,
            must_revalidate: freshness.must_revalidate,
            auth_ok: freshness.auth_ok,
            size,
        }
    }

    /// The entry's age now (RFC 9111 §4.2.3: initial age + resident time).
    pub(crate) fn age(&self) -> Duration {
        self.initial_age + self.stored.elapsed()
    }

    pub(crate) fn fresh_for(&self) -> Duration {
        self.fresh_for
    }

    pub(crate) fn has_validators(&self) -> bool {
        self.headers.contains_key(ETAG) || self.headers.contains_key(LAST_MODIFIED)
    }
}

fn header_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().len() + v.len() + 32) as u64)
        .sum()
}

/// What the store holds under a key: a response, or, under a primary key
/// whose response varies, the request headers that select the variant.
#[derive(Debug, Clone)]
enum Stored {
    Response(Arc<Entry>),
    Vary(Arc<[HeaderName]>),
}

/// How the result of a request is counted and told (`x-remora-cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Hit,
    Miss,
    Stale,
    Bypass,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Bypass => "bypass",
        }
    }
}

struct Counters {
    by_outcome: [Counter; 4],
    stale_if_error: Counter,
    not_modified: Counter,
    modified: Counter,
    collapsed: Counter,
}

/// A route's cache. Compiled with its route; a reload that leaves the
/// route's `cache:` unchanged keeps it, with its entries.
pub(crate) struct ResponseCache {
    pub(crate) config: CacheConfig,
    get: bool,
    post: bool,
    grpc_methods: std::collections::HashSet<Box<str>>,
    key_headers: Box<[HeaderName]>,
    pub(crate) status_header: Option<HeaderName>,
    store: moka::sync::Cache<Box<[u8]>, Stored>,
    inflight: DashMap<Arc<[u8]>, watch::Receiver<()>>,
    counters: Counters,
    entries: Arc<AtomicI64>,
    bytes: Arc<AtomicI64>,
    entries_gauge: Gauge,
    bytes_gauge: Gauge,
    /// `remora_requests_total` and the duration histogram for answers from
    /// the cache (cluster label empty: no upstream saw them).
    pub(crate) stats: RequestStats,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("config", &self.config)
            .field("entries", &self.entries.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Per-entry expiry: an entry stays while it is fresh and then as long as
/// a stale mode may use it; one with validators stays another `ttl` to be
/// revalidated with a conditional request.
struct Expiry {
    stale: Duration,
    keep_for_revalidation: Duration,
}

impl moka::Expiry<Box<[u8]>, Stored> for Expiry {
    fn expire_after_create(
        &self,
        _key: &Box<[u8]>,
        value: &Stored,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match value {
            Stored::Response(entry) => {
                let fresh_left = entry.fresh_for.saturating_sub(entry.initial_age);
                let keep = if entry.has_validators() {
                    self.stale.max(self.keep_for_revalidation)
                } else {
                    self.stale
                };
                fresh_left + keep
            }
            Stored::Vary(_) => self.keep_for_revalidation * 2 + self.stale,
        })
    }
}

impl ResponseCache {
    /// Validates `config` (field paths under `at`) and builds the cache, or
    /// takes over `previous` when its config is the same.
    pub(crate) fn compile(
        config: &CacheConfig,
        listener: &str,
        route: &str,
        at: &str,
        previous: Option<&Arc<ResponseCache>>,
        telemetry: &Telemetry,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Arc<ResponseCache>> {
        let problems = config.check(at);
        if !problems.is_empty() {
            errors.extend(problems);
            return None;
        }
        let get = config.methods.iter().any(|m| m == "GET");
        let post = config.methods.iter().any(|m| m == "POST");
        let grpc_methods = config
            .grpc_methods
            .iter()
            .map(|m| m.as_str().into())
            .collect();
        let key_headers: Vec<HeaderName> = config
            .key
            .headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        let status_header = HeaderName::from_bytes(config.status_header.as_bytes()).ok();
        if let Some(previous) = previous.filter(|p| p.config == *config) {
            return Some(previous.clone());
        }

        let labels = [("listener", listener), ("route", route)];
        let outcome = |result: &str| {
            telemetry.counter(
                telemetry::CACHE_REQUESTS_TOTAL,
                &[("listener", listener), ("route", route), ("result", result)],
            )
        };
        let revalidation = |result: &str| {
            telemetry.counter(
                telemetry::CACHE_REVALIDATIONS_TOTAL,
                &[("listener", listener), ("route", route), ("result", result)],
            )
        };
        let counters = Counters {
            by_outcome: [
                outcome("hit"),
                outcome("miss"),
                outcome("stale"),
                outcome("bypass"),
            ],
            stale_if_error: telemetry.counter(telemetry::CACHE_STALE_IF_ERROR_TOTAL, &labels),
            not_modified: revalidation("not_modified"),
            modified: revalidation("modified"),
            collapsed: telemetry.counter(telemetry::CACHE_COLLAPSED_TOTAL, &labels),
        };
        let entries = Arc::new(AtomicI64::new(0));
        let bytes = Arc::new(AtomicI64::new(0));
        let entries_gauge = telemetry.gauge(telemetry::CACHE_ENTRIES, &labels);
        let bytes_gauge = telemetry.gauge(telemetry::CACHE_BYTES, &labels);
        entries_gauge.set(0.0);
        bytes_gauge.set(0.0);
        let evicted_capacity = telemetry.counter(
            telemetry::CACHE_EVICTIONS_TOTAL,
            &[
                ("listener", listener),
                ("route", route),
                ("reason", "capacity"),
            ],
        );
        let evicted_expired = telemetry.counter(
            telemetry::CACHE_EVICTIONS_TOTAL,
            &[
                ("listener", listener),
                ("route", route),
                ("reason", "expired"),
            ],
        );

        // Both bounds hold at once: every entry weighs at least
        // max_bytes / max_entries, and the weights sum to at most max_bytes.
        let slot = (config.max_bytes / config.max_entries).max(1);
        let slot = u32::try_from(slot).unwrap_or(u32::MAX);
        let on_removal = {
            let (entries, bytes) = (entries.clone(), bytes.clone());
            let (entries_gauge, bytes_gauge) = (entries_gauge.clone(), bytes_gauge.clone());
            move |key: Arc<Box<[u8]>>, value: Stored, cause: RemovalCause| {
                let size = stored_bytes(&key, &value);
                let n = entries.fetch_sub(1, Ordering::Relaxed) - 1;
                let b = bytes.fetch_sub(size as i64, Ordering::Relaxed) - size as i64;
                entries_gauge.set(n as f64);
                bytes_gauge.set(b as f64);
                match cause {
                    RemovalCause::Size => evicted_capacity.increment(1),
                    RemovalCause::Expired => evicted_expired.increment(1),
                    RemovalCause::Explicit | RemovalCause::Replaced => {}
                }
            }
        };
        #[allow(clippy::borrowed_box)] // moka's signature
        let weigher = move |key: &Box<[u8]>, value: &Stored| -> u32 {
            let size = u32::try_from(stored_bytes(key, value)).unwrap_or(u32::MAX);
            size.max(slot)
        };
        let store = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(weigher)
            .expire_after(Expiry {
                stale: config.stale_if_error.max(config.stale_while_revalidate),
                keep_for_revalidation: config.ttl,
            })
            .eviction_listener(on_removal)
            .build();
        Some(Arc::new(ResponseCache {
            config: config.clone(),
            get,
            post,
            grpc_methods,
            key_headers: key_headers.into(),
            status_header,
            store,
            inflight: DashMap::new(),
            counters,
            entries,
            bytes,
            entries_gauge,
            bytes_gauge,
            stats: RequestStats::new(telemetry, listener, route, ""),
        }))
    }

    /// Whether a request of this method (and gRPC path) is the cache's.
    pub(crate) fn class_of(&self, method: &Method, grpc: bool, path: &str) -> Option<Class> {
        match *method {
            Method::GET | Method::HEAD if !grpc && self.get => Some(Class::Get),
            Method::POST if grpc => self.grpc_methods.contains(path).then_some(Class::Grpc),
            Method::POST if self.post => Some(Class::Post),
            _ => None,
        }
    }

    /// The primary key: path (and query), then authority, class, the key
    /// headers' values, and the body's digest. It begins with the path so
    /// that a purge by `key_prefix` is a purge by path prefix.
    pub(crate) fn key(
        &self,
        class: Class,
        uri: &http::Uri,
        authority: &str,
        headers: &HeaderMap,
        digest: Option<&[u8]>,
    ) -> Vec<u8> {
        let path = match (self.config.key.query, uri.path_and_query()) {
            (true, Some(pq)) => pq.as_str(),
            _ => uri.path(),
        };
        let mut key = Vec::with_capacity(path.len() + authority.len() + 48);
        key.extend_from_slice(path.as_bytes());
        key.push(0);
        key.extend_from_slice(authority.as_bytes());
        key.push(0);
        key.push(class.tag());
        for name in &self.key_headers {
            key.push(0);
            append_values(&mut key, headers, name);
        }
        if class == Class::Grpc {
            // The server compresses its answer with what the client accepts.
            key.push(0);
            append_values(&mut key, headers, &GRPC_ACCEPT_ENCODING);
        }
        if let Some(digest) = digest {
            key.push(0);
            key.extend_from_slice(digest);
        }
        key
    }

    /// The entry for `primary` that fits the request's headers (its
    /// `Vary` variant).
    pub(crate) fn lookup(&self, primary: &[u8], request: &HeaderMap) -> Option<Arc<Entry>> {
        match self.store.get(primary)? {
            Stored::Response(entry) => Some(entry),
            Stored::Vary(names) => {
                let key = variant_key(primary, &names, request);
                match self.store.get(&key[..])? {
                    Stored::Response(entry) => Some(entry),
                    Stored::Vary(_) => None,
                }
            }
        }
    }

    /// Stores `entry` for `primary`, as a variant when it varies.
    pub(crate) fn insert(&self, primary: &[u8], request: &HeaderMap, entry: Arc<Entry>) {
        let vary: Vec<HeaderName> = entry
            .headers
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        let entry = Stored::Response(entry);
        if vary.is_empty() {
            self.put(primary.into(), entry);
        } else {
            let key = variant_key(primary, &vary, request);
            self.put(primary.into(), Stored::Vary(vary.into()));
            self.put(key.into_boxed_slice(), entry);
        }
    }

    fn put(&self, key: Box<[u8]>, value: Stored) {
        let size = stored_bytes(&key, &value);
        let n = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        let b = self.bytes.fetch_add(size as i64, Ordering::Relaxed) + size as i64;
        self.entries_gauge.set(n as f64);
        self.bytes_gauge.set(b as f64);
        self.store.insert(key, value);
    }

    /// Drops the entry (and the variant index) under `primary`.
    pub(crate) fn invalidate(&self, primary: &[u8]) {
        self.store.invalidate(primary);
    }

    /// Removes every entry whose key begins with `prefix` (a path prefix;
    /// empty: all); returns how many.
    pub(crate) fn purge(&self, prefix: &str) -> usize {
        let doomed: Vec<Arc<Box<[u8]>>> = self
            .store
            .iter()
            .filter(|(key, value)| {
                key.starts_with(prefix.as_bytes()) && matches!(value, Stored::Response(_))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in &doomed {
            self.store.invalidate(&key[..]);
        }
        if prefix.is_empty() {
            self.store.invalidate_all();
        }
        self.store.run_pending_tasks();
        doomed.len()
    }

    /// Entries stored now (responses and variant indexes) and their bytes.
    pub(crate) fn usage(&self) -> (i64, i64) {
        self.store.run_pending_tasks();
        (
            self.entries.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn count(&self, outcome: Outcome) {
        self.counters.by_outcome[outcome as usize].increment(1);
    }

    pub(crate) fn count_stale_if_error(&self) {
        self.counters.stale_if_error.increment(1);
    }

    pub(crate) fn count_revalidation(&self, not_modified: bool) {
        if not_modified {
            self.counters.not_modified.increment(1);
        } else {
            self.counters.modified.increment(1);
        }
    }

    /// The first miss for `key` leads (goes upstream and fills the
    /// entry); later ones wait for it.
    pub(crate) fn begin_fill(self: &Arc<Self>, key: &[u8]) -> Turn {
        if let Some(waiting) = self.inflight.get(key) {
            self.counters.collapsed.increment(1);
            return Turn::Wait(waiting.clone());
        }
        match self.inflight.entry(Arc::from(key)) {
            dashmap::Entry::Occupied(o) => {
                self.counters.collapsed.increment(1);
                Turn::Wait(o.get().clone())
            }
            dashmap::Entry::Vacant(v) => {
                let (done, waiting) = watch::channel(());
                let key = v.key().clone();
                v.insert(waiting);
                Turn::Lead(Fill {
                    cache: self.clone(),
                    key,
                    _done: done,
                })
            }
        }
    }

    /// Starts a background refresh for `key` unless a fill is in flight.
    pub(crate) fn try_lead(self: &Arc<Self>, key: &[u8]) -> Option<Fill> {
        match self.inflight.entry(Arc::from(key)) {
            dashmap::Entry::Occupied(_) => None,
            dashmap::Entry::Vacant(v) => {
                let (done, waiting) = watch::channel(());
                let key = v.key().clone();
                v.insert(waiting);
                Some(Fill {
                    cache: self.clone(),
                    key,
                    _done: done,
                })
            }
        }
    }
}

fn append_values(key: &mut Vec<u8>, headers: &HeaderMap, name: &HeaderName) {
    for (i, value) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            key.push(b',');
        }
        key.extend_from_slice(value.as_bytes());
    }
}

fn variant_key(primary: &[u8], names: &[HeaderName], request: &HeaderMap) -> Vec<u8> {
    let mut key = Vec::with_capacity(primary.len() + 32);
    key.extend_from_slice(primary);
    key.push(1);
    for name in names {
        key.push(0);
        append_values(&mut key, request, name);
    }
    key
}

fn stored_bytes(key: &[u8], value: &Stored) -> u64 {
    key.len() as u64
        + match value {
            Stored::Response(entry) => entry.size,
            Stored::Vary(names) => names.iter().map(|n| n.as_str().len() as u64 + 8).sum(),
        }
}

/// Whose turn it is to go upstream for a missing key.
pub(crate) enum Turn {
    Lead(Fill),
    /// Resolves (with an error: the sender is gone) when the leader's fill ends.
    Wait(watch::Receiver<()>),
}

/// A miss in flight; dropping it (stored or not) wakes the requests
/// waiting for it.
pub(crate) struct Fill {
    cache: Arc<ResponseCache>,
    key: Arc<[u8]>,
    _done: watch::Sender<()>,
}

impl Drop for Fill {
    fn drop(&mut self) {
        self.cache.inflight.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(yaml: &str) -> Arc<ResponseCache> {
        let config: CacheConfig = serde_saphyr::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let cache = ResponseCache::compile(
            &config,
            "l",
            "r",
            "routes[0].cache",
            None,
            &Telemetry::new(),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        cache.unwrap()
    }

    fn entry(body: &'static [u8], vary: Option<&'static str>) -> Arc<Entry> {
        let mut headers = HeaderMap::new();
        if let Some(vary) = vary {
            headers.insert(VARY, http::HeaderValue::from_static(vary));
        }
        Arc::new(Entry::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(body),
            None,
            Freshness {
                initial_age: Duration::ZERO,
                fresh_for: Duration::from_secs(60),
                must_revalidate: false,
                auth_ok: false,
            },
        ))
    }

    #[test]
    fn bad_fields_are_named() {
        let config: CacheConfig = serde_saphyr::from_str(
            "{ttl: 0s, methods: [PUT], grpc_methods: [Svc/Method], key: {headers: ['a b']}, max_entry_bytes: 0}",
        )
        .unwrap();
        let mut errors = Vec::new();
        let compiled =
            ResponseCache::compile(&config, "l", "r", "c", None, &Telemetry::new(), &mut errors);
        assert!(compiled.is_none());
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "c.ttl",
                "c.max_entry_bytes",
                "c.methods[0]",
                "c.grpc_methods[0]",
                "c.key.headers[0]"
            ]
        );
    }

    #[test]
    fn keys_begin_with_the_path_and_tell_classes_and_headers_apart() {
        let cache = cache("{key: {headers: [x-tenant]}}");
        let uri: http::Uri = "/items?page=2".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", "a".parse().unwrap());
        let a = cache.key(Class::Get, &uri, "example.com", &headers, None);
        assert!(a.starts_with(b"/items?page=2\0example.com\0G"));
        headers.insert("x-tenant", "b".parse().unwrap());
        let b = cache.key(Class::Get, &uri, "example.com", &headers, None);
        assert_ne!(a, b);
        let post = cache.key(Class::Post, &uri, "example.com", &headers, Some(&[1; 32]));
        assert_ne!(b, post);
        let no_query = super::ResponseCache::compile(
            &serde_saphyr::from_str("{key: {query: false}}").unwrap(),
            "l",
            "r2",
            "c",
            None,
            &Telemetry::new(),
            &mut Vec::new(),
        )
        .unwrap();
        assert!(
            no_query
                .key(Class::Get, &uri, "h", &HeaderMap::new(), None)
                .starts_with(b"/items\0")
        );
    }

    #[test]
    fn vary_stores_one_variant_per_header_value() {
        let cache = cache("{}");
        let mut gzip = HeaderMap::new();
        gzip.insert("accept-encoding", "gzip".parse().unwrap());
        let plain = HeaderMap::new();
        cache.insert(b"k", &gzip, entry(b"zipped", Some("Accept-Encoding")));
        assert_eq!(&cache.lookup(b"k", &gzip).unwrap().body[..], b"zipped");
        assert!(cache.lookup(b"k", &plain).is_none());
        cache.insert(b"k", &plain, entry(b"plain", Some("accept-encoding")));
        assert_eq!(&cache.lookup(b"k", &plain).unwrap().body[..], b"plain");
        assert_eq!(&cache.lookup(b"k", &gzip).unwrap().body[..], b"zipped");
    }

    #[test]
    fn entries_and_bytes_are_both_bounds() {
        let cache = cache("{max_entries: 4, max_bytes: 4000, max_entry_bytes: 2000}");
        for i in 0..20u8 {
            cache.insert(&[i], &HeaderMap::new(), entry(b"x", None));
        }
        let (entries, _) = cache.usage();
        assert!(entries <= 4, "{entries} entries");
        // The most recent survive (LRU).
        assert!(cache.lookup(&[19], &HeaderMap::new()).is_some());
        assert!(cache.lookup(&[0], &HeaderMap::new()).is_none());
        static BIG: [u8; 1500] = [7; 1500];
        for i in 0..4u8 {
            cache.insert(&[100 + i], &HeaderMap::new(), entry(&BIG, None));
        }
        let (entries, bytes) = cache.usage();
        assert!(bytes <= 4000, "{bytes} bytes");
        assert!(entries <= 2, "{entries} entries");
    }

    #[test]
    fn purge_by_path_prefix() {
        let cache = cache("{}");
        let h = HeaderMap::new();
        cache.insert(b"/a/1\0h\0G", &h, entry(b"1", None));
        cache.insert(b"/a/2\0h\0G", &h, entry(b"2", None));
        cache.insert(b"/b\0h\0G", &h, entry(b"3", None));
        assert_eq!(cache.purge("/a/"), 2);
        assert!(cache.lookup(b"/a/1\0h\0G", &h).is_none());
        assert!(cache.lookup(b"/b\0h\0G", &h).is_some());
        assert_eq!(cache.purge(""), 1);
        assert_eq!(cache.usage(), (0, 0));
    }

    #[tokio::test]
    async fn the_first_miss_leads_and_the_rest_wait_for_it() {
        let cache = cache("{}");
        let Turn::Lead(fill) = cache.begin_fill(b"k") else {
            panic!("the first miss leads")
        };
        let Turn::Wait(mut waiting) = cache.begin_fill(b"k") else {
            panic!("the second waits")
        };
        assert!(cache.try_lead(b"k").is_none());
        drop(fill);
        assert!(waiting.changed().await.is_err(), "woken when the fill ends");
        assert!(matches!(cache.begin_fill(b"k"), Turn::Lead(_)));
    }
}

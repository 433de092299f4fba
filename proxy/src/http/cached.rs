//! A request on a route with a response cache (docs/cache.md): answered
//! from a fresh entry, from a stale one (while one background request
//! refreshes it, or because the upstream failed), or forwarded, one request
//! per key at a time, with the response stored on its way to the client.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED, RANGE,
    SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use super::body::ResponseBody;
use super::exchange::{Exchange, StatsAt};
use super::forward::{self, Outgoing};
use super::{local_reply, upgrade};
use crate::body::RequestBody;
use crate::cache::rfc::{self, Directives};
use crate::cache::{Class, Entry, Fill, Freshness, Outcome, ResponseCache, Turn};
use crate::listener::ListenerState;

/// Where the request was routed.
#[derive(Clone, Copy)]
pub(super) struct Routed<'a> {
    pub(super) listener: &'a Arc<ListenerState>,
    pub(super) route: usize,
    pub(super) backend: usize,
    pub(super) client: SocketAddr,
    pub(super) tracker: &'a TaskTracker,
}

impl Routed<'_> {
    fn route(&self) -> &crate::route::Route {
        &self
            .listener
            .http_routes()
            .expect("an HTTP listener")
            .table
            .routes()[self.route]
    }

    async fn forward(
        &self,
        request: Request<Outgoing>,
        exchange: Exchange,
    ) -> Response<ResponseBody> {
        let route = self.route();
        let crate::route::RouteAction::Forward(backends) = &route.action else {
            unreachable!("a cached route forwards (checked when compiled)")
        };
        let adaptive = self
            .listener
            .adaptive
            .as_ref()
            .map(|a| (a, &*self.listener.name));
        forward::forward(
            request,
            self.client,
            route,
            backends.get(self.backend),
            adaptive,
            exchange,
            self.tracker,
        )
        .await
    }
}

/// The client's request head, kept while its body goes upstream: the
/// `Vary` variant, conditionals and `Authorization` are read from it.
struct Head {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: HeaderMap,
}

impl Head {
    fn as_request(&self) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

pub(super) async fn serve(
    cache: &Arc<ResponseCache>,
    at: Routed<'_>,
    request: Request<Incoming>,
    exchange: Exchange,
) -> Response<ResponseBody> {
    let grpc = local_reply::is_grpc(request.headers());
    let honor = cache.config.honor_cache_control;
    let cc = if honor {
        Directives::of(request.headers())
    } else {
        Directives::default()
    };
    let has_auth = request.headers().contains_key(AUTHORIZATION);
    let class = cache
        .class_of(request.method(), grpc, request.uri().path())
        .filter(|_| {
            let refused = cc.no_store
                || (has_auth && !honor)
                || request.headers().contains_key(RANGE)
                || upgrade::is_upgrade(&request);
            !refused
        });
    let Some(class) = class else {
        return bypass(cache, at, request, exchange).await;
    };
    let (parts, body) = request.into_parts();
    let (body, digest, replay) = match class {
        Class::Get => (Outgoing::Client(body), None, None),
        Class::Post | Class::Grpc => {
            let limit = cache.config.max_body_bytes;
            let within = at
                .route()
                .timeout
                .unwrap_or(at.listener.request_headers_timeout);
            match tokio::time::timeout(within, read_body(body, limit)).await {
                Ok(Read::Whole(data, trailers)) => {
                    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data);
                    let replay = (data.clone(), trailers.clone());
                    let body = Outgoing::Ready(RequestBody::buffered(data, trailers));
                    (body, Some(digest), Some(replay))
                }
                Ok(Read::TooLarge(prefix, rest)) => {
                    let request = Request::from_parts(
                        parts,
                        Outgoing::Ready(RequestBody::prefixed(prefix, rest)),
                    );
                    return pass_bypass(cache, at, request, exchange).await;
                }
                Ok(Read::Failed(error)) => {
                    let message = format!("the request body failed: {error}");
                    return local_reply::reply(exchange, StatusCode::BAD_REQUEST, &message, grpc);
                }
                Err(_) => {
                    let message = "the request body took too long to arrive";
                    return local_reply::reply(
                        exchange,
                        StatusCode::REQUEST_TIMEOUT,
                        message,
                        grpc,
                    );
                }
            }
        }
    };
    let authority = super::authority::of(&parts.uri, &parts.headers);
    let key = cache.key(
        class,
        &parts.uri,
        authority,
        &parts.headers,
        digest.as_ref().map(|d| d.as_ref()),
    );
    let usable = |entry: &Arc<Entry>| !has_auth || entry.auth_ok;
    let stored = cache.lookup(&key, &parts.headers).filter(usable);
    let head_only = parts.method == Method::HEAD;
    if let Some(entry) = &stored {
        let age = entry.age();
        let fresh = age < entry.fresh_for();
        let wants_newer =
            cc.no_cache || cc.max_age.is_some_and(|max| age > Duration::from_secs(max));
        if fresh && !wants_newer {
            cache.count(Outcome::Hit);
            return answer(
                cache,
                entry,
                Outcome::Hit,
                &parts.headers,
                head_only,
                exchange,
            );
        }
        let swr = cache.config.stale_while_revalidate;
        if !wants_newer && !entry.must_revalidate && age < entry.fresh_for() + swr {
            if let Some(fill) = cache.try_lead(&key) {
                let refresh = Refresh {
                    class,
                    key,
                    entry: entry.clone(),
                    replay,
                    fill,
                };
                refresh.spawn(cache, at, &parts, &exchange);
            }
            cache.count(Outcome::Stale);
            return answer(
                cache,
                entry,
                Outcome::Stale,
                &parts.headers,
                head_only,
                exchange,
            );
        }
    }
    if cc.only_if_cached {
        cache.count(Outcome::Miss);
        let message = "only-if-cached: no fresh response is stored";
        return local_reply::reply(exchange, StatusCode::GATEWAY_TIMEOUT, message, grpc);
    }
    if head_only {
        // A HEAD is answered from GET entries; it never fills one.
        let request = Request::from_parts(parts, body);
        return pass(cache, at, request, exchange, Outcome::Miss).await;
    }

    // A miss: the first request for the key goes upstream, the others wait
    // for it and take what it stored.
    let fill = match cache.begin_fill(&key) {
        Turn::Lead(fill) => Some(fill),
        Turn::Wait(mut done) => {
            let _ = tokio::time::timeout(cache.config.collapse_timeout, done.changed()).await;
            if let Some(entry) = cache.lookup(&key, &parts.headers).filter(usable)
                && entry.age() < entry.fresh_for()
            {
                cache.count(Outcome::Hit);
                return answer(cache, &entry, Outcome::Hit, &parts.headers, false, exchange);
            }
            None
        }
    };
    let head = Head {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
    };
    let mut parts = parts;
    let validated = stored.filter(|e| class == Class::Get && e.has_validators());
    if class == Class::Get {
        // The cache fills with a whole response and answers the client's
        // own conditionals itself.
        for name in [
            IF_NONE_MATCH,
            IF_MODIFIED_SINCE,
            IF_RANGE,
            IF_MATCH,
            IF_UNMODIFIED_SINCE,
        ] {
            parts.headers.remove(name);
        }
        if let Some(entry) = &validated {
            add_validators(&mut parts.headers, entry);
        }
    }
    let seed = exchange.seed();
    let stats_at = exchange.stats_at();
    let mut exchange = exchange;
    exchange.set_cache(Outcome::Miss.label());
    let response = at.forward(Request::from_parts(parts, body), exchange).await;
    if upstream_failed(&response)
        && let Some(entry) = stored_for_error(cache, &key, &head)
    {
        // The upstream leg is logged as it failed; the client's answer
        // is a request of its own.
        drop(response);
        drop(fill);
        cache.count(Outcome::Stale);
        cache.count_stale_if_error();
        let mut exchange = seed.start(&head.as_request());
        exchange.set_stats(stats_at);
        return answer(
            cache,
            &entry,
            Outcome::Stale,
            &head.headers,
            false,
            exchange,
        );
    }
    cache.count(Outcome::Miss);
    let filled = complete(cache, class, &key, &head, validated.as_ref(), response).await;
    drop(fill);
    match filled {
        Filled::Entry {
            entry,
            rest,
            outcome,
        } => answer_with_rest(cache, &entry, outcome, &head.headers, rest),
        Filled::Response(response) => {
            let mut response = *response;
            mark(cache, response.headers_mut(), Outcome::Miss);
            response
        }
    }
}

/// A 5xx (500, 502, 503, 504 and the rest), or a gRPC call that ended at
/// once with UNKNOWN, DEADLINE_EXCEEDED, INTERNAL or UNAVAILABLE: the
/// failures `stale_if_error` covers.
fn upstream_failed(response: &Response<ResponseBody>) -> bool {
    response.status().is_server_error()
        || response
            .headers()
            .get("grpc-status")
            .is_some_and(|s| matches!(s.as_bytes(), b"2" | b"4" | b"13" | b"14"))
}

/// An entry that may answer because the upstream failed: `stale_if_error`
/// covers its age and it does not forbid being served stale.
fn stored_for_error(cache: &ResponseCache, key: &[u8], head: &Head) -> Option<Arc<Entry>> {
    let window = cache.config.stale_if_error;
    if window.is_zero() {
        return None;
    }
    let has_auth = head.headers.contains_key(AUTHORIZATION);
    cache
        .lookup(key, &head.headers)
        .filter(|e| !has_auth || e.auth_ok)
        .filter(|e| !e.must_revalidate && e.age() < e.fresh_for() + window)
}

fn add_validators(headers: &mut HeaderMap, entry: &Entry) {
    if let Some(etag) = entry.headers.get(ETAG) {
        headers.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = entry.headers.get(LAST_MODIFIED) {
        headers.insert(IF_MODIFIED_SINCE, modified.clone());
    }
}

/// What became of an upstream response.
enum Filled {
    /// Stored (or refreshed by a 304): the client is answered from the
    /// entry; `rest` is the upstream body, read to its end, which carries
    /// the exchange.
    Entry {
        entry: Arc<Entry>,
        rest: Pin<Box<ResponseBody>>,
        outcome: Outcome,
    },
    /// Not stored: passed on as it is (with what was read of its body).
    Response(Box<Response<ResponseBody>>),
}

/// Reads a storable response (up to `max_entry_bytes`) and stores it; a
/// 304 to the cache's conditional request refreshes the entry it
/// validated.
async fn complete(
    cache: &ResponseCache,
    class: Class,
    key: &[u8],
    head: &Head,
    validated: Option<&Arc<Entry>>,
    response: Response<ResponseBody>,
) -> Filled {
    let has_auth = head.headers.contains_key(AUTHORIZATION);
    if let Some(entry) = validated {
        let not_modified = response.status() == StatusCode::NOT_MODIFIED;
        cache.count_revalidation(not_modified);
        if not_modified {
            let (parts, body) = response.into_parts();
            let mut headers = entry.headers.clone();
            for (name, value) in &parts.headers {
                if name != http::header::CONTENT_LENGTH {
                    headers.insert(name, value.clone());
                }
            }
            let refreshed = match freshness(cache, class, entry.status, &headers, has_auth) {
                Some(freshness) => {
                    let refreshed = Arc::new(Entry::new(
                        entry.status,
                        headers,
                        entry.body.clone(),
                        entry.trailers.clone(),
                        freshness,
                    ));
                    cache.insert(key, &head.headers, refreshed.clone());
                    refreshed
                }
                None => {
                    cache.invalidate(key);
                    entry.clone()
                }
            };
            return Filled::Entry {
                entry: refreshed,
                rest: Box::pin(body),
                outcome: Outcome::Hit,
            };
        }
    }
    let status = response.status();
    let Some(freshness) = freshness(cache, class, status, response.headers(), has_auth) else {
        return Filled::Response(Box::new(response));
    };
    let (mut parts, body) = response.into_parts();
    let mut body = Box::pin(body);
    let limit = cache.config.max_entry_bytes();
    let mut data = BytesMut::new();
    let mut trailers = None;
    loop {
        match body.as_mut().frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => {
                    data.extend_from_slice(&chunk);
                    if data.len() as u64 > limit {
                        let body = ResponseBody::prefixed(data.freeze(), None, body, None);
                        return Filled::Response(Box::new(Response::from_parts(parts, body)));
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            },
            Some(Err(error)) => {
                let body = ResponseBody::prefixed(data.freeze(), Some(error), body, trailers);
                return Filled::Response(Box::new(Response::from_parts(parts, body)));
            }
        }
    }
    let data = data.freeze();
    let grpc_ok = class != Class::Grpc
        || trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"))
            .is_some_and(|s| s.as_bytes() == b"0");
    if !grpc_ok {
        let body = ResponseBody::prefixed(data, None, body, trailers);
        return Filled::Response(Box::new(Response::from_parts(parts, body)));
    }
    parts.headers.remove(AGE);
    let entry = Arc::new(Entry::new(status, parts.headers, data, trailers, freshness));
    cache.insert(key, &head.headers, entry.clone());
    Filled::Entry {
        entry,
        rest: body,
        outcome: Outcome::Miss,
    }
}

/// Whether a response may be stored, and how fresh it is (RFC 9111 §3,
/// §4.2 when `honor_cache_control`; `ttl` for everything of a cacheable
/// status otherwise).
fn freshness(
    cache: &ResponseCache,
    class: Class,
    status: StatusCode,
    headers: &HeaderMap,
    has_auth: bool,
) -> Option<Freshness> {
    let status_ok = match class {
        Class::Grpc => status == StatusCode::OK,
        Class::Get | Class::Post => rfc::cacheable_status(status.as_u16()),
    };
    let vary_any = headers.get_all(VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|n| n.trim_ascii() == b"*")
    });
    if !status_ok || headers.contains_key(SET_COOKIE) || vary_any {
        return None;
    }
    let ttl = cache.config.ttl;
    if !cache.config.honor_cache_control {
        return Some(Freshness {
            initial_age: Duration::ZERO,
            fresh_for: ttl,
            must_revalidate: false,
            auth_ok: false,
        });
    }
    let cc = Directives::of(headers);
    if cc.no_store || cc.private {
        return None;
    }
    let auth_ok = cc.public || cc.s_maxage.is_some() || cc.must_revalidate;
    if has_auth && !auth_ok {
        return None;
    }
    let fresh_for = if cc.no_cache {
        Duration::ZERO
    } else {
        rfc::explicit_lifetime(headers, &cc).map_or(ttl, |l| l.min(ttl))
    };
    let validators = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    let stale_modes =
        !cache.config.stale_if_error.is_zero() || !cache.config.stale_while_revalidate.is_zero();
    let stale_use = stale_modes && !cc.must_revalidate && !cc.no_cache;
    if fresh_for.is_zero() && !validators && !stale_use {
        // Stale at once and nothing to revalidate with: useless to keep.
        return None;
    }
    Some(Freshness {
        initial_age: rfc::initial_age(headers, SystemTime::now()),
        fresh_for,
        must_revalidate: cc.must_revalidate || cc.no_cache,
        auth_ok,
    })
}

/// The response the client gets from `entry`: the entry itself, or a 304
/// when the client's own conditional matches it.
fn answer_head(
    cache: &ResponseCache,
    entry: &Entry,
    outcome: Outcome,
    request: &HeaderMap,
) -> (Response<()>, bool) {
    let not_modified = entry.status.is_success()
        && entry.trailers.is_none()
        && if request.contains_key(IF_NONE_MATCH) {
            rfc::none_match(request, entry.headers.get(ETAG))
        } else {
            rfc::not_modified_since(request, entry.headers.get(LAST_MODIFIED))
        };
    let mut response = Response::new(());
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        for name in [
            CACHE_CONTROL,
            CONTENT_LOCATION,
            DATE,
            ETAG,
            EXPIRES,
            VARY,
            LAST_MODIFIED,
        ] {
            for value in entry.headers.get_all(&name) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
    } else {
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.headers.clone();
    }
    response
        .headers_mut()
        .insert(AGE, HeaderValue::from(entry.age().as_secs()));
    mark(cache, response.headers_mut(), outcome);
    (response, !not_modified)
}

/// Answers from `entry` on the request's own exchange (nothing went upstream).
fn answer(
    cache: &ResponseCache,
    entry: &Entry,
    outcome: Outcome,
    request: &HeaderMap,
    head_only: bool,
    mut exchange: Exchange,
) -> Response<ResponseBody> {
    let (response, with_body) = answer_head(cache, entry, outcome, request);
    exchange.set_cache(outcome.label());
    if let StatsAt::Backend { route, .. } | StatsAt::Direct { route } = exchange.stats_at() {
        exchange.set_stats(StatsAt::Cached { route });
    }
    exchange.set_response_head(response.status(), response.headers());
    exchange.replied_locally();
    let body = if with_body && !head_only {
        exchange.add_bytes_sent(entry.body.len());
        ResponseBody::stored(entry.body.clone(), entry.trailers.clone())
    } else {
        ResponseBody::empty()
    };
    response.map(|()| body)
}

/// Answers from `entry` just stored or refreshed; `rest` is the upstream
/// body it came with, finished, which carries the exchange.
fn answer_with_rest(
    cache: &ResponseCache,
    entry: &Entry,
    outcome: Outcome,
    request: &HeaderMap,
    mut rest: Pin<Box<ResponseBody>>,
) -> Response<ResponseBody> {
    let (response, with_body) = answer_head(cache, entry, outcome, request);
    if let Some(exchange) = rest.as_mut().exchange_mut() {
        exchange.set_response_head(response.status(), response.headers());
        exchange.set_cache(outcome.label());
    }
    let body = if with_body {
        ResponseBody::prefixed(entry.body.clone(), None, rest, entry.trailers.clone())
    } else {
        ResponseBody::prefixed(Bytes::new(), None, rest, None)
    };
    response.map(|()| body)
}

fn mark(cache: &ResponseCache, headers: &mut HeaderMap, outcome: Outcome) {
    if let Some(name) = &cache.status_header {
        headers.insert(name.clone(), HeaderValue::from_static(outcome.label()));
    }
}

/// Forwards a request the cache does not serve. An unsafe method that
/// succeeds invalidates the `GET` entry of its target (RFC 9111 §4.4).
async fn bypass(
    cache: &Arc<ResponseCache>,
    at: Routed<'_>,
    request: Request<Incoming>,
    exchange: Exchange,
) -> Response<ResponseBody> {
    let unsafe_method = !request.method().is_safe();
    let key = unsafe_method.then(|| {
        let authority = super::authority::of(request.uri(), request.headers());
        cache.key(
            Class::Get,
            request.uri(),
            authority,
            request.headers(),
            None,
        )
    });
    let (parts, body) = request.into_parts();
    let response = pass_bypass(
        cache,
        at,
        Request::from_parts(parts, Outgoing::Client(body)),
        exchange,
    )
    .await;
    if let Some(key) = key
        && (response.status().is_success() || response.status().is_redirection())
    {
        cache.invalidate(&key);
    }
    response
}

async fn pass_bypass(
    cache: &ResponseCache,
    at: Routed<'_>,
    request: Request<Outgoing>,
    exchange: Exchange,
) -> Response<ResponseBody> {
    pass(cache, at, request, exchange, Outcome::Bypass).await
}

async fn pass(
    cache: &ResponseCache,
    at: Routed<'_>,
    request: Request<Outgoing>,
    exchange: Exchange,
    outcome: Outcome,
) -> Response<ResponseBody> {
    cache.count(outcome);
    let mut exchange = exchange;
    exchange.set_cache(outcome.label());
    let mut response = at.forward(request, exchange).await;
    mark(cache, response.headers_mut(), outcome);
    response
}

/// A background refresh of a stale entry (`stale_while_revalidate`): one
/// request upstream, logged and counted as a request of its own, while
/// the client is answered from the stale entry.
struct Refresh {
    class: Class,
    key: Vec<u8>,
    entry: Arc<Entry>,
    /// A POST or gRPC entry's request body, sent again.
    replay: Option<(Bytes, Option<HeaderMap>)>,
    fill: Fill,
}

impl Refresh {
    fn spawn(
        self,
        cache: &Arc<ResponseCache>,
        at: Routed<'_>,
        parts: &http::request::Parts,
        exchange: &Exchange,
    ) {
        let mut headers = parts.headers.clone();
        for name in [
            IF_NONE_MATCH,
            IF_MODIFIED_SINCE,
            IF_RANGE,
            IF_MATCH,
            IF_UNMODIFIED_SINCE,
        ] {
            headers.remove(name);
        }
        let head = Head {
            // A HEAD's refresh fills the GET entry it was answered from.
            method: if self.class == Class::Get {
                Method::GET
            } else {
                parts.method.clone()
            },
            uri: parts.uri.clone(),
            version: parts.version,
            headers,
        };
        let mut background = exchange.seed().start(&head.as_request());
        background.set_stats(exchange.stats_at());
        background.set_cache("refresh");
        let (cache, listener, tracker) = (cache.clone(), at.listener.clone(), at.tracker.clone());
        let (route, backend, client) = (at.route, at.backend, at.client);
        at.tracker.spawn(async move {
            let Refresh {
                class,
                key,
                entry,
                replay,
                fill,
            } = self;
            let at = Routed {
                listener: &listener,
                route,
                backend,
                client,
                tracker: &tracker,
            };
            let body = match replay {
                Some((data, trailers)) => RequestBody::buffered(data, trailers),
                None => RequestBody::buffered(Bytes::new(), None),
            };
            let mut request = head.as_request().map(|()| Outgoing::Ready(body));
            let validated = (class == Class::Get && entry.has_validators()).then_some(&entry);
            if let Some(entry) = validated {
                add_validators(request.headers_mut(), entry);
            }
            let response = at.forward(request, background).await;
            let filled = complete(&cache, class, &key, &head, validated, response).await;
            if let Filled::Response(response) = filled {
                // Not stored: read to its end so that its exchange settles.
                let _ = response.into_body().collect().await;
            }
            drop(fill);
        });
    }
}

enum Read {
    Whole(Bytes, Option<HeaderMap>),
    TooLarge(Bytes, Incoming),
    Failed(hyper::Error),
}

/// Reads a request body whole, or up to the point where it outgrows `limit`.
async fn read_body(mut body: Incoming, limit: u64) -> Read {
    if body.size_hint().lower() > limit {
        return Read::TooLarge(Bytes::new(), body);
    }
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(chunk) => {
                    data.extend_from_slice(&chunk);
                    if data.len() as u64 > limit {
                        return Read::TooLarge(data.freeze(), body);
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            },
            Err(error) => return Read::Failed(error),
        }
    }
    Read::Whole(data.freeze(), trailers)
}

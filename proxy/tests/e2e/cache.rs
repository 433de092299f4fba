//! The response cache (docs/cache.md): a counting origin whose answers a
//! test shapes through the query string, real HTTP/1.1, h2c and gRPC
//! clients, and the admin API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinSet;

use crate::support::process::admin_request;
use crate::support::{TestProxy, client, grpc};

/// An origin that counts what reaches it. The query shapes the answer:
/// `cc` (Cache-Control), `etag`, `lm` (Last-Modified), `vary`, `status`,
/// `size` (body bytes), `delay` (ms), `cookie`. A request whose
/// `If-None-Match` names the `etag` gets a 304. The body names the path
/// and how many requests the origin had answered.
struct Origin {
    addr: SocketAddr,
    state: Arc<OriginState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct OriginState {
    hits: AtomicUsize,
    not_modified: AtomicUsize,
    /// Every answer is a 503.
    failing: std::sync::atomic::AtomicBool,
    /// The headers of the last request, by path.
    seen: Mutex<HashMap<String, HeaderMap>>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    async fn start() -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |r| answer(state.clone(), r));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Origin { addr, state, task }
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn seen(&self, path: &str) -> HeaderMap {
        self.state.seen.lock().unwrap()[path].clone()
    }
}

async fn answer(
    state: Arc<OriginState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let n = state.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let path = request.uri().path().to_string();
    let params: HashMap<String, String> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%20", " ").replace("%3D", "=")))
        .collect();
    state
        .seen
        .lock()
        .unwrap()
        .insert(path.clone(), request.headers().clone());
    if state.failing.load(Ordering::SeqCst) {
        let mut failed = Response::new(Full::new(Bytes::from_static(b"down")));
        *failed.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return Ok(failed);
    }
    if let Some(delay) = params.get("delay") {
        tokio::time::sleep(Duration::from_millis(delay.parse().unwrap())).await;
    }
    let mut response = Response::builder();
    if let Some(etag) = params.get("etag") {
        let tag = format!("\"{etag}\"");
        if request
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v.to_str().unwrap() == tag)
        {
            state.not_modified.fetch_add(1, Ordering::SeqCst);
            let mut r = Response::builder().status(304).header("etag", tag);
            if let Some(cc) = params.get("cc") {
                r = r.header("cache-control", cc.as_str());
            }
            return Ok(r.body(Full::new(Bytes::new())).unwrap());
        }
        response = response.header("etag", tag);
    }
    for (param, header) in [
        ("cc", "cache-control"),
        ("lm", "last-modified"),
        ("vary", "vary"),
    ] {
        if let Some(value) = params.get(param) {
            response = response.header(header, value.as_str());
        }
    }
    if params.contains_key("cookie") {
        response = response.header("set-cookie", "session=1");
    }
    let status: u16 = params.get("status").map_or(200, |s| s.parse().unwrap());
    let mut body = format!("{path} #{n}");
    if let Some(vary) = params.get("vary") {
        let value = request
            .headers()
            .get(vary.as_str())
            .map_or("", |v| v.to_str().unwrap());
        body.push_str(&format!(" {vary}={value}"));
    }
    if let Some(size) = params.get("size") {
        body = "x".repeat(size.parse().unwrap());
    }
    Ok(response
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

async fn proxy(origin: SocketAddr, cache: &str) -> TestProxy {
    proxy_logging(origin, cache, "").await
}

async fn proxy_logging(origin: SocketAddr, cache: &str, top: &str) -> TestProxy {
    TestProxy::start(&format!(
        "{top}
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - name: cached
        backends: [{{cluster: origin}}]
        cache: {cache}
clusters:
  - {{name: origin, endpoints: ['{origin}']}}
"
    ))
    .await
}

/// GET through the proxy: status, `x-remora-cache`, body.
async fn get(
    client: &client::HttpClient,
    proxy: &TestProxy,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let reply = client::get_with(client, &proxy.url("web", path), headers).await;
    (
        reply.status.as_u16(),
        reply.header("x-remora-cache").to_string(),
        reply.body.clone(),
    )
}

async fn send(
    client: &client::HttpClient,
    method: Method,
    url: &str,
    body: client::ReqBody,
) -> client::Reply {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .unwrap();
    client::send(client, request).await
}

async fn settle(proxy: &TestProxy) {
    // `GET /cache` runs the store's pending evictions.
    assert_eq!(admin_request(proxy.admin, "GET", "/cache").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_then_hits_over_http1_and_h2c() {
    let origin = Origin::start().await;
    let proxy = proxy(origin.addr, "{ttl: 60s}").await;
    let (h1, h2) = (client::http1(), client::http2());
    assert_eq!(
        get(&h1, &proxy, "/a", &[]).await,
        (200, "miss".into(), "/a #1".into())
    );
    for client in [&h1, &h2, &h1] {
        assert_eq!(
            get(client, &proxy, "/a", &[]).await,
            (200, "hit".into(), "/a #1".into())
        );
    }
    let reply = client::get(&h1, &proxy.url("web", "/a")).await;
    assert!(
        reply.header("age").parse::<u64>().is_ok(),
        "a hit carries Age"
    );
    // The query is part of the key.
    assert_eq!(get(&h1, &proxy, "/a?x=1", &[]).await.1, "miss");
    assert_eq!(origin.hits(), 2);
    let series = |result: &str| {
        proxy.metric(&format!(
            "remora_cache_requests_total{{listener=\"web\",route=\"cached\",result=\"{result}\"}}"
        ))
    };
    assert_eq!((series("miss"), series("hit")), (2.0, 4.0));
    // Answers from the cache count as requests of the route, with no cluster.
    assert_eq!(
        proxy.metric(
            "remora_requests_total{listener=\"web\",route=\"cached\",cluster=\"\",status_class=\"2xx\"}"
        ),
        4.0
    );
    // HEAD is answered from the GET entry, without a body.
    let head = client::request(&h1, Method::HEAD, &proxy.url("web", "/a"), &[]).await;
    assert_eq!(head.header("x-remora-cache"), "hit");
    assert!(head.body.is_empty());
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_is_the_shorter_of_max_age_and_the_route_ttl() {
    let origin = Origin::start().await;
    let proxy = proxy(origin.addr, "{ttl: 1s}").await;
    let client = client::http1();
    // Route TTL 1 s, the response says 600 s: 1 s wins.
    get(&client, &proxy, "/long?cc=max-age%3D600", &[]).await;
    assert_eq!(
        get(&client, &proxy, "/long?cc=max-age%3D600", &[]).await.1,
        "hit"
    );
    // No Cache-Control at all: the route's TTL.
    get(&client, &proxy, "/plain", &[]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        get(&client, &proxy, "/long?cc=max-age%3D600", &[]).await.1,
        "miss"
    );
    assert_eq!(get(&client, &proxy, "/plain", &[]).await.1, "miss");

    let proxy = self::proxy(origin.addr, "{ttl: 60s}").await;
    // Route TTL 60 s, the response says 1 s: 1 s wins.
    get(&client, &proxy, "/short?cc=max-age%3D1", &[]).await;
    assert_eq!(
        get(&client, &proxy, "/short?cc=max-age%3D1", &[]).await.1,
        "hit"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        get(&client, &proxy, "/short?cc=max-age%3D1", &[]).await.1,
        "miss"
    );
    // s-maxage (a shared cache's) wins over max-age.
    let path = "/shared?cc=max-age%3D60,%20s-maxage%3D1";
    get(&client, &proxy, path, &[]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get(&client, &proxy, path, &[]).await.1, "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_may_not_be_stored_is_not() {
    let origin = Origin::start().await;
    let proxy = proxy(origin.addr, "{ttl: 60s}").await;
    let client = client::http1();
    for path in [
        "/ns?cc=no-store",
        "/priv?cc=private,%20max-age%3D60",
        "/cookie?cookie=1",
        "/err?status=500",
        "/vary-star?vary=*",
    ] {
        get(&client, &proxy, path, &[]).await;
        assert_eq!(get(&client, &proxy, path, &[]).await.1, "miss", "{path}");
    }
    // Authorization: not stored unless the response allows it.
    let auth = [("authorization", "Bearer t")];
    get(&client, &proxy, "/auth", &auth).await;
    assert_eq!(get(&client, &proxy, "/auth", &auth).await.1, "miss");
    get(&client, &proxy, "/auth-public?cc=public", &auth).await;
    assert_eq!(
        get(&client, &proxy, "/auth-public?cc=public", &auth)
            .await
            .1,
        "hit"
    );
    // The client's no-store bypasses; its no-cache goes upstream.
    get(&client, &proxy, "/c", &[]).await;
    let hits = origin.hits();
    assert_eq!(
        get(&client, &proxy, "/c", &[("cache-control", "no-store")])
            .await
            .1,
        "bypass"
    );
    assert_eq!(
        get(&client, &proxy, "/c", &[("cache-control", "no-cache")])
            .await
            .1,
        "miss"
    );
    assert_eq!(origin.hits(), hits + 2);
    // 404 is cacheable by default (RFC 9110 §15.1).
    get(&client, &proxy, "/gone?status=404", &[]).await;
    assert_eq!(get(&client, &proxy, "/gone?status=404", &[]).await.1, "hit");
    // Methods the cache does not serve bypass it; a successful unsafe one
    // invalidates the target's GET entry.
    get(&client, &proxy, "/doc", &[]).await;
    assert_eq!(get(&client, &proxy, "/doc", &[]).await.1, "hit");
    let put = send(
        &client,
        Method::PUT,
        &proxy.url("web", "/doc"),
        client::body("x"),
    )
    .await;
    assert_eq!(put.header("x-remora-cache"), "bypass");
    assert_eq!(get(&client, &proxy, "/doc", &[]).await.1, "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_one_entry_per_variant() {
    let origin = Origin::start().await;
    let proxy = proxy(origin.addr, "{ttl: 60s}").await;
    let client = client::http1();
    let path = "/v?vary=accept-language";
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(
        get(&client, &proxy, path, &en).await.2,
        "/v #1 accept-language=en"
    );
    assert_eq!(
        get(&client, &proxy, path, &fr).await.2,
        "/v #2 accept-language=fr"
    );
    assert_eq!(
        get(&client, &proxy, path, &en).await,
        (200, "hit".into(), "/v #1 accept-language=en".into())
    );
    assert_eq!(
        get(&client, &proxy, path, &fr).await,
        (200, "hit".into(), "/v #2 accept-language=fr".into())
    );
    assert_eq!(get(&client, &proxy, path, &[]).await.1, "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_entry_is_revalidated_and_a_304_refreshes_it() {
    let origin = Origin::start().await;
    let proxy = proxy(origin.addr, "{ttl: 60s}").await;
    let client = client::http1();
    let path = "/r?etag=v1&cc=max-age%3D1";
    assert_eq!(get(&client, &proxy, path, &[]).await.2, "/r #1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Stale: the cache asks with If-None-Match, the origin says 304, the
    // stored body answers and is fresh again.
    assert_eq!(
        get(&client, &proxy, path, &[]).await,
        (200, "hit".into(), "/r #1".into())
    );
    assert_eq!(origin.seen("/r")["if-none-match"], "\"v1\"");
    assert_eq!(origin.state.not_modified.load(Ordering::SeqCst), 1);
    assert_eq!(get(&client, &proxy, path, &[]).await.1, "hit");
    assert_eq!(origin.hits(), 2);
    assert_eq!(
        proxy.metric(
            "remora_cache_revalidations_total{listener=\"web\",route=\"cached\",result=\"not_modified\"}"
        ),
        1.0
    );
    // The client's own conditional is answered by the cache: 304.
    let reply = client::get_with(
        &client,
        &proxy.url("web", path),
        &[("if-none-match", "\"v1\"")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    assert_eq!(reply.header("etag"), "\"v1\"");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_recently_used_entries_go_first_at_max_entries_and_max_bytes() {
    let origin = Origin::start().await;
    let proxy = proxy(origin.addr, "{ttl: 60s, max_entries: 3}").await;
    let client = client::http1();
    for path in ["/1", "/2", "/3"] {
        get(&client, &proxy, path, &[]).await;
        settle(&proxy).await;
    }
    assert_eq!(get(&client, &proxy, "/1", &[]).await.1, "hit");
    settle(&proxy).await;
    get(&client, &proxy, "/4", &[]).await;
    settle(&proxy).await;
    // /2 was the least recently used.
    assert_eq!(get(&client, &proxy, "/1", &[]).await.1, "hit");
    assert_eq!(get(&client, &proxy, "/2", &[]).await.1, "miss");
    settle(&proxy).await;
    assert!(
        proxy.metric(
            "remora_cache_evictions_total{listener=\"web\",route=\"cached\",reason=\"capacity\"}"
        ) >= 2.0
    );

    let proxy = self::proxy(
        origin.addr,
        "{ttl: 60s, max_entries: 1000, max_bytes: 5000, max_entry_bytes: 2000}",
    )
    .await;
    for i in 0..10 {
        let (_, result, body) = get(&client, &proxy, &format!("/big{i}?size=1500"), &[]).await;
        assert_eq!((result.as_str(), body.len()), ("miss", 1500));
        settle(&proxy).await;
        let bytes = proxy.metric("remora_cache_bytes{listener=\"web\",route=\"cached\"}");
        assert!(bytes <= 5000.0, "{bytes} bytes held over max_bytes 5000");
    }
    assert_eq!(get(&client, &proxy, "/big9?size=1500", &[]).await.1, "hit");
    // Larger than max_entry_bytes: passed on whole, not stored.
    let (_, result, body) = get(&client, &proxy, "/huge?size=3000", &[]).await;
    assert_eq!((result.as_str(), body.len()), ("miss", 3000));
    assert_eq!(get(&client, &proxy, "/huge?size=3000", &[]).await.1, "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_misses_make_one_upstream_request() {
    let origin = Origin::start().await;
    let proxy = proxy(origin.addr, "{ttl: 60s}").await;
    let (h1, h2) = (client::http1(), client::http2());
    let url = proxy.url("web", "/hot?delay=300");
    let mut calls = JoinSet::new();
    for i in 0..100 {
        let client = if i % 2 == 0 { h1.clone() } else { h2.clone() };
        let url = url.clone();
        calls.spawn(async move { client::get(&client, &url).await });
    }
    let mut bodies = Vec::new();
    while let Some(reply) = calls.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        bodies.push(reply.body.clone());
    }
    assert_eq!(origin.hits(), 1, "one request reached the origin");
    assert!(bodies.iter().all(|b| b == "/hot #1"));
    assert!(
        proxy.metric("remora_cache_collapsed_total{listener=\"web\",route=\"cached\"}") >= 90.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_the_stale_entry_when_the_origin_is_gone() {
    let client = client::http1();
    for (cache, expect) in [
        ("{ttl: 1s, stale_if_error: 60s}", (200, "stale")),
        ("{ttl: 1s}", (503, "miss")),
    ] {
        let origin = Origin::start().await;
        let proxy = proxy(origin.addr, cache).await;
        assert_eq!(get(&client, &proxy, "/s", &[]).await.2, "/s #1");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // Aborting the origin's tasks takes effect at their next poll:
        // give its open connections the time to close.
        drop(origin);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, result, body) = get(&client, &proxy, "/s", &[]).await;
        assert_eq!((status, result.as_str()), expect, "{cache}");
        if status == 200 {
            assert_eq!(body, "/s #1");
            assert_eq!(
                proxy
                    .metric("remora_cache_stale_if_error_total{listener=\"web\",route=\"cached\"}"),
                1.0
            );
        }
    }
    // An origin answering 503 is failing too.
    let origin = Origin::start().await;
    let proxy = proxy(origin.addr, "{ttl: 1s, stale_if_error: 60s}").await;
    get(&client, &proxy, "/e", &[]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    origin.state.failing.store(true, Ordering::SeqCst);
    assert_eq!(
        get(&client, &proxy, "/e", &[]).await,
        (200, "stale".into(), "/e #1".into())
    );
    assert_eq!(origin.hits(), 2, "the origin was asked first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let origin = Origin::start().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let top = format!("access_log: {{path: '{}'}}", log.path().display());
    let proxy = proxy_logging(origin.addr, "{ttl: 1s, stale_while_revalidate: 30s}", &top).await;
    let client = client::http1();
    assert_eq!(get(&client, &proxy, "/w?delay=200", &[]).await.2, "/w #1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = std::time::Instant::now();
    assert_eq!(
        get(&client, &proxy, "/w?delay=200", &[]).await,
        (200, "stale".into(), "/w #1".into())
    );
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "the stale answer does not wait for the origin"
    );
    crate::support::eventually("the background refresh", || origin.hits() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&client, &proxy, "/w?delay=200", &[]).await,
        (200, "hit".into(), "/w #2".into())
    );
    assert_eq!(origin.hits(), 2);
    // The access log says what the cache did, the background refresh too.
    let mut seen = Vec::new();
    crate::support::eventually("four access log lines", || {
        let text = std::fs::read_to_string(log.path()).unwrap();
        seen = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["cache"].clone())
            .collect();
        seen.len() == 4
    })
    .await;
    seen.sort_by_key(|v| v.to_string());
    assert_eq!(seen, ["hit", "miss", "refresh", "stale"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_methods_are_cached_only_when_listed_and_only_when_ok() {
    let upstream = grpc::start_server().await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - name: grpc
        backends: [{{cluster: echo}}]
        cache: {{ttl: 60s, methods: [], grpc_methods: [/test.Echo/Unary]}}
clusters:
  - {{name: echo, protocol: http2, endpoints: ['{}']}}
",
        upstream.addr
    ))
    .await;
    let mut client = grpc::EchoClient::connect(proxy.addr("web")).await;
    let calls = || upstream.state.calls.load(Ordering::SeqCst);
    for _ in 0..3 {
        let reply = client.unary("hello").await.unwrap();
        assert_eq!(reply.get_ref().message, "hello");
    }
    assert_eq!(calls(), 1, "the same message is answered from the cache");
    client.unary("other").await.unwrap();
    assert_eq!(calls(), 2, "another message is another key");
    // Errors are not stored.
    for _ in 0..2 {
        let status = client.unary("fail").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    assert_eq!(calls(), 4);
    // Methods not listed pass through.
    for _ in 0..2 {
        let mut replies = client.server_stream("s", 2).await.unwrap();
        let mut n = 0;
        while replies.message().await.unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 2);
    }
    assert_eq!(
        proxy.metric(
            "remora_cache_requests_total{listener=\"web\",route=\"grpc\",result=\"bypass\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_cached_by_body_when_opted_in() {
    let origin = Origin::start().await;
    let proxy = proxy(
        origin.addr,
        "{ttl: 60s, methods: [GET, POST], max_body_bytes: 100}",
    )
    .await;
    let client = client::http1();
    let url = proxy.url("web", "/q");
    let post = |body: &'static str| send(&client, Method::POST, &url, client::body(body));
    assert_eq!(post("a").await.header("x-remora-cache"), "miss");
    assert_eq!(post("a").await.header("x-remora-cache"), "hit");
    assert_eq!(post("b").await.header("x-remora-cache"), "miss");
    assert_eq!(origin.hits(), 2);
    // A body over max_body_bytes bypasses, and reaches the origin whole.
    let big = "y".repeat(500);
    let pieces = vec![
        Bytes::from(big[..50].to_string()),
        Bytes::from(big[50..].to_string()),
    ];
    let reply = send(&client, Method::POST, &url, client::chunked(pieces)).await;
    assert_eq!(reply.header("x-remora-cache"), "bypass");
    assert_eq!(origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_entries_by_path_prefix() {
    let origin = Origin::start().await;
    let proxy = proxy(origin.addr, "{ttl: 60s}").await;
    let client = client::http1();
    for path in ["/a/1", "/a/2", "/b"] {
        get(&client, &proxy, path, &[]).await;
    }
    let (status, body) = admin_request(
        proxy.admin,
        "POST",
        "/cache/purge?route=cached&key_prefix=/a/",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"purged\": 2"), "{body}");
    assert_eq!(get(&client, &proxy, "/a/1", &[]).await.1, "miss");
    assert_eq!(get(&client, &proxy, "/b", &[]).await.1, "hit");
    assert_eq!(
        admin_request(proxy.admin, "POST", "/cache/purge?route=nope")
            .await
            .0,
        404
    );
    let (_, body) = admin_request(proxy.admin, "POST", "/cache/purge").await;
    assert!(body.contains("\"purged\": 2"), "{body}");
    assert_eq!(get(&client, &proxy, "/b", &[]).await.1, "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_a_key_space_scan() {
    let origin = Origin::start().await;
    let proxy = proxy(
        origin.addr,
        "{ttl: 60s, max_entries: 100, max_bytes: 200000}",
    )
    .await;
    let client = client::http1();
    for i in 0..2000 {
        get(&client, &proxy, &format!("/scan/{i}?size=500"), &[]).await;
    }
    settle(&proxy).await;
    let entries = proxy.metric("remora_cache_entries{listener=\"web\",route=\"cached\"}");
    let bytes = proxy.metric("remora_cache_bytes{listener=\"web\",route=\"cached\"}");
    assert!(entries <= 100.0, "{entries} entries");
    assert!(bytes <= 200_000.0, "{bytes} bytes");
    assert!(
        entries >= 50.0,
        "the cache is still used: {entries} entries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_survives_a_reload_that_leaves_its_config_alone() {
    let origin = Origin::start().await;
    let yaml = |ttl: &str, extra: &str| {
        format!(
            "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - name: cached
        backends: [{{cluster: origin}}]
        cache: {{ttl: {ttl}}}
        {extra}
clusters:
  - {{name: origin, endpoints: ['{}']}}
",
            origin.addr
        )
    };
    let proxy = TestProxy::start(&yaml("60s", "")).await;
    let client = client::http1();
    get(&client, &proxy, "/k", &[]).await;
    let config = remora_proxy::config::parse_yaml(&yaml("60s", "timeout: 5s")).unwrap();
    proxy.proxy.reload(config).unwrap();
    assert_eq!(get(&client, &proxy, "/k", &[]).await.1, "hit");
    let config = remora_proxy::config::parse_yaml(&yaml("30s", "timeout: 5s")).unwrap();
    proxy.proxy.reload(config).unwrap();
    assert_eq!(get(&client, &proxy, "/k", &[]).await.1, "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cache_config_names_the_field() {
    let config = remora_proxy::config::parse_yaml(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {name: r, backends: [{cluster: c}], cache: {ttl: 10s, methods: [DELETE]}}
clusters:
  - {name: c, endpoints: ['127.0.0.1:1']}
",
    )
    .unwrap();
    let errors = remora_proxy::snapshot::Snapshot::compile(
        config,
        None,
        &remora_proxy::telemetry::Telemetry::new(),
        1,
        remora_proxy::snapshot::Mode::Check,
    )
    .unwrap_err()
    .to_string();
    assert!(
        errors.contains("listeners[0].routes[0].cache.methods[0]"),
        "{errors}"
    );
}

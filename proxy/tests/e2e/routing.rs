//! Routing end to end: every matcher kind, first match wins, traffic split,
//! header edits, direct responses, and the 404 for no route.

use std::collections::HashMap;
use std::sync::Arc;

use http::{Method, StatusCode};

use crate::support::TestProxy;
use crate::support::client::{self, Reply};
use crate::support::upstream::Upstream;

async fn matcher_proxy() -> (Upstream, TestProxy) {
    let upstream = Upstream::http1("api").await;
    let direct = |name: &str| format!("direct_response: {{status: 200, body: {name}}}");
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {{name: host, match: {{host: '*.api.test'}}, backends: [{{cluster: api}}]}}
      - {{name: exact, match: {{path: /exact}}, {}}}
      - {{name: regex, match: {{path_regex: '/v[0-9]+/.*'}}, {}}}
      - {{name: canary, match: {{method: POST, headers: [{{name: x-canary, exact: '1'}}]}}, {}}}
      - {{name: debug, match: {{headers: [{{name: x-debug, present: true}}]}}, {}}}
      - {{name: admin, match: {{headers: [{{name: x-user, regex: 'admin-[a-z]+'}}]}}, {}}}
      - {{name: tenant, match: {{query_params: [{{name: tenant, exact: acme}}]}}, {}}}
      - {{name: prefix, match: {{path_prefix: /api}}, backends: [{{cluster: api}}]}}
clusters:
  - {{name: api, endpoints: ['{}']}}
",
        direct("exact"),
        direct("regex"),
        direct("canary"),
        direct("debug"),
        direct("admin"),
        direct("tenant"),
        upstream.addr
    ))
    .await;
    (upstream, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_matcher_selects_its_route_and_the_first_match_wins() {
    let (_upstream, proxy) = matcher_proxy().await;
    let client = client::http1();
    let url = |path: &str| proxy.url("web", path);
    type Case<'a> = (Method, &'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (Method::GET, "/exact", vec![("host", "a.api.test")], "api"),
        (Method::GET, "/exact", vec![], "exact"),
        (Method::GET, "/exact/more", vec![("x-debug", "")], "debug"),
        (Method::GET, "/v2/users", vec![], "regex"),
        (Method::POST, "/x", vec![("x-canary", "1")], "canary"),
        (
            Method::GET,
            "/x",
            vec![("x-canary", "1"), ("x-debug", "1")],
            "debug",
        ),
        (Method::GET, "/x", vec![("x-user", "admin-root")], "admin"),
        (Method::GET, "/x?tenant=acme&y=2", vec![], "tenant"),
        (Method::GET, "/api/items", vec![], "api"),
    ];
    for (method, path, headers, expected) in cases {
        let reply = client::request(&client, method.clone(), &url(path), &headers).await;
        assert_eq!(reply.status, StatusCode::OK, "{method} {path} {headers:?}");
        assert_eq!(reply.body, expected, "{method} {path} {headers:?}");
    }
    for (method, path, headers) in [
        (Method::GET, "/x", vec![("x-canary", "1")]),
        (Method::GET, "/x", vec![("x-user", "admin-ROOT")]),
        (Method::GET, "/x?tenant=acme2", vec![]),
        (Method::GET, "/v2", vec![]),
        (Method::GET, "/Exact", vec![]),
    ] {
        let reply = client::request(&client, method.clone(), &url(path), &headers).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{method} {path} {headers:?}: {}",
            reply.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_a_404_that_says_so() {
    let (_upstream, proxy) = matcher_proxy().await;
    let reply = client::get(&client::http1(), &proxy.url("web", "/nowhere")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(
        reply
            .body
            .starts_with("no route matched GET 127.0.0.1/nowhere on listener \"web\""),
        "{}",
        reply.body
    );
    assert_eq!(
        proxy.metric(
            r#"remora_requests_total{listener="web",route="",cluster="",status_class="4xx"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_responses_carry_status_body_and_header_edits() {
    let proxy = TestProxy::start(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - name: gone
        match: {path: /old}
        direct_response: {status: 410, body: moved away}
        response_headers: {set: [{name: cache-control, value: no-store}]}
",
    )
    .await;
    let reply = client::get(&client::http2(), &proxy.url("web", "/old")).await;
    assert_eq!(reply.status, StatusCode::GONE);
    assert_eq!(reply.body, "moved away");
    assert_eq!(reply.header("cache-control"), "no-store");
    assert_eq!(reply.header("content-type"), "text/plain; charset=utf-8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_edits_apply_to_requests_and_responses() {
    let upstream = Upstream::http1("api").await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - name: edit
        backends: [{{cluster: api}}]
        request_headers:
          remove: [x-drop]
          set: [{{name: x-env, value: prod}}, {{name: host, value: internal.api}}]
          add: [{{name: x-tag, value: b}}]
        response_headers:
          remove: [x-upstream]
          add: [{{name: x-served-by, value: remora}}]
clusters:
  - {{name: api, endpoints: ['{}']}}
",
        upstream.addr
    ))
    .await;
    let reply = client::get_with(
        &client::http1(),
        &proxy.url("web", "/"),
        &[("x-drop", "1"), ("x-env", "dev"), ("x-tag", "a")],
    )
    .await;
    assert_eq!(reply.header("x-echo-drop"), "");
    assert_eq!(reply.header("x-echo-env"), "prod");
    let tags: Vec<_> = reply
        .headers
        .get_all("x-echo-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["a", "b"]);
    assert_eq!(
        reply.header("x-seen-host"),
        "internal.api",
        "a route may rewrite the host"
    );
    assert_eq!(reply.header("x-upstream"), "");
    assert_eq!(reply.header("x-served-by"), "remora");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_backends_split_traffic_by_weight() {
    let v1 = Upstream::http1("v1").await;
    let v2 = Upstream::http1("v2").await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {{name: split, backends: [{{cluster: v1, weight: 90}}, {{cluster: v2, weight: 10}}]}}
clusters:
  - {{name: v1, endpoints: ['{}']}}
  - {{name: v2, endpoints: ['{}']}}
",
        v1.addr, v2.addr
    ))
    .await;
    let url = Arc::new(proxy.url("web", "/"));
    let workers = (0..8).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let client = client::http1();
            let mut counts: HashMap<String, u32> = HashMap::new();
            for _ in 0..1250 {
                let Reply { status, body, .. } = client::get(&client, &url).await;
                assert_eq!(status, StatusCode::OK);
                *counts.entry(body).or_default() += 1;
            }
            counts
        })
    });
    let mut total: HashMap<String, u32> = HashMap::new();
    for worker in futures_util::future::join_all(workers).await {
        for (name, count) in worker.unwrap() {
            *total.entry(name).or_default() += count;
        }
    }
    let v2_share = f64::from(total["v2"]) / 10_000.0;
    // 10,000 draws at p = 0.1: σ = 0.3 %, so ±1.5 % is five sigmas.
    assert!(
        (v2_share - 0.10).abs() < 0.015,
        "v2 got {:.2} % of 10,000 requests: {total:?}",
        v2_share * 100.0
    );
    assert_eq!(total["v1"] + total["v2"], 10_000);
    assert_eq!(
        proxy.metric(
            r#"remora_requests_total{listener="web",route="split",cluster="v2",status_class="2xx"}"#
        ),
        f64::from(total["v2"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_json_line_per_request() {
    let upstream = Upstream::http1("api").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = TestProxy::start(&format!(
        "
access_log: {{path: '{}'}}
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {{name: api, match: {{path_prefix: /api}}, backends: [{{cluster: api}}]}}
      - {{name: dead, match: {{path_prefix: /dead}}, backends: [{{cluster: dead}}]}}
clusters:
  - {{name: api, endpoints: ['{}']}}
  - {{name: dead, endpoints: ['127.0.0.1:1']}}
",
        log.display(),
        upstream.addr
    ))
    .await;
    let client = client::http2();
    client::get(&client, &proxy.url("web", "/api/items?page=2")).await;
    client::get(&client, &proxy.url("web", "/nowhere")).await;
    client::get(&client, &proxy.url("web", "/dead")).await;
    let mut lines = Vec::new();
    crate::support::eventually("three access-log lines", || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        lines.len() == 3
    })
    .await;
    // A line is written when its exchange ends, which for the first request
    // can be after the second one's: find each line by its path.
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let by_path = |path: &str| {
        parsed
            .iter()
            .find(|line| line["path"] == path)
            .unwrap_or_else(|| panic!("no access-log line for {path}: {lines:?}"))
            .clone()
    };
    let first = by_path("/api/items?page=2");
    assert_eq!(first["listener"], "web");
    assert_eq!(first["route"], "api");
    assert_eq!(first["cluster"], "api");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["protocol"], "HTTP/2");
    assert_eq!(first["path"], "/api/items?page=2");
    assert_eq!(first["authority"], proxy.addr("web").to_string());
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream"], upstream.addr.to_string());
    assert_eq!(first["bytes_sent"], 3);
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let second = by_path("/nowhere");
    assert_eq!(
        (second["route"].as_str(), second["status"].as_u64()),
        (Some(""), Some(404))
    );
    assert!(second["upstream"].is_null());
    assert!(first["failed_by"].is_null() && second["failed_by"].is_null());
    let third = by_path("/dead");
    assert_eq!(third["status"], 503);
    assert_eq!(third["failed_by"], "upstream");
    assert_eq!(third["failure"], "connect_failure");
}

/// `x-request-id`, as Envoy: a request without one gets a new random UUID,
/// passed upstream and written to the access log; one the client sent is
/// kept; `generate_request_id: false` adds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_an_x_request_id_upstream_and_in_the_access_log() {
    let upstream = Upstream::http1("api").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = TestProxy::start(&format!(
        "
access_log: {{path: '{}'}}
listeners:
  - {{name: web, address: 127.0.0.1:0, routes: [{{name: all, backends: [{{cluster: api}}]}}]}}
  - {{name: plain, address: 127.0.0.1:0, generate_request_id: false, routes: [{{name: all, backends: [{{cluster: api}}]}}]}}
clusters:
  - {{name: api, endpoints: ['{}']}}
",
        log.display(),
        upstream.addr
    ))
    .await;
    let client = client::http1();
    let generated = client::get(&client, &proxy.url("web", "/one")).await;
    let id = generated.header("x-echo-request-id").to_string();
    let shape: Vec<usize> = id.split('-').map(str::len).collect();
    assert_eq!(shape, [8, 4, 4, 4, 12], "{id}");
    assert_eq!(&id[14..15], "4", "a version 4 UUID: {id}");
    assert!("89ab".contains(&id[19..20]), "the RFC 4122 variant: {id}");
    assert!(
        id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
        "{id}"
    );
    let again = client::get(&client, &proxy.url("web", "/one")).await;
    assert_ne!(
        again.header("x-echo-request-id"),
        id,
        "a new id per request"
    );
    let kept = client::get_with(
        &client,
        &proxy.url("web", "/two"),
        &[("x-request-id", "abc-123")],
    )
    .await;
    assert_eq!(kept.header("x-echo-request-id"), "abc-123");
    let none = client::get(&client, &proxy.url("plain", "/three")).await;
    assert_eq!(none.header("x-echo-request-id"), "");
    let mut lines = String::new();
    crate::support::eventually("four access-log lines", || {
        lines = std::fs::read_to_string(&log).unwrap_or_default();
        lines.lines().count() == 4
    })
    .await;
    assert!(
        lines.contains(&format!("\"request_id\":\"{id}\"")),
        "{lines}"
    );
    assert!(lines.contains("\"request_id\":\"abc-123\""), "{lines}");
}

//! Retries, per-try timeouts, budgets and outlier ejection against real
//! faults: a killed upstream, one that never answers, one that fails every
//! request, and gRPC statuses and deadlines.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tonic::Code;

use crate::support::client;
use crate::support::grpc::{EchoClient, start_server};
use crate::support::load::Load;
use crate::support::process::admin_request;
use crate::support::upstream::{Options, Protocol, Upstream, hanging, swallowing};
use crate::support::{TestProxy, eventually, within};

async fn clusters(proxy: &TestProxy) -> serde_json::Value {
    serde_json::from_str(&admin_request(proxy.admin, "GET", "/clusters").await.1).unwrap()
}

fn endpoint_state<'a>(clusters: &'a serde_json::Value, address: &str) -> &'a serde_json::Value {
    clusters[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == address)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_one_of_three_upstreams_fails_no_request_and_it_is_ejected_then_readmitted() {
    let a = Upstream::http1("a").await;
    let b = Upstream::http1("b").await;
    let c = Upstream::http1("c").await;
    let b_addr = b.addr;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - name: all
        backends: [{{cluster: app}}]
        retry: {{attempts: 2, on: [connect-failure, reset, gateway-error], backoff: {{base: 5ms, max: 20ms}}}}
clusters:
  - name: app
    endpoints: ['{}', '{}', '{}']
    outlier_detection: {{consecutive_5xx: 3, interval: 200ms, base_ejection_time: 1s, max_ejection_percent: 50}}
",
        a.addr, b.addr, c.addr
    ))
    .await;
    let load = Load::start(
        &proxy.url("web", "/"),
        (0..4).map(|_| client::http1()).collect(),
    );
    load.run_for(100).await;

    let killed = Instant::now();
    drop(b);
    let ejected = r#"remora_endpoints_ejected{cluster="app"}"#;
    eventually("the killed upstream is ejected", || {
        proxy.metric(ejected) == 1.0
    })
    .await;
    let ejection_delay = killed.elapsed();
    assert!(
        endpoint_state(&clusters(&proxy).await, &b_addr.to_string())["health"]["ejected"] == true
    );
    load.run_for(100).await;

    // Back on the same address: once its ejection is over, it gets traffic again.
    let b = Upstream::start("b", Protocol::Http1, Some(b_addr)).await;
    let restarted = Instant::now();
    let deadline = Instant::now() + crate::support::PATIENCE;
    while b.hits() == 0 {
        assert!(
            Instant::now() < deadline,
            "the restarted upstream never got traffic"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let readmitted_after = restarted.elapsed();
    load.run_for(100).await;
    let (sent, failed) = load.stop().await;
    let retries: f64 = ["connect-failure", "reset", "gateway-error"]
        .iter()
        .map(|r| {
            proxy.metric(&format!(
                r#"remora_upstream_retries_total{{cluster="app",reason="{r}"}}"#
            ))
        })
        .sum();
    eprintln!(
        "kill one of three: {sent} requests, {failed} failed, {retries} retries, ejected {ejection_delay:?} after the kill, \
         re-admitted {readmitted_after:?} after the restart, a={} c={} b(after restart)={}",
        a.hits(),
        c.hits(),
        b.hits()
    );
    assert_eq!(failed, 0, "no client request may fail");
    assert!(sent > 300, "the load must be real: {sent}");
    assert!(retries >= 1.0);
    assert!(
        proxy.metric(r#"remora_outlier_ejections_total{cluster="app",reason="consecutive_5xx"}"#)
            >= 1.0
    );
}

async fn hanging_proxy(extra_route: &str) -> (Upstream, TestProxy) {
    let (hang, _task) = hanging().await;
    std::mem::forget(_task);
    let good = Upstream::http1("good").await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - name: mixed
        match: {{path_prefix: /mixed}}
        timeout: 2s
        backends: [{{cluster: mixed}}]
        retry: {{attempts: 2, on: [reset], per_try_timeout: 200ms, backoff: {{base: 1ms, max: 5ms}}}}
      - name: dead
        match: {{path_prefix: /dead}}
        timeout: 2s
        backends: [{{cluster: hang}}]
        retry: {{attempts: 2, on: [reset], per_try_timeout: 200ms, backoff: {{base: 1ms, max: 5ms}}}}
      - name: short
        match: {{path_prefix: /short}}
        timeout: 300ms
        backends: [{{cluster: hang}}]
        retry: {{attempts: 5, on: [reset], per_try_timeout: 200ms, backoff: {{base: 1ms, max: 5ms}}}}
{extra_route}
clusters:
  - {{name: mixed, endpoints: ['{hang}', '{}']}}
  - {{name: hang, endpoints: ['{hang}']}}
",
        good.addr
    ))
    .await;
    (good, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_is_retried_elsewhere_within_the_route_timeout() {
    let (good, proxy) = hanging_proxy("").await;
    let client = client::http1();
    let mut slow = 0;
    for _ in 0..10 {
        let started = Instant::now();
        let reply = client::get(&client, &proxy.url("web", "/mixed")).await;
        let took = started.elapsed();
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "good")
        );
        if took >= Duration::from_millis(200) {
            slow += 1;
        }
    }
    assert!(
        slow >= 3,
        "round robin sends about half the first tries to the hanging endpoint: {slow}"
    );
    assert_eq!(good.hits(), 10);
    assert!(proxy.metric(r#"remora_timeouts_total{cluster="mixed",kind="per_try"}"#) >= 3.0);

    // Every try hangs: three per-try timeouts, then 504 saying so.
    let started = Instant::now();
    let reply = client::get(&client, &proxy.url("web", "/dead")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        reply
            .body
            .starts_with("upstream per-try timeout: cluster \"hang\"")
            && reply
                .body
                .contains(": no response headers within the per-try timeout (200ms)"),
        "{}",
        reply.body
    );
    assert!(started.elapsed() >= Duration::from_millis(600));

    // The route's timeout ends the tries early.
    let started = Instant::now();
    let reply = client::get(&client, &proxy.url("web", "/short")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        reply
            .body
            .contains("route \"short\" timeout of 300ms expired"),
        "{}",
        reply.body
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(290), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_retry_budget_caps_the_extra_load_on_a_failing_upstream() {
    let failing = Upstream::http1("failing").await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - name: all
        backends: [{{cluster: app}}]
        retry: {{attempts: 3, on: [gateway-error], budget: {{percent: 20, min_per_second: 2}}, backoff: {{base: 1ms, max: 2ms}}}}
clusters:
  - {{name: app, endpoints: ['{}']}}
",
        failing.addr
    ))
    .await;
    let url = Arc::new(proxy.url("web", "/status/503"));
    let run_for = Duration::from_secs(3);
    let started = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = client::http1();
                let mut sent = 0usize;
                while started.elapsed() < run_for {
                    assert_eq!(
                        client::get(&client, &url).await.status,
                        StatusCode::SERVICE_UNAVAILABLE
                    );
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let mut requests = 0;
    for worker in workers {
        requests += within("load", worker).await.unwrap();
    }
    let hits = failing.hits();
    let extra = hits - requests;
    // 20 % of the requests, plus the reserve: 2 per second over the 10 s window.
    let allowed = requests as f64 * 0.20 + 2.0 * 10.0;
    eprintln!(
        "budget: {requests} requests, {hits} upstream hits, {extra} retries = {:.1} % extra load (allowed {allowed:.0}); without a budget: {}",
        extra as f64 * 100.0 / requests as f64,
        requests * 4
    );
    assert!(requests > 200, "{requests}");
    assert!(extra > 0, "some retries are made");
    assert!(
        extra as f64 <= allowed,
        "{extra} retries exceed the budget of {allowed:.0}"
    );
    assert!(proxy.metric(r#"remora_retry_budget_exhausted_total{cluster="app"}"#) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_retried_only_when_it_never_reached_the_upstream() {
    let failing = Upstream::http1("failing").await;
    let good = Upstream::http1("good").await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {{name: failing, match: {{path_prefix: /status}}, backends: [{{cluster: failing}}], retry: {{on: [5xx], backoff: {{base: 1ms, max: 2ms}}}}}}
      - {{name: flaky, backends: [{{cluster: flaky}}], retry: {{on: [5xx], backoff: {{base: 1ms, max: 2ms}}}}}}
clusters:
  - {{name: failing, endpoints: ['{}']}}
  - {{name: flaky, endpoints: ['127.0.0.1:1', '{}']}}
",
        failing.addr, good.addr
    ))
    .await;
    let client = client::http1();
    let reply = client::request(&client, Method::POST, &proxy.url("web", "/status/503"), &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        failing.hits(),
        1,
        "a POST that reached the upstream is not retried"
    );
    let reply = client::request(&client, Method::GET, &proxy.url("web", "/status/503"), &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failing.hits(), 4, "a GET is retried twice");

    for _ in 0..10 {
        let reply = client::request(&client, Method::POST, &proxy.url("web", "/"), &[]).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "good"),
            "a POST that could not connect is retried"
        );
    }
    assert!(proxy.metric(r#"remora_upstream_retries_total{cluster="flaky",reason="5xx"}"#) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried_invalid_argument_is_not_and_deadlines_propagate() {
    let down = start_server().await;
    down.state.unavailable.store(true, Ordering::SeqCst);
    let up = start_server().await;
    // An upstream that takes a second and, unlike a tonic server, does not
    // enforce grpc-timeout itself: whatever deadline answer comes must come
    // from the proxy.
    let stalling = Upstream::with(
        "stalling",
        Protocol::Http2,
        None,
        Options {
            delay: Duration::from_secs(1),
            ..Options::default()
        },
    )
    .await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: grpc
    address: 127.0.0.1:0
    routes:
      - name: echo
        backends: [{{cluster: echo}}]
        retry: {{on: [unavailable], backoff: {{base: 1ms, max: 2ms}}}}
        max_grpc_timeout: 10s
  - name: stalling
    address: 127.0.0.1:0
    routes: [{{name: stalling, backends: [{{cluster: stalling}}]}}]
clusters:
  - {{name: echo, protocol: http2, endpoints: ['{}', '{}']}}
  - {{name: stalling, protocol: http2, endpoints: ['{}']}}
",
        down.addr, up.addr, stalling.addr
    ))
    .await;
    let mut client = EchoClient::connect(proxy.addr("grpc")).await;
    for i in 0..10 {
        let reply = client.unary(&format!("hello {i}")).await.unwrap();
        assert_eq!(reply.into_inner().message, format!("hello {i}"));
    }
    assert!(
        down.state.calls.load(Ordering::SeqCst) >= 3,
        "half the first tries hit the server that is down"
    );
    assert!(
        proxy.metric(r#"remora_upstream_retries_total{cluster="echo",reason="unavailable"}"#)
            >= 3.0
    );

    // INVALID_ARGUMENT is the answer, not a failure to retry.
    down.state.unavailable.store(false, Ordering::SeqCst);
    let before = down.state.calls.load(Ordering::SeqCst) + up.state.calls.load(Ordering::SeqCst);
    assert_eq!(
        client.unary("fail").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let after = down.state.calls.load(Ordering::SeqCst) + up.state.calls.load(Ordering::SeqCst);
    assert_eq!(after - before, 1);

    // The client's deadline goes upstream (less the time spent so far)...
    let mut request = tonic::Request::new(crate::support::grpc::EchoRequest {
        message: "x".into(),
        count: 0,
    });
    request.set_timeout(Duration::from_secs(5));
    let reply = client.unary_request(request).await.unwrap();
    let seen = reply
        .metadata()
        .get("x-seen-grpc-timeout")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let millis: u64 = seen.trim_end_matches('m').parse().unwrap();
    assert!(
        (4_000..=5_000).contains(&millis),
        "upstream saw grpc-timeout {seen}"
    );

    // ...and the proxy enforces it: DEADLINE_EXCEEDED after ~300 ms, not 1 s.
    // A plain HTTP/2 client sends it: tonic's channel would enforce the
    // deadline itself and answer CANCELLED before the proxy could.
    let request = http::Request::post(format!("http://{}/echo.Echo/Unary", proxy.addr("stalling")))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(client::body(&b"\0\0\0\0\0"[..]))
        .unwrap();
    let reply = client::send(&client::http2(), request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("grpc-status"),
        "4",
        "DEADLINE_EXCEEDED: {reply:?}"
    );
    assert!(
        reply
            .header("grpc-message")
            .contains("grpc-timeout of 300ms"),
        "{reply:?}"
    );
    assert!(proxy.metric(r#"remora_timeouts_total{cluster="stalling",kind="grpc"}"#) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_replayed_within_the_buffer_limit_and_a_larger_one_is_not_retried() {
    let (swallow, seen, _task) = swallowing().await;
    let good = Upstream::http1("good").await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - name: all
        backends: [{{cluster: app}}]
        retry: {{attempts: 1, on: [reset], buffer_limit_bytes: 1024, backoff: {{base: 1ms, max: 2ms}}}}
clusters:
  - {{name: app, endpoints: ['{swallow}', '{}'], load_balancer: {{policy: round_robin}}}}
",
        good.addr
    ))
    .await;
    let client = client::http1();
    // Even requests carry a content-length, odd ones are chunked (their size
    // is learnt only as the body streams).
    let put = |size: usize, i: usize| {
        let body: Vec<u8> = (0..size).map(|j| b'a' + ((i + j) % 26) as u8).collect();
        let sent = if i.is_multiple_of(2) {
            client::body(body.clone())
        } else {
            client::chunked(
                body.chunks(256)
                    .map(bytes::Bytes::copy_from_slice)
                    .collect(),
            )
        };
        let request = http::Request::put(proxy.url("web", "/echo"))
            .body(sent)
            .unwrap();
        (request, body)
    };

    // 800 bytes: kept, so a try that sent it all and then lost its
    // connection is retried with the same bytes.
    for i in 0..10 {
        let (request, body) = put(800, i);
        let reply = client::send(&client, request).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.body.as_bytes(),
            body.as_slice(),
            "the replayed body is the sent one"
        );
    }
    let (bytes, swallowed) = (seen.0.load(Ordering::SeqCst), seen.1.load(Ordering::SeqCst));
    assert!(
        swallowed >= 3,
        "round robin sends some first tries to the swallower: {swallowed}"
    );
    assert_eq!(
        bytes,
        swallowed * 800,
        "each of those tries sent the whole body"
    );
    let retries = proxy.metric(r#"remora_upstream_retries_total{cluster="app",reason="reset"}"#);
    assert_eq!(retries, swallowed as f64);

    // 4 KiB: over the limit, so a try that fails after sending it is not retried.
    let mut failed = 0;
    for i in 0..10 {
        let (request, body) = put(4096, i);
        let reply = client::send(&client, request).await;
        match reply.status {
            StatusCode::OK => assert_eq!(reply.body.as_bytes(), body.as_slice()),
            StatusCode::BAD_GATEWAY => failed += 1,
            other => panic!("unexpected {other}: {reply:?}"),
        }
    }
    assert!(failed >= 3, "{failed}");
    assert_eq!(seen.1.load(Ordering::SeqCst) - swallowed, failed);
    assert_eq!(
        seen.0.load(Ordering::SeqCst) - bytes,
        failed * 4096,
        "the whole body went to the first try"
    );
    assert_eq!(
        proxy.metric(r#"remora_upstream_retries_total{cluster="app",reason="reset"}"#),
        retries,
        "no retry for a body over the limit"
    );
}

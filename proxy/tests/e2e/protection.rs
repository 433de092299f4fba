//! Protection against overload and for chaos testing: circuit breakers, rate
//! limits, fault injection, the stream idle timeout, and listener
//! connection limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::AsyncReadExt;

use crate::support::client;
use crate::support::upstream::{Upstream, raw, tcp_echo};
use crate::support::{TestProxy, load, within};

async fn proxy(upstream: &Upstream, route_extra: &str, cluster_extra: &str) -> TestProxy {
    TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {{name: all, backends: [{{cluster: app}}]{route_extra}}}
clusters:
  - {{name: app, endpoints: ['{}']{cluster_extra}}}
",
        upstream.addr
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_trips_at_exactly_the_configured_concurrency() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy(&upstream, "", ", circuit_breakers: {max_requests: 5}").await;
    let url = proxy.url("web", "/slow/500");
    let requests: Vec<_> = (0..8)
        .map(|_| client::spawn_get(client::http1(), url.clone()))
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for reply in within("eight requests", futures_util::future::join_all(requests)).await {
        let reply = reply.unwrap().unwrap();
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reply.header("x-remora-overloaded"), "true");
                assert!(
                    reply.body.starts_with(
                        "overloaded: cluster \"app\" is at its max_requests circuit breaker"
                    ),
                    "{}",
                    reply.body
                );
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, refused), (5, 3));
    assert_eq!(
        upstream.hits(),
        5,
        "refused requests never reach the upstream"
    );
    assert_eq!(
        proxy.metric(r#"remora_circuit_open_total{cluster="app",limit="max_requests"}"#),
        3.0
    );
}

/// 32 clients in a loop for `for_` against an upstream with four workers
/// busy 20 ms a request: the latencies of the 200s, and the 503s (each
/// checked to be adaptive concurrency's).
async fn saturate(proxy: &TestProxy, for_: Duration) -> (Vec<Duration>, usize) {
    let url = proxy.url("web", "/busy/20");
    let until = Instant::now() + for_;
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = client::http1();
                let (mut ok, mut shed) = (Vec::new(), 0);
                while Instant::now() < until {
                    let started = Instant::now();
                    let reply = client::get(&client, &url).await;
                    match reply.status {
                        StatusCode::OK => ok.push(started.elapsed()),
                        StatusCode::SERVICE_UNAVAILABLE => {
                            assert_eq!(reply.header("x-remora-overloaded"), "adaptive-concurrency");
                            shed += 1;
                            // A shed client backs off a little, as a real one would.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        other => panic!("unexpected {other}"),
                    }
                }
                (ok, shed)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut shed = 0;
    for client in within("the clients", futures_util::future::join_all(clients)).await {
        let (ok, s) = client.unwrap();
        latencies.extend(ok);
        shed += s;
    }
    latencies.sort();
    (latencies, shed)
}

fn p90(latencies: &[Duration]) -> Duration {
    latencies[latencies.len() * 9 / 10]
}

/// With adaptive concurrency the proxy sheds what the upstream cannot
/// take at once, so admitted requests find a short queue there and stay
/// fast; without it every request queues at the upstream and latency grows
/// with the load.
///
/// The queue is what is asserted: it is what the limiter controls. The
/// latency follows from it on an idle machine and is printed, but on a
/// starved one the clients' own scheduling dominates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_concurrency_sheds_load_and_keeps_latency_bounded() {
    let upstream = Upstream::http1("up").await;
    let plain = proxy(&upstream, "", "").await;
    let (queued, none_shed) = saturate(&plain, Duration::from_secs(2)).await;
    assert_eq!(none_shed, 0);
    let mut queue_without = upstream.take_busy_seen();
    let limited = proxy(
        &upstream,
        "",
        ", adaptive_concurrency: {sample_interval: 50ms, min_rtt_requests: 10}",
    )
    .await;
    // The first minRTT measurement, then adaptation, then the measured run.
    saturate(&limited, Duration::from_secs(1)).await;
    upstream.take_busy_seen();
    let (admitted, shed) = saturate(&limited, Duration::from_secs(2)).await;
    let mut queue_with = upstream.take_busy_seen();
    queue_without.sort_unstable();
    queue_with.sort_unstable();
    let q90 = |queue: &[usize]| queue[queue.len() * 9 / 10];
    eprintln!(
        "adaptive concurrency: without: {} answered, p90 {:?}, upstream queue p90 {}; with: {} admitted, {shed} shed, p90 {:?}, upstream queue p90 {}",
        queued.len(),
        p90(&queued),
        q90(&queue_without),
        admitted.len(),
        p90(&admitted),
        q90(&queue_with),
    );
    assert!(shed > 0, "nothing shed");
    assert!(
        q90(&queue_without) >= 16,
        "without a limit, the 32 clients queue at the upstream: p90 {}",
        q90(&queue_without)
    );
    assert!(
        q90(&queue_with) * 2 <= q90(&queue_without),
        "the upstream's queue (p90) with the limiter {}, without {}",
        q90(&queue_with),
        q90(&queue_without)
    );
    // Four workers at 20 ms: 200 requests/s; the limiter must not starve
    // the upstream (half its capacity at least).
    assert!(admitted.len() >= 200, "{} admitted in 2 s", admitted.len());
    assert!(
        limited.metric(r#"remora_adaptive_concurrency_rejected_total{cluster="app"}"#)
            >= shed as f64
    );
    let limit = limited.metric(r#"remora_adaptive_concurrency_limit{cluster="app"}"#);
    assert!((3.0..=32.0).contains(&limit), "limit {limit}");
    let min_rtt = limited.metric(r#"remora_adaptive_concurrency_min_rtt_seconds{cluster="app"}"#);
    assert!((0.015..0.2).contains(&min_rtt), "minRTT {min_rtt}");
    let (_, body) = crate::support::process::admin_request(limited.admin, "GET", "/clusters").await;
    let clusters: serde_json::Value = serde_json::from_str(&body).unwrap();
    let view = &clusters[0]["adaptive_concurrency"];
    assert!(view["limit"].as_u64().is_some_and(|l| l >= 3), "{view}");
    assert!(
        view["min_rtt_ms"].as_f64().is_some_and(|ms| ms >= 15.0),
        "{view}"
    );

    // The same on a listener (Envoy's filter, over xDS): one limit over
    // every request it forwards.
    let on_listener = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    adaptive_concurrency: {{sample_interval: 50ms, min_rtt_requests: 10}}
    routes: [{{name: all, backends: [{{cluster: app}}]}}]
clusters:
  - {{name: app, endpoints: ['{}']}}
",
        upstream.addr
    ))
    .await;
    let (admitted, shed) = saturate(&on_listener, Duration::from_secs(2)).await;
    assert!(
        shed > 0 && admitted.len() >= 100,
        "{} admitted, {shed} shed",
        admitted.len()
    );
    assert!(
        on_listener.metric(r#"remora_adaptive_concurrency_rejected_total{listener="web"}"#)
            >= shed as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_requests_bounds_the_queue_for_a_connection() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy(
        &upstream,
        "",
        ", pool: {max_connections: 1}, circuit_breakers: {max_pending_requests: 2}",
    )
    .await;
    let url = proxy.url("web", "/slow/400");
    let first = client::spawn_get(client::http1(), url.clone());
    crate::support::eventually("the first request holds the only connection", || {
        upstream.hits() == 1
    })
    .await;
    let rest: Vec<_> = (0..4)
        .map(|_| client::spawn_get(client::http1(), url.clone()))
        .collect();
    let statuses: Vec<StatusCode> = within("the rest", futures_util::future::join_all(rest))
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap().status)
        .collect();
    assert_eq!(
        within("first", first).await.unwrap().unwrap().status,
        StatusCode::OK
    );
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(
        (ok, statuses.len() - ok),
        (2, 2),
        "two wait for the connection, two are refused: {statuses:?}"
    );
    assert_eq!(
        proxy.metric(r#"remora_circuit_open_total{cluster="app",limit="max_pending_requests"}"#),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_connection_cap_makes_requests_wait_but_never_starves_an_endpoint() {
    let upstreams = [
        Upstream::http1("a").await,
        Upstream::http1("b").await,
        Upstream::http1("c").await,
    ];
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes: [{{name: all, backends: [{{cluster: app}}]}}]
clusters:
  - name: app
    endpoints: ['{}', '{}', '{}']
    load_balancer: {{policy: round_robin}}
    circuit_breakers: {{max_connections: 2, max_pending_requests: 0}}
",
        upstreams[0].addr, upstreams[1].addr, upstreams[2].addr
    ))
    .await;
    let hits = || upstreams.iter().map(Upstream::hits).sum::<usize>();
    // Two slow requests hold two endpoints' connections: the cap.
    let slow: Vec<_> = (0..2)
        .map(|_| client::spawn_get(client::http1(), proxy.url("web", "/slow/800")))
        .collect();
    crate::support::eventually("both slow requests are upstream", || hits() == 2).await;
    // The third endpoint has no connection, so it may open one over the cap...
    let third = client::get(&client::http1(), &proxy.url("web", "/")).await;
    assert_eq!(third.status, StatusCode::OK);
    // ...but the next request, back on a busy endpoint, may neither open a
    // connection nor wait (max_pending_requests: 0).
    let fourth = client::get(&client::http1(), &proxy.url("web", "/")).await;
    assert_eq!(fourth.status, StatusCode::SERVICE_UNAVAILABLE, "{fourth:?}");
    assert_eq!(fourth.header("x-remora-overloaded"), "true");
    for reply in within("slow requests", futures_util::future::join_all(slow)).await {
        assert_eq!(reply.unwrap().unwrap().status, StatusCode::OK);
    }
    assert_eq!(
        upstreams.iter().map(Upstream::connections).sum::<usize>(),
        3,
        "two within the cap, one over it for the endpoint that had none"
    );
    assert!(
        proxy.metric(r#"remora_circuit_open_total{cluster="app",limit="max_connections"}"#) >= 2.0
    );
    assert_eq!(
        proxy.metric(r#"remora_circuit_open_total{cluster="app",limit="max_pending_requests"}"#),
        1.0
    );
}

/// Under load, a rate limit admits what an ideal token bucket admits for
/// the same arrivals, within 5 %, and never more than
/// `burst + rate × elapsed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_admits_its_rate_within_five_percent() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy(
        &upstream,
        ", rate_limit: {requests_per_second: 40, burst: 4}",
        "",
    )
    .await;
    let url = Arc::new(proxy.url("web", "/"));
    let started = Instant::now();
    let run_for = Duration::from_secs(3);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = client::http1();
                let (mut admitted, mut limited) = (0u32, 0u32);
                let mut arrivals = Vec::new();
                while started.elapsed() < run_for {
                    arrivals.push(started.elapsed());
                    let reply = client::get(&client, &url).await;
                    match reply.status {
                        StatusCode::OK => admitted += 1,
                        StatusCode::TOO_MANY_REQUESTS => {
                            assert_eq!(reply.header("retry-after"), "1");
                            limited += 1;
                        }
                        other => panic!("unexpected {other}"),
                    }
                }
                (admitted, limited, arrivals)
            })
        })
        .collect();
    let (mut admitted, mut limited, mut arrivals) = (0, 0, Vec::new());
    for worker in workers {
        let (a, l, times) = within("load", worker).await.unwrap();
        admitted += a;
        limited += l;
        arrivals.extend(times);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let most = 4.0 + 40.0 * elapsed;
    let ideal = load::ideal_token_bucket(40.0, 4.0, &arrivals) as f64;
    eprintln!(
        "rate limit 40/s burst 4: admitted {admitted} of {} in {elapsed:.2} s (an ideal bucket: {ideal}, at most {most:.0})",
        admitted + limited
    );
    assert!(
        f64::from(admitted) <= most + 1.0,
        "admitted {admitted}, more than the bucket allows ({most:.0})"
    );
    assert!(
        (f64::from(admitted) - ideal).abs() <= ideal * 0.05 + 1.0,
        "admitted {admitted}, an ideal bucket {ideal} ±5 %"
    );
    assert!(limited > 20, "the load exceeded the limit: {limited}");
    assert_eq!(
        proxy.metric(r#"remora_rate_limited_total{listener="web",route="all"}"#),
        f64::from(limited)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_key_by_header_and_answer_grpc_with_resource_exhausted() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy(
        &upstream,
        ", rate_limit: {requests_per_second: 1, burst: 1, key: 'header:x-tenant'}",
        "",
    )
    .await;
    let client = client::http1();
    let url = proxy.url("web", "/");
    assert_eq!(
        client::get_with(&client, &url, &[("x-tenant", "a")])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        client::get_with(&client, &url, &[("x-tenant", "a")])
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        client::get_with(&client, &url, &[("x-tenant", "b")])
            .await
            .status,
        StatusCode::OK,
        "another key, another bucket"
    );
    let grpc = client::get_with(
        &client,
        &url,
        &[("x-tenant", "a"), ("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(
        (grpc.status, grpc.header("grpc-status")),
        (StatusCode::OK, "8")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_rate_limit_keyed_by_source_ip_covers_every_route() {
    let upstream = Upstream::http1("up").await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    rate_limit: {{requests_per_second: 0.5, burst: 2, key: source_ip}}
    routes:
      - {{name: api, match: {{path_prefix: /api}}, backends: [{{cluster: app}}]}}
      - {{name: static, direct_response: {{status: 200, body: ok}}}}
clusters:
  - {{name: app, endpoints: ['{}']}}
",
        upstream.addr
    ))
    .await;
    let one = client::http1_from("127.0.0.1".parse().unwrap());
    let two = client::http1_from("127.0.0.2".parse().unwrap());
    // The burst of 2 is shared by the listener's routes...
    assert_eq!(
        client::get(&one, &proxy.url("web", "/api")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        client::get(&one, &proxy.url("web", "/")).await.status,
        StatusCode::OK
    );
    let limited = client::get(&one, &proxy.url("web", "/api")).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        limited.body.contains("listener \"web\""),
        "{}",
        limited.body
    );
    let wait: u64 = limited.header("retry-after").parse().unwrap();
    assert!((1..=2).contains(&wait), "one token every 2 s: {wait}");
    assert_eq!(
        client::get(&one, &proxy.url("web", "/")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...and each source address has its own bucket.
    assert_eq!(
        client::get(&two, &proxy.url("web", "/api")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        proxy.metric(r#"remora_rate_limited_total{listener="web",route=""}"#),
        2.0
    );
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_delay_and_abort_requests() {
    let upstream = Upstream::http1("up").await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {{name: teapot, match: {{path: /abort}}, backends: [{{cluster: app}}], fault: {{abort: {{status: 418}}}}}}
      - {{name: grpc, match: {{path: /grpc}}, backends: [{{cluster: app}}], fault: {{abort: {{grpc_status: 14}}}}}}
      - {{name: slow, match: {{path: /delay}}, backends: [{{cluster: app}}], fault: {{delay: {{duration: 300ms}}}}}}
      - {{name: half, match: {{path: /half}}, backends: [{{cluster: app}}], fault: {{abort: {{status: 503, percent: 50}}}}}}
clusters:
  - {{name: app, endpoints: ['{}']}}
",
        upstream.addr
    ))
    .await;
    let client = client::http1();
    assert_eq!(
        client::get(&client, &proxy.url("web", "/abort"))
            .await
            .status,
        StatusCode::IM_A_TEAPOT
    );
    let grpc = client::get(&client, &proxy.url("web", "/grpc")).await;
    assert_eq!(
        (grpc.status, grpc.header("grpc-status")),
        (StatusCode::OK, "14")
    );
    assert_eq!(
        upstream.hits(),
        0,
        "aborted requests never reach the upstream"
    );
    let started = Instant::now();
    assert_eq!(
        client::get(&client, &proxy.url("web", "/delay"))
            .await
            .status,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let mut aborted = 0;
    for _ in 0..400 {
        if client::get(&client, &proxy.url("web", "/half"))
            .await
            .status
            == StatusCode::SERVICE_UNAVAILABLE
        {
            aborted += 1;
        }
    }
    assert!((150..250).contains(&aborted), "50 % of 400: {aborted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_no_data_for_the_idle_timeout_is_cut() {
    let upstream = Upstream::http1("up").await;
    let proxy = proxy(&upstream, ", stream_idle_timeout: 300ms", "").await;
    let request = http::Request::get(proxy.url("web", "/gated"))
        .body(client::empty())
        .unwrap();
    let response = client::http1().request(request).await.unwrap();
    let started = Instant::now();
    let body = http_body_util::BodyExt::collect(response.into_body());
    assert!(within("the idle stream is cut", body).await.is_err());
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        proxy.metric(r#"remora_timeouts_total{cluster="app",kind="stream_idle"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listeners_limit_connections_and_their_rate() {
    let (echo, _task) = tcp_echo().await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - {{name: few, address: 127.0.0.1:0, protocol: tcp, cluster: echo, max_connections: 2}}
  - {{name: slow, address: 127.0.0.1:0, protocol: tcp, cluster: echo, connection_rate_limit: {{connections_per_second: 1, burst: 2}}}}
clusters:
  - {{name: echo, endpoints: ['{echo}']}}
"
    ))
    .await;
    let closed = |mut stream: tokio::net::TcpStream| async move {
        let mut buffer = [0u8; 1];
        matches!(
            within("read", stream.read(&mut buffer)).await,
            Ok(0) | Err(_)
        )
    };
    let held = [raw(proxy.addr("few")).await, raw(proxy.addr("few")).await];
    crate::support::eventually("two connections open", || {
        proxy.metric(r#"remora_downstream_connections_active{listener="few"}"#) == 2.0
    })
    .await;
    assert!(
        closed(raw(proxy.addr("few")).await).await,
        "the third connection is closed on accept"
    );
    drop(held);

    let first = [raw(proxy.addr("slow")).await, raw(proxy.addr("slow")).await];
    assert!(
        closed(raw(proxy.addr("slow")).await).await,
        "the burst of two is spent"
    );
    drop(first);
    assert_eq!(
        proxy.metric(
            r#"remora_listener_connections_rejected_total{listener="few",reason="max_connections"}"#
        ),
        1.0
    );
    assert_eq!(
        proxy.metric(r#"remora_listener_connections_rejected_total{listener="slow",reason="connection_rate_limit"}"#),
        1.0
    );
}

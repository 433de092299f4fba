//! Hot reload of the config file (and SIGHUP): under load nothing fails, a
//! bad file is rejected while the old config serves, listeners come and go.

use std::time::Duration;

use http::StatusCode;

use crate::support::client;
use crate::support::load::Load;
use crate::support::process::ProxyProcess;
use crate::support::upstream::Upstream;
use crate::support::{eventually, metric_in, within};

fn config(route_to: &str, a: &Upstream, b: &Upstream, extra_listeners: &str) -> String {
    config_at("127.0.0.1:0", route_to, a, b, extra_listeners)
}

fn config_at(
    web: &str,
    route_to: &str,
    a: &Upstream,
    b: &Upstream,
    extra_listeners: &str,
) -> String {
    format!(
        "
admin: {{address: 127.0.0.1:0}}
workers: 2
listeners:
  - name: web
    address: {web}
    routes: [{{name: all, backends: [{{cluster: {route_to}}}]}}]
{extra_listeners}
clusters:
  - {{name: a, endpoints: ['{}']}}
  - {{name: b, endpoints: ['{}'], protocol: http2}}
",
        a.addr, b.addr
    )
}

async fn version(process: &ProxyProcess) -> u64 {
    let (_, body) = process.admin_get("/config_dump").await;
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["version"]
        .as_u64()
        .unwrap()
}

async fn metric(process: &ProxyProcess, series: &str) -> f64 {
    metric_in(&process.admin_get("/metrics").await.1, series)
}

async fn wait_for_metric(process: &ProxyProcess, series: &str, wanted: f64) {
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    while metric(process, series).await != wanted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {wanted}:\n{}",
            process.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_version(process: &ProxyProcess, wanted: u64) {
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    while version(process).await != wanted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "config version {wanted} never went live:\n{}",
            process.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_lose_no_request() {
    let a = Upstream::http1("a").await;
    let b = Upstream::http2("b").await;
    let process = ProxyProcess::start(&config("a", &a, &b, "")).await;
    let url = format!("http://{}/", process.listener("web").await);
    // Keep-alive clients, HTTP/1.1 and h2c: their connections span the reloads.
    let clients = (0..6)
        .map(|i| {
            if i % 2 == 0 {
                client::http1()
            } else {
                client::http2()
            }
        })
        .collect();
    let load = Load::start(&url, clients);

    for (round, target) in ["b", "a", "b", "a", "b", "a"].into_iter().enumerate() {
        let hits_before = if target == "a" { a.hits() } else { b.hits() };
        process.write_config(&config(target, &a, &b, ""));
        wait_for_version(&process, round as u64 + 2).await;
        let target_upstream = if target == "a" { &a } else { &b };
        eventually("traffic reaches the new backend", || {
            target_upstream.hits() > hits_before + 50
        })
        .await;
        // Measured in requests, not time: a busy machine sends fewer.
        load.run_for(200).await;
    }
    let (sent, failed) = load.stop().await;
    eprintln!(
        "reload under load: {sent} requests, {failed} failed, a={} b={}",
        a.hits(),
        b.hits()
    );
    assert!(sent > 1000, "the load must be real: {sent} requests");
    assert_eq!(failed, 0, "no request may fail across 6 reloads");
    assert_eq!(
        metric(&process, r#"remora_config_reloads_total{result="ok"}"#).await,
        6.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_rejected_counted_and_the_old_config_serves() {
    let a = Upstream::http1("a").await;
    let b = Upstream::http2("b").await;
    let process = ProxyProcess::start(&config("a", &a, &b, "")).await;
    let url = format!("http://{}/", process.listener("web").await);

    process.write_config(&config("api-v3", &a, &b, ""));
    wait_for_metric(
        &process,
        r#"remora_config_reloads_total{result="rejected"}"#,
        1.0,
    )
    .await;
    assert_eq!(version(&process).await, 1);
    assert_eq!(
        client::get(&client::http1(), &url).await.body,
        "a",
        "the old config still serves"
    );
    eventually("the rejection is logged with its field path", || {
        process
            .output()
            .contains(r#"listeners[0].routes[0].backends[0].cluster: no cluster named \"api-v3\""#)
            || process.output().contains(
                r#"listeners[0].routes[0].backends[0].cluster: no cluster named "api-v3""#,
            )
    })
    .await;

    process.write_config("listeners: [oops");
    wait_for_metric(
        &process,
        r#"remora_config_reloads_total{result="rejected"}"#,
        2.0,
    )
    .await;
    assert_eq!(client::get(&client::http1(), &url).await.body, "a");

    // A good file after bad ones is taken.
    process.write_config(&config("b", &a, &b, ""));
    wait_for_version(&process, 2).await;
    assert_eq!(client::get(&client::http1(), &url).await.body, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_rebound_and_removed() {
    let a = Upstream::http1("a").await;
    let b = Upstream::http2("b").await;
    let process = ProxyProcess::start(&config("a", &a, &b, "")).await;
    let web = process.listener("web").await;

    // Add a TCP listener.
    let extra = "  - {name: raw, address: 127.0.0.1:0, protocol: tcp, cluster: a}";
    process.write_config(&config("a", &a, &b, extra));
    wait_for_version(&process, 2).await;
    let raw = process.listener("raw").await;
    assert!(std::net::TcpStream::connect(raw).is_ok());
    assert_eq!(
        process.listener("web").await,
        web,
        "an unchanged listener keeps its socket"
    );

    // Rebind web to a fixed port.
    let fixed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    process.write_config(&config_at(&fixed.to_string(), "a", &a, &b, extra));
    wait_for_version(&process, 3).await;
    let web_now = process.listener("web").await;
    assert_eq!(web_now, fixed);
    assert_eq!(
        client::get(&client::http1(), &format!("http://{fixed}/"))
            .await
            .body,
        "a"
    );
    eventually("the old address is released", || {
        std::net::TcpStream::connect(web).is_err()
    })
    .await;

    // Remove the TCP listener.
    process.write_config(&config_at(&fixed.to_string(), "a", &a, &b, ""));
    wait_for_version(&process, 4).await;
    eventually("the removed listener stops accepting", || {
        std::net::TcpStream::connect(raw).is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_even_an_unchanged_file() {
    let a = Upstream::http1("a").await;
    let b = Upstream::http2("b").await;
    let process = ProxyProcess::start(&config("a", &a, &b, "")).await;
    process.signal(libc::SIGHUP);
    wait_for_version(&process, 2).await;
    assert_eq!(
        metric(&process, r#"remora_config_reloads_total{result="ok"}"#).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_the_snapshot_they_started_with() {
    use crate::support::TestProxy;
    let a = Upstream::http1("a").await;
    let version = |tag: &str| {
        format!(
            "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - name: all
        backends: [{{cluster: a}}]
        response_headers: {{set: [{{name: x-config, value: {tag}}}]}}
  - name: old
    address: 127.0.0.1:0
    routes: [{{name: all, backends: [{{cluster: a}}]}}]
clusters:
  - {{name: a, endpoints: ['{}']}}
",
            a.addr
        )
    };
    let proxy = TestProxy::start(&version("one")).await;
    let old = proxy.addr("old");
    let in_flight = client::spawn_get(client::http1(), proxy.url("web", "/slow/800"));
    let on_removed_listener = client::spawn_get(client::http1(), format!("http://{old}/slow/800"));
    eventually("both requests reached the upstream", || a.hits() == 2).await;

    // Version two edits the header differently and drops the `old` listener.
    let two = version("two");
    let two = two.split("  - name: old").next().unwrap().to_string()
        + &two[two.find("clusters:").unwrap()..];
    proxy
        .proxy
        .reload(remora_proxy::config::parse_yaml(&two).unwrap())
        .unwrap();

    let reply = client::get(&client::http1(), &proxy.url("web", "/")).await;
    assert_eq!(
        reply.header("x-config"),
        "two",
        "new requests use the new snapshot"
    );
    let reply = within("in-flight request", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (reply.status, reply.header("x-config")),
        (StatusCode::OK, "one")
    );
    let reply = within("request on the removed listener", on_removed_listener)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "a removed listener drains its requests"
    );
    assert_eq!(reply.header("connection"), "close");
    eventually("the removed listener is closed", || {
        std::net::TcpStream::connect(old).is_err()
    })
    .await;
}

/// Fresh connections to `url` (one request each); all must answer 200.
async fn fresh_connections(url: &str, count: usize) {
    for _ in 0..count {
        let reply = client::get(&client::http1(), url).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
}

async fn accepted_by_worker(process: &ProxyProcess, listener: &str) -> [f64; 2] {
    let text = process.admin_get("/metrics").await.1;
    [0, 1].map(|worker| {
        metric_in(
            &text,
            &format!(
                r#"remora_downstream_connections_total{{listener="{listener}",worker="{worker}"}}"#
            ),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_accepts_on_every_listener_including_ones_added_by_reload() {
    let a = Upstream::http1("a").await;
    let b = Upstream::http2("b").await;
    let mut process = ProxyProcess::start(&config("a", &a, &b, "")).await;
    let web = format!("http://{}/", process.listener("web").await);

    // The kernel spreads connections over the workers' sockets by their
    // addresses: 40 connections all landing on one of two is a 1 in 2^39 chance.
    fresh_connections(&web, 40).await;
    let [zero, one] = accepted_by_worker(&process, "web").await;
    assert_eq!(zero + one, 40.0, "every connection is counted once");
    assert!(
        zero > 0.0 && one > 0.0,
        "both workers accept: {zero} / {one}"
    );

    // A listener on "any port" added by a reload: every worker's socket
    // shares the one port the first got.
    let extra = "  - name: extra\n    address: 127.0.0.1:0\n    routes: [{name: all, backends: [{cluster: b}]}]";
    process.write_config(&config("a", &a, &b, extra));
    wait_for_version(&process, 2).await;
    let extra_url = format!("http://{}/", process.listener("extra").await);
    fresh_connections(&extra_url, 40).await;
    let [zero, one] = accepted_by_worker(&process, "extra").await;
    assert_eq!(zero + one, 40.0);
    assert!(
        zero > 0.0 && one > 0.0,
        "both workers accept: {zero} / {one}"
    );
    assert_eq!(b.hits(), 40);
    // Upstream connections are per worker: each worker reuses its own.
    assert_eq!(
        a.connections(),
        2,
        "one pooled HTTP/1.1 connection per worker"
    );
    assert_eq!(
        b.connections(),
        2,
        "one shared HTTP/2 connection per worker"
    );

    // h2c clients multiplex on whichever worker took their connection.
    let h2 = client::http2();
    let requests = (0..20).map(|_| client::spawn_get(h2.clone(), web.clone()));
    for reply in futures_util::future::join_all(requests).await {
        assert_eq!(reply.unwrap().unwrap().status, StatusCode::OK);
    }

    process.signal(libc::SIGTERM);
    assert_eq!(within("a drain across workers", process.wait()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_warms_and_then_uses_its_own_upstream_connection() {
    let a = Upstream::http1("a").await;
    let process = ProxyProcess::start(&format!(
        "
admin: {{address: 127.0.0.1:0}}
workers: 2
listeners:
  - name: web
    address: 127.0.0.1:0
    routes: [{{name: all, backends: [{{cluster: a}}]}}]
clusters:
  - {{name: a, endpoints: ['{}'], pool: {{min_idle: 1}}}}
",
        a.addr
    ))
    .await;
    eventually("each worker opens its warm-up connection", || {
        a.connections() == 2
    })
    .await;
    let web = format!("http://{}/", process.listener("web").await);
    fresh_connections(&web, 40).await;
    let [zero, one] = accepted_by_worker(&process, "web").await;
    assert!(
        zero > 0.0 && one > 0.0,
        "both workers serve: {zero} / {one}"
    );
    assert_eq!(
        a.connections(),
        2,
        "each worker's requests used the connection it warmed"
    );
}

//! Load balancing end to end: consistent hashing by header, query and cookie
//! (with a generated sticky cookie), the same key on the same endpoint in an
//! independently started proxy, load-aware balancers against a slow
//! endpoint, and DNS discovery with records that change during the test.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http::StatusCode;

use crate::support::client::{self, HttpClient};
use crate::support::dns::TestDns;
use crate::support::upstream::{Options, Protocol, Upstream};
use crate::support::{TestProxy, eventually, within};

async fn four_upstreams() -> Vec<Upstream> {
    let mut upstreams = Vec::new();
    for i in 0..4 {
        upstreams.push(Upstream::http1(&format!("u{i}")).await);
    }
    upstreams
}

fn hash_config(policy: &str, upstreams: &[Upstream]) -> String {
    let endpoints: Vec<String> = upstreams.iter().map(|u| format!("'{}'", u.addr)).collect();
    format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {{name: by-query, match: {{path_prefix: /q}}, hash_on: {{query: user}}, backends: [{{cluster: users}}]}}
      - {{name: sticky, match: {{path_prefix: /s}}, backends: [{{cluster: sticky}}]}}
      - {{name: by-header, backends: [{{cluster: users}}]}}
clusters:
  - name: users
    endpoints: [{endpoints}]
    load_balancer: {{policy: {policy}, hash_on: {{header: x-user}}}}
  - name: sticky
    endpoints: [{endpoints}]
    load_balancer: {{policy: {policy}, hash_on: {{cookie: {{name: remora-sticky, ttl: 1h}}}}}}
",
        endpoints = endpoints.join(", ")
    )
}

async fn owner(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> String {
    let reply = client::get_with(client, url, headers).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.header("x-upstream").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_keys_stick_to_one_endpoint_and_spread_across_all() {
    let upstreams = four_upstreams().await;
    for policy in ["ring_hash", "maglev"] {
        let proxy = TestProxy::start(&hash_config(policy, &upstreams)).await;
        let client = client::http1();
        let url = proxy.url("web", "/");
        let mut owners = HashMap::new();
        for user in 0..200 {
            let user = format!("user-{user}");
            owners.insert(
                user.clone(),
                owner(&client, &url, &[("x-user", &user)]).await,
            );
        }
        for (user, first) in owners.iter().take(50) {
            assert_eq!(
                &owner(&client, &url, &[("x-user", user)]).await,
                first,
                "{policy}: {user} moved"
            );
        }
        let used: HashSet<&String> = owners.values().collect();
        assert_eq!(
            used.len(),
            4,
            "{policy}: 200 keys spread over all 4 endpoints"
        );

        // A second proxy, started separately, maps every key the same way
        // (as a restarted proxy would).
        let again = TestProxy::start(&hash_config(policy, &upstreams)).await;
        for (user, first) in owners.iter().take(100) {
            assert_eq!(
                &owner(&client, &again.url("web", "/"), &[("x-user", user)]).await,
                first,
                "{policy} after restart"
            );
        }

        // A route's hash_on overrides the cluster's: the query parameter decides.
        let by_query = owner(
            &client,
            &proxy.url("web", "/q?user=user-7"),
            &[("x-user", "someone-else")],
        )
        .await;
        assert_eq!(
            by_query, owners["user-7"],
            "{policy}: ?user=user-7 hashes like x-user: user-7"
        );

        // Without the header, picks fall back to random and are counted.
        for _ in 0..20 {
            owner(&client, &url, &[]).await;
        }
        assert_eq!(
            proxy.metric(r#"remora_lb_fallback_total{cluster="users",reason="no_hash_key"}"#),
            20.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_cookie_gets_one_and_sticks() {
    let upstreams = four_upstreams().await;
    let proxy = TestProxy::start(&hash_config("ring_hash", &upstreams)).await;
    let client = client::http1();
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let first = client::get(&client, &proxy.url("web", "/s")).await;
        let cookie = first.header("set-cookie").to_string();
        assert!(cookie.starts_with("remora-sticky="), "{cookie}");
        assert!(
            cookie.ends_with("; Max-Age=3600; Path=/; HttpOnly"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap().to_string();
        let home = first.header("x-upstream").to_string();
        seen.insert(home.clone());
        for _ in 0..5 {
            let next =
                client::get_with(&client, &proxy.url("web", "/s"), &[("cookie", &pair)]).await;
            assert_eq!(
                next.header("x-upstream"),
                home,
                "the cookie keeps the client on its endpoint"
            );
            assert_eq!(
                next.header("set-cookie"),
                "",
                "a client that has the cookie is not given another"
            );
        }
    }
    assert!(seen.len() > 1, "new clients are spread: {seen:?}");
}

async fn slow_and_fast(policy: &str) -> (Upstream, Upstream, TestProxy) {
    let slow = Upstream::with(
        "slow",
        Protocol::Http1,
        None,
        Options {
            delay: Duration::from_millis(100),
            ..Options::default()
        },
    )
    .await;
    let fast = Upstream::http1("fast").await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - {{name: web, address: 127.0.0.1:0, routes: [{{name: all, backends: [{{cluster: c}}]}}]}}
clusters:
  - {{name: c, endpoints: ['{}', '{}'], load_balancer: {{policy: {policy}}}}}
",
        slow.addr, fast.addr
    ))
    .await;
    (slow, fast, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_most_traffic_past_a_slow_endpoint() {
    let (slow, fast, proxy) = slow_and_fast("least_request").await;
    let url = proxy.url("web", "/");
    let workers = (0..8).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let client = client::http1();
            for _ in 0..40 {
                assert_eq!(client::get(&client, &url).await.status, StatusCode::OK);
            }
        })
    });
    within("load", futures_util::future::join_all(workers)).await;
    let (s, f) = (slow.hits(), fast.hits());
    eprintln!("least_request with 8 concurrent clients: slow {s}, fast {f}");
    assert_eq!(s + f, 320);
    assert!(
        f * 100 >= (s + f) * 85,
        "the fast endpoint should take at least 85 %: slow {s}, fast {f}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_learns_which_endpoint_is_slow_even_one_request_at_a_time() {
    let (slow, fast, proxy) = slow_and_fast("peak_ewma").await;
    let client = client::http1();
    for _ in 0..60 {
        assert_eq!(
            client::get(&client, &proxy.url("web", "/")).await.status,
            StatusCode::OK
        );
    }
    let (s, f) = (slow.hits(), fast.hits());
    eprintln!("peak_ewma, sequential: slow {s}, fast {f}");
    assert!(
        s <= 6,
        "after a slow answer or two, the slow endpoint is avoided: slow {s}, fast {f}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_become_endpoints_and_a_failed_lookup_keeps_the_last_ones() {
    // One port on three loopback addresses: 127.0.0.1, 127.0.0.2 and ::1.
    let first = Upstream::http1("v4-a").await;
    let port = first.addr.port();
    let second = Upstream::start(
        "v4-b",
        Protocol::Http1,
        Some(SocketAddr::from(([127, 0, 0, 2], port))),
    )
    .await;
    let third = Upstream::start(
        "v6",
        Protocol::Http1,
        Some(SocketAddr::from((Ipv6Addr::LOCALHOST, port))),
    )
    .await;
    let dns = TestDns::start().await;
    let a = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    dns.set("api.remora.test", &[a], 1);
    let proxy = TestProxy::start(&format!(
        "
dns_resolver: {{nameservers: ['{dns}'], timeout: 1s, attempts: 1}}
listeners:
  - {{name: web, address: 127.0.0.1:0, routes: [{{name: all, backends: [{{cluster: api}}]}}]}}
clusters:
  - name: api
    dns: {{address: 'api.remora.test:{port}', min_refresh: 100ms, max_refresh: 1m}}
",
        dns = dns.addr
    ))
    .await;
    let client = client::http1();
    let url = proxy.url("web", "/");
    eventually("the first answer is in", || proxy.proxy.is_ready()).await;
    let reply = client::get(&client, &url).await;
    assert_eq!(reply.header("x-upstream"), "v4-a");

    // The answer grows to three records (A and AAAA): all become endpoints once the 1 s TTL is up.
    dns.set("api.remora.test", &[a, b, v6], 1);
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    while seen.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only reached {seen:?}"
        );
        seen.insert(
            client::get(&client, &url)
                .await
                .header("x-upstream")
                .to_string(),
        );
    }
    assert!(second.hits() > 0 && third.hits() > 0);

    // The name now has one record: traffic follows it.
    dns.set("api.remora.test", &[b], 1);
    let only_b = vec![SocketAddr::new(b, port).to_string()];
    let mut endpoints = Vec::new();
    for _ in 0..500 {
        endpoints = endpoint_addresses(proxy.admin).await;
        if endpoints == only_b {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        endpoints, only_b,
        "the endpoints follow the one-record answer"
    );
    for _ in 0..20 {
        assert_eq!(
            client::get(&client, &url).await.header("x-upstream"),
            "v4-b"
        );
    }

    // The DNS server fails: the last good endpoint keeps serving, failures are counted.
    dns.fail(true);
    let failures = r#"remora_dns_resolutions_total{cluster="api",result="failure"}"#;
    eventually("a failed lookup", || proxy.metric(failures) >= 1.0).await;
    for _ in 0..20 {
        assert_eq!(
            client::get(&client, &url).await.header("x-upstream"),
            "v4-b"
        );
    }
    assert!(proxy.metric(r#"remora_dns_resolutions_total{cluster="api",result="success"}"#) >= 3.0);
    let (_, clusters) =
        crate::support::process::admin_request(proxy.admin, "GET", "/clusters").await;
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let dns_view = &clusters[0]["dns"];
    assert_eq!(dns_view["name"], format!("api.remora.test:{port}"));
    assert!(dns_view["failures"].as_u64().unwrap() >= 1);
    assert!(dns_view["last_error"].as_str().unwrap().len() > 3);
    assert_eq!(
        clusters[0]["endpoints"][0]["address"],
        format!("127.0.0.2:{port}")
    );
    dns.fail(false);
    drop(first);
}

/// The addresses of the first cluster's endpoints, from `/clusters`.
async fn endpoint_addresses(admin: SocketAddr) -> Vec<String> {
    let (_, body) = crate::support::process::admin_request(admin, "GET", "/clusters").await;
    let clusters: serde_json::Value = serde_json::from_str(&body).unwrap();
    clusters[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect()
}

//! Global rate limits against a real `redis-server` (the Debian package,
//! started here on a free port): proxies sharing one limit, keys kept
//! apart, Redis killed, slowed and flushed of its scripts.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::upstream::Upstream;
use crate::support::{TestProxy, client};

/// Polls an async `check` every 50 ms for up to [`PATIENCE`](crate::support::PATIENCE).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + crate::support::PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `redis-server` child on a fixed port, killed on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Redis { port, child: None };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs the Debian package)");
        self.child = Some(child);
        let at = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + crate::support::PATIENCE;
        while std::net::TcpStream::connect(at).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn cli(&self, args: &[&str]) {
        let status = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "redis-cli {args:?}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn limited(upstream: &Upstream, rate_limit: &str) -> TestProxy {
    TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {{name: all, backends: [{{cluster: app}}], rate_limit: {rate_limit}}}
clusters:
  - {{name: app, endpoints: ['{}']}}
",
        upstream.addr
    ))
    .await
}

/// `clients` clients in a closed loop against `url` for `for_`: (200s, 429s).
/// `clients` clients, each sending GETs one after another until `until`:
/// (admitted, refused, when each was sent as an offset from `started`).
async fn hammer(
    url: String,
    clients: usize,
    started: Instant,
    until: Instant,
) -> (usize, usize, Vec<Duration>) {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = client::http1();
                let (mut ok, mut limited, mut arrivals) = (0, 0, Vec::new());
                while Instant::now() < until {
                    arrivals.push(started.elapsed());
                    match client::get(&client, &url).await.status {
                        StatusCode::OK => ok += 1,
                        StatusCode::TOO_MANY_REQUESTS => limited += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
                (ok, limited, arrivals)
            })
        })
        .collect();
    let mut total = (0, 0, Vec::new());
    for task in futures_util::future::join_all(tasks).await {
        let (ok, limited, arrivals) = task.unwrap();
        total.0 += ok;
        total.1 += limited;
        total.2.extend(arrivals);
    }
    total
}

/// Three proxies share one 100 requests/s limit: together they admit what
/// one bucket would admit for all their requests (within 10 %, and never
/// more than burst + rate × time), while each alone would admit that much;
/// Redis sees a fraction of the requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_share_one_limit() {
    let redis = Redis::start();
    let upstream = Upstream::http1("up").await;
    // The timeout is generous: this is about sharing, not about a slow
    // Redis (a starved machine must not turn into the failure verdict).
    let limit = format!(
        "{{requests_per_second: 100, burst: 100, global: {{redis: '{}', timeout: 2s}}}}",
        redis.url()
    );
    let proxies = [
        limited(&upstream, &limit).await,
        limited(&upstream, &limit).await,
        limited(&upstream, &limit).await,
    ];
    let started = Instant::now();
    let until = started + Duration::from_secs(10);
    let loads: Vec<_> = proxies
        .iter()
        .map(|p| tokio::spawn(hammer(p.url("web", "/"), 3, started, until)))
        .collect();
    let (mut admitted, mut refused, mut arrivals) = (0, 0, Vec::new());
    for load in futures_util::future::join_all(loads).await {
        let (ok, limited, times) = load.unwrap();
        admitted += ok;
        refused += limited;
        arrivals.extend(times);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let most = 100.0 + 100.0 * elapsed;
    let ideal = crate::support::load::ideal_token_bucket(100.0, 100.0, &arrivals) as f64;
    eprintln!(
        "global limit: {admitted} admitted, {refused} refused in {elapsed:.1} s; one bucket admits {ideal} of these, at most {most:.0}"
    );
    assert!(
        admitted as f64 <= most * 1.02,
        "{admitted} admitted, more than one bucket allows ({most:.0})"
    );
    assert!(
        (admitted as f64) >= ideal * 0.9 && (admitted as f64) <= ideal * 1.1,
        "{admitted} admitted, one bucket {ideal} ± 10 %"
    );
    assert!(refused > admitted / 2, "the load must exceed the limit");
    let failures: f64 = proxies
        .iter()
        .map(|p| p.metric(r#"remora_rate_limit_redis_failures_total{scope="route/web/all"}"#))
        .sum();
    assert_eq!(failures, 0.0, "no Redis call failed or timed out");
    let calls: f64 = proxies
        .iter()
        .map(|p| p.metric(r#"remora_rate_limit_redis_calls_total{scope="route/web/all"}"#))
        .sum();
    eprintln!("global limit: {calls} Redis calls");
    assert!(
        calls > 0.0 && calls < admitted as f64,
        "{calls} Redis calls"
    );
}

/// `key: header:x-user`: each user has their own shared bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_have_their_own_buckets() {
    let redis = Redis::start();
    let upstream = Upstream::http1("up").await;
    let limit = format!(
        "{{requests_per_second: 0.1, burst: 3, key: 'header:x-user', global: {{redis: '{}', timeout: 200ms}}}}",
        redis.url()
    );
    // Two proxies, so the local buckets (3 each) cannot be what limits.
    let (a, b) = (
        limited(&upstream, &limit).await,
        limited(&upstream, &limit).await,
    );
    let client = client::http1();
    for user in ["ann", "bob"] {
        let mut ok = 0;
        for proxy in [&a, &b, &a, &b] {
            let reply =
                client::get_with(&client, &proxy.url("web", "/"), &[("x-user", user)]).await;
            if reply.status == StatusCode::OK {
                ok += 1;
            }
        }
        assert_eq!(ok, 3, "{user}: the shared burst of 3");
    }
}

/// Redis killed: `open` keeps serving, `closed` answers 429, both within
/// the timeout; Redis back: both limit again. Redis slowed: no request
/// waits much longer than the timeout. Scripts flushed: reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failures_follow_the_failure_mode_and_recover() {
    let mut redis = Redis::start();
    let upstream = Upstream::http1("up").await;
    let open = limited(
        &upstream,
        &format!(
            "{{requests_per_second: 1000, global: {{redis: '{}', timeout: 50ms, failure: open}}}}",
            redis.url()
        ),
    )
    .await;
    let closed = limited(
        &upstream,
        &format!(
            "{{requests_per_second: 1000, global: {{redis: '{}', timeout: 50ms, failure: closed}}}}",
            redis.url()
        ),
    )
    .await;
    let client = client::http1();
    let status = |proxy: &TestProxy| {
        let url = proxy.url("web", "/");
        let client = client.clone();
        async move {
            let started = Instant::now();
            let status = client::get(&client, &url).await.status;
            (status, started.elapsed())
        }
    };
    assert_eq!(status(&open).await.0, StatusCode::OK);
    assert_eq!(status(&closed).await.0, StatusCode::OK);

    redis.kill();
    // Past the leases already held (1 s), every request asks Redis.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let (o, took_o) = status(&open).await;
        let (_, took_c) = status(&closed).await;
        assert_eq!(o, StatusCode::OK, "open admits without Redis");
        assert!(took_o < Duration::from_millis(500) && took_c < Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("closed refuses without Redis", || {
        let check = status(&closed);
        async move { check.await.0 == StatusCode::TOO_MANY_REQUESTS }
    })
    .await;
    assert!(open.metric(r#"remora_rate_limit_redis_failures_total{scope="route/web/all"}"#) > 0.0);

    redis.restart();
    eventually("closed admits again once Redis is back", || {
        let check = status(&closed);
        async move { check.await.0 == StatusCode::OK }
    })
    .await;

    // A slow Redis: requests get the verdict after the timeout, not later.
    let slow = redis.url();
    let sleeper = std::thread::spawn({
        let port = redis.port;
        move || {
            let _ = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "2"])
                .stdout(Stdio::null())
                .status();
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let (o, took) = status(&open).await;
        assert_eq!(o, StatusCode::OK, "open admits while {slow} sleeps");
        worst = worst.max(took);
    }
    assert!(
        worst < Duration::from_millis(700),
        "a request waited {worst:?}"
    );
    sleeper.join().unwrap();

    // Scripts flushed (as after a restart): loaded again on NOSCRIPT.
    redis.cli(&["SCRIPT", "FLUSH"]);
    let before = closed.metric(r#"remora_rate_limit_redis_failures_total{scope="route/web/all"}"#);
    eventually("closed admits after SCRIPT FLUSH", || {
        let check = status(&closed);
        async move { check.await.0 == StatusCode::OK }
    })
    .await;
    // Enough requests to need new leases, none of them a failure.
    for _ in 0..30 {
        assert_eq!(status(&closed).await.0, StatusCode::OK);
    }
    let after = closed.metric(r#"remora_rate_limit_redis_failures_total{scope="route/web/all"}"#);
    assert_eq!(before, after, "NOSCRIPT is handled, not a failure");
}

//! Graceful shutdown: SIGTERM and `POST /drain` stop accepting, let in-flight
//! requests finish (HTTP/1 with `Connection: close`, HTTP/2 after GOAWAY),
//! and exit 0; `drain_timeout` bounds the wait.

use http::StatusCode;

use crate::support::client;
use crate::support::process::{ProxyProcess, admin_request};
use crate::support::upstream::Upstream;
use crate::support::{eventually, within};

fn config(upstream: &Upstream, drain_timeout: &str) -> String {
    format!(
        "
admin: {{address: 127.0.0.1:0}}
drain_timeout: {drain_timeout}
listeners:
  - name: web
    address: 127.0.0.1:0
    routes: [{{name: all, backends: [{{cluster: up}}]}}]
clusters:
  - {{name: up, endpoints: ['{}'], protocol: same_as_downstream}}
",
        upstream.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_slow_requests_finish_then_exits() {
    let upstream = Upstream::auto("up").await;
    let mut process = ProxyProcess::start(&config(&upstream, "30s")).await;
    let web = process.listener("web").await;
    let url = format!("http://{web}/slow/1500");
    let h1 = client::spawn_get(client::http1(), url.clone());
    let h2 = client::spawn_get(client::http2(), url);
    eventually("both requests reached the upstream", || {
        upstream.hits() == 2
    })
    .await;

    process.signal(libc::SIGTERM);
    eventually("new connections are refused once draining", || {
        std::net::TcpStream::connect(web).is_err()
    })
    .await;
    let h1 = within("the HTTP/1.1 request finishes", h1)
        .await
        .unwrap()
        .unwrap();
    let h2 = within("the HTTP/2 request finishes", h2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((h1.status, h1.body.as_str()), (StatusCode::OK, "up"));
    assert_eq!(
        h1.header("connection"),
        "close",
        "HTTP/1.1 is told to close"
    );
    assert_eq!((h2.status, h2.body.as_str()), (StatusCode::OK, "up"));
    assert_eq!(process.wait().await, 0, "{}", process.output());
    assert!(
        process.output().contains("drained; exiting"),
        "{}",
        process.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_drain_drains_and_exits() {
    let upstream = Upstream::auto("up").await;
    let mut process = ProxyProcess::start(&config(&upstream, "30s")).await;
    let web = process.listener("web").await;
    let slow = client::spawn_get(client::http1(), format!("http://{web}/slow/500"));
    eventually("the request reached the upstream", || upstream.hits() == 1).await;
    assert_eq!(
        admin_request(process.admin, "POST", "/drain").await,
        (200, "draining\n".into())
    );
    assert_eq!(
        within("slow request", slow).await.unwrap().unwrap().status,
        StatusCode::OK
    );
    assert_eq!(process.wait().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_the_wait_for_stuck_requests() {
    let upstream = Upstream::auto("up").await;
    let mut process = ProxyProcess::start(&config(&upstream, "300ms")).await;
    let web = process.listener("web").await;
    let stuck = client::spawn_get(client::http1(), format!("http://{web}/slow/60000"));
    eventually("the request reached the upstream", || upstream.hits() == 1).await;
    process.signal(libc::SIGTERM);
    // The upstream would answer after 60 s; `wait` gives up after 30 s, so an
    // exit at all means drain_timeout (300ms) ended it.
    assert_eq!(process.wait().await, 0);
    assert!(
        within("the stuck request fails", stuck)
            .await
            .unwrap()
            .is_err()
    );
    assert!(
        process
            .output()
            .contains("drain_timeout expired with connections still open"),
        "{}",
        process.output()
    );
}

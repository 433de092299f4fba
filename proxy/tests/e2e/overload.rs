//! A flood of idle and slow connections against a real `remora-proxy`
//! process with per-listener and proxy-wide `max_connections`: the caps
//! hold, the admin port and an established client keep being served, and
//! the probe's latency during the flood is printed (measured, not asserted).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::metric_in;
use crate::support::process::ProxyProcess;

const FLOOD: usize = 15_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_leaves_the_admin_port_and_established_clients_served() {
    let process = ProxyProcess::start(
        "
admin: {address: 127.0.0.1:0}
max_connections: 2000
listeners:
  - name: web
    address: 127.0.0.1:0
    max_connections: 1500
    request_headers_timeout: 30s
    routes: [{name: ok, direct_response: {status: 200, body: ok}}]
  - name: other
    address: 127.0.0.1:0
    max_connections: 1500
    request_headers_timeout: 30s
    routes: [{name: ok, direct_response: {status: 200, body: ok}}]
",
    )
    .await;
    let web = process.listener("web").await;
    let other = process.listener("other").await;
    let mut probe = TcpStream::connect(web).await.unwrap();
    assert_eq!(ask(&mut probe).await, 200);

    // The flood: idle connections, and every tenth one slow (half a head).
    let flood = tokio::spawn(async move {
        let mut held = Vec::with_capacity(FLOOD);
        for i in 0..FLOOD {
            let target = if i % 2 == 0 { web } else { other };
            let Ok(mut stream) = TcpStream::connect(target).await else {
                continue;
            };
            if i % 10 == 0 {
                let _ = stream.write_all(b"GET / HTTP/1.1\r\nHo").await;
            }
            held.push(stream);
        }
        held
    });
    let mut probe_ms = Vec::new();
    let mut admin_ms = Vec::new();
    while !flood.is_finished() {
        let started = Instant::now();
        assert_eq!(
            ask(&mut probe).await,
            200,
            "the established client is served"
        );
        probe_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        let (status, _) = process.admin_get("/ready").await;
        assert_eq!(status, 200, "the admin port answers");
        admin_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held = flood.await.unwrap();
    let (_, metrics) = process.admin_get("/metrics").await;
    let open = metric_in(
        &metrics,
        r#"remora_downstream_connections_active{listener="web"}"#,
    ) + metric_in(
        &metrics,
        r#"remora_downstream_connections_active{listener="other"}"#,
    );
    let refused = |listener: &str, reason: &str| {
        metric_in(
            &metrics,
            &format!(
                r#"remora_listener_connections_rejected_total{{listener="{listener}",reason="{reason}"}}"#
            ),
        )
    };
    let proxy_wide =
        refused("web", "proxy_max_connections") + refused("other", "proxy_max_connections");
    let per_listener = refused("web", "max_connections") + refused("other", "max_connections");
    eprintln!(
        "flood: {} of {FLOOD} connections made, {open} open in the proxy, refused {proxy_wide} proxy-wide and {per_listener} per listener; \
         probe p50 {:.2} ms max {:.2} ms over {} requests; admin /ready p50 {:.2} ms max {:.2} ms",
        held.len(),
        percentile(&mut probe_ms, 0.5),
        percentile(&mut probe_ms, 1.0),
        probe_ms.len(),
        percentile(&mut admin_ms, 0.5),
        percentile(&mut admin_ms, 1.0),
    );
    assert!(open <= 2000.0, "{open} connections open past the cap");
    assert!(proxy_wide > 0.0, "the proxy-wide cap refused connections");
    assert_eq!(ask(&mut probe).await, 200);
    drop(held);
}

/// One keep-alive request; the response's status.
async fn ask(stream: &mut TcpStream) -> u16 {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: probe\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the probe connection was closed");
        response.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&response[9..12]).parse().unwrap()
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

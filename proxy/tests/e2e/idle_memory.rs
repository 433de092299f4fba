//! The guard on the vendored hyper patch (vendor/hyper/REMORA.md): an idle
//! HTTP/1.1 keep-alive connection gives its read and write buffers back.
//! Upstream hyper keeps about 16 KiB of buffers per connection for its
//! whole life (28 KB per idle connection in all, measured); with the patch
//! it is about 7 KB. This test holds many idle connections to a real
//! `remora-proxy` process and fails when the memory each one costs exceeds
//! a generous 16 KB, so a hyper upgrade that loses the patch is caught.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::process::ProxyProcess;

const CONNECTIONS: usize = 2_000;
const BOUND_BYTES: usize = 16 * 1024;

#[tokio::test]
async fn an_idle_keep_alive_connection_holds_no_hyper_buffers() {
    let proxy = ProxyProcess::start(
        "admin: {address: 127.0.0.1:0}\n\
         workers: 1\n\
         listeners:\n\
         \x20 - {name: web, address: 127.0.0.1:0, routes: [{name: ok, direct_response: {status: 200, body: ok}}]}\n",
    )
    .await;
    let address = proxy.listener("web").await;
    let pid = proxy.child.id();

    // Warm the allocator and the runtime with a first batch, kept open.
    let mut warm = Vec::new();
    for _ in 0..200 {
        warm.push(one_request(address).await);
    }
    let before = settled_rss(pid).await;

    let mut held = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        held.push(one_request(address).await);
    }
    // Every connection has answered and now waits, idle, for its next request.
    let after = settled_rss(pid).await;
    let per_connection = after.saturating_sub(before) / CONNECTIONS;
    eprintln!(
        "{CONNECTIONS} idle connections: RSS {before} -> {after} bytes, {per_connection} B each"
    );
    assert!(
        per_connection <= BOUND_BYTES,
        "an idle HTTP/1.1 connection costs {per_connection} B (bound {BOUND_BYTES} B): \
         has the hyper patch in vendor/hyper (REMORA.md) been lost?"
    );
    // The connections still work after idling.
    for stream in held.iter_mut().take(10) {
        exchange(stream).await;
    }
}

/// A connection that has had one request answered and stays open.
async fn one_request(address: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    exchange(&mut stream).await;
    stream
}

async fn exchange(stream: &mut TcpStream) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: idle.test\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 512];
    while !response.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the proxy closed a keep-alive connection");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200"));
}

/// The RSS once it has stopped moving (two reads 50 ms apart agree), so
/// that connections still finishing their last response are not counted.
async fn settled_rss(pid: u32) -> usize {
    let mut last = rss_bytes(pid);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = rss_bytes(pid);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

fn rss_bytes(pid: u32) -> usize {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

//! TCP listeners relay opaque bytes both ways, pass half-closes on, and
//! count bytes.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::upstream::{raw, tcp_echo};
use crate::support::{TestProxy, eventually, within};

async fn tcp_proxy(endpoint: &str) -> TestProxy {
    TestProxy::start(&format!(
        "
listeners:
  - {{name: db, address: 127.0.0.1:0, protocol: tcp, cluster: echo}}
clusters:
  - {{name: echo, endpoints: ['{endpoint}']}}
"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_flow_both_ways_and_are_counted() {
    let (echo, _task) = tcp_echo().await;
    let proxy = tcp_proxy(&echo.to_string()).await;
    let mut stream = raw(proxy.addr("db")).await;
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    let writer = {
        let payload = payload.clone();
        let (mut read, mut write) = stream.split();
        let send = async move {
            write.write_all(&payload).await.unwrap();
            write.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let receive = read.read_to_end(&mut back);
        let ((), received) = within("echo", async { tokio::join!(send, receive) }).await;
        received.unwrap();
        back
    };
    assert_eq!(&writer[..payload.len()], &payload[..]);
    assert_eq!(&writer[payload.len()..], b"bye");
    eventually("bytes counted", || {
        proxy.metric(r#"remora_tcp_bytes_total{listener="db",direction="rx"}"#) == 1_000_000.0
            && proxy.metric(r#"remora_tcp_bytes_total{listener="db",direction="tx"}"#)
                == 1_000_003.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_close_lets_the_other_direction_finish() {
    let (echo, _task) = tcp_echo().await;
    let proxy = tcp_proxy(&echo.to_string()).await;
    let mut stream = raw(proxy.addr("db")).await;
    stream.write_all(b"ping").await.unwrap();
    stream.shutdown().await.unwrap();
    // The echo server only says "bye" after it sees our FIN through the proxy.
    let mut back = Vec::new();
    within("reply after half-close", stream.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, b"pingbye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_closes_the_client_connection() {
    let proxy = tcp_proxy("127.0.0.1:1").await;
    let mut stream = raw(proxy.addr("db")).await;
    let mut buffer = [0u8; 16];
    let read = within("close", stream.read(&mut buffer)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(
        proxy.metric(r#"remora_upstream_connect_failures_total{cluster="echo"}"#),
        1.0
    );
}

/// Authorization on a TCP listener: a plaintext client has no identity, so
/// an allow list that names identities closes its connection (counted);
/// a deny policy on another port leaves it alone.
#[tokio::test]
async fn authorization_closes_denied_connections() {
    let (echo, _task) = tcp_echo().await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: open
    address: 127.0.0.1:0
    protocol: tcp
    cluster: echo
    authorization: [{{name: not-here, action: deny, ports: [1]}}]
  - name: closed
    address: 127.0.0.1:0
    protocol: tcp
    cluster: echo
    authorization: [{{name: mesh-only, action: allow, from: ['*']}}]
clusters:
  - {{name: echo, endpoints: ['{echo}']}}
"
    ))
    .await;
    let mut open = raw(proxy.addr("open")).await;
    open.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    open.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");

    let mut closed = raw(proxy.addr("closed")).await;
    let _ = closed.write_all(b"ping").await;
    let mut rest = Vec::new();
    let _ = within("the close", closed.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    eventually("the denial counted", || {
        proxy.metric("remora_authz_denied_total{listener=\"closed\",policy=\"default-deny\"}")
            == 1.0
    })
    .await;
}

/// A `ports` condition on a plain HTTP listener holds for the port the
/// client dialled: that listener's requests are denied (403), another
/// listener's are not.
#[tokio::test]
async fn an_http_listeners_port_condition_is_enforced() {
    let proxy = TestProxy::start(
        "
listeners:
  - name: guarded
    address: 127.0.0.1:0
    authorization: [{name: no-port, action: deny, ports: [1]}]
    routes: [{name: r, direct_response: {status: 204}}]
",
    )
    .await;
    // Learn the port, then deny exactly it (a reload keeps the socket).
    let port = proxy.addr("guarded").port();
    let yaml = format!(
        "
listeners:
  - name: guarded
    address: 127.0.0.1:0
    authorization: [{{name: no-port, action: deny, ports: [{port}]}}]
    routes: [{{name: r, direct_response: {{status: 204}}}}]
  - name: open
    address: 127.0.0.1:0
    authorization: [{{name: no-port, action: deny, ports: [{port}]}}]
    routes: [{{name: r, direct_response: {{status: 204}}}}]
"
    );
    proxy
        .proxy
        .reload(remora_proxy::config::parse_yaml(&yaml).unwrap())
        .unwrap();
    let client = crate::support::client::http1();
    let guarded = crate::support::client::get(&client, &proxy.url("guarded", "/")).await;
    assert_eq!(guarded.status, 403);
    let open = crate::support::client::get(&client, &proxy.url("open", "/")).await;
    assert_eq!(open.status, 204);
    assert_eq!(
        proxy.metric("remora_authz_denied_total{listener=\"guarded\",policy=\"no-port\"}"),
        1.0
    );
}

//! HTTP/1.1 Upgrade passes through: a WebSocket echo through the proxy.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::upstream::websocket_echo;
use crate::support::{TestProxy, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_echo_through_the_proxy() {
    let (server, _task) = websocket_echo().await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes: [{{name: ws, backends: [{{cluster: ws}}]}}]
clusters:
  - {{name: ws, endpoints: ['{server}']}}
"
    ))
    .await;
    let url = format!("ws://{}/chat", proxy.addr("web"));
    let (mut ws, response) = within("websocket handshake", tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let reply = within("echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    let binary = vec![0u8, 1, 2, 255];
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(
        within("binary echo", ws.next())
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .as_ref(),
        &binary[..]
    );
    ws.close(None).await.unwrap();
    assert_eq!(
        proxy.metric(
            r#"remora_requests_total{listener="web",route="ws",cluster="ws",status_class="1xx"}"#
        ),
        1.0
    );
}

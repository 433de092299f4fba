//! HTTP/2 with prior knowledge (h2c) and gRPC over it, with the `h2`
//! crate directly. A connection carries several lanes, one stream each at
//! a time; a gRPC streaming lane keeps one stream open and sends a message,
//! waits for its echo, and repeats.

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use tokio::net::TcpStream;

use super::Target;

pub type Connection = SendRequest<Bytes>;

pub async fn connect(target: &Target) -> anyhow::Result<Connection> {
    let stream = TcpStream::connect(target.address).await?;
    stream.set_nodelay(true)?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake::<_, Bytes>(stream)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client.ready().await?)
}

fn uri(target: &Target) -> Uri {
    format!("http://{}{}", target.authority, target.path)
        .parse()
        .expect("a valid URI from a parsed target")
}

/// A gRPC message: the 5-byte prefix (uncompressed, length) and `size` bytes.
fn grpc_frame(size: usize) -> Bytes {
    let mut frame = Vec::with_capacity(5 + size);
    frame.push(0);
    frame.extend_from_slice(&(size as u32).to_be_bytes());
    frame.resize(5 + size, b'x');
    Bytes::from(frame)
}

fn header_map(headers: &[(String, String)]) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    Ok(map)
}

fn request(method: Method, uri: &Uri, headers: &HeaderMap, grpc: bool) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers.clone();
    if grpc {
        let headers = request.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
    }
    request
}

/// Requests one at a time: GET for h2c, a unary call for gRPC.
pub struct Lane {
    client: Connection,
    uri: Uri,
    headers: HeaderMap,
    grpc: Option<Bytes>,
}

impl Lane {
    pub fn new(
        client: &Connection,
        target: &Target,
        headers: &[(String, String)],
        grpc: bool,
        size: usize,
    ) -> anyhow::Result<Lane> {
        Ok(Lane {
            client: client.clone(),
            uri: uri(target),
            headers: header_map(headers)?,
            grpc: grpc.then(|| grpc_frame(size)),
        })
    }

    pub async fn call(&mut self) -> Result<u64, String> {
        let mut client = self
            .client
            .clone()
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let response = match &self.grpc {
            None => {
                let request = request(Method::GET, &self.uri, &self.headers, false);
                client
                    .send_request(request, true)
                    .map_err(|e| format!("send: {e}"))?
                    .0
            }
            Some(frame) => {
                let (response, mut body) = client
                    .send_request(request(Method::POST, &self.uri, &self.headers, true), false)
                    .map_err(|e| format!("send: {e}"))?;
                body.send_data(frame.clone(), true)
                    .map_err(|e| format!("send: {e}"))?;
                response
            }
        };
        let response = response.await.map_err(|e| format!("response: {e}"))?;
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = 0u64;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("body: {e}"))?;
            bytes += chunk.len() as u64;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        if self.grpc.is_some() {
            let trailers = body
                .trailers()
                .await
                .map_err(|e| format!("trailers: {e}"))?;
            let grpc_status = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.as_bytes().to_vec());
            if grpc_status.as_deref() != Some(b"0") {
                return Err(format!(
                    "grpc-status {}",
                    grpc_status.map_or("missing".into(), |s| String::from_utf8_lossy(&s)
                        .into_owned())
                ));
            }
        }
        Ok(bytes)
    }
}

/// One open gRPC bidirectional stream: a message out, its echo back.
pub struct StreamLane {
    send: h2::SendStream<Bytes>,
    receive: h2::RecvStream,
    frame: Bytes,
    pending: usize,
}

impl StreamLane {
    pub async fn open(
        client: &Connection,
        target: &Target,
        headers: &[(String, String)],
        size: usize,
    ) -> anyhow::Result<StreamLane> {
        let mut client = client.clone().ready().await?;
        let request = request(Method::POST, &uri(target), &header_map(headers)?, true);
        let (response, mut send) = client.send_request(request, false)?;
        let frame = grpc_frame(size);
        // The echo server answers headers once the first message arrives.
        send.send_data(frame.clone(), false)?;
        let response = response.await?;
        anyhow::ensure!(
            response.status().is_success(),
            "status {}",
            response.status()
        );
        let mut lane = StreamLane {
            send,
            receive: response.into_body(),
            pending: frame.len(),
            frame,
        };
        lane.drain_pending().await.map_err(|e| anyhow::anyhow!(e))?;
        Ok(lane)
    }

    async fn drain_pending(&mut self) -> Result<(), String> {
        while self.pending > 0 {
            let chunk = self
                .receive
                .data()
                .await
                .ok_or("the stream ended")?
                .map_err(|e| format!("stream: {e}"))?;
            let _ = self.receive.flow_control().release_capacity(chunk.len());
            self.pending = self.pending.saturating_sub(chunk.len());
        }
        Ok(())
    }

    pub async fn call(&mut self) -> Result<u64, String> {
        self.send
            .send_data(self.frame.clone(), false)
            .map_err(|e| format!("send: {e}"))?;
        self.pending = self.frame.len();
        self.drain_pending().await?;
        Ok(self.frame.len() as u64)
    }
}

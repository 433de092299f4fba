//! Real HTTP clients (hyper's pooled client) for HTTP/1.1 and h2c.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ReqBody = BoxBody<Bytes, BoxError>;
pub type HttpClient = Client<HttpConnector, ReqBody>;

/// HTTP/1.1 with keep-alive.
pub fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// HTTP/1.1 from a given local address (such as `127.0.0.2`).
pub fn http1_from(ip: std::net::IpAddr) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(ip));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// HTTP/2 with prior knowledge (h2c).
pub fn http2() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn body(data: impl Into<Bytes>) -> ReqBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ReqBody {
    body(Bytes::new())
}

/// A body of unknown length (sent chunked over HTTP/1.1), in these pieces.
pub fn chunked(pieces: Vec<Bytes>) -> ReqBody {
    let frames = pieces
        .into_iter()
        .map(|p| Ok::<_, BoxError>(hyper::body::Frame::data(p)));
    http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap_or(""))
    }
}

pub async fn get(client: &HttpClient, url: &str) -> Reply {
    send(client, Request::get(url).body(empty()).unwrap()).await
}

pub async fn get_with(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    send(client, request.body(empty()).unwrap()).await
}

pub async fn request(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    send(client, request.body(empty()).unwrap()).await
}

pub async fn send(client: &HttpClient, request: Request<ReqBody>) -> Reply {
    try_send(client, request)
        .await
        .unwrap_or_else(|e| panic!("request failed: {e:?}"))
}

pub async fn try_send(client: &HttpClient, request: Request<ReqBody>) -> Result<Reply, BoxError> {
    let response = client.request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Sends a GET in a task of its own.
pub fn spawn_get(
    client: HttpClient,
    url: String,
) -> tokio::task::JoinHandle<Result<Reply, BoxError>> {
    tokio::spawn(async move { try_send(&client, Request::get(url).body(empty()).unwrap()).await })
}

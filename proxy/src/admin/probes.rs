//! The application's HTTP probes, on the admin port (Istio's
//! `/app-health/...`): the sidecar injector points the kubelet's probes
//! here, and the proxy asks the application itself, in plaintext from
//! inside the pod, so probes keep working when the application's port
//! takes only mTLS. The answer is the application's status (the kubelet
//! counts 200–399 as success), or 503 when it cannot be reached in
//! `timeoutSeconds`.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::AppProbeConfig;

/// Runs `probe` against the application: its status and a short body.
pub(super) async fn run(probe: &AppProbeConfig) -> (StatusCode, String) {
    let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
    match tokio::time::timeout(timeout, ask(probe)).await {
        Ok(Ok(status)) => (
            status,
            format!("application answered {}\n", status.as_u16()),
        ),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("application probe failed: {error}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("application probe timed out after {}s\n", timeout.as_secs()),
        ),
    }
}

async fn ask(probe: &AppProbeConfig) -> Result<StatusCode, String> {
    let get = &probe.http_get;
    let host = get.host.as_deref().unwrap_or("127.0.0.1");
    let stream = TcpStream::connect((host, get.port))
        .await
        .map_err(|e| format!("connect {host}:{}: {e}", get.port))?;
    let _ = stream.set_nodelay(true);
    let mut request = Request::get(get.path.as_str())
        .header(http::header::HOST, format!("{host}:{}", get.port))
        .header(http::header::USER_AGENT, "remora-proxy app probe");
    for header in &get.http_headers {
        request = request.header(header.name.as_str(), header.value.as_str());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad probe request: {e}"))?;
    if get.scheme == "HTTPS" {
        let tls = crate::tls::probe_client(host)
            .ok_or_else(|| format!("TLS: {host:?} is not a server name"))?;
        let stream = tls
            .connect(stream, false)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        send(TokioIo::new(stream), request).await
    } else {
        send(TokioIo::new(stream), request).await
    }
}

async fn send<T>(io: T, request: Request<Empty<Bytes>>) -> Result<StatusCode, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status();
    // Read (and drop) the body so the application sees a complete exchange.
    let _ = response.into_body().collect().await;
    Ok(status)
}

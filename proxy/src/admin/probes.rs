//! The application's probes, on the admin port (Istio's
//! `/app-health/...`): the sidecar injector points the kubelet's HTTP, TCP
//! and gRPC probes here, and the proxy asks the application itself, in
//! plaintext from inside the pod (its own connections are never captured),
//! so probes keep working when the application's port takes only mTLS, and
//! a TCP probe checks the application rather than the capture, which would
//! accept any port. The answer is the application's HTTP status (the
//! kubelet counts 200–399 as success), 200 for a port that accepts a
//! connection or a gRPC health check that answers `SERVING`, or 503 when
//! the application cannot be reached in `timeoutSeconds` or says otherwise.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::config::{AppProbeConfig, GrpcProbeConfig, HttpGetProbeConfig, ProbeHandler};

/// Runs `probe` against the application: its status and a short body.
pub(super) async fn run(probe: &AppProbeConfig) -> (StatusCode, String) {
    let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
    let asked = async {
        match probe.handler()? {
            ProbeHandler::HttpGet(get) => {
                let status = http_get(get).await?;
                Ok((
                    status,
                    format!("application answered {}\n", status.as_u16()),
                ))
            }
            ProbeHandler::TcpSocket(tcp) => {
                let host = tcp.host.as_deref().unwrap_or("127.0.0.1");
                TcpStream::connect((host, tcp.port))
                    .await
                    .map_err(|e| format!("connect {host}:{}: {e}", tcp.port))?;
                Ok((
                    StatusCode::OK,
                    format!("application port {} accepts connections\n", tcp.port),
                ))
            }
            ProbeHandler::Grpc(grpc) => grpc_health(grpc).await,
        }
    };
    match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(answer)) => answer,
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

async fn http_get(get: &HttpGetProbeConfig) -> Result<StatusCode, String> {
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

/// `grpc.health.v1.Health/Check` for the probe's service over plaintext
/// HTTP/2, as the kubelet asks it: 200 for `SERVING`, else 503 with what
/// the application said.
async fn grpc_health(probe: &GrpcProbeConfig) -> Result<(StatusCode, String), String> {
    let stream = TcpStream::connect(("127.0.0.1", probe.port))
        .await
        .map_err(|e| format!("connect 127.0.0.1:{}: {e}", probe.port))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
    tokio::spawn(connection);
    let request = Request::post(format!(
        "http://127.0.0.1:{}/grpc.health.v1.Health/Check",
        probe.port
    ))
    .header(http::header::CONTENT_TYPE, "application/grpc")
    .header("te", "trailers")
    .header(http::header::USER_AGENT, "remora-proxy app probe")
    .body(Full::new(health_check_request(
        probe.service.as_deref().unwrap_or(""),
    )))
    .map_err(|e| format!("bad probe request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP/2: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("HTTP status {}", response.status().as_u16()));
    }
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| format!("HTTP/2: {e}"))?;
    // A trailers-only answer carries grpc-status in the headers.
    let trailers = body.trailers().cloned().unwrap_or_default();
    let field = |name: &str| {
        trailers
            .get(name)
            .or_else(|| parts.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let code = field("grpc-status").unwrap_or_default();
    if code != "0" {
        return Err(format!(
            "gRPC status {code:?}: {}",
            super::unescape(&field("grpc-message").unwrap_or_default(), false)
        ));
    }
    let status = health_check_status(&body.to_bytes())?;
    let name = match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "an unknown status",
    };
    let code = if status == 1 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((code, format!("application health check: {name}\n")))
}

/// A `HealthCheckRequest { service }` in one uncompressed gRPC frame.
fn health_check_request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    Bytes::from(frame)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("a truncated health check answer")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a malformed health check answer".into())
}

/// The `status` of the `HealthCheckResponse` in one gRPC frame (0,
/// `UNKNOWN`, when the field is absent, as proto3 encodes it).
fn health_check_status(frame: &[u8]) -> Result<u64, String> {
    let [flag, a, b, c, d, message @ ..] = frame else {
        return Err("no health check answer".into());
    };
    if *flag != 0 {
        return Err("a compressed health check answer".into());
    }
    let length = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    let message = message
        .get(..length)
        .ok_or("a truncated health check answer")?;
    let (mut at, mut status) = (0, 0);
    while at < message.len() {
        let tag = varint(message, &mut at)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => status = varint(message, &mut at)?,
            (_, 0) => {
                varint(message, &mut at)?;
            }
            (_, 1) => at += 8,
            (_, 2) => {
                let skip = varint(message, &mut at)? as usize;
                at = at.saturating_add(skip);
            }
            (_, 5) => at += 4,
            _ => return Err("a malformed health check answer".into()),
        }
    }
    if at > message.len() {
        return Err("a truncated health check answer".into());
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_check_messages_are_encoded_and_read_as_protobuf() {
        assert_eq!(&health_check_request("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &health_check_request("shop.Cart")[..],
            [&[0, 0, 0, 0, 11, 0x0a, 9][..], b"shop.Cart"].concat()
        );
        let long = "s".repeat(200);
        assert_eq!(&health_check_request(&long)[5..8], [0x0a, 0xc8, 0x01]);
        // SERVING; NOT_SERVING after an unknown field; the default (absent).
        assert_eq!(health_check_status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
        assert_eq!(
            health_check_status(&[0, 0, 0, 0, 6, 0x12, 2, b'h', b'i', 0x08, 2]),
            Ok(2)
        );
        assert_eq!(health_check_status(&[0, 0, 0, 0, 0]), Ok(0));
        assert_eq!(
            super::super::unescape("unknown%20service+a%", false),
            "unknown service+a%"
        );
        for bad in [
            &[][..],
            &[1, 0, 0, 0, 2, 0x08, 1],
            &[0, 0, 0, 0, 9, 0x08, 1],
            &[0, 0, 0, 0, 2, 0x08, 0x80],
            &[0, 0, 0, 0, 2, 0x12, 5],
            &[0, 0, 0, 0, 1, 0x0b],
        ] {
            assert!(health_check_status(bad).is_err(), "{bad:?}");
        }
    }
}

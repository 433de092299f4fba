//! One health check of one endpoint, over a connection of its own.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HOST, TE};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

#[derive(Debug)]
pub(crate) enum Probe {
    Http {
        path: String,
        host: String,
        statuses: Box<[(u16, u16)]>,
        http2: bool,
    },
    Grpc {
        service: String,
    },
    Tcp,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

impl Probe {
    /// `Ok` when the endpoint passes; otherwise what was wrong.
    pub(crate) async fn run(&self, address: SocketAddr) -> Result<(), String> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect failed: {e}"))?;
        let _ = stream.set_nodelay(true);
        match self {
            Probe::Tcp => Ok(()),
            Probe::Http {
                path,
                host,
                statuses,
                http2,
            } => {
                let request = Request::get(if *http2 {
                    format!("http://{host}{path}")
                } else {
                    path.clone()
                })
                .header(HOST, host.as_str())
                .header("user-agent", "remora-health-check")
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
                let response = send(stream, request, *http2).await?;
                let status = response.status().as_u16();
                if statuses
                    .iter()
                    .any(|&(low, high)| (low..=high).contains(&status))
                {
                    Ok(())
                } else {
                    Err(format!("status {status}"))
                }
            }
            Probe::Grpc { service } => {
                let request =
                    Request::post(format!("http://{address}/grpc.health.v1.Health/Check"))
                        .header(CONTENT_TYPE, "application/grpc")
                        .header(TE, "trailers")
                        .body(Full::new(check_request(service)))
                        .map_err(|e| e.to_string())?;
                let response = send(stream, request, true).await?;
                let headers = response.headers().clone();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("reading the answer: {e}"))?;
                let trailers = body.trailers().cloned().unwrap_or_default();
                let grpc_status = grpc_status(&trailers).or_else(|| grpc_status(&headers));
                match grpc_status {
                    Some(0) => {}
                    Some(code) => return Err(format!("grpc-status {code}")),
                    None => return Err("no grpc-status in the answer".into()),
                }
                match serving_status(&body.to_bytes()) {
                    Some(SERVING) => Ok(()),
                    Some(status) => Err(format!("serving status {status} (1 is SERVING)")),
                    None => Err("the answer is not a HealthCheckResponse".into()),
                }
            }
        }
    }
}

async fn send(
    stream: TcpStream,
    request: Request<Full<Bytes>>,
    http2: bool,
) -> Result<Response<Incoming>, String> {
    let io = TokioIo::new(stream);
    if http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(conn);
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A gRPC frame holding `HealthCheckRequest { string service = 1; }`.
fn check_request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    frame.freeze()
}

fn put_varint(buffer: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buffer.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buffer.put_u8(value as u8);
}

/// `HealthCheckResponse.status` (field 1, a varint) from a gRPC frame.
fn serving_status(frame: &[u8]) -> Option<u64> {
    let message = frame.get(5..)?;
    let mut at = 0;
    while at < message.len() {
        let (tag, next) = varint(message, at)?;
        at = next;
        match (tag >> 3, tag & 7) {
            (1, 0) => return varint(message, at).map(|(value, _)| value),
            (_, 0) => at = varint(message, at)?.1,
            (_, 2) => {
                let (len, next) = varint(message, at)?;
                at = next + len as usize;
            }
            _ => return None,
        }
    }
    Some(0)
}

fn varint(bytes: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some((value, at));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages_encode_and_decode() {
        assert_eq!(&check_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &check_request("svc")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']
        );
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(
            serving_status(&[0, 0, 0, 0, 0]),
            Some(0),
            "absent means UNKNOWN"
        );
        assert_eq!(serving_status(&[0, 0]), None);
    }
}

//! A minimal HTTP/1.1 keep-alive client: one prepared GET written as bytes,
//! the response head parsed with `httparse`, the body skipped by
//! `content-length` or chunked framing. Small enough that the load
//! generator is not what limits a run.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Target;

pub struct Connection {
    address: std::net::SocketAddr,
    request: Vec<u8>,
    stream: Option<TcpStream>,
    buffer: BytesMut,
}

impl Connection {
    pub async fn open(target: &Target, headers: &[(String, String)]) -> anyhow::Result<Connection> {
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: remora-perf\r\n",
            target.path, target.authority
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut connection = Connection {
            address: target.address,
            request: request.into_bytes(),
            stream: None,
            buffer: BytesMut::with_capacity(16 * 1024),
        };
        connection.stream = Some(connection.connect().await?);
        Ok(connection)
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect(self.address).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    pub async fn call(&mut self) -> Result<u64, String> {
        if self.stream.is_none() {
            self.stream = Some(self.connect().await.map_err(|e| format!("connect: {e}"))?);
            self.buffer.clear();
        }
        let result = self.exchange().await;
        match &result {
            Ok((_, keep_alive)) if *keep_alive => {}
            _ => self.stream = None,
        }
        result.map(|(bytes, _)| bytes)
    }

    /// Sends the request and reads one response: (body bytes, keep-alive).
    async fn exchange(&mut self) -> Result<(u64, bool), String> {
        let stream = self.stream.as_mut().expect("connected above");
        stream
            .write_all(&self.request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let (status, framing, keep_alive) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buffer) {
                Ok(httparse::Status::Complete(head)) => {
                    let status = response.code.unwrap_or(0);
                    let mut framing = Framing::UntilClose;
                    let mut keep_alive = true;
                    for header in response.headers.iter() {
                        if header.name.eq_ignore_ascii_case("content-length") {
                            let length = std::str::from_utf8(header.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .ok_or("bad content-length")?;
                            framing = Framing::Length(length);
                        } else if header.name.eq_ignore_ascii_case("transfer-encoding")
                            && header.value.eq_ignore_ascii_case(b"chunked")
                        {
                            framing = Framing::Chunked;
                        } else if header.name.eq_ignore_ascii_case("connection")
                            && header.value.eq_ignore_ascii_case(b"close")
                        {
                            keep_alive = false;
                        }
                    }
                    if status == 204 || status == 304 {
                        framing = Framing::Length(0);
                    }
                    self.buffer.advance(head);
                    break (status, framing, keep_alive);
                }
                Ok(httparse::Status::Partial) => fill(stream, &mut self.buffer).await?,
                Err(e) => return Err(format!("bad response head: {e}")),
            }
        };
        let bytes = match framing {
            Framing::Length(length) => {
                while self.buffer.len() < length {
                    fill(stream, &mut self.buffer).await?;
                }
                self.buffer.advance(length);
                length as u64
            }
            Framing::Chunked => read_chunked(stream, &mut self.buffer).await?,
            Framing::UntilClose => {
                let mut total = self.buffer.len() as u64;
                self.buffer.clear();
                loop {
                    match stream.read_buf(&mut self.buffer).await {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(e) => return Err(format!("read: {e}")),
                    }
                    self.buffer.clear();
                }
                return status_result(status, total, false);
            }
        };
        status_result(status, bytes, keep_alive)
    }
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

fn status_result(status: u16, bytes: u64, keep_alive: bool) -> Result<(u64, bool), String> {
    if (200..300).contains(&status) {
        Ok((bytes, keep_alive))
    } else {
        Err(format!("status {status}"))
    }
}

async fn fill(stream: &mut TcpStream, buffer: &mut BytesMut) -> Result<(), String> {
    if buffer.capacity() - buffer.len() < 4096 {
        buffer.reserve(16 * 1024);
    }
    match stream.read_buf(buffer).await {
        Ok(0) => Err("connection closed".to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Skips a chunked body and its trailers; returns the data bytes.
async fn read_chunked(stream: &mut TcpStream, buffer: &mut BytesMut) -> Result<u64, String> {
    let mut total = 0u64;
    loop {
        let line_end = loop {
            if let Some(i) = buffer.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            fill(stream, buffer).await?;
        };
        let line = std::str::from_utf8(&buffer[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        buffer.advance(line_end + 2);
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                let end = loop {
                    if let Some(i) = buffer.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    fill(stream, buffer).await?;
                };
                buffer.advance(end + 2);
                if end == 0 {
                    return Ok(total);
                }
            }
        }
        while buffer.len() < size + 2 {
            fill(stream, buffer).await?;
        }
        buffer.advance(size + 2);
        total += size as u64;
    }
}

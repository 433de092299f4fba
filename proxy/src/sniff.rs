//! Protocol detection on captured connections: the client's first bytes,
//! peeked (left in the socket, so whatever path the connection takes next
//! reads them again), say HTTP/1.x, HTTP/2 with prior knowledge, TLS (with
//! the SNI of its ClientHello) or something else. A client that sends
//! nothing within the detection timeout is a client waiting for the server
//! to speak first, and its connection is opaque TCP.
//!
//! The rules are strict enough that an opaque protocol is not taken for
//! HTTP: an HTTP/1 request line must end in ` HTTP/1.x` (a Redis inline
//! `SET key value` is opaque), the HTTP/2 preface must be whole, and a TLS
//! record must start a handshake.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// How much of a connection's start detection looks at: a request line, or
/// a ClientHello (usually well under 2 KiB; one beyond this is still TLS,
/// only its SNI may go unread).
const PEEK_MAX: usize = 4096;
/// While the bytes so far decide nothing, how long to wait before peeking
/// again (a request line split over segments; rare).
const REPEEK: Duration = Duration::from_millis(2);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's first bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sniffed {
    Http1,
    Http2,
    /// A TLS ClientHello; the server name it asks for, when it has one.
    Tls(Option<Box<str>>),
    /// Bytes of no protocol detection knows.
    Opaque,
    /// Nothing within the timeout (a server-speaks-first protocol).
    Timeout,
    /// The client closed (or reset) before sending anything.
    Closed,
}

impl Sniffed {
    pub(crate) fn is_http(&self) -> bool {
        matches!(self, Sniffed::Http1 | Sniffed::Http2)
    }

    pub(crate) fn sni(&self) -> Option<&str> {
        match self {
            Sniffed::Tls(sni) => sni.as_deref(),
            _ => None,
        }
    }
}

/// Peeks at `stream` until its first bytes decide, or `timeout` passes.
pub(crate) async fn sniff(stream: &TcpStream, timeout: Duration) -> io::Result<Sniffed> {
    let deadline = Instant::now() + timeout;
    let mut buffer = vec![0u8; PEEK_MAX];
    let mut seen = 0;
    loop {
        let peeked = match tokio::time::timeout_at(deadline, stream.peek(&mut buffer)).await {
            Err(_) if seen == 0 => return Ok(Sniffed::Timeout),
            // Some bytes, but not enough to decide: they are not HTTP in time.
            Err(_) => return Ok(Sniffed::Opaque),
            Ok(Err(error)) if seen == 0 && is_reset(&error) => return Ok(Sniffed::Closed),
            Ok(result) => result?,
        };
        if peeked == 0 {
            return Ok(if seen == 0 {
                Sniffed::Closed
            } else {
                Sniffed::Opaque
            });
        }
        if let Some(decided) = classify(&buffer[..peeked], peeked == buffer.len()) {
            return Ok(decided);
        }
        seen = peeked;
        // Peeking leaves the socket readable, so wait a little for more.
        if Instant::now() + REPEEK >= deadline {
            return Ok(Sniffed::Opaque);
        }
        tokio::time::sleep(REPEEK).await;
    }
}

fn is_reset(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// What `bytes` (a connection's first, `full` when no more fit) are; `None`
/// while more bytes could still change the answer.
pub(crate) fn classify(bytes: &[u8], full: bool) -> Option<Sniffed> {
    if bytes.is_empty() {
        return None;
    }
    if bytes[0] == 0x16 {
        return tls(bytes, full);
    }
    let preface = bytes.len().min(H2_PREFACE.len());
    if bytes[..preface] == H2_PREFACE[..preface] {
        return (preface == H2_PREFACE.len()).then_some(Sniffed::Http2);
    }
    http1(bytes, full)
}

/// An HTTP/1 request line: `METHOD SP TARGET SP HTTP/1.x CRLF`.
fn http1(bytes: &[u8], full: bool) -> Option<Sniffed> {
    let method = bytes.iter().take_while(|&&b| is_tchar(b)).count();
    if method == bytes.len() {
        // All token so far: a method still arriving, unless too long for one.
        return (method > 20 || full).then_some(Sniffed::Opaque);
    }
    if method == 0 || bytes[method] != b' ' {
        return Some(Sniffed::Opaque);
    }
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
        // A long request target: HTTP when it looks like one and the
        // peek is full, else wait for the line's end.
        let target = &bytes[method + 1..];
        return full.then(|| {
            if target
                .first()
                .is_some_and(|&b| b == b'/' || b.is_ascii_alphabetic())
                && !target.iter().any(|&b| b.is_ascii_control())
            {
                Sniffed::Http1
            } else {
                Sniffed::Opaque
            }
        });
    };
    let line = &bytes[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(version) = line.len().checked_sub(b"HTTP/1.1".len()) else {
        return Some(Sniffed::Opaque);
    };
    let http = line[version..].starts_with(b"HTTP/1.")
        && line[version + 7].is_ascii_digit()
        && version > method + 2
        && line[version - 1] == b' ';
    Some(if http {
        Sniffed::Http1
    } else {
        Sniffed::Opaque
    })
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A TLS record carrying a handshake (type 22, version 3.x). Its SNI is read
/// once the whole ClientHello is in (or the peek is full).
fn tls(bytes: &[u8], full: bool) -> Option<Sniffed> {
    if bytes.len() < 3 {
        return full.then_some(Sniffed::Opaque);
    }
    if bytes[1] != 3 || bytes[2] > 4 {
        return Some(Sniffed::Opaque);
    }
    if bytes.len() < 5 {
        return full.then_some(Sniffed::Tls(None));
    }
    let record = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
    let body = &bytes[5..];
    if body.len() < record && !full {
        return None;
    }
    let body = &body[..record.min(body.len())];
    Some(Sniffed::Tls(server_name(body).map(Into::into)))
}

/// The `server_name` extension's host name in a ClientHello handshake
/// message (RFC 8446 §4.1.2, RFC 6066 §3), if the bytes hold it whole.
fn server_name(handshake: &[u8]) -> Option<&str> {
    let mut r = Reader(handshake);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    r.take(3)?; // length
    r.take(2 + 32)?; // legacy_version, random
    let session = r.u8()? as usize;
    r.take(session)?;
    let suites = r.u16()? as usize;
    r.take(suites)?;
    let compression = r.u8()? as usize;
    r.take(compression)?;
    let extensions = r.u16()? as usize;
    let mut extensions = Reader(r.take(extensions).unwrap_or(r.0));
    while let (Some(kind), Some(len)) = (extensions.u16(), extensions.u16()) {
        let data = extensions.take(len as usize)?;
        if kind != 0 {
            continue;
        }
        let mut names = Reader(data);
        let list = names.u16()? as usize;
        let mut names = Reader(names.take(list)?);
        while let Some(kind) = names.u8() {
            let len = names.u16()? as usize;
            let name = names.take(len)?;
            if kind == 0 {
                let valid = !name.is_empty()
                    && name
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
                return valid.then(|| std::str::from_utf8(name).ok()).flatten();
            }
        }
        return None;
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests;

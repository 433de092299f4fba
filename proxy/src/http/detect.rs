//! Per-connection protocol detection on HTTP listeners: the HTTP/2 client
//! preface (`PRI * HTTP/2.0...`) means h2c with prior knowledge; anything
//! else is served as HTTP/1.x. The bytes read to decide are replayed to the
//! HTTP server by [`ServerIo`].
//!
//! After the preface the client's first frame must be SETTINGS (RFC 9113
//! §3.4), which the h2 library does not check: a connection that sends
//! anything else gets the server's SETTINGS and a GOAWAY with
//! `PROTOCOL_ERROR` (`FRAME_SIZE_ERROR` for a SETTINGS frame whose length is
//! not a multiple of 6) and is closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use crate::socket::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The preface and the header of the client's first frame.
const PREFIX_MAX: usize = H2_PREFACE.len() + FRAME_HEADER;
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
const PROTOCOL_ERROR: u8 = 0x1;
const FRAME_SIZE_ERROR: u8 = 0x6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Detected {
    Http1,
    Http2,
}

/// The first bytes of a connection, already read.
pub(super) struct Prefix {
    bytes: [u8; PREFIX_MAX],
    len: u8,
}

/// Reads until the first bytes decide the protocol. `None` when the client
/// closed before sending anything.
pub(super) async fn detect<S: Stream>(stream: &mut S) -> io::Result<Option<(Detected, Prefix)>> {
    let mut prefix = Prefix {
        bytes: [0; PREFIX_MAX],
        len: 0,
    };
    loop {
        let len = prefix.len as usize;
        let read = stream
            .read(&mut prefix.bytes[len..H2_PREFACE.len()])
            .await?;
        if read == 0 {
            return Ok(if len == 0 {
                None
            } else {
                Some((Detected::Http1, prefix))
            });
        }
        let len = len + read;
        prefix.len = len as u8;
        if prefix.bytes[..len] != H2_PREFACE[..len] {
            return Ok(Some((Detected::Http1, prefix)));
        }
        if len == H2_PREFACE.len() {
            return first_frame(stream, prefix).await;
        }
    }
}

/// Reads the header of the frame after the preface; anything but SETTINGS
/// ends the connection with the GOAWAY the RFC asks for (`None`).
async fn first_frame<S: Stream>(
    stream: &mut S,
    mut prefix: Prefix,
) -> io::Result<Option<(Detected, Prefix)>> {
    stream
        .read_exact(&mut prefix.bytes[H2_PREFACE.len()..])
        .await?;
    prefix.len = PREFIX_MAX as u8;
    let header = &prefix.bytes[H2_PREFACE.len()..];
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    let (kind, flags) = (header[3], header[4]);
    let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let error = if kind != SETTINGS || flags & ACK != 0 || stream_id != 0 {
        PROTOCOL_ERROR
    } else if !length.is_multiple_of(6) {
        FRAME_SIZE_ERROR
    } else {
        return Ok(Some((Detected::Http2, prefix)));
    };
    #[rustfmt::skip]
    let goodbye = [
        // The server's (empty) SETTINGS: its preface.
        0, 0, 0, SETTINGS, 0, 0, 0, 0, 0,
        // GOAWAY, last stream 0, and the error.
        0, 0, 8, 0x7, 0, 0, 0, 0, 0,
        0, 0, 0, 0,
        0, 0, 0, error,
    ];
    stream.write_all(&goodbye).await?;
    let _ = stream.shutdown().await;
    Ok(None)
}

/// A server connection's socket: replays the detection prefix, then reads
/// and writes the socket directly. With `reads` set, it counts reads that
/// returned data, which the HTTP/1 header timer watches.
pub(super) struct ServerIo<S> {
    stream: S,
    prefix: Prefix,
    replayed: u8,
    reads: Option<Arc<AtomicU64>>,
}

impl<S> ServerIo<S> {
    pub(super) fn new(stream: S, prefix: Prefix, reads: Option<Arc<AtomicU64>>) -> ServerIo<S> {
        ServerIo {
            stream,
            prefix,
            replayed: 0,
            reads,
        }
    }
}

impl<S: Stream> AsyncRead for ServerIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.prefix.len {
            let rest = &this.prefix.bytes[this.replayed as usize..this.prefix.len as usize];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n as u8;
            if let Some(reads) = &this.reads {
                reads.fetch_add(1, Ordering::Relaxed);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let (Some(reads), Poll::Ready(Ok(()))) = (&this.reads, &result)
            && buf.filled().len() > before
        {
            reads.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl<S: Stream> AsyncWrite for ServerIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

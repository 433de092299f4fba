//! Copying bytes both ways between two sockets, counting them as they pass.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const BUFFER: usize = 16 * 1024;

pub(super) enum Ended {
    /// Both directions finished.
    Closed,
    /// No bytes either way for the idle timeout.
    Idle,
}

/// A client stream split into halves that can be used at once: a TCP
/// socket's borrowed halves (free), or a TLS stream's (`tokio::io::split`).
pub(crate) trait Halves {
    fn halves(&mut self) -> (impl AsyncRead + Unpin + '_, impl AsyncWrite + Unpin + '_);
}

impl Halves for TcpStream {
    fn halves(&mut self) -> (impl AsyncRead + Unpin + '_, impl AsyncWrite + Unpin + '_) {
        self.split()
    }
}

impl Halves for tokio_rustls::server::TlsStream<TcpStream> {
    fn halves(&mut self) -> (impl AsyncRead + Unpin + '_, impl AsyncWrite + Unpin + '_) {
        tokio::io::split(self)
    }
}

/// Bytes moved each way, for the connection's access-log line.
#[derive(Debug, Default)]
pub(super) struct Moved {
    /// From the client.
    pub(super) received: AtomicU64,
    /// To the client.
    pub(super) sent: AtomicU64,
}

/// Relays until both directions have ended (or nothing moved for `idle`);
/// `rx` counts client→upstream bytes, `tx` upstream→client, and `moved`
/// adds them up for this connection. An error in either direction ends both.
pub(super) async fn relay<C: Halves>(
    mut client: C,
    mut upstream: TcpStream,
    (rx, tx): (&Counter, &Counter),
    moved: &Moved,
    idle: Option<Duration>,
) -> io::Result<Ended> {
    let (mut client_read, mut client_write) = client.halves();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let start = Instant::now();
    // Milliseconds after `start` when bytes last moved either way.
    let last = AtomicU64::new(0);
    let copy = async {
        tokio::try_join!(
            pipe(
                &mut client_read,
                &mut upstream_write,
                (rx, &moved.received),
                (start, &last)
            ),
            pipe(
                &mut upstream_read,
                &mut client_write,
                (tx, &moved.sent),
                (start, &last)
            ),
        )
    };
    let Some(idle) = idle else {
        copy.await?;
        return Ok(Ended::Closed);
    };
    let quiet = async {
        loop {
            let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        result = copy => result.map(|_| Ended::Closed),
        () = quiet => Ok(Ended::Idle),
    }
}

async fn pipe<R, W>(
    reader: &mut R,
    writer: &mut W,
    (counter, total): (&Counter, &AtomicU64),
    (start, last): (Instant, &AtomicU64),
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            // The sender is done: pass the half-close on.
            return writer.shutdown().await;
        }
        writer.write_all(&buffer[..read]).await?;
        counter.increment(read as u64);
        total.fetch_add(read as u64, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

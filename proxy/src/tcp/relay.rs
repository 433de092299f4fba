//! Copying bytes both ways between two sockets, counting them as they pass.

use std::io;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const BUFFER: usize = 16 * 1024;

/// Relays until both directions have ended; `rx` counts client→upstream
/// bytes, `tx` upstream→client. An error in either direction ends both.
pub async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    rx: &Counter,
    tx: &Counter,
) -> io::Result<()> {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    tokio::try_join!(
        pipe(&mut client_read, &mut upstream_write, rx),
        pipe(&mut upstream_read, &mut client_write, tx),
    )?;
    Ok(())
}

async fn pipe<R, W>(reader: &mut R, writer: &mut W, counter: &Counter) -> io::Result<()>
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
    }
}

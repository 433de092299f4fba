//! Opaque TCP: `size` bytes out, the same bytes back (from an echo server),
//! repeated.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Target;

pub struct Connection {
    stream: TcpStream,
    out: Vec<u8>,
    back: Vec<u8>,
}

impl Connection {
    pub async fn open(target: &Target, size: usize) -> anyhow::Result<Connection> {
        anyhow::ensure!(size > 0, "--size must be at least 1 for tcp");
        let stream = TcpStream::connect(target.address).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            out: vec![b'x'; size],
            back: vec![0; size],
        })
    }

    pub async fn call(&mut self) -> Result<u64, String> {
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.stream
            .read_exact(&mut self.back)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(self.back.len() as u64)
    }
}

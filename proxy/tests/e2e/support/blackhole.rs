//! A TCP forwarder that can be paused: while paused it moves no bytes either
//! way but keeps both connections open, as a peer that died without a FIN
//! (a pulled cable, a frozen VM) looks from the other side.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Blackhole {
    pub addr: SocketAddr,
    paused: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    pub async fn start(target: SocketAddr) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paused = Arc::new(watch::channel(false).0);
        let task = {
            let paused = paused.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let Ok(upstream) = TcpStream::connect(target).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (upstream_read, upstream_write) = upstream.into_split();
                    tokio::spawn(pipe(client_read, upstream_write, paused.subscribe()));
                    tokio::spawn(pipe(upstream_read, client_write, paused.subscribe()));
                }
            })
        };
        Blackhole { addr, paused, task }
    }

    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut paused: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buffer).await else {
            return;
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        // Hold the bytes while paused: they are never delivered.
        if paused.wait_for(|p| !p).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

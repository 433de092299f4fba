//! Options every TCP connection gets, downstream and upstream: `TCP_NODELAY`
//! (on unless turned off) and TCP keepalive probes when configured.

use std::io;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::config::TcpKeepaliveConfig;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SocketOptions {
    pub nodelay: bool,
    pub keepalive: Option<TcpKeepaliveConfig>,
}

impl SocketOptions {
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(self.nodelay)?;
        if let Some(keepalive) = &self.keepalive {
            let params = TcpKeepalive::new()
                .with_time(keepalive.time)
                .with_interval(keepalive.interval)
                .with_retries(keepalive.probes);
            SockRef::from(stream).set_tcp_keepalive(&params)?;
        }
        Ok(())
    }
}

/// Closes `stream` with a reset (RST) rather than a FIN, so the client
/// learns at once that nobody will answer.
pub(crate) fn reset(stream: tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}

/// The destination a redirected connection was headed for before
/// iptables sent it to the proxy (`SO_ORIGINAL_DST`, or
/// `IP6T_SO_ORIGINAL_DST` for IPv6). An IPv4 connection accepted on a
/// dual-stack `[::]` socket is IPv4 here.
pub(crate) fn original_destination(
    stream: &tokio::net::TcpStream,
) -> std::io::Result<std::net::SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let local = stream.local_addr()?;
    let original = if local.is_ipv4() || local.ip().to_canonical().is_ipv4() {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    original.as_socket().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the original destination is not an IP address",
        )
    })
}

/// A downstream connection's byte stream: a TCP socket, or TLS over one.
pub(crate) trait Stream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static
{
}

impl<T> Stream for T where T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn keepalive_and_nodelay_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let options = SocketOptions {
            nodelay: true,
            keepalive: Some(TcpKeepaliveConfig {
                time: Duration::from_secs(42),
                interval: Duration::from_secs(7),
                probes: 5,
            }),
        };
        options.apply(&stream).unwrap();
        let socket = SockRef::from(&stream);
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(42)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 5);
    }
}

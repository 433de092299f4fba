//! An HTTP/1.1 upstream that records the exact bytes of every request it
//! receives and answers each with a response the test scripts (default: a
//! 200 with body `ok`). For checking what the proxy passes on, byte for byte.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as it arrived: its head (request line and headers) and body
/// (as framed on the wire, chunked or not).
#[derive(Debug, Clone)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
}

impl Received {
    /// The values of header `name` (any case), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }
}

pub struct RawUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start() -> RawUpstream {
        Self::answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await
    }

    /// Answers every request with `response`, as given.
    pub async fn answering(response: &'static [u8]) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let received = received.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, received.clone(), response));
                }
            })
        };
        RawUpstream {
            addr,
            received,
            task,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, received: Arc<Mutex<Vec<Received>>>, response: &[u8]) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = find(&buffer, b"\r\n\r\n") else {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_string();
        let mut request = Received {
            head,
            body: Vec::new(),
        };
        let chunked = request
            .header("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        let length: usize = request
            .header("content-length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut rest = buffer.split_off(end + 4);
        buffer.clear();
        loop {
            let complete = if chunked {
                find(&rest, b"0\r\n\r\n").map(|at| at + 5)
            } else {
                (rest.len() >= length).then_some(length)
            };
            if let Some(complete) = complete {
                buffer = rest.split_off(complete);
                request.body = rest;
                break;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    request.body = rest;
                    received.lock().unwrap().push(request);
                    return;
                }
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
        received.lock().unwrap().push(request);
        if stream.write_all(response).await.is_err() {
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends `bytes` on a new connection to `proxy` and reads until the proxy
/// closes or `wait` passes: the raw response bytes.
pub async fn exchange(proxy: SocketAddr, bytes: &[u8], wait: std::time::Duration) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

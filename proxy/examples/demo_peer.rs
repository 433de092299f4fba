//! Peers for the one-host demo (`scripts/demo`), so it needs nothing but cargo:
//!
//! ```text
//! demo_peer upstream NAME ADDR          HTTP/1.1 + h2c server answering "hello from NAME"
//! demo_peer tcp-echo ADDR               echoes bytes back
//! demo_peer get URL [--h2] [--count N] [--header NAME:VALUE]...
//!                                       one request (prints it), or N (prints who answered)
//! demo_peer tcp ADDR TEXT               sends TEXT, prints the reply
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["upstream", name, addr] => upstream(name.to_string(), addr.parse().expect("ADDR")).await,
        ["tcp-echo", addr] => tcp_echo(addr.parse().expect("ADDR")).await,
        ["tcp", addr, text] => tcp(addr.parse().expect("ADDR"), text).await,
        ["get", url, rest @ ..] => get(url, rest).await,
        _ => Err("usage: demo_peer upstream NAME ADDR | tcp-echo ADDR | tcp ADDR TEXT | get URL [--h2] [--count N] [--header N:V]".into()),
    };
    if let Err(error) = result {
        eprintln!("demo_peer: {error}");
        std::process::exit(1);
    }
}

async fn upstream(name: String, addr: SocketAddr) -> Result<(), Error> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let body = format!(
                    "hello from {name} ({:?} {} {})\n",
                    request.version(),
                    request.method(),
                    request.uri().path()
                );
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response
                    .headers_mut()
                    .insert("x-upstream", name.parse().unwrap());
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn tcp_echo(addr: SocketAddr) -> Result<(), Error> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        });
    }
}

async fn tcp(addr: SocketAddr, text: &str) -> Result<(), Error> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(text.as_bytes()).await?;
    stream.shutdown().await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    println!("sent {text:?}, got back {reply:?}");
    if reply != text {
        return Err("the echo did not match".into());
    }
    Ok(())
}

async fn get(url: &str, options: &[&str]) -> Result<(), Error> {
    let mut h2 = false;
    let mut count = None;
    let mut headers = Vec::new();
    let mut options = options.iter();
    while let Some(option) = options.next() {
        match *option {
            "--h2" => h2 = true,
            "--count" => count = Some(options.next().ok_or("--count N")?.parse::<usize>()?),
            "--header" => headers.push(
                options
                    .next()
                    .ok_or("--header NAME:VALUE")?
                    .split_once(':')
                    .ok_or("NAME:VALUE")?,
            ),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let client = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http::<Empty<Bytes>>();
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..count.unwrap_or(1) {
        let mut request = Request::get(url);
        for (name, value) in &headers {
            request = request.header(*name, value.trim());
        }
        let response = client.request(request.body(Empty::new())?).await?;
        let status = response.status();
        let version = response.version();
        let upstream = response
            .headers()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.into_body().collect().await?.to_bytes();
        if count.is_none() {
            println!("{version:?} {status}");
            print!("{}", String::from_utf8_lossy(&body));
            if !body.ends_with(b"\n") {
                println!();
            }
        }
        if !status.is_success() {
            return Err(format!("{url} answered {status}").into());
        }
        *answered
            .entry(upstream.unwrap_or_else(|| "(the proxy itself)".into()))
            .or_default() += 1;
    }
    if let Some(count) = count {
        let summary: Vec<String> = answered
            .iter()
            .map(|(who, n)| format!("{who}: {n}"))
            .collect();
        println!("{count} requests answered by  {}", summary.join(", "));
    }
    Ok(())
}

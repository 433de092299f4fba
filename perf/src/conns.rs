//! `conns`: opens many keep-alive connections through a proxy, each with one
//! request answered, leaves them idle, measures the proxy's resident memory,
//! then checks that every connection still answers.
//!
//! Connections come from several loopback source addresses (127.0.0.1,
//! 127.0.0.2, …) with `IP_BIND_ADDRESS_NO_PORT`, so more than one address's
//! worth of ephemeral ports (about 28,000) can be open to one proxy port.
//! The open-file limit is raised to what the count needs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::procfs;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// The proxy's HTTP listener, `HOST:PORT`.
    pub target: SocketAddr,
    /// The proxy's process id, for its memory.
    #[arg(long)]
    pub pid: u32,
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub parallel: usize,
    /// Loopback source addresses to spread over (127.0.0.1 … 127.0.0.N).
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// How long one connection may take to connect and be answered before
    /// it counts as failed (a proxy at its connection limit stops accepting).
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub count: usize,
    pub opened: usize,
    /// Connections that answered a second request after the idle period.
    pub answered: usize,
    pub rss_before: u64,
    pub rss_idle: u64,
    /// (rss_idle - rss_before) / opened.
    pub bytes_per_connection: f64,
    pub open_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// The current (soft) open-file limit.
pub fn nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

/// Raises the open-file limit to at least `wanted` (soft and hard, as far
/// as the process may).
pub fn raise_nofile(wanted: u64) -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: wanted.max(limit.rlim_cur),
        rlim_max: wanted.max(limit.rlim_max),
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(wanted);
    }
    // Not allowed to raise the hard limit: take what it allows.
    let capped = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) };
    Ok(limit.rlim_max)
}

pub fn run(options: Options) -> anyhow::Result<()> {
    let report = measure(&options)?;
    if options.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} of {} connections opened in {:.1} s, {} answered after idling; proxy RSS {:.1} MB → {:.1} MB = {:.0} bytes per connection{}",
            report.opened,
            report.count,
            report.open_seconds,
            report.answered,
            report.rss_before as f64 / 1e6,
            report.rss_idle as f64 / 1e6,
            report.bytes_per_connection,
            report
                .first_error
                .as_ref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

pub fn measure(options: &Options) -> anyhow::Result<Report> {
    if options.sources == 0 {
        bail!("--sources must be at least 1");
    }
    let limit = raise_nofile(options.count as u64 + 1024)?;
    if limit < options.count as u64 + 64 {
        bail!(
            "the open-file limit is {limit}, too low for {} connections",
            options.count
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(hold(options))
}

async fn hold(options: &Options) -> anyhow::Result<Report> {
    let rss_before =
        procfs::rss_bytes(options.pid).with_context(|| format!("no process {}", options.pid))?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: remora-perf\r\n\r\n",
        options.target
    )
    .into_bytes();
    let started = Instant::now();
    let mut connections: Vec<TcpStream> = Vec::with_capacity(options.count);
    let mut first_error = None;
    let mut next = 0usize;
    while next < options.count {
        let batch = options.parallel.min(options.count - next);
        let opens = (next..next + batch).map(|i| {
            let source = IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % options.sources as usize) as u8,
            ));
            within(options.timeout, open_one(source, options.target, &request))
        });
        for result in futures_util::future::join_all(opens).await {
            match result {
                Ok(stream) => connections.push(stream),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        next += batch;
    }
    let open_seconds = started.elapsed().as_secs_f64();
    // Let the proxy settle (idle timers, freed buffers) before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = procfs::rss_bytes(options.pid).unwrap_or(0);
    let opened = connections.len();

    let mut answered = 0;
    let mut index = 0;
    while index < connections.len() {
        let end = (index + options.parallel).min(connections.len());
        let checks = connections[index..end]
            .iter_mut()
            .map(|stream| within(options.timeout, exchange(stream, &request)));
        for result in futures_util::future::join_all(checks).await {
            match result {
                Ok(()) => answered += 1,
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        index = end;
    }
    Ok(Report {
        count: options.count,
        opened,
        answered,
        rss_before,
        rss_idle,
        bytes_per_connection: if opened == 0 {
            0.0
        } else {
            rss_idle.saturating_sub(rss_before) as f64 / opened as f64
        },
        open_seconds,
        first_error,
    })
}

async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

async fn open_one(source: IpAddr, target: SocketAddr, request: &[u8]) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value that outlives the call.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let mut stream = socket
        .connect(target)
        .await
        .map_err(|e| format!("connect from {source}: {e}"))?;
    let _ = stream.set_nodelay(true);
    exchange(&mut stream, request).await?;
    Ok(stream)
}

/// One request; the answer must be a complete 2xx response with a
/// `content-length` body that fits a small buffer.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> Result<(), String> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buffer = [0u8; 2048];
    let mut filled = 0;
    loop {
        let n = stream
            .read(&mut buffer[filled..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed by the proxy".into());
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buffer[..filled]) {
            Ok(httparse::Status::Complete(head)) => {
                let status = response.code.unwrap_or(0);
                let length: usize = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .ok_or("no content-length")?;
                if head + length > buffer.len() {
                    return Err("response too large".into());
                }
                while filled < head + length {
                    let n = stream
                        .read(&mut buffer[filled..])
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err("closed mid-body".into());
                    }
                    filled += n;
                }
                return if (200..300).contains(&status) {
                    Ok(())
                } else {
                    Err(format!("status {status}"))
                };
            }
            Ok(httparse::Status::Partial) if filled < buffer.len() => continue,
            Ok(httparse::Status::Partial) => return Err("response head too large".into()),
            Err(e) => return Err(format!("bad response: {e}")),
        }
    }
}

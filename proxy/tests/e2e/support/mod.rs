//! The test harness: a proxy running in this process (or as a real
//! `remora-proxy` process), real upstream servers and real clients, all on
//! loopback with ephemeral ports.

#![allow(dead_code)]

pub mod blackhole;
pub mod client;
pub mod dns;
pub mod grpc;
pub mod load;
pub mod process;
pub mod raw;
pub mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use remora_proxy::config::parse_yaml;
use remora_proxy::worker::Workers;
use remora_proxy::{Proxy, ProxyOptions};

/// A proxy started in this process from YAML, with its admin server. It
/// runs as `remora-proxy` does: on a thread of its own with a current-thread
/// runtime, plus worker threads when the config sets `workers` above 1
/// (the test's clients and upstreams run on the test's runtime). Dropping
/// it stops that thread and everything on it.
pub struct TestProxy {
    pub proxy: Proxy,
    pub admin: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TestProxy {
    pub async fn start(yaml: &str) -> TestProxy {
        init_logs();
        let config =
            parse_yaml(yaml).unwrap_or_else(|e| panic!("test config does not parse:\n{e}\n{yaml}"));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("remora-main".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let workers = Workers::start(config.workers.map_or(1, |w| w.get())).unwrap();
                    let options = ProxyOptions {
                        workers,
                        ..ProxyOptions::default()
                    };
                    let proxy = match Proxy::start(config, options) {
                        Ok(proxy) => proxy,
                        Err(errors) => {
                            let _ = started_tx.send(Err(errors.to_string()));
                            return;
                        }
                    };
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    let admin = listener.local_addr().unwrap();
                    tokio::spawn(remora_proxy::admin::serve(listener, proxy.clone()));
                    let _ = started_tx.send(Ok((proxy, admin)));
                    let _ = stopped.await;
                });
            })
            .unwrap();
        let (proxy, admin) = started
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("proxy does not start:\n{e}"));
        TestProxy {
            proxy,
            admin,
            _stop: stop,
        }
    }

    /// A proxy with one listener `web` whose one route sends everything to
    /// cluster `up` at `upstream`.
    pub async fn forwarding_to(upstream: SocketAddr) -> TestProxy {
        TestProxy::start(&format!(
            "
listeners:
  - {{name: web, address: 127.0.0.1:0, routes: [{{name: all, backends: [{{cluster: up}}]}}]}}
clusters:
  - {{name: up, endpoints: ['{upstream}']}}
"
        ))
        .await
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.proxy
            .listener_address(listener)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(listener))
    }

    /// One metric's value from `/metrics` (0 when absent), e.g.
    /// `remora_requests_total{listener="web",route="r",cluster="c",status_class="2xx"}`.
    pub fn metric(&self, series: &str) -> f64 {
        metric_in(&self.proxy.telemetry().render(), series)
    }
}

pub fn metric_in(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

pub fn init_logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// How long a test waits for what should happen soon before it fails.
/// Long, because the whole suite shares two cores: it only delays a
/// failure, never a pass.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Waits until `check` holds, polling; panics with `what` after [`PATIENCE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A test must finish a step within this time, or it fails rather than hangs.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

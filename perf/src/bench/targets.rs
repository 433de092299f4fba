//! The targets a scenario runs against: the upstream directly, Remora,
//! Envoy and HAProxy, each configured the same way (same worker count, one
//! route to the same upstream, nothing extra unless the scenario says so).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::scenarios::{Scenario, UpstreamKind};

#[derive(
    clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Direct,
    Remora,
    /// Another build of remora-proxy (`--baseline`), for A/B comparisons
    /// of a change within one run.
    Baseline,
    Envoy,
    Haproxy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Remora => "remora",
            Kind::Baseline => "baseline",
            Kind::Envoy => "envoy",
            Kind::Haproxy => "haproxy",
        }
    }
}

/// The ports of one run, from `--base-port`.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub upstream: [u16; 3],
    pub echo: u16,
    pub http: u16,
    pub tcp: u16,
    pub admin: u16,
}

impl Ports {
    pub fn from_base(base: u16) -> Ports {
        Ports {
            upstream: [base, base + 1, base + 2],
            echo: base + 3,
            http: base + 10,
            tcp: base + 11,
            admin: base + 12,
        }
    }

    /// The upstream endpoints a scenario uses.
    pub fn endpoints(&self, scenario: &Scenario) -> &[u16] {
        if scenario.resilience {
            &self.upstream
        } else {
            &self.upstream[..1]
        }
    }
}

/// Where the proxies' programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    pub remora: PathBuf,
    pub baseline: Option<PathBuf>,
    pub envoy: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
}

/// A started target.
pub struct Running {
    pub kind: Kind,
    child: Option<Child>,
    /// Where the load goes.
    pub address: SocketAddr,
}

impl Running {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then SIGKILL if it has not exited after 3 s.
    pub fn stop(mut self) {
        if let Some(child) = self.child.as_mut() {
            stop_child(child);
        }
    }
}

pub fn stop_child(child: &mut Child) {
    // SAFETY: kill with a pid we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts `kind` for `scenario`, pinned to `cpus`, and waits until it listens.
pub fn start(
    kind: Kind,
    scenario: &Scenario,
    ports: &Ports,
    programs: &Programs,
    dir: &Path,
    cpus: &str,
    workers: usize,
) -> anyhow::Result<Running> {
    let listening = if scenario.upstream == UpstreamKind::Tcp {
        ports.tcp
    } else {
        ports.http
    };
    let mut command = Command::new("taskset");
    command.arg("-c").arg(cpus);
    let name = format!("{}-{}", kind.name(), scenario.name);
    match kind {
        Kind::Direct => {
            let port = if scenario.upstream == UpstreamKind::Tcp {
                ports.echo
            } else {
                ports.upstream[0]
            };
            return Ok(Running {
                kind,
                child: None,
                address: SocketAddr::from(([127, 0, 0, 1], port)),
            });
        }
        Kind::Remora | Kind::Baseline => {
            let program = match kind {
                Kind::Baseline => programs
                    .baseline
                    .as_ref()
                    .context("no --baseline program")?,
                _ => &programs.remora,
            };
            let config = dir.join(format!("{name}.yaml"));
            std::fs::write(&config, remora_config(scenario, ports, workers))?;
            command
                .arg(program)
                .arg("--config")
                .arg(&config)
                .env("REMORA_LOG_LEVEL", "warn");
        }
        Kind::Envoy => {
            let envoy = programs.envoy.as_ref().context("no envoy program")?;
            let config = dir.join(format!("{name}.envoy.yaml"));
            std::fs::write(&config, envoy_config(scenario, ports))?;
            command
                .arg(envoy)
                .arg("-c")
                .arg(&config)
                .arg("--concurrency")
                .arg(workers.to_string())
                .arg("--log-level")
                .arg("error")
                .arg("--disable-hot-restart");
        }
        Kind::Haproxy => {
            let haproxy = programs.haproxy.as_ref().context("no haproxy program")?;
            let config = dir.join(format!("{name}.haproxy.cfg"));
            std::fs::write(&config, haproxy_config(scenario, ports, workers))?;
            command.arg(haproxy).arg("-db").arg("-f").arg(&config);
        }
    }
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log)?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file));
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {} (is taskset installed?)", kind.name()))?;
    let address = SocketAddr::from(([127, 0, 0, 1], listening));
    if let Err(error) = wait_listening(address, &mut child) {
        stop_child(&mut child);
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        bail!("{} did not start: {error}\n{output}", kind.name());
    }
    Ok(Running {
        kind,
        child: Some(child),
        address,
    })
}

/// Waits until `address` accepts connections (or the child exits).
pub fn wait_listening(address: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("exited with {status}");
        }
        if Instant::now() > deadline {
            bail!("{address} does not accept connections after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn upstream_endpoints(scenario: &Scenario, ports: &Ports) -> Vec<String> {
    ports
        .endpoints(scenario)
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect()
}

pub fn remora_config(scenario: &Scenario, ports: &Ports, workers: usize) -> String {
    let mut yaml = format!(
        "workers: {workers}\nadmin: {{address: 127.0.0.1:{}}}\nlisteners:\n",
        ports.admin
    );
    if scenario.upstream == UpstreamKind::Tcp {
        yaml += &format!(
            "  - {{name: tcp, address: 127.0.0.1:{}, protocol: tcp, cluster: echo}}\nclusters:\n  - {{name: echo, endpoints: ['127.0.0.1:{}']}}\n",
            ports.tcp, ports.echo
        );
        return yaml;
    }
    let retry = if scenario.resilience {
        ", retry: {attempts: 2, on: [connect-failure, refused-stream, reset, gateway-error]}"
    } else {
        ""
    };
    yaml += &format!(
        "  - name: web\n    address: 127.0.0.1:{}\n    routes: [{{name: all, backends: [{{cluster: app}}]{retry}}}]\n",
        ports.http
    );
    let protocol = match scenario.upstream {
        UpstreamKind::Http2 => "http2",
        _ => "http1",
    };
    yaml += &format!(
        "clusters:\n  - name: app\n    protocol: {protocol}\n    endpoints: [{}]\n",
        upstream_endpoints(scenario, ports)
            .iter()
            .map(|e| format!("'{e}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if scenario.resilience {
        yaml += "    load_balancer: {policy: ring_hash, hash_on: {header: x-user}}\n";
        yaml += "    outlier_detection: {consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50}\n";
    }
    yaml
}

pub fn envoy_config(scenario: &Scenario, ports: &Ports) -> String {
    let admin = format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}\n",
        ports.admin + 1
    );
    if scenario.upstream == UpstreamKind::Tcp {
        return format!(
            r#"{admin}static_resources:
  listeners:
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: {tcp}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: echo
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {echo}}}}}}}}}]}}]
"#,
            tcp = ports.tcp,
            echo = ports.echo
        );
    }
    let (retry, hash) = if scenario.resilience {
        (
            "\n                  retry_policy: {retry_on: \"connect-failure,refused-stream,reset,gateway-error\", num_retries: 2}",
            "\n                  hash_policy: [{header: {header_name: x-user}}]",
        )
    } else {
        ("", "")
    };
    let http2 = if scenario.upstream == UpstreamKind::Http2 {
        r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"#
    } else {
        ""
    };
    let (lb, outlier) = if scenario.resilience {
        (
            "RING_HASH",
            "\n    outlier_detection: {consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50}",
        )
    } else {
        ("ROUND_ROBIN", "")
    };
    let endpoints = ports
        .endpoints(scenario)
        .iter()
        .map(|p| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}}}"
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"{admin}static_resources:
  listeners:
  - name: web
    address: {{socket_address: {{address: 127.0.0.1, port_value: {http}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: app
                  timeout: 0s{retry}{hash}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    lb_policy: {lb}{outlier}{http2}
    load_assignment:
      cluster_name: app
      endpoints: [{{lb_endpoints: [{endpoints}]}}]
"#,
        http = ports.http
    )
}

pub fn haproxy_config(scenario: &Scenario, ports: &Ports, workers: usize) -> String {
    // Each connection takes two descriptors (client and server side).
    let maxconn = (crate::conns::nofile_limit().saturating_sub(256) / 2).clamp(1024, 200_000);
    let mut cfg = format!(
        "global\n    nbthread {workers}\n    maxconn {maxconn}\n\ndefaults\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n    timeout http-keep-alive 1h\n\n"
    );
    if scenario.upstream == UpstreamKind::Tcp {
        cfg += &format!(
            "listen tcp\n    mode tcp\n    bind 127.0.0.1:{}\n    server echo 127.0.0.1:{}\n",
            ports.tcp, ports.echo
        );
        return cfg;
    }
    let bind_proto = if scenario.downstream_h2() {
        " proto h2"
    } else {
        ""
    };
    let server_proto = if scenario.upstream == UpstreamKind::Http2 {
        " proto h2"
    } else {
        ""
    };
    cfg += &format!(
        "frontend web\n    mode http\n    option http-keep-alive\n    bind 127.0.0.1:{}{bind_proto}\n    default_backend app\n\nbackend app\n    mode http\n    http-reuse always\n",
        ports.http
    );
    if scenario.resilience {
        cfg += "    balance hdr(x-user)\n    hash-type consistent\n    retries 2\n    retry-on conn-failure empty-response response-timeout 502 503 504\n    option redispatch\n";
    }
    for (i, port) in ports.endpoints(scenario).iter().enumerate() {
        let observe = if scenario.resilience {
            " check inter 10s observe layer7 error-limit 5 on-error mark-down"
        } else {
            ""
        };
        cfg += &format!("    server s{i} 127.0.0.1:{port}{server_proto}{observe}\n");
    }
    cfg
}

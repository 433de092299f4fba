//! The ADS stream: subscribe, translate, apply, ACK or NACK, and reconnect.
//!
//! A response is NACKed (with every reason, field paths included, in
//! `error_detail`) when one of its resources cannot be translated or when
//! the config it produces does not compile; the proxy then keeps what it
//! had. Otherwise it is ACKed, and the resulting listeners and clusters are
//! applied once every route configuration and load assignment they name
//! has arrived (or after [`WARMING_TIMEOUT`]). A lost stream is retried with
//! jittered exponential backoff; the running config stays in place, and a
//! delta stream resumes with `initial_resource_versions`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use remora_xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use remora_xds_proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use remora_xds_proto::{core, rpc};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::TypeStatus;
use super::state::{self, Cache, Decoded, TYPES, is_named, type_index};
use crate::config::XdsConfig;
use crate::proxy::Proxy;

/// How long listeners and clusters wait for the routes and endpoints they
/// name before being applied without them (Envoy's `initial_fetch_timeout`).
pub const WARMING_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest response accepted from the server.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Starts the client on the current runtime. It runs until the proxy drains.
pub fn spawn(proxy: Proxy, config: XdsConfig) {
    proxy.xds_status().update(|s| {
        s.server = config.address.clone();
        s.node_id = config.node_id.clone();
        s.protocol = if config.delta { "delta" } else { "sotw" };
        s.types = TYPES
            .iter()
            .map(|t| TypeStatus {
                r#type: remora_xds_proto::type_url::short(t),
                ..Default::default()
            })
            .collect();
    });
    tokio::spawn(run(proxy, config));
}

async fn run(proxy: Proxy, config: XdsConfig) {
    let mut client = Client {
        proxy: proxy.clone(),
        node: core::Node {
            id: config.node_id.clone(),
            cluster: config.cluster.clone(),
            user_agent_name: "remora-proxy".into(),
            user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").into(),
            )),
            ..Default::default()
        },
        cache: Cache::default(),
        accepted: Default::default(),
        warming: Warming::Idle,
        applied_once: false,
    };
    let mut failures = 0u32;
    loop {
        let drained = proxy.clone();
        let outcome = tokio::select! {
            outcome = client.session(&config) => outcome,
            _ = async { while !drained.is_draining() { tokio::time::sleep(Duration::from_millis(200)).await } } => return,
        };
        let reason = match outcome {
            Ok(received) => {
                if received {
                    failures = 0;
                }
                "the server closed the stream".to_string()
            }
            Err(Session { received, error }) => {
                if received {
                    failures = 0;
                }
                error
            }
        };
        proxy.xds_status().update(|s| {
            s.connected = false;
            s.last_disconnect = Some(reason.clone());
        });
        client.connected_gauge(false);
        failures = failures.saturating_add(1);
        let delay = backoff(failures);
        tracing::warn!(server = %config.address, error = %reason, retry_in = ?delay, "xDS stream lost; serving the last applied config");
        tokio::time::sleep(delay).await;
        if proxy.is_draining() {
            return;
        }
    }
}

/// Full jitter: uniform in [0, min(max, base × 2^(n-1))], at least 50 ms.
fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let jittered = ceiling.mul_f64(crate::rand::unit());
    jittered.max(Duration::from_millis(50))
}

struct Session {
    /// Whether the stream delivered a response before it failed.
    received: bool,
    error: String,
}

struct Client {
    proxy: Proxy,
    node: core::Node,
    cache: Cache,
    /// SotW: the `version_info` last accepted per type (kept across streams).
    accepted: [String; 4],
    warming: Warming,
    applied_once: bool,
}

/// Whether listeners or clusters wait for routes or endpoints they name.
#[derive(Debug, Clone, Copy)]
enum Warming {
    Idle,
    Since(Instant),
    /// Waited long enough: updates apply at once until nothing is missing.
    Expired,
}

/// What handling a response decided.
enum Verdict {
    Ack,
    Nack(String),
}

impl Client {
    async fn session(&mut self, config: &XdsConfig) -> Result<bool, Session> {
        let fail = |received: bool, error: String| Session { received, error };
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", config.address))
                .map_err(|e| {
                    fail(
                        false,
                        format!("invalid xds.address {:?}: {e}", config.address),
                    )
                })?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| fail(false, format!("cannot connect: {}", error_chain(&e))))?;
        let client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        if config.delta {
            self.delta(client).await
        } else {
            self.sotw(client).await
        }
    }

    fn connected(&self) {
        self.proxy.xds_status().update(|s| {
            s.connected = true;
            s.connects += 1;
        });
        self.connected_gauge(true);
        tracing::info!(node = %self.node.id, "xDS stream open");
    }

    fn connected_gauge(&self, up: bool) {
        self.proxy
            .telemetry()
            .gauge("remora_xds_connected", &[])
            .set(if up { 1.0 } else { 0.0 });
    }

    async fn sotw(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> Result<bool, Session> {
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
        let mut names: [Option<BTreeSet<String>>; 4] = Default::default();
        let mut nonces: [String; 4] = Default::default();
        let mut first = true;
        // Wildcard types first, then the names the held resources need.
        for t in 0..4 {
            let wanted = self.cache.wanted(t);
            if is_named(t) && wanted.is_empty() {
                continue;
            }
            let request = DiscoveryRequest {
                version_info: self.accepted[t].clone(),
                node: first.then(|| self.node.clone()),
                resource_names: wanted.iter().cloned().collect(),
                type_url: TYPES[t].into(),
                ..Default::default()
            };
            first = false;
            names[t] = Some(wanted);
            let _ = tx.try_send(request);
        }
        let mut inbound = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(refused)?
            .into_inner();
        self.connected();
        let mut received = false;
        loop {
            let Some(response): Option<DiscoveryResponse> =
                self.next(&mut inbound, received).await?
            else {
                return Ok(received);
            };
            received = true;
            let Some(t) = type_index(&response.type_url) else {
                let request = DiscoveryRequest {
                    type_url: response.type_url.clone(),
                    response_nonce: response.nonce.clone(),
                    error_detail: Some(unknown_type(&response.type_url)),
                    ..Default::default()
                };
                send(&tx, request).await?;
                continue;
            };
            nonces[t] = response.nonce.clone();
            let verdict = match state::decode(
                TYPES[t],
                response
                    .resources
                    .iter()
                    .map(|any| (content_version(&any.value), any)),
            ) {
                Err(reasons) => Verdict::Nack(reasons),
                Ok(decoded) => self.accept(t, decoded, &[], !is_named(t)),
            };
            let version_info = match &verdict {
                Verdict::Ack => {
                    self.accepted[t] = response.version_info.clone();
                    response.version_info.clone()
                }
                Verdict::Nack(_) => self.accepted[t].clone(),
            };
            self.record(t, &verdict, &version_info, response.resources.len());
            let request = DiscoveryRequest {
                version_info,
                resource_names: names[t].iter().flatten().cloned().collect(),
                type_url: TYPES[t].into(),
                response_nonce: response.nonce.clone(),
                error_detail: match verdict {
                    Verdict::Nack(reasons) => Some(invalid(reasons)),
                    Verdict::Ack => None,
                },
                ..Default::default()
            };
            send(&tx, request).await?;
            // Subscribe to the routes and endpoints the new set names.
            for n in [state::ENDPOINT, state::ROUTE] {
                let wanted = self.cache.wanted(n);
                if names[n].as_ref() == Some(&wanted) || (names[n].is_none() && wanted.is_empty()) {
                    continue;
                }
                let request = DiscoveryRequest {
                    version_info: self.accepted[n].clone(),
                    resource_names: wanted.iter().cloned().collect(),
                    type_url: TYPES[n].into(),
                    response_nonce: nonces[n].clone(),
                    ..Default::default()
                };
                names[n] = Some(wanted);
                send(&tx, request).await?;
            }
        }
    }

    async fn delta(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> Result<bool, Session> {
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        let mut names: [BTreeSet<String>; 4] = Default::default();
        let mut first = true;
        for t in 0..4 {
            let wanted = self.cache.wanted(t);
            if is_named(t) && wanted.is_empty() {
                continue;
            }
            let request = DeltaDiscoveryRequest {
                node: first.then(|| self.node.clone()),
                type_url: TYPES[t].into(),
                resource_names_subscribe: wanted.iter().cloned().collect(),
                initial_resource_versions: self.cache.versions(t),
                ..Default::default()
            };
            first = false;
            names[t] = wanted;
            let _ = tx.try_send(request);
        }
        let mut inbound = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(refused)?
            .into_inner();
        self.connected();
        let mut received = false;
        loop {
            let Some(response): Option<DeltaDiscoveryResponse> =
                self.next(&mut inbound, received).await?
            else {
                return Ok(received);
            };
            received = true;
            let Some(t) = type_index(&response.type_url) else {
                let request = DeltaDiscoveryRequest {
                    type_url: response.type_url.clone(),
                    response_nonce: response.nonce.clone(),
                    error_detail: Some(unknown_type(&response.type_url)),
                    ..Default::default()
                };
                send(&tx, request).await?;
                continue;
            };
            let missing = response.resources.iter().position(|r| r.resource.is_none());
            let verdict = match missing {
                Some(i) => Verdict::Nack(format!(
                    "resources[{i}] ({:?}) has no resource body",
                    response.resources[i].name
                )),
                None => match state::decode(
                    TYPES[t],
                    response
                        .resources
                        .iter()
                        .filter_map(|r| r.resource.as_ref().map(|any| (r.version.clone(), any))),
                ) {
                    Err(reasons) => Verdict::Nack(reasons),
                    Ok(decoded) => self.accept(t, decoded, &response.removed_resources, false),
                },
            };
            self.record(
                t,
                &verdict,
                &response.system_version_info,
                response.resources.len(),
            );
            let request = DeltaDiscoveryRequest {
                type_url: TYPES[t].into(),
                response_nonce: response.nonce.clone(),
                error_detail: match verdict {
                    Verdict::Nack(reasons) => Some(invalid(reasons)),
                    Verdict::Ack => None,
                },
                ..Default::default()
            };
            send(&tx, request).await?;
            for n in [state::ENDPOINT, state::ROUTE] {
                let wanted = self.cache.wanted(n);
                if names[n] == wanted {
                    continue;
                }
                let request = DeltaDiscoveryRequest {
                    type_url: TYPES[n].into(),
                    resource_names_subscribe: wanted.difference(&names[n]).cloned().collect(),
                    resource_names_unsubscribe: names[n].difference(&wanted).cloned().collect(),
                    ..Default::default()
                };
                names[n] = wanted;
                send(&tx, request).await?;
            }
        }
    }

    /// The next response; while waiting, a warming deadline that passes is applied.
    async fn next<T>(
        &mut self,
        inbound: &mut tonic::Streaming<T>,
        received: bool,
    ) -> Result<Option<T>, Session> {
        loop {
            tokio::select! {
                message = inbound.message() => {
                    return message.map_err(|status| Session {
                        received,
                        error: format!("{}: {}", status.code(), status.message()),
                    });
                }
                _ = self.warming_deadline() => self.warming_expired(),
            }
        }
    }

    /// Takes a valid response into a candidate cache and applies it unless
    /// something it names is still missing (warming). On a compile error
    /// the cache stays as it was and the response is NACKed.
    fn accept(&mut self, t: usize, decoded: Decoded, removed: &[String], replace: bool) -> Verdict {
        let mut candidate = self.cache.clone();
        if replace {
            candidate.replace(t, decoded);
        } else {
            candidate.merge(t, decoded, removed);
        }
        candidate.prune();
        let warming = candidate.warming();
        let ready = match self.warming {
            _ if warming.is_empty() => true,
            Warming::Idle => false,
            Warming::Since(since) => since.elapsed() >= WARMING_TIMEOUT,
            Warming::Expired => true,
        };
        if ready && let Err(reasons) = self.apply(&candidate) {
            return Verdict::Nack(reasons);
        }
        self.warming = match (warming.is_empty(), self.warming) {
            (true, _) => Warming::Idle,
            (false, Warming::Idle) => Warming::Since(Instant::now()),
            (false, other) => other,
        };
        self.cache = candidate;
        self.proxy.xds_status().update(|s| s.warming = warming);
        Verdict::Ack
    }

    fn apply(&mut self, cache: &Cache) -> Result<(), String> {
        let (listeners, clusters) = cache.compose();
        match self.proxy.apply_xds(listeners, clusters) {
            Ok(version) => {
                if !self.applied_once {
                    tracing::info!(version, "first xDS config applied; ready");
                    self.applied_once = true;
                }
                self.proxy
                    .xds_status()
                    .update(|s| s.applied_version = Some(version));
                Ok(())
            }
            Err(errors) => Err(errors
                .0
                .iter()
                .map(|e| {
                    if e.path.is_empty() {
                        e.message.clone()
                    } else {
                        format!("{}: {}", e.path, e.message)
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }

    /// Resolves when warming has gone on for [`WARMING_TIMEOUT`]; pending forever otherwise.
    async fn warming_deadline(&self) {
        match self.warming {
            Warming::Since(since) => {
                tokio::time::sleep_until((since + WARMING_TIMEOUT).into()).await
            }
            Warming::Idle | Warming::Expired => std::future::pending().await,
        }
    }

    /// Applies what arrived; what is still missing is served empty.
    fn warming_expired(&mut self) {
        let warming = self.cache.warming();
        tracing::warn!(missing = ?warming, "xDS resources did not arrive in time; applying without them");
        let cache = self.cache.clone();
        if let Err(reasons) = self.apply(&cache) {
            tracing::error!(%reasons, "the xDS config does not compile; the running config stays");
        }
        self.warming = if warming.is_empty() {
            Warming::Idle
        } else {
            Warming::Expired
        };
    }

    fn record(&self, t: usize, verdict: &Verdict, version: &str, received: usize) {
        let short = remora_xds_proto::type_url::short(TYPES[t]);
        let resources = self.cache.types[t].len();
        let result = match verdict {
            Verdict::Ack => "ack",
            Verdict::Nack(_) => "nack",
        };
        self.proxy
            .telemetry()
            .counter(
                "remora_xds_responses_total",
                &[("type", short), ("result", result)],
            )
            .increment(1);
        if let Verdict::Nack(reasons) = verdict {
            tracing::warn!(r#type = short, %reasons, "xDS response rejected (NACK); the running config stays");
        } else {
            tracing::debug!(r#type = short, version, resources, "xDS response accepted");
        }
        self.proxy.xds_status().update(|s| {
            if let Some(status) = s.types.get_mut(t) {
                status.last_update = Some(SystemTime::now());
                status.received += received as u64;
                status.resources = resources;
                match verdict {
                    Verdict::Ack => {
                        status.acks += 1;
                        status.version = version.to_string();
                    }
                    Verdict::Nack(reasons) => {
                        status.nacks += 1;
                        status.last_nack = Some(reasons.clone());
                    }
                }
            }
        });
    }
}

async fn send<T>(tx: &mpsc::Sender<T>, request: T) -> Result<(), Session> {
    tx.send(request).await.map_err(|_| Session {
        received: true,
        error: "the request stream closed".into(),
    })
}

fn refused(status: tonic::Status) -> Session {
    Session {
        received: false,
        error: format!("the server refused the stream: {}", status.message()),
    }
}

fn unknown_type(type_url: &str) -> rpc::Status {
    invalid(format!(
        "the type {type_url} is not supported by remora-proxy"
    ))
}

fn invalid(message: String) -> rpc::Status {
    rpc::Status {
        code: tonic::Code::InvalidArgument as i32,
        message,
        details: Vec::new(),
    }
}

/// SotW resources carry no version of their own: their content's hash.
fn content_version(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh64::xxh64(bytes, 0))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

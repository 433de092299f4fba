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
//!
//! One driver ([`Client::stream`]) runs both protocols; what differs
//! between state of the world and delta (the messages, what a stream
//! remembers) is behind [`Protocol`](super::protocol::Protocol).

use std::time::{Duration, SystemTime};

use metrics::Gauge;
use remora_xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use remora_xds_proto::{core, rpc, type_url};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::protocol::{Delta, Protocol, Sotw, Update};
use super::state::{self, Cache, Decoded, TYPES, is_named};
use super::{Status, Target, TypeStatus};
use crate::config::XdsConfig;
use crate::telemetry::{self, CountersBy, Telemetry, label_values};

/// How long listeners and clusters wait for the routes and endpoints they
/// name before being applied without them (Envoy's `initial_fetch_timeout`).
pub(super) const WARMING_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest response accepted from the server.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Starts the client on the current runtime. It runs until `stop` is
/// cancelled (the proxy drains).
pub(crate) fn spawn<T: Target>(
    target: T,
    telemetry: &Telemetry,
    status: std::sync::Arc<Status>,
    stop: CancellationToken,
    config: XdsConfig,
) {
    status.update(|s| {
        s.server = config.address.clone();
        s.node_id = config.node_id.clone();
        s.protocol = if config.delta { "delta" } else { "sotw" };
        s.types = TYPES
            .iter()
            .map(|t| TypeStatus {
                r#type: type_url::short(t),
                ..Default::default()
            })
            .collect();
    });
    let stats = Stats::new(telemetry);
    if config.delta {
        tokio::spawn(run(
            Client::<T, Delta>::new(target, status, stats, &config),
            config,
            stop,
        ));
    } else {
        tokio::spawn(run(
            Client::<T, Sotw>::new(target, status, stats, &config),
            config,
            stop,
        ));
    }
}

async fn run<T: Target, P: Protocol>(
    mut client: Client<T, P>,
    config: XdsConfig,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            outcome = client.session(&config) => outcome,
            () = stop.cancelled() => return,
        };
        let (received, reason) = match outcome {
            Ok(received) => (received, "the server closed the stream".to_string()),
            Err(Session { received, error }) => (received, error),
        };
        if received {
            failures = 0;
        }
        client.status.update(|s| {
            s.connected = false;
            s.last_disconnect = Some(reason.clone());
        });
        client.stats.connected.set(0.0);
        failures = failures.saturating_add(1);
        let delay = backoff(failures);
        tracing::warn!(server = %config.address, error = %reason, retry_in = ?delay, "xDS stream lost; serving the last applied config");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
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

pub(super) struct Session {
    /// Whether the stream delivered a response before it failed.
    received: bool,
    error: String,
}

/// The client's metric handles, registered once.
struct Stats {
    connected: Gauge,
    /// `remora_xds_responses_total{type,result}`, per type.
    responses: [CountersBy<Answer>; 4],
}

impl Stats {
    fn new(telemetry: &Telemetry) -> Stats {
        Stats {
            connected: telemetry.gauge(telemetry::XDS_CONNECTED, &[]),
            responses: TYPES.map(|t| {
                CountersBy::register(
                    telemetry,
                    telemetry::XDS_RESPONSES_TOTAL,
                    &[("type", type_url::short(t))],
                    "result",
                )
            }),
        }
    }
}

struct Client<T, P> {
    target: T,
    status: std::sync::Arc<Status>,
    stats: Stats,
    node: core::Node,
    cache: Cache,
    /// What the protocol keeps across streams and within one.
    protocol: P,
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

/// The `result` label of `remora_xds_responses_total`.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Ack,
    Nack,
}

label_values!(Answer {
    Ack => "ack",
    Nack => "nack",
});

/// What handling a response decided.
pub(super) enum Verdict {
    Ack,
    Nack(String),
}

impl<T: Target, P: Protocol> Client<T, P> {
    fn new(target: T, status: std::sync::Arc<Status>, stats: Stats, config: &XdsConfig) -> Self {
        Client {
            target,
            status,
            stats,
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
            protocol: P::default(),
            warming: Warming::Idle,
            applied_once: false,
        }
    }

    async fn session(&mut self, config: &XdsConfig) -> Result<bool, Session> {
        let fail = |error: String| Session {
            received: false,
            error,
        };
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", config.address))
                .map_err(|e| fail(format!("invalid xds.address {:?}: {e}", config.address)))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| fail(format!("cannot connect: {}", error_chain(&e))))?;
        let client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        self.stream(client).await
    }

    /// One ADS stream: subscribe (wildcard types first, then the names the
    /// held resources need), then answer every response with an ACK or a
    /// NACK and follow the names the accepted resources need.
    async fn stream(
        &mut self,
        client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> Result<bool, Session> {
        let (tx, rx) = mpsc::channel::<P::Request>(16);
        self.protocol.begin_stream();
        let mut node = Some(self.node.clone());
        for t in 0..4 {
            let wanted = self.cache.wanted(t);
            if is_named(t) && wanted.is_empty() {
                continue;
            }
            let request = self.protocol.subscribe(t, wanted, node.take(), &self.cache);
            let _ = tx.try_send(request);
        }
        let mut inbound = P::open(client, ReceiverStream::new(rx))
            .await
            .map_err(refused)?
            .into_inner();
        self.connected();
        let mut received = false;
        loop {
            let Some(response) = self.next(&mut inbound, received).await? else {
                return Ok(received);
            };
            received = true;
            let Some(t) = type_url::index(P::type_url(&response)) else {
                let error = unknown_type(P::type_url(&response));
                send(&tx, P::reject(&response, error)).await?;
                continue;
            };
            let verdict = match P::decode(t, &response) {
                Err(reasons) => Verdict::Nack(reasons),
                Ok(Update {
                    decoded,
                    removed,
                    replace,
                }) => self.accept(t, decoded, removed, replace),
            };
            let (version, answer) = self.protocol.answer(t, &response, &verdict);
            self.record(t, &verdict, &version, P::resource_count(&response));
            send(&tx, answer).await?;
            // Subscribe to the routes and endpoints the new set names.
            for n in [state::ENDPOINT, state::ROUTE] {
                if let Some(request) = self.protocol.resubscribe(n, self.cache.wanted(n)) {
                    send(&tx, request).await?;
                }
            }
        }
    }

    fn connected(&self) {
        self.status.update(|s| {
            s.connected = true;
            s.connects += 1;
        });
        self.stats.connected.set(1.0);
        tracing::info!(node = %self.node.id, "xDS stream open");
    }

    /// The next response; while waiting, a warming deadline that passes is applied.
    async fn next(
        &mut self,
        inbound: &mut tonic::Streaming<P::Response>,
        received: bool,
    ) -> Result<Option<P::Response>, Session> {
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
        self.status.update(|s| s.warming = warming);
        Verdict::Ack
    }

    fn apply(&mut self, cache: &Cache) -> Result<(), String> {
        let (listeners, clusters) = cache.compose();
        let tracing = cache.tracing(&clusters);
        match self.target.apply(listeners, clusters, tracing) {
            Ok(version) => {
                if !self.applied_once {
                    tracing::info!(version, "first xDS config applied; ready");
                    self.applied_once = true;
                }
                self.status.update(|s| s.applied_version = Some(version));
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
            Warming::Since(since) => tokio::time::sleep_until(since + WARMING_TIMEOUT).await,
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
        let short = type_url::short(TYPES[t]);
        let resources = self.cache.types[t].len();
        self.stats.responses[t].increment(match verdict {
            Verdict::Ack => Answer::Ack,
            Verdict::Nack(_) => Answer::Nack,
        });
        if let Verdict::Nack(reasons) = verdict {
            tracing::warn!(r#type = short, %reasons, "xDS response rejected (NACK); the running config stays");
        } else {
            tracing::debug!(r#type = short, version, resources, "xDS response accepted");
        }
        self.status.update(|s| {
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

pub(super) fn invalid(message: String) -> rpc::Status {
    rpc::Status {
        code: tonic::Code::InvalidArgument as i32,
        message,
        details: Vec::new(),
    }
}

/// SotW resources carry no version of their own: their content's hash.
pub(super) fn content_version(bytes: &[u8]) -> String {
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

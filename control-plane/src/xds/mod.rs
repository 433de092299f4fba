//! The ADS server: `StreamAggregatedResources` (state of the world) and
//! `DeltaAggregatedResources` (incremental) over one gRPC service.
//!
//! Each stream follows the published [`MeshState`] through a `watch`
//! channel: a stream that is slow to write sees only the latest state when it
//! gets round to it (latest wins), and never holds up another stream or the
//! publisher. Responses go through a small bounded queue per stream.

mod delta;
pub mod delta_wire;
pub mod registry;
pub mod secrets;
mod sotw;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::Stream;
use remora_xds_proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use remora_xds_proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::translate::{ProxyResources, Translation};
use registry::Registry;
use std::collections::BTreeMap;

/// Responses queued per stream before the stream waits for its client.
const STREAM_QUEUE: usize = 4;

/// The largest request a client may send (a subscription list, a NACK).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// One published version of the mesh and its translation.
#[derive(Debug)]
pub struct MeshState {
    pub version: u64,
    pub mesh: Arc<Mesh>,
    pub translation: Translation,
    pub published_at: Instant,
    /// The proxy entries by exact node id (a thousand streams look their
    /// node up in each new state).
    node_ids: std::collections::HashMap<String, usize>,
}

impl MeshState {
    pub fn new(version: u64, mesh: Arc<Mesh>, translation: Translation) -> MeshState {
        let mut node_ids = std::collections::HashMap::with_capacity(mesh.proxies.len());
        for (i, proxy) in mesh.proxies.iter().enumerate() {
            node_ids.entry(proxy.node_id.clone()).or_insert(i);
        }
        MeshState {
            version,
            mesh,
            translation,
            published_at: Instant::now(),
            node_ids,
        }
    }

    pub fn empty() -> MeshState {
        MeshState::new(0, Arc::new(Mesh::default()), Translation::default())
    }

    /// The resources of a node, and the proxy entry that matched it.
    pub fn resources_for(&self, node_id: &str) -> (Arc<ProxyResources>, Option<String>) {
        // As `Mesh::proxy_for`: an exact node id first, then the longest prefix.
        let entry = self
            .node_ids
            .get(node_id)
            .copied()
            .or_else(|| self.mesh.proxy_by_prefix(node_id));
        match entry {
            Some(i) => (
                self.translation.proxies[i].clone(),
                Some(self.mesh.proxies[i].node_id.clone()),
            ),
            None => (self.translation.unknown.clone(), None),
        }
    }
}

/// What every stream shares: the current state, the registry and metrics.
#[derive(Clone)]
pub struct Shared {
    pub state: watch::Receiver<Arc<MeshState>>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// Sent in every response's `control_plane.identifier`.
    pub identifier: Arc<str>,
    /// The CA, for the secrets of nodes that carry a token (SDS).
    pub ca: Option<Arc<crate::ca::Ca>>,
    /// The lifetime of those nodes' certificates.
    pub cert_lifetime: std::time::Duration,
    /// A node no entry matches is answered nothing until one does (pods:
    /// a sidecar that connects before its pod is read must not become
    /// ready with no listeners); else it is answered empty sets (a mesh
    /// file's fleets).
    pub hold_unknown_nodes: bool,
}

pub struct AdsServer {
    shared: Shared,
}

impl AdsServer {
    pub fn new(shared: Shared) -> AdsServer {
        AdsServer { shared }
    }

    /// The gRPC service: delta streams through [`delta_wire::DeltaCodec`],
    /// the rest through the generated server.
    pub fn into_service(self) -> AdsService {
        AdsService {
            shared: self.shared.clone(),
            generated: AggregatedDiscoveryServiceServer::new(self)
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(usize::MAX),
        }
    }
}

/// The ADS gRPC service. A delta stream's responses share the
/// translation's resources ([`delta_wire`]) rather than copying them into
/// prost messages, so its method is served here; state-of-the-world goes
/// to the generated server.
#[derive(Clone)]
pub struct AdsService {
    shared: Shared,
    generated: AggregatedDiscoveryServiceServer<AdsServer>,
}

const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str =
        remora_xds_proto::discovery::aggregated_discovery_service_server::SERVICE_NAME;
}

impl<B> tonic::codegen::Service<http::Request<B>> for AdsService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != DELTA_PATH {
            return self.generated.call(request);
        }
        let method = DeltaMethod(self.shared.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(delta_wire::DeltaCodec)
                .apply_max_message_size_config(Some(MAX_REQUEST_BYTES), Some(usize::MAX));
            Ok(grpc.streaming(method, request).await)
        })
    }
}

/// `DeltaAggregatedResources`, answered with [`delta_wire::DeltaResponse`]s.
struct DeltaMethod(Shared);

impl tonic::server::StreamingService<DeltaDiscoveryRequest> for DeltaMethod {
    type Response = delta_wire::DeltaResponse;
    type ResponseStream = ResponseStream<delta_wire::DeltaResponse>;
    type Future = std::future::Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        std::future::ready(Ok(Response::new(start::<delta::Stream>(
            self.0.clone(),
            request,
        ))))
    }
}

/// Starts a stream's task; its responses come out of the stream returned.
fn start<S: AdsStream + 'static>(
    shared: Shared,
    request: Request<Streaming<S::Request>>,
) -> ResponseStream<S::Response> {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let peer = request.remote_addr();
    tokio::spawn(drive::<S>(shared, peer, request.into_inner(), tx));
    Box::pin(ReceiverStream::new(rx))
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(Response::new(start::<sotw::Stream>(
            self.shared.clone(),
            request,
        )))
    }

    /// Through the generated server alone (`AdsService` serves delta
    /// streams itself): the same stream, its responses as prost messages.
    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        use futures_util::StreamExt as _;
        let responses = start::<delta::Stream>(self.shared.clone(), request)
            .map(|response| response.map(delta_wire::DeltaResponse::into_message));
        Ok(Response::new(Box::pin(responses)))
    }
}

/// Whether a type is subscribed as a whole (wildcard) unless names are given.
fn wildcard_by_default(type_url: &str) -> bool {
    type_url == remora_xds_proto::type_url::LISTENER
        || type_url == remora_xds_proto::type_url::CLUSTER
}

/// The stream ended (the client went away).
struct Closed;

/// What both protocols' streams keep: the node, its registry entry, the
/// resources it is served, and the response queue.
struct StreamCore<R> {
    shared: Shared,
    node_id: String,
    handle: registry::StreamHandle,
    state: Arc<MeshState>,
    resources: Arc<ProxyResources>,
    /// The node's certificate and roots, if its token entitles it to them.
    secrets: Option<secrets::NodeSecrets>,
    nonces: u64,
    /// Whether a proxy entry matches the node.
    matched: bool,
    tx: mpsc::Sender<Result<R, Status>>,
}

impl<R> StreamCore<R> {
    /// Nothing is sent: no entry matches the node yet, and the source says
    /// to wait for one ([`Shared::hold_unknown_nodes`]).
    fn held(&self) -> bool {
        !self.matched && self.shared.hold_unknown_nodes
    }

    /// The index of a requested type; a type this server does not serve is
    /// logged, counted, and `None` (the request is ignored).
    fn type_index(&self, type_url: &str) -> Option<usize> {
        let index = remora_xds_proto::type_url::served_index(type_url);
        if index.is_none() {
            self.shared
                .metrics
                .unknown_type_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(node = %self.node_id, %type_url, "request for a type this server does not serve; ignored");
        }
        index
    }

    /// Takes a newly published state; `true` when this node's resources changed.
    fn take_state(&mut self, state: Arc<MeshState>) -> bool {
        let (resources, entry) = state.resources_for(&self.node_id);
        self.state = state;
        if Arc::ptr_eq(&resources, &self.resources) {
            return false;
        }
        if !self.matched && entry.is_some() {
            tracing::info!(node = %self.node_id, "an entry matches the node now");
        }
        self.matched = entry.is_some();
        self.handle.entry_changed(entry);
        self.resources = resources;
        true
    }

    /// The resources of type `t` this node is served.
    fn of_type(&self, t: usize) -> crate::translate::Resources<'_> {
        static NONE: crate::translate::ByName = BTreeMap::new();
        match t {
            secrets::SECRET_INDEX => crate::translate::Resources::new(
                self.secrets.as_ref().map_or(&NONE, |s| &s.resources),
            ),
            t => self.resources.of(t),
        }
    }

    /// A new certificate for the node; on failure the old one stays and
    /// the next try is in a few seconds.
    fn renew_secrets(&mut self) {
        let (Some(ca), Some(current)) = (&self.shared.ca, &mut self.secrets) else {
            return;
        };
        match secrets::issue(ca, &current.identity, self.shared.cert_lifetime) {
            Ok(fresh) => {
                tracing::info!(node = %self.node_id, identity = %fresh.identity, "renewed the node's certificate (SDS)");
                *current = fresh;
            }
            Err(error) => {
                tracing::warn!(node = %self.node_id, %error, "cannot renew the node's certificate; retrying");
                current.renew_at = Instant::now() + std::time::Duration::from_secs(5);
            }
        }
    }

    fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        self.nonces.to_string()
    }

    /// Queues a response of type `t` and records it.
    async fn send(
        &mut self,
        t: usize,
        response: R,
        version: &str,
        published: Option<Instant>,
    ) -> Result<(), Closed> {
        self.tx.send(Ok(response)).await.map_err(|_| Closed)?;
        self.shared.metrics.push(t);
        if let Some(published) = published {
            self.shared
                .metrics
                .observe_push_latency(published.elapsed());
        }
        self.handle
            .sent(remora_xds_proto::type_url::SERVED[t], version);
        Ok(())
    }

    /// Logs, counts and records a NACK of `version` of type `t`.
    fn nacked(&self, t: usize, version: &str, error: &str) {
        let type_url = remora_xds_proto::type_url::SERVED[t];
        self.shared.metrics.nack(t);
        self.handle.nacked(type_url, version, error);
        tracing::warn!(
            node = %self.node_id, %type_url, rejected = %version, %error,
            "proxy rejected (NACK) a response; not resent until its content changes"
        );
    }
}

/// What differs between the two ADS protocols on the server side: the
/// messages, how a request changes the subscription, and what a response
/// carries. [`drive`] runs both.
trait AdsStream: Sized + Send {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    /// `sotw` or `delta`, in logs and `/debug/proxies`.
    const PROTOCOL: &'static str;

    fn node_id(request: &Self::Request) -> Option<String>;

    fn node(request: &Self::Request) -> Option<&remora_xds_proto::core::Node>;

    fn type_url(request: &Self::Request) -> &str;

    fn new(core: StreamCore<Self::Response>) -> Self;

    fn core(&mut self) -> &mut StreamCore<Self::Response>;

    /// Whether the proxy has subscribed to type `t` on this stream.
    fn subscribed(&self, t: usize) -> bool;

    /// Takes a request for type `t`: an ACK or NACK, a subscription change.
    fn handle_request(
        &mut self,
        t: usize,
        request: Self::Request,
    ) -> impl std::future::Future<Output = Result<(), Closed>> + Send;

    /// Sends type `t` if the proxy lacks something of it (`published`: when
    /// the state that prompted it was published, for the push latency).
    fn respond(
        &mut self,
        t: usize,
        published: Option<Instant>,
    ) -> impl std::future::Future<Output = Result<(), Closed>> + Send;
}

/// Runs one stream: the first request names the node; then requests and
/// newly published mesh states are handled as they come, until either side ends.
async fn drive<S: AdsStream>(
    mut shared: Shared,
    peer: Option<std::net::SocketAddr>,
    mut requests: Streaming<S::Request>,
    tx: mpsc::Sender<Result<S::Response, Status>>,
) {
    let first = match requests.message().await {
        Ok(Some(first)) => first,
        Ok(None) => return,
        Err(status) => {
            tracing::debug!(?peer, %status, "ADS stream ended before its first request");
            return;
        }
    };
    let Some(node_id) = S::node_id(&first).filter(|id| !id.is_empty()) else {
        let _ = tx
            .send(Err(Status::invalid_argument(
                "the first request of an ADS stream must carry node.id",
            )))
            .await;
        return;
    };
    // Nothing is answered before the first mesh: an empty answer would
    // wipe a proxy's last configuration (a control plane that restarted
    // and has not read the cluster yet).
    while shared.state.borrow().version == 0 {
        if shared.state.changed().await.is_err() {
            return;
        }
    }
    let state = shared.state.borrow_and_update().clone();
    let (resources, entry) = state.resources_for(&node_id);
    match (&entry, shared.hold_unknown_nodes) {
        (Some(_), _) => {}
        (None, true) => {
            tracing::warn!(node = %node_id, "no pod matches this node (yet): nothing is sent until one does")
        }
        (None, false) => {
            tracing::warn!(node = %node_id, "no proxies[] entry matches this node; it gets no resources")
        }
    }
    let matched = entry.is_some();
    let secrets = node_secrets(&shared, &node_id, S::node(&first));
    let handle = shared
        .registry
        .register(&shared.metrics, &node_id, entry, S::PROTOCOL, peer);
    tracing::info!(node = %node_id, ?peer, protocol = S::PROTOCOL, "proxy connected");
    let mut stream = S::new(StreamCore {
        shared: shared.clone(),
        node_id: node_id.clone(),
        handle,
        state,
        resources,
        secrets,
        nonces: 0,
        matched,
        tx,
    });
    let mut next = Some(first);
    loop {
        if let Some(request) = next.take() {
            if let Some(t) = stream.core().type_index(S::type_url(&request))
                && stream.handle_request(t, request).await.is_err()
            {
                break;
            }
            continue;
        }
        let renew_at = stream.core().secrets.as_ref().map(|s| s.renew_at);
        let renewal = async move {
            match renew_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = renewal => {
                stream.core().renew_secrets();
                if stream.subscribed(secrets::SECRET_INDEX)
                    && stream.respond(secrets::SECRET_INDEX, None).await.is_err()
                {
                    break;
                }
            }
            request = requests.message() => match request {
                Ok(Some(request)) => next = Some(request),
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(node = %node_id, %status, "ADS stream failed");
                    break;
                }
            },
            changed = shared.state.changed() => {
                if changed.is_err() {
                    break;
                }
                let state = shared.state.borrow_and_update().clone();
                let published = state.published_at;
                if !stream.core().take_state(state) {
                    continue;
                }
                let mut closed = false;
                for t in 0..4 {
                    if stream.subscribed(t) && stream.respond(t, Some(published)).await.is_err() {
                        closed = true;
                        break;
                    }
                }
                if closed {
                    break;
                }
            }
        }
    }
    tracing::info!(node = %node_id, "proxy disconnected");
}

/// The secrets of a node whose metadata carries a token this CA issued for
/// it; none (logged) otherwise.
fn node_secrets(
    shared: &Shared,
    node_id: &str,
    node: Option<&remora_xds_proto::core::Node>,
) -> Option<secrets::NodeSecrets> {
    let ca = shared.ca.as_ref()?;
    match secrets::entitlement(ca, node_id, node)? {
        Ok(identity) => match secrets::issue(ca, &identity, shared.cert_lifetime) {
            Ok(issued) => {
                shared
                    .metrics
                    .signing
                    .signed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(node = %node_id, %identity, "issued the node's certificate (SDS)");
                Some(issued)
            }
            Err(error) => {
                tracing::error!(node = %node_id, %error, "cannot issue the node's certificate");
                None
            }
        },
        Err(error) => {
            shared
                .metrics
                .signing
                .unauthenticated
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(node = %node_id, %error, "no secrets for this node (SDS)");
            None
        }
    }
}

fn control_plane(shared: &Shared) -> Option<remora_xds_proto::core::ControlPlane> {
    Some(remora_xds_proto::core::ControlPlane {
        identifier: shared.identifier.to_string(),
    })
}

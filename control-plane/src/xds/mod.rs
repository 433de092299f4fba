//! The ADS server: `StreamAggregatedResources` (state of the world) and
//! `DeltaAggregatedResources` (incremental) over one gRPC service.
//!
//! Each stream follows the published [`MeshState`] through a `watch`
//! channel: a stream that is slow to write sees only the latest state when it
//! gets round to it (latest wins), and never holds up another stream or the
//! publisher. Responses go through a small bounded queue per stream.

mod delta;
pub mod registry;
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
}

impl MeshState {
    pub fn empty() -> MeshState {
        MeshState {
            version: 0,
            mesh: Arc::new(Mesh::default()),
            translation: Translation::default(),
            published_at: Instant::now(),
        }
    }

    /// The resources of a node, and the proxy entry that matched it.
    pub fn resources_for(&self, node_id: &str) -> (Arc<ProxyResources>, Option<String>) {
        match self.mesh.proxy_for(node_id) {
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
}

pub struct AdsServer {
    shared: Shared,
}

impl AdsServer {
    pub fn new(shared: Shared) -> AdsServer {
        AdsServer { shared }
    }

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(usize::MAX)
    }
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
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let shared = self.shared.clone();
        let peer = request.remote_addr();
        tokio::spawn(drive::<sotw::Stream>(
            shared,
            peer,
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let shared = self.shared.clone();
        let peer = request.remote_addr();
        tokio::spawn(drive::<delta::Stream>(
            shared,
            peer,
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Whether a type is subscribed as a whole (wildcard) unless names are given.
fn wildcard_by_default(type_url: &str) -> bool {
    type_url == remora_xds_proto::type_url::LISTENER
        || type_url == remora_xds_proto::type_url::CLUSTER
}

/// The stream ended (the client went away).
struct Closed;

/// One ADS protocol's per-stream state: built once the node is known, then
/// fed requests and published mesh states by [`drive`].
trait AdsStream: Sized {
    type Request: prost::Message + Default + 'static;
    type Response;
    /// `sotw` or `delta`, in logs and `/debug/proxies`.
    const PROTOCOL: &'static str;

    fn node_id(request: &Self::Request) -> Option<String>;

    fn new(
        shared: Shared,
        node_id: String,
        handle: registry::StreamHandle,
        state: Arc<MeshState>,
        resources: Arc<ProxyResources>,
        tx: mpsc::Sender<Result<Self::Response, Status>>,
    ) -> Self;

    fn node(&self) -> &str;

    fn handle_request(
        &mut self,
        request: Self::Request,
    ) -> impl std::future::Future<Output = Result<(), Closed>> + Send;

    fn on_state(
        &mut self,
        state: Arc<MeshState>,
    ) -> impl std::future::Future<Output = Result<(), Closed>> + Send;
}

/// Runs one stream: the first request names the node; then requests and
/// newly published mesh states are handled as they come, until either side ends.
async fn drive<S: AdsStream + Send>(
    mut shared: Shared,
    peer: Option<std::net::SocketAddr>,
    mut requests: Streaming<S::Request>,
    tx: mpsc::Sender<Result<S::Response, Status>>,
) where
    S::Request: Send,
    S::Response: Send,
{
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
    let state = shared.state.borrow_and_update().clone();
    let (resources, entry) = state.resources_for(&node_id);
    if entry.is_none() {
        tracing::warn!(node = %node_id, "no proxies[] entry matches this node; it gets no resources");
    }
    let handle = shared
        .registry
        .register(&shared.metrics, &node_id, entry, S::PROTOCOL, peer);
    tracing::info!(node = %node_id, ?peer, protocol = S::PROTOCOL, "proxy connected");
    let mut stream = S::new(shared.clone(), node_id, handle, state, resources, tx);
    if stream.handle_request(first).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            request = requests.message() => match request {
                Ok(Some(request)) => {
                    if stream.handle_request(request).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(node = %stream.node(), %status, "ADS stream failed");
                    break;
                }
            },
            changed = shared.state.changed() => {
                if changed.is_err() {
                    break;
                }
                let state = shared.state.borrow_and_update().clone();
                if stream.on_state(state).await.is_err() {
                    break;
                }
            }
        }
    }
    tracing::info!(node = %stream.node(), "proxy disconnected");
}

fn control_plane(shared: &Shared) -> Option<remora_xds_proto::core::ControlPlane> {
    Some(remora_xds_proto::core::ControlPlane {
        identifier: shared.identifier.to_string(),
    })
}

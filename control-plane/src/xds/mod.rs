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
        tokio::spawn(sotw::run(shared, peer, request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let shared = self.shared.clone();
        let peer = request.remote_addr();
        tokio::spawn(delta::run(shared, peer, request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Whether a type is subscribed as a whole (wildcard) unless names are given.
fn wildcard_by_default(type_url: &str) -> bool {
    type_url == remora_xds_proto::type_url::LISTENER
        || type_url == remora_xds_proto::type_url::CLUSTER
}

fn control_plane(shared: &Shared) -> Option<remora_xds_proto::core::ControlPlane> {
    Some(remora_xds_proto::core::ControlPlane {
        identifier: shared.identifier.to_string(),
    })
}

//! What differs between the two ADS protocols on the client side: the
//! messages, how a response's resources are decoded, what an ACK or NACK
//! carries, and what a stream remembers to subscribe again. The stream
//! itself (subscribe, receive, apply, answer, follow names) is one driver
//! in `client.rs`.
//!
//! - State of the world: every response of a type carries the whole set;
//!   a NACK repeats the last accepted `version_info`, which is kept across
//!   streams so a reconnecting client is not sent what it holds.
//! - Delta: a response carries what changed and `removed_resources`;
//!   names are (un)subscribed by difference, and a new stream sends the
//!   versions held as `initial_resource_versions`.

use std::collections::BTreeSet;
use std::future::Future;

use remora_xds_proto::core::Node;
use remora_xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use remora_xds_proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use remora_xds_proto::rpc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::client::{Verdict, content_version, invalid};
use super::state::{self, Cache, Decoded, TYPES, is_named};

type Grpc = AggregatedDiscoveryServiceClient<Channel>;
type Opened<R> = Result<tonic::Response<tonic::Streaming<R>>, tonic::Status>;

/// A response's resources, translated, and how they fold into the cache.
pub(super) struct Update<'a> {
    pub(crate) decoded: Decoded,
    /// Names the response removes (delta).
    pub(crate) removed: &'a [String],
    /// The response is the type's whole set (SotW wildcard types).
    pub(crate) replace: bool,
}

/// One ADS protocol, as the client's stream driver uses it.
pub(super) trait Protocol: Default + Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// Opens the stream that `requests` feed.
    fn open(
        client: Grpc,
        requests: ReceiverStream<Self::Request>,
    ) -> impl Future<Output = Opened<Self::Response>> + Send;

    /// A new stream starts: forget what the last one subscribed.
    fn begin_stream(&mut self);

    /// The request that subscribes to type `t` when a stream starts
    /// (`node` is set on the stream's first request).
    fn subscribe(
        &mut self,
        t: usize,
        wanted: BTreeSet<String>,
        node: Option<Node>,
        cache: &Cache,
    ) -> Self::Request;

    fn type_url(response: &Self::Response) -> &str;

    /// How many resources the response delivers.
    fn resource_count(response: &Self::Response) -> usize;

    /// A NACK for a response the client cannot take at all (unknown type).
    fn reject(response: &Self::Response, error: rpc::Status) -> Self::Request;

    /// Translates the response's resources: all of them, or the reasons.
    fn decode(t: usize, response: &Self::Response) -> Result<Update<'_>, String>;

    /// The ACK or NACK for a response of type `t`, and the version to
    /// record for it.
    fn answer(
        &mut self,
        t: usize,
        response: &Self::Response,
        verdict: &Verdict,
    ) -> (String, Self::Request);

    /// A request that changes the names of type `n` subscribed to, when the
    /// held resources now need `wanted` instead.
    fn resubscribe(&mut self, n: usize, wanted: BTreeSet<String>) -> Option<Self::Request>;
}

/// The trait methods that read the same fields of either protocol's
/// messages (the prost types share no trait to write them once).
macro_rules! same_in_both_protocols {
    ($request:ident, $response:ident) => {
        fn type_url(response: &$response) -> &str {
            &response.type_url
        }

        fn resource_count(response: &$response) -> usize {
            response.resources.len()
        }

        fn reject(response: &$response, error: rpc::Status) -> $request {
            $request {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                error_detail: Some(error),
                ..Default::default()
            }
        }
    };
}

fn nack(verdict: &Verdict) -> Option<rpc::Status> {
    match verdict {
        Verdict::Nack(reasons) => Some(invalid(reasons.clone())),
        Verdict::Ack => None,
    }
}

/// State of the world.
#[derive(Default)]
pub(super) struct Sotw {
    /// The `version_info` last accepted per type (kept across streams).
    accepted: [String; 4],
    /// Names subscribed on this stream (`None`: not yet subscribed).
    names: [Option<BTreeSet<String>>; 4],
    /// The last nonce received per type on this stream.
    nonces: [String; 4],
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    async fn open(
        mut client: Grpc,
        requests: ReceiverStream<DiscoveryRequest>,
    ) -> Opened<DiscoveryResponse> {
        client.stream_aggregated_resources(requests).await
    }

    fn begin_stream(&mut self) {
        self.names = Default::default();
        self.nonces = Default::default();
    }

    fn subscribe(
        &mut self,
        t: usize,
        wanted: BTreeSet<String>,
        node: Option<Node>,
        _cache: &Cache,
    ) -> DiscoveryRequest {
        let request = DiscoveryRequest {
            version_info: self.accepted[t].clone(),
            node,
            resource_names: wanted.iter().cloned().collect(),
            type_url: TYPES[t].into(),
            ..Default::default()
        };
        self.names[t] = Some(wanted);
        request
    }

    same_in_both_protocols!(DiscoveryRequest, DiscoveryResponse);

    fn decode(t: usize, response: &DiscoveryResponse) -> Result<Update<'_>, String> {
        let items = response
            .resources
            .iter()
            .map(|any| (content_version(&any.value), any));
        Ok(Update {
            decoded: state::decode(TYPES[t], items)?,
            removed: &[],
            replace: !is_named(t),
        })
    }

    fn answer(
        &mut self,
        t: usize,
        response: &DiscoveryResponse,
        verdict: &Verdict,
    ) -> (String, DiscoveryRequest) {
        self.nonces[t] = response.nonce.clone();
        if let Verdict::Ack = verdict {
            self.accepted[t] = response.version_info.clone();
        }
        let version_info = self.accepted[t].clone();
        let request = DiscoveryRequest {
            version_info: version_info.clone(),
            resource_names: self.names[t].iter().flatten().cloned().collect(),
            type_url: TYPES[t].into(),
            response_nonce: response.nonce.clone(),
            error_detail: nack(verdict),
            ..Default::default()
        };
        (version_info, request)
    }

    fn resubscribe(&mut self, n: usize, wanted: BTreeSet<String>) -> Option<DiscoveryRequest> {
        if self.names[n].as_ref() == Some(&wanted) || (self.names[n].is_none() && wanted.is_empty())
        {
            return None;
        }
        let request = DiscoveryRequest {
            version_info: self.accepted[n].clone(),
            resource_names: wanted.iter().cloned().collect(),
            type_url: TYPES[n].into(),
            response_nonce: self.nonces[n].clone(),
            ..Default::default()
        };
        self.names[n] = Some(wanted);
        Some(request)
    }
}

/// Incremental.
#[derive(Default)]
pub(super) struct Delta {
    /// Names subscribed on this stream.
    names: [BTreeSet<String>; 4],
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    async fn open(
        mut client: Grpc,
        requests: ReceiverStream<DeltaDiscoveryRequest>,
    ) -> Opened<DeltaDiscoveryResponse> {
        client.delta_aggregated_resources(requests).await
    }

    fn begin_stream(&mut self) {
        self.names = Default::default();
    }

    fn subscribe(
        &mut self,
        t: usize,
        wanted: BTreeSet<String>,
        node: Option<Node>,
        cache: &Cache,
    ) -> DeltaDiscoveryRequest {
        let request = DeltaDiscoveryRequest {
            node,
            type_url: TYPES[t].into(),
            resource_names_subscribe: wanted.iter().cloned().collect(),
            initial_resource_versions: cache.versions(t),
            ..Default::default()
        };
        self.names[t] = wanted;
        request
    }

    same_in_both_protocols!(DeltaDiscoveryRequest, DeltaDiscoveryResponse);

    fn decode(t: usize, response: &DeltaDiscoveryResponse) -> Result<Update<'_>, String> {
        if let Some(i) = response.resources.iter().position(|r| r.resource.is_none()) {
            return Err(format!(
                "resources[{i}] ({:?}) has no resource body",
                response.resources[i].name
            ));
        }
        let items = response
            .resources
            .iter()
            .filter_map(|r| r.resource.as_ref().map(|any| (r.version.clone(), any)));
        Ok(Update {
            decoded: state::decode(TYPES[t], items)?,
            removed: &response.removed_resources,
            replace: false,
        })
    }

    fn answer(
        &mut self,
        t: usize,
        response: &DeltaDiscoveryResponse,
        verdict: &Verdict,
    ) -> (String, DeltaDiscoveryRequest) {
        let request = DeltaDiscoveryRequest {
            type_url: TYPES[t].into(),
            response_nonce: response.nonce.clone(),
            error_detail: nack(verdict),
            ..Default::default()
        };
        (response.system_version_info.clone(), request)
    }

    fn resubscribe(&mut self, n: usize, wanted: BTreeSet<String>) -> Option<DeltaDiscoveryRequest> {
        if self.names[n] == wanted {
            return None;
        }
        let request = DeltaDiscoveryRequest {
            type_url: TYPES[n].into(),
            resource_names_subscribe: wanted.difference(&self.names[n]).cloned().collect(),
            resource_names_unsubscribe: self.names[n].difference(&wanted).cloned().collect(),
            ..Default::default()
        };
        self.names[n] = wanted;
        Some(request)
    }
}

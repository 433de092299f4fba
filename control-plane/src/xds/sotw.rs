//! A state-of-the-world ADS stream.
//!
//! Per type the stream remembers the subscription (wildcard or names), the
//! version and nonce of the last response, and answers when the resources
//! the subscription selects change. A request carrying an older nonce is
//! stale and ignored. A NACK is logged with the proxy's `error_detail`,
//! counted and recorded; since a type's version is derived from its
//! content, the rejected version is not sent again until the content
//! changes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use remora_xds_proto::discovery::{DiscoveryRequest, DiscoveryResponse};
use remora_xds_proto::type_url;

use super::{AdsStream, Closed, StreamCore, control_plane, wildcard_by_default};

#[derive(Default)]
struct TypeState {
    subscribed: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    sent_version: Option<String>,
    nonce: String,
}

pub(super) struct Stream {
    core: StreamCore<DiscoveryResponse>,
    types: [TypeState; 5],
}

impl AdsStream for Stream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const PROTOCOL: &'static str = "sotw";

    fn node_id(request: &DiscoveryRequest) -> Option<String> {
        request.node.as_ref().map(|n| n.id.clone())
    }

    fn node(request: &DiscoveryRequest) -> Option<&remora_xds_proto::core::Node> {
        request.node.as_ref()
    }

    fn type_url(request: &DiscoveryRequest) -> &str {
        &request.type_url
    }

    fn new(core: StreamCore<DiscoveryResponse>) -> Self {
        Stream {
            core,
            types: Default::default(),
        }
    }

    fn core(&mut self) -> &mut StreamCore<DiscoveryResponse> {
        &mut self.core
    }

    fn subscribed(&self, t: usize) -> bool {
        self.types[t].subscribed
    }

    async fn handle_request(&mut self, t: usize, request: DiscoveryRequest) -> Result<(), Closed> {
        let ts = &mut self.types[t];
        if !request.response_nonce.is_empty() && request.response_nonce != ts.nonce {
            return Ok(()); // stale: answers a response that has been superseded
        }
        if let Some(error) = &request.error_detail {
            let version = ts.sent_version.clone().unwrap_or_default();
            self.core.nacked(t, &version, &error.message);
        } else if !request.response_nonce.is_empty() {
            self.core
                .handle
                .acked(&request.type_url, &request.version_info);
        }
        let ts = &mut self.types[t];
        let first = !ts.subscribed;
        ts.subscribed = true;
        ts.wildcard = request.resource_names.is_empty() && wildcard_by_default(&request.type_url)
            || request.resource_names.iter().any(|n| n == "*");
        ts.names = request
            .resource_names
            .into_iter()
            .filter(|n| n != "*")
            .collect();
        // A reconnecting proxy that already holds the current version gets
        // nothing until something changes.
        if first && !request.version_info.is_empty() && ts.sent_version.is_none() {
            let version = self.version_of(t);
            if version == request.version_info {
                self.types[t].sent_version = Some(version);
                return Ok(());
            }
        }
        self.respond(t, None).await
    }

    /// Sends the type's resources if they differ from what was last sent
    /// (a new subscription has sent nothing, so it always gets an answer).
    async fn respond(&mut self, t: usize, published: Option<Instant>) -> Result<(), Closed> {
        if self.core.held() {
            return Ok(());
        }
        let version = self.version_of(t);
        if self.types[t].sent_version.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        let resources = self.selected(t).iter().map(|r| r.any.clone()).collect();
        let nonce = self.core.next_nonce();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: type_url::SERVED[t].to_string(),
            nonce: nonce.clone(),
            control_plane: control_plane(&self.core.shared),
            ..Default::default()
        };
        let ts = &mut self.types[t];
        ts.sent_version = Some(version.clone());
        ts.nonce = nonce;
        self.core.send(t, response, &version, published).await
    }
}

impl Stream {
    fn selected(&self, t: usize) -> Vec<&Arc<crate::translate::Resource>> {
        let ts = &self.types[t];
        let all = self.core.of_type(t);
        if ts.wildcard {
            all.values().collect()
        } else {
            ts.names.iter().filter_map(|n| all.get(n)).collect()
        }
    }

    fn version_of(&self, t: usize) -> String {
        let mut hasher = xxhash_rust::xxh64::Xxh64::new(t as u64);
        for resource in self.selected(t) {
            hasher.update(resource.name.as_bytes());
            hasher.update(&[0]);
            hasher.update(resource.version.as_bytes());
            hasher.update(&[0]);
        }
        format!("{:016x}", hasher.digest())
    }
}

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

use remora_xds_proto::discovery::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::mpsc;
use tonic::Status;

use super::registry::StreamHandle;
use super::{AdsStream, Closed, MeshState, Shared, control_plane, wildcard_by_default};
use crate::translate::{ProxyResources, type_index};

#[derive(Default)]
struct TypeState {
    subscribed: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    sent_version: Option<String>,
    nonce: String,
}

pub(super) struct Stream {
    shared: Shared,
    node_id: String,
    handle: StreamHandle,
    resources: Arc<ProxyResources>,
    types: [TypeState; 4],
    nonces: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl AdsStream for Stream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const PROTOCOL: &'static str = "sotw";

    fn node_id(request: &DiscoveryRequest) -> Option<String> {
        request.node.as_ref().map(|n| n.id.clone())
    }

    fn new(
        shared: Shared,
        node_id: String,
        handle: StreamHandle,
        _state: Arc<MeshState>,
        resources: Arc<ProxyResources>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Self {
        Stream {
            shared,
            node_id,
            handle,
            resources,
            types: Default::default(),
            nonces: 0,
            tx,
        }
    }

    fn node(&self) -> &str {
        &self.node_id
    }

    async fn handle_request(&mut self, request: DiscoveryRequest) -> Result<(), Closed> {
        let Some(t) = type_index(&request.type_url) else {
            self.shared
                .metrics
                .unknown_type_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(node = %self.node_id, type_url = %request.type_url, "request for a type this server does not serve; ignored");
            return Ok(());
        };
        let ts = &mut self.types[t];
        if !request.response_nonce.is_empty() && request.response_nonce != ts.nonce {
            return Ok(()); // stale: answers a response that has been superseded
        }
        if let Some(error) = &request.error_detail {
            let version = ts.sent_version.clone().unwrap_or_default();
            self.shared.metrics.nack(t);
            self.handle
                .nacked(&request.type_url, &version, &error.message);
            tracing::warn!(
                node = %self.node_id,
                type_url = %request.type_url,
                rejected = %version,
                kept = %request.version_info,
                error = %error.message,
                "proxy rejected (NACK) a response; not resent until the config changes"
            );
        } else if !request.response_nonce.is_empty() {
            self.handle.acked(&request.type_url, &request.version_info);
        }
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
        self.respond(t, first, None).await
    }

    async fn on_state(&mut self, state: Arc<MeshState>) -> Result<(), Closed> {
        let (resources, entry) = state.resources_for(&self.node_id);
        let published = state.published_at;
        if Arc::ptr_eq(&resources, &self.resources) {
            return Ok(());
        }
        self.handle.entry_changed(entry);
        self.resources = resources;
        for t in 0..4 {
            if self.types[t].subscribed {
                self.respond(t, false, Some(published)).await?;
            }
        }
        Ok(())
    }
}

impl Stream {
    fn selected(&self, t: usize) -> Vec<&Arc<crate::translate::Resource>> {
        let ts = &self.types[t];
        let all = &self.resources.by_type[t];
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

    /// Sends the type's resources if they differ from what was last sent
    /// (or always, for a new subscription).
    async fn respond(
        &mut self,
        t: usize,
        always: bool,
        published: Option<std::time::Instant>,
    ) -> Result<(), Closed> {
        let version = self.version_of(t);
        if !always && self.types[t].sent_version.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        let type_url = remora_xds_proto::type_url::ALL[t];
        let resources = self.selected(t).iter().map(|r| r.any.clone()).collect();
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            control_plane: control_plane(&self.shared),
            ..Default::default()
        };
        let ts = &mut self.types[t];
        ts.sent_version = Some(version.clone());
        ts.nonce = nonce;
        self.tx.send(Ok(response)).await.map_err(|_| Closed)?;
        self.shared.metrics.push(t);
        if let Some(published) = published {
            self.shared
                .metrics
                .observe_push_latency(published.elapsed());
        }
        self.handle.sent(type_url, &version);
        Ok(())
    }
}

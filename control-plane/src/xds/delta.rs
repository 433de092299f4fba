//! An incremental (delta) ADS stream.
//!
//! Per type the stream keeps the subscription (wildcard and/or names) and
//! what the proxy holds (name → version), seeded from the first request's
//! `initial_resource_versions`, so a reconnecting proxy is sent only what
//! changed while it was away. A response carries only resources whose
//! version differs from the proxy's, and `removed_resources` for ones it holds
//! that are gone. A NACK is logged, counted and recorded; the rejected
//! resources are not sent again until their content changes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use remora_xds_proto::discovery::{self, DeltaDiscoveryRequest, DeltaDiscoveryResponse};
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
    /// What the proxy holds: name → version.
    known: HashMap<String, String>,
    /// Nonces of responses not yet answered, with the version each carried.
    pending: Vec<(String, String)>,
    responded: bool,
}

pub(super) struct Stream {
    shared: Shared,
    node_id: String,
    handle: StreamHandle,
    state: Arc<MeshState>,
    resources: Arc<ProxyResources>,
    types: [TypeState; 4],
    nonces: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl AdsStream for Stream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const PROTOCOL: &'static str = "delta";

    fn node_id(request: &DeltaDiscoveryRequest) -> Option<String> {
        request.node.as_ref().map(|n| n.id.clone())
    }

    fn new(
        shared: Shared,
        node_id: String,
        handle: StreamHandle,
        state: Arc<MeshState>,
        resources: Arc<ProxyResources>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Self {
        Stream {
            shared,
            node_id,
            handle,
            state,
            resources,
            types: Default::default(),
            nonces: 0,
            tx,
        }
    }

    fn node(&self) -> &str {
        &self.node_id
    }

    async fn handle_request(&mut self, request: DeltaDiscoveryRequest) -> Result<(), Closed> {
        let Some(t) = type_index(&request.type_url) else {
            self.shared
                .metrics
                .unknown_type_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(node = %self.node_id, type_url = %request.type_url, "request for a type this server does not serve; ignored");
            return Ok(());
        };
        let ts = &mut self.types[t];
        if !request.response_nonce.is_empty() {
            match ts
                .pending
                .iter()
                .position(|(n, _)| *n == request.response_nonce)
            {
                Some(i) => {
                    let (_, version) = ts.pending.remove(i);
                    if let Some(error) = &request.error_detail {
                        self.shared.metrics.nack(t);
                        self.handle
                            .nacked(&request.type_url, &version, &error.message);
                        tracing::warn!(
                            node = %self.node_id,
                            type_url = %request.type_url,
                            rejected = %version,
                            error = %error.message,
                            "proxy rejected (NACK) a delta response; not resent until the config changes"
                        );
                    } else {
                        self.handle.acked(&request.type_url, &version);
                    }
                }
                None => {
                    tracing::debug!(node = %self.node_id, nonce = %request.response_nonce, "answer to an unknown nonce")
                }
            }
        }
        if !ts.subscribed {
            ts.subscribed = true;
            ts.known = request.initial_resource_versions.clone();
            ts.wildcard = request.resource_names_subscribe.is_empty()
                && wildcard_by_default(&request.type_url);
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                ts.wildcard = true;
            } else {
                ts.names.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                ts.wildcard = false;
            } else {
                ts.names.remove(name);
                ts.known.remove(name);
            }
        }
        self.respond(t, None).await
    }

    async fn on_state(&mut self, state: Arc<MeshState>) -> Result<(), Closed> {
        let (resources, entry) = state.resources_for(&self.node_id);
        let published = state.published_at;
        self.state = state;
        if Arc::ptr_eq(&resources, &self.resources) {
            return Ok(());
        }
        self.handle.entry_changed(entry);
        self.resources = resources;
        for t in 0..4 {
            if self.types[t].subscribed {
                self.respond(t, Some(published)).await?;
            }
        }
        Ok(())
    }
}

impl Stream {
    /// Sends what the proxy lacks or holds in an older version, and the
    /// names it holds that are gone; nothing if it is up to date (except the
    /// first response of a subscription, which is always sent).
    async fn respond(
        &mut self,
        t: usize,
        published: Option<std::time::Instant>,
    ) -> Result<(), Closed> {
        let all = &self.resources.by_type[t];
        let ts = &self.types[t];
        let wanted = |name: &str| ts.wildcard || ts.names.contains(name);
        let mut updated = Vec::new();
        for (name, resource) in all {
            if wanted(name) && ts.known.get(name) != Some(&resource.version) {
                updated.push(resource.clone());
            }
        }
        let mut removed: Vec<String> = ts
            .known
            .keys()
            .filter(|name| !wanted(name) || !all.contains_key(*name))
            .cloned()
            .collect();
        removed.sort();
        if updated.is_empty() && removed.is_empty() && ts.responded {
            return Ok(());
        }
        let type_url = remora_xds_proto::type_url::ALL[t];
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let version = self.state.version.to_string();
        let response = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources: updated
                .iter()
                .map(|r| discovery::Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: type_url.to_string(),
            removed_resources: removed.clone(),
            nonce: nonce.clone(),
            control_plane: control_plane(&self.shared),
            ..Default::default()
        };
        let ts = &mut self.types[t];
        for r in &updated {
            ts.known.insert(r.name.clone(), r.version.clone());
        }
        for name in &removed {
            ts.known.remove(name);
        }
        ts.responded = true;
        ts.pending.push((nonce, version.clone()));
        if ts.pending.len() > 16 {
            ts.pending.remove(0);
        }
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

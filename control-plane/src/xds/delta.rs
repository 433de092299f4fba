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
use std::time::Instant;

use remora_xds_proto::discovery::DeltaDiscoveryRequest;
use remora_xds_proto::type_url;

use super::delta_wire::DeltaResponse;
use super::{AdsStream, Closed, StreamCore, wildcard_by_default};
use crate::translate::{ProxyResources, Resource, SharedDiff};

#[derive(Default)]
struct TypeState {
    subscribed: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy holds: name → version.
    /// The version is a resource's `hash` (`None`: a version this server
    /// never sent, from `initial_resource_versions`).
    known: HashMap<Arc<str>, Option<u64>>,
    /// Nonces of responses not yet answered, with the version each carried.
    pending: Vec<(String, String)>,
    responded: bool,
    /// The resources `known` was last brought up to date with.
    basis: Option<Arc<ProxyResources>>,
}

pub(super) struct Stream {
    core: StreamCore<DeltaResponse>,
    types: [TypeState; 5],
}

/// What may have changed for one type since a stream last brought the
/// proxy up to date: the resources it had then and has now, and the
/// shared set's diffs in between. The names borrow from these `Arc`s, so
/// a push copies no name.
struct Changes {
    basis: Arc<ProxyResources>,
    current: Arc<ProxyResources>,
    diffs: Vec<Arc<SharedDiff>>,
}

impl Changes {
    /// The names of type `t` that may differ: the proxy's own (few)
    /// resources, before and now, and the shared ones that changed.
    /// Sorted, each once.
    fn names(&self, t: usize) -> Vec<&str> {
        let mut names: Vec<&str> = self.basis.by_type[t]
            .keys()
            .chain(self.current.by_type[t].keys())
            .map(|name| &**name)
            .chain(
                self.diffs
                    .iter()
                    .flat_map(|diff| diff.changed[t].iter().map(|name| &**name)),
            )
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

impl Stream {
    /// What may differ in type `t` from what the proxy was last brought up
    /// to date with; `None`: look at everything.
    fn changes(&self, t: usize) -> Option<Changes> {
        if t >= 4 {
            return None;
        }
        let basis = self.types[t].basis.as_ref()?;
        let current = &self.core.resources;
        let mut diffs = Vec::new();
        match (&basis.shared, &current.shared) {
            (None, None) => {}
            (Some(from), Some(to)) if Arc::ptr_eq(from, to) => {}
            (Some(from), Some(to)) => {
                // Walk back from the current set to the one the proxy was
                // brought up to date with, collecting what changed.
                let mut at = to;
                let mut reached = false;
                for diff in self.core.state.translation.shared_diffs.iter().rev() {
                    if !Arc::ptr_eq(&diff.to, at) {
                        return None;
                    }
                    diffs.push(diff.clone());
                    at = &diff.from;
                    if Arc::ptr_eq(at, from) {
                        reached = true;
                        break;
                    }
                }
                if !reached {
                    return None;
                }
            }
            _ => return None,
        }
        Some(Changes {
            basis: basis.clone(),
            current: current.clone(),
            diffs,
        })
    }
}

impl AdsStream for Stream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;
    const PROTOCOL: &'static str = "delta";

    fn node_id(request: &DeltaDiscoveryRequest) -> Option<String> {
        request.node.as_ref().map(|n| n.id.clone())
    }

    fn node(request: &DeltaDiscoveryRequest) -> Option<&remora_xds_proto::core::Node> {
        request.node.as_ref()
    }

    fn type_url(request: &DeltaDiscoveryRequest) -> &str {
        &request.type_url
    }

    fn new(core: StreamCore<DeltaResponse>) -> Self {
        Stream {
            core,
            types: Default::default(),
        }
    }

    fn core(&mut self) -> &mut StreamCore<DeltaResponse> {
        &mut self.core
    }

    fn subscribed(&self, t: usize) -> bool {
        self.types[t].subscribed
    }

    async fn handle_request(
        &mut self,
        t: usize,
        request: DeltaDiscoveryRequest,
    ) -> Result<(), Closed> {
        let ts = &mut self.types[t];
        if !request.response_nonce.is_empty() {
            match ts
                .pending
                .iter()
                .position(|(n, _)| *n == request.response_nonce)
            {
                Some(i) => {
                    let (_, version) = ts.pending.remove(i);
                    match &request.error_detail {
                        Some(error) => self.core.nacked(t, &version, &error.message),
                        None => self.core.handle.acked(&request.type_url, &version),
                    }
                }
                None => {
                    tracing::debug!(node = %self.core.node_id, nonce = %request.response_nonce, "answer to an unknown nonce")
                }
            }
        }
        let ts = &mut self.types[t];
        // A bare ACK or NACK asks for nothing: the proxy is as up to date
        // as the last response made it, and new versions are pushed.
        let asks = !ts.subscribed
            || !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty();
        if !asks {
            return Ok(());
        }
        if !ts.subscribed {
            ts.subscribed = true;
            ts.known = request
                .initial_resource_versions
                .iter()
                .map(|(name, version)| (Arc::from(name.as_str()), Resource::hash_of(version)))
                .collect();
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
                ts.known.remove(name.as_str());
            }
        }
        self.respond(t, None).await
    }

    /// Sends what the proxy lacks or holds in an older version, and the
    /// names it holds that are gone; nothing if it is up to date (except the
    /// first response of a subscription, which is always sent).
    async fn respond(&mut self, t: usize, published: Option<Instant>) -> Result<(), Closed> {
        if self.core.held() {
            return Ok(());
        }
        // A push after a new mesh version looks at what changed alone,
        // when this stream was up to date with the version before.
        let changes = published.and_then(|_| self.changes(t));
        let candidates = changes.as_ref().map(|c| c.names(t));
        let all = self.core.of_type(t);
        let ts = &self.types[t];
        let wanted = |name: &str| ts.wildcard || ts.names.contains(name);
        let mut updated = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        match &candidates {
            Some(names) => {
                for &name in names {
                    let current = all.get(name).filter(|_| wanted(name));
                    match (current, ts.known.get(name)) {
                        (Some(resource), held) if held != Some(&Some(resource.hash)) => {
                            updated.push(resource.clone());
                        }
                        (Some(_), _) | (None, None) => {}
                        (None, Some(_)) => removed.push(name.to_string()),
                    }
                }
            }
            None => {
                for (name, resource) in all.iter() {
                    if wanted(name) && ts.known.get(&**name) != Some(&Some(resource.hash)) {
                        updated.push(resource.clone());
                    }
                }
                removed = ts
                    .known
                    .keys()
                    .filter(|name| !wanted(name) || !all.contains_key(name))
                    .map(|name| name.to_string())
                    .collect();
            }
        }
        removed.sort();
        let basis = (t < 4).then(|| self.core.resources.clone());
        self.types[t].basis = basis;
        let ts = &self.types[t];
        if updated.is_empty() && removed.is_empty() && ts.responded {
            return Ok(());
        }
        let nonce = self.core.next_nonce();
        let version = self.core.state.version.to_string();
        let ts = &mut self.types[t];
        for r in &updated {
            ts.known.insert(r.name.clone(), Some(r.hash));
        }
        for name in &removed {
            ts.known.remove(name.as_str());
        }
        ts.responded = true;
        ts.pending.push((nonce.clone(), version.clone()));
        if ts.pending.len() > 16 {
            ts.pending.remove(0);
        }
        let response = DeltaResponse {
            system_version_info: version.clone(),
            resources: updated,
            type_url: type_url::SERVED[t],
            removed_resources: removed,
            nonce,
            control_plane: self.core.shared.identifier.clone(),
        };
        self.core.send(t, response, &version, published).await
    }
}

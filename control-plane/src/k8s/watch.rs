//! `serve --kubernetes`: kube-rs watchers, each feeding a reflector store,
//! for every kind the mesh is built from. A change to any store (debounced)
//! rebuilds the mesh from all of them with [`build`](super::build), the
//! same code the manifests take, and publishes it if it changed.
//!
//! Watching follows the API's rules through kube-runtime's watcher: an
//! initial list, then a watch from its resource version with bookmarks; a
//! `410 Gone` re-lists (the store is swapped whole when the re-list ends).
//! While the API server is away the stores keep their last state, the mesh
//! keeps being served, and the control plane is not ready (`/ready` 503)
//! until every kind answers again. A kind whose API is not installed (no
//! Gateway API CRDs, say) counts as empty, and is picked up once it is.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};

use super::leader::LeaseConfig;
use super::objects::Parsed;
use super::{Objects, Report, Settings};
use crate::server::Publisher;

/// The kinds the control plane watches, cluster-wide.
pub fn kinds() -> Vec<ApiResource> {
    let kind = |group: &str, version: &str, kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    };
    vec![
        kind("", "v1", "Service", "services"),
        kind("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
        kind("", "v1", "Pod", "pods"),
        kind("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
        kind("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
        kind(
            remora_api::crd::GROUP,
            remora_api::crd::VERSION,
            "TrafficPolicy",
            "trafficpolicies",
        ),
        kind(
            remora_api::crd::GROUP,
            remora_api::crd::VERSION,
            "AuthorizationPolicy",
            "authorizationpolicies",
        ),
    ]
}

/// Where a kind's watch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KindState {
    /// The initial list has not ended yet.
    Listing = 0,
    /// Listed, and the last word from the API server was good.
    Synced = 1,
    /// The API is not installed: no objects of this kind.
    Absent = 2,
    /// The last request failed; the store keeps what it had.
    Failing = 3,
}

impl KindState {
    fn from_u8(value: u8) -> KindState {
        match value {
            1 => KindState::Synced,
            2 => KindState::Absent,
            3 => KindState::Failing,
            _ => KindState::Listing,
        }
    }

    fn in_sync(self) -> bool {
        matches!(self, KindState::Synced | KindState::Absent)
    }
}

struct Kind {
    resource: ApiResource,
    store: Store<DynamicObject>,
    state: AtomicU8,
    /// Ever listed (or found absent): a store with content to serve.
    listed: std::sync::atomic::AtomicBool,
}

impl Kind {
    fn state(&self) -> KindState {
        KindState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set(&self, state: KindState) -> bool {
        if state.in_sync() {
            self.listed.store(true, Ordering::Release);
        }
        self.state.swap(state as u8, Ordering::AcqRel) != state as u8
    }
}

/// The running watchers; dropping it stops them.
pub struct KubeWatch {
    kinds: Arc<Vec<Kind>>,
    /// The verdict on every object of the last build (for status writes).
    pub reports: watch::Receiver<Arc<Report>>,
    /// Whether this replica leads (holds the lease, writes status).
    pub leader: watch::Receiver<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl KubeWatch {
    /// Each kind's state, by kind name.
    pub fn states(&self) -> Vec<(String, KindState)> {
        self.kinds
            .iter()
            .map(|k| (k.resource.kind.clone(), k.state()))
            .collect()
    }
}

impl Drop for KubeWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts watching every kind, and rebuilding and publishing the mesh
/// `debounce` after a change once every kind has been listed.
pub fn start(
    client: kube::Client,
    settings: Settings,
    debounce: Duration,
    publisher: Publisher,
    lease: LeaseConfig,
) -> KubeWatch {
    let changed = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    let mut watched = Vec::new();
    let mut writers = Vec::new();
    for resource in kinds() {
        let writer = reflector::store::Writer::<DynamicObject>::new(resource.clone());
        watched.push(Kind {
            store: writer.as_reader(),
            resource,
            state: AtomicU8::new(KindState::Listing as u8),
            listed: Default::default(),
        });
        writers.push(writer);
    }
    let kinds = Arc::new(watched);
    for (index, writer) in writers.into_iter().enumerate() {
        tasks.push(tokio::spawn(follow(
            client.clone(),
            kinds.clone(),
            index,
            writer,
            changed.clone(),
        )));
    }
    tasks.push(tokio::spawn(probe(
        client.clone(),
        kinds.clone(),
        changed.clone(),
        publisher.clone(),
    )));
    let (leader_tx, leader) = watch::channel(false);
    tasks.push(tokio::spawn(super::leader::run(
        client.clone(),
        lease,
        leader_tx,
        publisher.metrics().clone(),
    )));
    let (reports_tx, reports) = watch::channel(Arc::new(Report::default()));
    tasks.push(tokio::spawn(write_status(
        client,
        kinds.clone(),
        reports.clone(),
        leader.clone(),
        publisher.metrics().clone(),
    )));
    tasks.push(tokio::spawn(rebuild(
        kinds.clone(),
        settings,
        debounce,
        publisher,
        changed,
        reports_tx,
    )));
    KubeWatch {
        kinds,
        reports,
        leader,
        tasks,
    }
}

/// One kind's watcher, through its reflector store.
async fn follow(
    client: kube::Client,
    kinds: Arc<Vec<Kind>>,
    index: usize,
    writer: reflector::store::Writer<DynamicObject>,
    changed: Arc<Notify>,
) {
    let kind = &kinds[index];
    let api = Api::<DynamicObject>::all_with(client, &kind.resource);
    let events = watcher(api, watcher::Config::default().any_semantic()).default_backoff();
    let stream = reflector::reflector(writer, events);
    futures_util::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::InitDone) => {
                kind.set(KindState::Synced);
                tracing::debug!(kind = %kind.resource.kind, "listed");
                changed.notify_one();
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                kind.set(KindState::Synced);
                changed.notify_one();
            }
            // A (re-)list in progress: the store is swapped at InitDone.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(error) => {
                let absent = matches!(
                    &error,
                    watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404
                );
                let state = if absent {
                    KindState::Absent
                } else {
                    KindState::Failing
                };
                if kind.set(state) {
                    if absent {
                        tracing::warn!(kind = %kind.resource.kind, "the API server does not serve this kind (CRD not installed?): none are read");
                    } else {
                        tracing::warn!(kind = %kind.resource.kind, %error, "watch failed; the last state is kept and retried");
                    }
                    changed.notify_one();
                }
            }
        }
    }
}

/// A failing kind's watcher may resume from its resource version without
/// any event to show for it: a cheap list tells that the API server
/// answers again, so the control plane is ready again.
async fn probe(
    client: kube::Client,
    kinds: Arc<Vec<Kind>>,
    changed: Arc<Notify>,
    publisher: Publisher,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for kind in kinds.iter() {
            if kind.state() != KindState::Failing || !kind.listed.load(Ordering::Acquire) {
                continue;
            }
            let api = Api::<DynamicObject>::all_with(client.clone(), &kind.resource);
            if api
                .list_metadata(&ListParams::default().limit(1))
                .await
                .is_ok()
                && kind.set(KindState::Synced)
            {
                tracing::info!(kind = %kind.resource.kind, "the API server answers again");
                changed.notify_one();
            }
        }
        publisher.metrics().source_out_of_sync.store(
            !kinds.iter().all(|k| k.state().in_sync()),
            Ordering::Release,
        );
    }
}

/// Builds and publishes the mesh `debounce` after a change.
async fn rebuild(
    kinds: Arc<Vec<Kind>>,
    settings: Settings,
    debounce: Duration,
    mut publisher: Publisher,
    changed: Arc<Notify>,
    reports: watch::Sender<Arc<Report>>,
) {
    let mut published: Option<Arc<crate::mesh::Mesh>> = None;
    // Each object as read, by kind, namespace and name, with the
    // `resourceVersion` it was read at.
    type Key = (usize, Option<String>, Option<String>);
    let mut cache: HashMap<Key, (Option<String>, Parsed)> = HashMap::new();
    loop {
        changed.notified().await;
        // The changes of the next `debounce` join this one: one rebuild
        // for a burst, and under steady churn (pods restarting all the
        // time) one every `debounce`, never postponed by the next change.
        tokio::time::sleep(debounce).await;
        let in_sync = kinds.iter().all(|k| k.state().in_sync());
        publisher
            .metrics()
            .source_out_of_sync
            .store(!in_sync, Ordering::Release);
        // Until every kind has been listed once, a mesh would be partial.
        if !kinds.iter().all(|k| k.listed.load(Ordering::Acquire)) {
            continue;
        }
        let mut objects = Objects::default();
        let mut read = HashMap::with_capacity(cache.len());
        for (k, kind) in kinds.iter().enumerate() {
            // The store's order is a hash map's: sorted, the same objects
            // always make the same mesh.
            let mut listed = kind.store.state();
            listed.sort_by(|a, b| {
                (&a.metadata.namespace, &a.metadata.name)
                    .cmp(&(&b.metadata.namespace, &b.metadata.name))
            });
            for object in listed {
                let key = (
                    k,
                    object.metadata.namespace.clone(),
                    object.metadata.name.clone(),
                );
                let version = object.metadata.resource_version.clone();
                // An object is read again only when it changed.
                let parsed = match cache.remove(&key) {
                    Some((read_at, parsed)) if version.is_some() && read_at == version => parsed,
                    _ => {
                        let Ok(mut value) = serde_json::to_value(&*object) else {
                            continue;
                        };
                        // List items carry no apiVersion and kind: the kind's own.
                        value["apiVersion"] = kind.resource.api_version.clone().into();
                        value["kind"] = kind.resource.kind.clone().into();
                        Objects::parse(value)
                    }
                };
                objects.push(parsed.clone());
                read.insert(key, (version, parsed));
            }
        }
        // Deleted objects leave the cache with this.
        cache = read;
        match super::build(&objects, &settings) {
            Ok((mesh, report)) => {
                let previous = reports.borrow().clone();
                for (object, reason, message) in report.rejected() {
                    if previous.objects.get(object) != report.objects.get(object) {
                        tracing::warn!(%object, reason, "left out: {message}");
                    }
                }
                if published.as_deref() != Some(&mesh) {
                    let mesh = Arc::new(mesh);
                    let version = publisher.publish_shared(mesh.clone());
                    tracing::info!(
                        version,
                        objects = report.objects.len(),
                        "mesh rebuilt from Kubernetes"
                    );
                    published = Some(mesh);
                }
                reports.send_replace(Arc::new(report));
            }
            Err(errors) => {
                publisher
                    .metrics()
                    .reloads_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "the Kubernetes objects give no valid mesh; the last one stays: {}",
                    remora_api::ConfigErrors(errors)
                );
            }
        }
    }
}

/// The leader writes each object's status when its verdict changes it
/// (and all of them when it becomes the leader).
async fn write_status(
    client: kube::Client,
    kinds: Arc<Vec<Kind>>,
    mut reports: watch::Receiver<Arc<Report>>,
    mut leader: watch::Receiver<bool>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    loop {
        tokio::select! {
            changed = reports.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
        }
        if !*leader.borrow_and_update() {
            continue;
        }
        let report = reports.borrow_and_update().clone();
        for (object, verdict) in &report.objects {
            // Services, EndpointSlices and Pods carry no status of Remora's:
            // thousands of them are not looked at on every rebuild.
            if !super::status::HAS_STATUS.contains(&object.kind) {
                continue;
            }
            let Some(kind) = kinds.iter().find(|k| k.resource.kind == object.kind) else {
                continue;
            };
            let key = reflector::ObjectRef::<DynamicObject>::new_with(
                &object.name,
                kind.resource.clone(),
            )
            .within(&object.namespace);
            let Some(current) = kind.store.get(&key) else {
                continue;
            };
            let Ok(current) = serde_json::to_value(&*current) else {
                continue;
            };
            let Some(status) = super::status::desired(object, verdict, &current) else {
                continue;
            };
            let api = Api::<DynamicObject>::namespaced_with(
                client.clone(),
                &object.namespace,
                &kind.resource,
            );
            let patch = Patch::Merge(serde_json::json!({ "status": status }));
            match api
                .patch_status(&object.name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => {
                    metrics.status_writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    metrics.status_write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%object, %error, "status not written");
                }
            }
        }
    }
}

//! Connected proxies and where each stands: per type, the version last sent,
//! the version last ACKed and the last NACK with the proxy's error detail.
//! Read by the admin server's `/debug/proxies`; written once per push, ACK
//! or NACK (not per resource).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use crate::metrics::Metrics;

#[derive(Debug, Clone, Serialize)]
pub struct Nack {
    pub version: String,
    pub error_detail: String,
    pub at_unix_ms: u128,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    pub last_nack: Option<Nack>,
    pub pushes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub node_id: String,
    /// The mesh file's `proxies[].node_id` that matched, if any.
    pub entry: Option<String>,
    pub protocol: &'static str,
    pub peer: Option<SocketAddr>,
    pub connected_at_unix_ms: u128,
    /// By short type name: listener, route, cluster, endpoint.
    pub types: BTreeMap<&'static str, TypeStatus>,
}

#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    streams: Mutex<HashMap<u64, ProxyStatus>>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

impl Registry {
    pub fn register(
        self: &Arc<Self>,
        metrics: &Arc<Metrics>,
        node_id: &str,
        entry: Option<String>,
        protocol: &'static str,
        peer: Option<SocketAddr>,
    ) -> StreamHandle {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            ProxyStatus {
                node_id: node_id.to_string(),
                entry,
                protocol,
                peer,
                connected_at_unix_ms: now_ms(),
                types: BTreeMap::new(),
            },
        );
        metrics.connected.fetch_add(1, Ordering::Relaxed);
        StreamHandle {
            id,
            registry: self.clone(),
            metrics: metrics.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ProxyStatus>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every connected stream, sorted by node id.
    pub fn list(&self) -> Vec<ProxyStatus> {
        let mut all: Vec<ProxyStatus> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| {
            a.node_id
                .cmp(&b.node_id)
                .then(a.connected_at_unix_ms.cmp(&b.connected_at_unix_ms))
        });
        all
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stream's entry; removed when the stream ends.
pub struct StreamHandle {
    id: u64,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl StreamHandle {
    fn update(&self, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        let short = remora_xds_proto::type_url::short(type_url);
        if let Some(status) = self.registry.lock().get_mut(&self.id) {
            f(status.types.entry(short).or_default());
        }
    }

    pub fn entry_changed(&self, entry: Option<String>) {
        if let Some(status) = self.registry.lock().get_mut(&self.id) {
            status.entry = entry;
        }
    }

    pub fn sent(&self, type_url: &str, version: &str) {
        self.update(type_url, |t| {
            t.sent_version = Some(version.to_string());
            t.pushes += 1;
        });
    }

    pub fn acked(&self, type_url: &str, version: &str) {
        self.update(type_url, |t| t.acked_version = Some(version.to_string()));
    }

    pub fn nacked(&self, type_url: &str, version: &str, detail: &str) {
        self.update(type_url, |t| {
            t.last_nack = Some(Nack {
                version: version.to_string(),
                error_detail: detail.to_string(),
                at_unix_ms: now_ms(),
            })
        });
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        self.metrics.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

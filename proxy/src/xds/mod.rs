//! The proxy as an xDS client: one ADS stream (state-of-the-world or delta)
//! to a control plane, whose Listener, RouteConfiguration, Cluster and
//! ClusterLoadAssignment resources are translated into the proxy's own
//! config types and compiled into the same `Snapshot` a file produces,
//! next to the file's listeners and clusters.
//!
//! - `translate/`: one Envoy resource → a listener or cluster *part*, or a
//!   rejection that names the field (sent back as the NACK's `error_detail`).
//! - `state`: the accepted resources; which RDS and EDS names the listeners
//!   and clusters need; joining the parts into listeners and clusters.
//! - `client`: the stream, ACK/NACK, subscriptions, reconnection with
//!   jittered backoff. While the control plane is away the proxy keeps
//!   serving what it last applied.
//! - `protocol`: what differs between state of the world and delta.
//!
//! The client configures a [`Target`] (the running proxy), so this module
//! sits below `proxy.rs` and knows nothing of it.

mod client;
mod protocol;
mod state;
pub mod translate;

use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::{ClusterConfig, ConfigErrors, ListenerConfig};
use crate::sync::lock;

pub(crate) use client::spawn;

/// What the xDS client configures: the running proxy.
pub(crate) trait Target: Send + Sync + 'static {
    /// Applies the listeners and clusters that came over xDS next to the
    /// file's; the new snapshot's version, or why it does not compile.
    fn apply(
        &self,
        listeners: Vec<ListenerConfig>,
        clusters: Vec<ClusterConfig>,
        tracing: Option<crate::config::TracingConfig>,
    ) -> Result<u64, ConfigErrors>;
}

/// What the admin server shows at `/xds`.
#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<StatusView>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusView {
    /// Empty when xDS is not configured.
    pub(crate) server: String,
    pub(crate) node_id: String,
    pub(crate) protocol: &'static str,
    pub(crate) connected: bool,
    pub(crate) connects: u64,
    /// The last stream error or end, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_disconnect: Option<String>,
    /// Per type (`cluster`, `endpoint`, `listener`, `route`).
    pub(crate) types: Vec<TypeStatus>,
    /// Resources named by listeners or clusters that have not arrived yet.
    pub(crate) warming: Vec<String>,
    /// The snapshot version the last applied update produced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) applied_version: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct TypeStatus {
    pub r#type: &'static str,
    /// The version last accepted (SotW `version_info`; delta: the
    /// server's `system_version_info`, often empty).
    pub(crate) version: String,
    pub(crate) resources: usize,
    /// Resources delivered in responses, in total (a SotW response carries
    /// the whole set; a delta response only what changed).
    pub(crate) received: u64,
    pub(crate) acks: u64,
    pub(crate) nacks: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_nack: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", with = "unix_seconds")]
    pub(crate) last_update: Option<SystemTime>,
}

impl Status {
    pub fn view(&self) -> StatusView {
        lock(&self.inner).clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut StatusView)) {
        f(&mut lock(&self.inner));
    }
}

mod unix_seconds {
    use std::time::SystemTime;

    pub(super) fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

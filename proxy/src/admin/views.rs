//! JSON shapes of the admin endpoints.

use serde::Serialize;

use crate::config::{Config, UpstreamProtocol};
use crate::snapshot::Snapshot;
use crate::telemetry::access_log::format_rfc3339_millis;

#[derive(Serialize)]
pub struct ConfigDump<'a> {
    pub version: u64,
    pub loaded_at: String,
    pub config: &'a Config,
}

pub fn config_dump(snapshot: &Snapshot) -> ConfigDump<'_> {
    ConfigDump {
        version: snapshot.version,
        loaded_at: format_rfc3339_millis(snapshot.loaded_at),
        config: &snapshot.config,
    }
}

#[derive(Serialize)]
pub struct ClusterView<'a> {
    pub name: &'a str,
    pub protocol: UpstreamProtocol,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Serialize)]
pub struct EndpointView {
    pub address: String,
    pub weight: u32,
    pub healthy: bool,
    pub active_requests: usize,
    pub idle_http1_connections: usize,
    pub http2_connected: bool,
}

pub fn clusters(snapshot: &Snapshot) -> Vec<ClusterView<'_>> {
    snapshot
        .clusters
        .iter()
        .map(|cluster| ClusterView {
            name: &cluster.name,
            protocol: cluster.protocol,
            endpoints: cluster
                .endpoints()
                .iter()
                .map(|e| EndpointView {
                    address: e.address.to_string(),
                    weight: e.weight.get(),
                    healthy: e.is_healthy(),
                    active_requests: e.active_requests(),
                    idle_http1_connections: e.pool.idle_http1(),
                    http2_connected: e.pool.has_http2(),
                })
                .collect(),
        })
        .collect()
}

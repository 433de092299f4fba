//! The accepted xDS resources and how they join into listeners and clusters.
//!
//! Listeners and clusters are wildcard subscriptions; the route
//! configurations and load assignments they name are subscribed by name.
//! A listener whose routes or a cluster whose endpoints have not arrived is
//! *warming*: the client waits for them (as Envoy does) up to a limit, after
//! which the listener serves with no routes (404) and the cluster with no
//! endpoints (503).

use std::collections::{BTreeMap, BTreeSet};

use remora_xds_proto::{protobuf, type_url};

use super::translate::{self, ClusterPart, ListenerPart, Part, Routes};
use crate::config::{
    BackendRef, ClusterConfig, DirectResponseConfig, ListenerConfig, ListenerProtocol, RouteConfig,
    Unmatched,
};

pub(super) const CLUSTER: usize = 0;
pub(super) const ENDPOINT: usize = 1;
pub(super) const LISTENER: usize = 2;
pub(super) const ROUTE: usize = 3;

/// Type URLs by index, in the order resources are applied (CDS, EDS, LDS, RDS).
pub(super) const TYPES: [&str; 4] = type_url::ALL;

/// Subscribed by name (the others are wildcard).
pub(super) fn is_named(t: usize) -> bool {
    t == ENDPOINT || t == ROUTE
}

#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(crate) version: String,
    pub(crate) part: Part,
}

/// Accepted resources by type and name.
#[derive(Debug, Clone, Default)]
pub(super) struct Cache {
    pub(crate) types: [BTreeMap<String, Held>; 4],
}

/// Resources of one response, translated.
pub(super) struct Decoded {
    pub(crate) resources: Vec<(String, Held)>,
}

/// Translates every resource of a response; all of them or the reasons.
pub(super) fn decode<'a>(
    type_url: &str,
    items: impl Iterator<Item = (String, &'a protobuf::Any)>,
) -> Result<Decoded, String> {
    let mut resources = Vec::new();
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for (i, (version, any)) in items.enumerate() {
        match translate::translate(type_url, any) {
            Ok((name, part)) => {
                if !names.insert(name.clone()) {
                    problems.push(format!("resources[{i}]: {name:?} appears twice"));
                    continue;
                }
                resources.push((name, Held { version, part }));
            }
            Err(rejection) => {
                let text = rejection.to_string();
                problems.push(if rejection.path.is_empty() {
                    format!("resources[{i}]: {text}")
                } else {
                    text
                });
            }
        }
    }
    if problems.is_empty() {
        return Ok(Decoded { resources });
    }
    let total = problems.len();
    problems.truncate(10);
    let mut message = problems.join("; ");
    if total > 10 {
        message.push_str(&format!("; and {} more", total - 10));
    }
    Err(message)
}

impl Cache {
    /// SotW listeners and clusters: the response is the whole set.
    pub(super) fn replace(&mut self, t: usize, decoded: Decoded) {
        self.types[t] = decoded.resources.into_iter().collect();
    }

    /// SotW routes and endpoints, and every delta response: the named
    /// resources change, others stay (unless `removed`).
    pub(super) fn merge(&mut self, t: usize, decoded: Decoded, removed: &[String]) {
        for name in removed {
            self.types[t].remove(name);
        }
        self.types[t].extend(decoded.resources);
    }

    /// The names of type `t` the listeners and clusters need (RDS, EDS).
    pub(super) fn wanted(&self, t: usize) -> BTreeSet<String> {
        match t {
            ENDPOINT => self.types[CLUSTER]
                .values()
                .filter_map(|h| match &h.part {
                    Part::Cluster(part) => part.eds.clone(),
                    _ => None,
                })
                .collect(),
            ROUTE => self.types[LISTENER]
                .values()
                .filter_map(|h| match &h.part {
                    Part::Listener(part) => match &part.routes {
                        Routes::Rds(name) => Some(name.clone()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect(),
            _ => BTreeSet::new(),
        }
    }

    /// Drops routes and endpoints nothing names any more.
    pub(super) fn prune(&mut self) {
        for t in [ENDPOINT, ROUTE] {
            let wanted = self.wanted(t);
            self.types[t].retain(|name, _| wanted.contains(name));
        }
    }

    /// Named resources still to arrive, as `route "NAME"` / `endpoints "NAME"`.
    pub(super) fn warming(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (t, kind) in [(ENDPOINT, "endpoints"), (ROUTE, "route")] {
            for name in self.wanted(t) {
                if !self.types[t].contains_key(&name) {
                    out.push(format!("{kind} {name:?}"));
                }
            }
        }
        out
    }

    pub(super) fn versions(&self, t: usize) -> std::collections::HashMap<String, String> {
        self.types[t]
            .iter()
            .map(|(name, held)| (name.clone(), held.version.clone()))
            .collect()
    }

    /// The listeners and clusters to apply: parts joined with their routes
    /// and endpoints (missing ones empty). A route to a cluster that does
    /// not exist answers 503, as Envoy's does; a TCP listener whose cluster
    /// does not exist is left out until it does.
    pub(super) fn compose(&self) -> (Vec<ListenerConfig>, Vec<ClusterConfig>) {
        let clusters: Vec<ClusterConfig> = self.types[CLUSTER]
            .values()
            .filter_map(|h| match &h.part {
                Part::Cluster(part) if !part.original_dst => Some(self.cluster(part)),
                _ => None,
            })
            .collect();
        let original_dst: BTreeSet<&str> = self.types[CLUSTER]
            .iter()
            .filter(|(_, h)| matches!(&h.part, Part::Cluster(part) if part.original_dst))
            .map(|(name, _)| name.as_str())
            .collect();
        let known: BTreeMap<&str, bool> = clusters
            .iter()
            .map(|c| (c.name.as_str(), c.load_balancer.policy.is_hash_based()))
            .collect();
        let listeners = self.types[LISTENER]
            .values()
            .filter_map(|h| match &h.part {
                Part::Listener(part) if part.config.original_destination => {
                    capture_listener(part, &clusters, &original_dst)
                }
                Part::Listener(part) => self.listener(part, &known),
                _ => None,
            })
            .collect();
        (listeners, clusters)
    }

    /// The first HTTP listener's OpenTelemetry tracer (by name), as the
    /// proxy's `tracing:`; a collector named by cluster is that cluster's
    /// first endpoint. remora-proxy has one tracer, so other listeners'
    /// tracers are not used (docs/observability.md).
    pub(super) fn tracing(
        &self,
        clusters: &[ClusterConfig],
    ) -> Option<crate::config::TracingConfig> {
        use super::translate::Collector;
        let tracing = self.types[LISTENER].values().find_map(|h| match &h.part {
            Part::Listener(part) => part.tracing.clone(),
            _ => None,
        })?;
        let endpoint = match &tracing.collector {
            Collector::Http(uri) => uri.clone(),
            Collector::Grpc(target) => format!("http://{}", target.trim_start_matches("dns:///")),
            Collector::Cluster(name) => {
                let cluster = clusters.iter().find(|c| c.name == *name);
                let address = cluster.and_then(|c| c.endpoints.first()).map(|e| e.address);
                match address {
                    Some(address) => format!("http://{address}"),
                    None => {
                        tracing::warn!(cluster = %name, "the tracer's collector cluster has no endpoint yet; spans are not exported");
                        return None;
                    }
                }
            }
        };
        let protocol = match tracing.collector {
            Collector::Http(_) => crate::config::OtlpProtocol::HttpProtobuf,
            _ => crate::config::OtlpProtocol::Grpc,
        };
        let mut config = crate::config::parse_yaml_as::<crate::config::TracingConfig>(
            "{otlp: {endpoint: 'http://127.0.0.1:4317'}}",
        )
        .expect("the defaults parse");
        config.otlp.endpoint = endpoint;
        config.otlp.protocol = protocol;
        config.sampling = tracing.sampling;
        if !tracing.service_name.is_empty() {
            config.service_name = tracing.service_name;
        }
        Some(config)
    }

    fn cluster(&self, part: &ClusterPart) -> ClusterConfig {
        let mut config = part.config.clone();
        if let Some(name) = &part.eds
            && let Some(Held {
                part: Part::Endpoints(endpoints),
                ..
            }) = self.types[ENDPOINT].get(name)
        {
            config.endpoints = endpoints.clone();
        }
        config
    }

    fn listener(
        &self,
        part: &ListenerPart,
        known: &BTreeMap<&str, bool>,
    ) -> Option<ListenerConfig> {
        let mut config = part.config.clone();
        if config.protocol() == ListenerProtocol::Tcp {
            let cluster = config.cluster.as_deref().unwrap_or_default();
            if !known.contains_key(cluster) {
                tracing::warn!(listener = %config.name, cluster, "xDS listener names a cluster that does not exist; left out until it does");
                return None;
            }
            return Some(config);
        }
        let routes: &[RouteConfig] = match &part.routes {
            Routes::Inline(routes) => routes,
            Routes::Rds(name) => match self.types[ROUTE].get(name) {
                Some(Held {
                    part: Part::Routes(routes),
                    ..
                }) => routes,
                _ => &[],
            },
            Routes::None => &[],
        };
        config.routes = routes
            .iter()
            .map(|route| {
                let mut route = route.clone();
                if route.stream_idle_timeout.is_none() {
                    route.stream_idle_timeout = part.defaults.stream_idle_timeout;
                }
                if !part.defaults.local_rate_limit {
                    route.rate_limit = None;
                }
                missing_clusters(&mut route, known);
                route
            })
            .collect();
        Some(config)
    }
}

/// A `use_original_dst` listener: what no listener claims goes through to
/// its original destination (an ORIGINAL_DST cluster) or is reset (no
/// cluster, or one without endpoints, as Istio's `BlackHoleCluster`). A
/// cluster still to arrive leaves the listener out until it does; one with
/// endpoints cannot take unmatched traffic here, and leaves it out too.
fn capture_listener(
    part: &ListenerPart,
    clusters: &[ClusterConfig],
    original_dst: &BTreeSet<&str>,
) -> Option<ListenerConfig> {
    let mut config = part.config.clone();
    config.unmatched = match part.unmatched_cluster.as_deref() {
        None => Unmatched::Reject,
        Some(name) if original_dst.contains(name) => Unmatched::Passthrough,
        Some(name) => match clusters.iter().find(|c| c.name == name) {
            Some(cluster) if cluster.endpoints.is_empty() && cluster.dns.is_none() => {
                Unmatched::Reject
            }
            Some(_) => {
                tracing::warn!(listener = %config.name, cluster = name, "a use_original_dst listener's TCP proxy must name an ORIGINAL_DST cluster (or one without endpoints, to reject); left out");
                return None;
            }
            None => {
                tracing::warn!(listener = %config.name, cluster = name, "xDS listener names a cluster that does not exist; left out until it does");
                return None;
            }
        },
    };
    Some(config)
}

/// Backends naming clusters that do not exist are dropped; with none left
/// the route answers 503. A hash policy is kept only for a hash-based
/// backend (Envoy ignores it otherwise).
fn missing_clusters(route: &mut RouteConfig, known: &BTreeMap<&str, bool>) {
    if route.backends.is_empty() {
        return;
    }
    route
        .backends
        .retain(|b: &BackendRef| known.contains_key(b.cluster.as_str()));
    if !route
        .backends
        .iter()
        .any(|b| known.get(b.cluster.as_str()).copied().unwrap_or(false))
    {
        route.hash_on = None;
    }
    if route.backends.is_empty() {
        route.direct_response = Some(DirectResponseConfig {
            status: 503,
            body: None,
        });
        route.retry = None;
        route.hash_on = None;
    }
}

#[cfg(test)]
mod tests {
    use remora_xds_proto::listener::Listener;
    use remora_xds_proto::{cluster, pack, protobuf};

    use super::*;
    use crate::xds::translate::tests::{address, tcp_proxy_chain};
    use crate::xds::translate::translate;

    fn held(type_url: &str, any: &protobuf::Any) -> (String, Held) {
        let (name, part) = translate(type_url, any).unwrap();
        let version = "1".to_string();
        (name, Held { version, part })
    }

    fn capture_to(cluster: Option<&str>) -> protobuf::Any {
        pack(&Listener {
            name: "outbound".into(),
            address: Some(address(15001)),
            use_original_dst: Some(protobuf::BoolValue { value: true }),
            filter_chains: cluster.map(tcp_proxy_chain).into_iter().collect(),
            ..Default::default()
        })
    }

    fn cluster_of(name: &str, kind: cluster::cluster::DiscoveryType) -> protobuf::Any {
        pack(&cluster::Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(kind as i32)),
            load_assignment: Some(remora_xds_proto::endpoint::ClusterLoadAssignment {
                cluster_name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// What a capture listener's TCP proxy cluster means for unmatched
    /// connections; an ORIGINAL_DST cluster is no cluster of the proxy's.
    #[test]
    fn a_capture_listeners_cluster_decides_unmatched() {
        use cluster::cluster::DiscoveryType::{OriginalDst, Static};
        let unmatched =
            |listener: protobuf::Any, clusters: &[(&str, cluster::cluster::DiscoveryType)]| {
                let mut cache = Cache::default();
                cache.types[LISTENER].extend([held(type_url::LISTENER, &listener)]);
                for (name, kind) in clusters {
                    cache.types[CLUSTER]
                        .extend([held(type_url::CLUSTER, &cluster_of(name, *kind))]);
                }
                let (listeners, clusters) = cache.compose();
                assert!(clusters.iter().all(|c| c.name != "PassthroughCluster"));
                listeners.first().map(|l| l.unmatched)
            };
        assert_eq!(
            unmatched(
                capture_to(Some("PassthroughCluster")),
                &[("PassthroughCluster", OriginalDst)]
            ),
            Some(Unmatched::Passthrough)
        );
        assert_eq!(
            unmatched(
                capture_to(Some("BlackHoleCluster")),
                &[("BlackHoleCluster", Static)]
            ),
            Some(Unmatched::Reject)
        );
        assert_eq!(unmatched(capture_to(None), &[]), Some(Unmatched::Reject));
        // Still to arrive: left out until it does.
        assert_eq!(unmatched(capture_to(Some("PassthroughCluster")), &[]), None);
    }
}

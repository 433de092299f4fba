//! Translation: the mesh file into Envoy v3 resources for each proxy.
//!
//! Every service gets a Cluster (`outbound|PORT||NAME.NS`, endpoints over
//! EDS) and a ClusterLoadAssignment; every HTTP service a RouteConfiguration
//! (`NAME.NS:PORT`) holding its HTTPRoutes/GRPCRoutes, most specific match
//! first, with the service itself as the last resort. A proxy gets one
//! Listener per outbound entry (HTTP connection manager with RDS, or TCP
//! proxy) and per inbound entry (to a static `inbound|LISTEN` cluster), and
//! exactly the clusters, assignments and route configurations those listeners
//! reach.
//!
//! A resource's version is a hash of its encoded bytes, so an unchanged
//! resource keeps its version across translations and a change to one service
//! changes only the resources built from it. (Encoding is deterministic
//! because no map in these messages is given more than one entry.)

mod cluster;
mod listener;
mod rbac;
mod route;
pub(crate) mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use remora_xds_proto::protobuf::Any;
use remora_xds_proto::type_url;

use crate::mesh::{Mesh, Service};

/// One resource as served: its name, content version and packed message.
#[derive(Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub any: Any,
}

impl Resource {
    pub fn new<T: prost::Name + prost::Message>(name: String, message: &T) -> Arc<Resource> {
        let any = remora_xds_proto::pack(message);
        let version = format!("{:016x}", xxhash_rust::xxh64::xxh64(&any.value, 0));
        Arc::new(Resource { name, version, any })
    }

    /// A resource whose encoding is not deterministic (it holds a map of
    /// more than one entry), versioned by `key`: a stable description of
    /// everything it was built from.
    pub fn keyed<T: prost::Name + prost::Message>(
        name: String,
        message: &T,
        key: &[u8],
    ) -> Arc<Resource> {
        let any = remora_xds_proto::pack(message);
        let version = format!("{:016x}", xxhash_rust::xxh64::xxh64(key, 1));
        Arc::new(Resource { name, version, any })
    }
}

/// The index of a type URL in [`type_url::ALL`].
/// Everything one proxy is served, by type (in [`type_url::ALL`] order).
#[derive(Debug, Default, PartialEq)]
pub struct ProxyResources {
    pub by_type: [BTreeMap<String, Arc<Resource>>; 4],
}

impl ProxyResources {
    pub fn of_type(&self, type_url: &str) -> Option<&BTreeMap<String, Arc<Resource>>> {
        type_url::index(type_url).map(|i| &self.by_type[i])
    }

    fn insert(&mut self, type_url: &str, resource: &Arc<Resource>) {
        let i = type_url::index(type_url).expect("a served type");
        self.by_type[i].insert(resource.name.clone(), resource.clone());
    }
}

/// A translated mesh: the resources of each proxy entry (by index in
/// `mesh.proxies`), shared by every node that entry matches.
#[derive(Debug, Default)]
pub struct Translation {
    pub proxies: Vec<Arc<ProxyResources>>,
    /// For a node that no entry matches.
    pub unknown: Arc<ProxyResources>,
}

/// The resources built once per service and shared by the proxies that use them.
struct ServiceResources {
    cluster: Arc<Resource>,
    assignment: Arc<Resource>,
    routes: Option<Arc<Resource>>,
    /// Services the route configuration sends traffic to (itself included).
    reaches: BTreeSet<usize>,
}

pub fn translate(mesh: &Mesh, previous: Option<&Translation>) -> Translation {
    let mtls = mesh.mtls_mode();
    let mesh_tls = mtls != remora_api::MtlsMode::Disabled;
    let index: HashMap<(&str, &str), usize> = mesh
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| ((s.name.as_str(), s.namespace.as_str()), i))
        .collect();
    let services: Vec<ServiceResources> = mesh
        .services
        .iter()
        .enumerate()
        .map(|(i, service)| {
            let (routes, reaches) = if service.protocol.is_http() {
                let (config, reaches) = route::route_configuration(mesh, i, &index);
                (
                    Some(Resource::new(route::route_name(service), &config)),
                    reaches,
                )
            } else {
                (None, BTreeSet::from([i]))
            };
            ServiceResources {
                cluster: Resource::new(cluster_name(service), &{
                    let mut built = cluster::cluster(service);
                    if mesh_tls {
                        let identity = mesh
                            .service_identity(service)
                            .expect("validated: service identities");
                        built.transport_socket = Some(wire::upstream_mtls(&identity.uri()));
                    }
                    built
                }),
                assignment: Resource::new(
                    cluster_name(service),
                    &cluster::load_assignment(service),
                ),
                routes,
                reaches,
            }
        })
        .collect();

    let collector = mesh.tracing.as_ref().map(collector_resources);
    let proxies = mesh
        .proxies
        .iter()
        .enumerate()
        .map(|(p, entry)| {
            let mut out = ProxyResources::default();
            if let Some((cluster, assignment)) = &collector {
                out.insert(type_url::CLUSTER, cluster);
                out.insert(type_url::ENDPOINT, assignment);
            }
            if entry.capture {
                for (type_url, resource) in listener::capture() {
                    out.insert(type_url, &resource);
                }
            }
            for inbound in &entry.inbound {
                let service = mesh
                    .service(&inbound.service, "default")
                    .expect("validated: inbound services exist");
                for (type_url, resource) in
                    listener::inbound(service, inbound, entry.capture, mtls, mesh.tracing.as_ref())
                {
                    out.insert(type_url, &resource);
                }
            }
            for outbound in &entry.outbound {
                let service = mesh
                    .service(&outbound.service, "default")
                    .expect("validated: outbound services exist");
                let i = index[&(service.name.as_str(), service.namespace.as_str())];
                let built = &services[i];
                for listen in outbound.listens(service) {
                    out.insert(
                        type_url::LISTENER,
                        &Resource::new(
                            listener::outbound_name(listen),
                            &listener::outbound(
                                service,
                                listen,
                                entry.capture,
                                mesh.tracing.as_ref(),
                            ),
                        ),
                    );
                }
                if let Some(routes) = &built.routes {
                    out.insert(type_url::ROUTE, routes);
                }
                for &reached in &built.reaches {
                    out.insert(type_url::CLUSTER, &services[reached].cluster);
                    out.insert(type_url::ENDPOINT, &services[reached].assignment);
                }
            }
            // Keep the previous Arc when nothing changed, so an unchanged
            // proxy shares one allocation across translations.
            match previous.and_then(|prev| prev.proxies.get(p)) {
                Some(prev) if **prev == out => prev.clone(),
                _ => Arc::new(out),
            }
        })
        .collect();
    Translation {
        proxies,
        unknown: Arc::new(ProxyResources::default()),
    }
}

/// The OTLP collector's cluster (HTTP/2, for gRPC) and its endpoint, which
/// every proxy's tracer exports to.
fn collector_resources(tracing: &crate::mesh::MeshTracing) -> (Arc<Resource>, Arc<Resource>) {
    let service: Service = serde_json::from_value(serde_json::json!({
        "name": "otlp-collector",
        "namespace": "remora-system",
        "port": tracing.collector.port(),
        "protocol": "grpc",
        "endpoints": [tracing.collector.to_string()],
    }))
    .expect("a valid service");
    let mut built = cluster::cluster(&service);
    built.name = crate::mesh::COLLECTOR_CLUSTER.into();
    let mut assignment = cluster::load_assignment(&service);
    assignment.cluster_name = crate::mesh::COLLECTOR_CLUSTER.into();
    (
        Resource::new(crate::mesh::COLLECTOR_CLUSTER.into(), &built),
        Resource::new(crate::mesh::COLLECTOR_CLUSTER.into(), &assignment),
    )
}

/// `outbound|PORT||NAME.NAMESPACE`, as Istio names a service's cluster.
pub fn cluster_name(service: &Service) -> String {
    format!("outbound|{}||{}", service.port, service.key())
}

#[cfg(test)]
mod tests;

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
use std::net::SocketAddr;
use std::sync::Arc;

use remora_xds_proto::protobuf::Any;
use remora_xds_proto::type_url;

use crate::mesh::{Mesh, Service};

/// One resource as served: its name, content version and packed message.
#[derive(Debug, PartialEq)]
pub struct Resource {
    /// Shared with what each delta stream records the proxy holds.
    pub name: Arc<str>,
    /// `hash` in 16 hex digits, as sent.
    pub version: String,
    pub hash: u64,
    pub any: Any,
}

impl Resource {
    pub fn new<T: prost::Name + prost::Message>(name: String, message: &T) -> Arc<Resource> {
        let any = remora_xds_proto::pack(message);
        let hash = xxhash_rust::xxh64::xxh64(&any.value, 0);
        Resource::with_hash(name, hash, any)
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
        Resource::with_hash(name, xxhash_rust::xxh64::xxh64(key, 1), any)
    }

    fn with_hash(name: String, hash: u64, any: Any) -> Arc<Resource> {
        Arc::new(Resource {
            name: name.into(),
            version: format!("{hash:016x}"),
            hash,
            any,
        })
    }

    /// The hash a version this server sent stands for (`None`: not one of
    /// its versions, such as a proxy's from another control plane).
    pub fn hash_of(version: &str) -> Option<u64> {
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        (version.len() == 16 && version.bytes().all(lower_hex))
            .then(|| u64::from_str_radix(version, 16).ok())
            .flatten()
    }
}

/// Resources by name; the names are the resources' own (`Arc`s), so a map
/// of thousands costs no string copies.
pub type ByName = BTreeMap<Arc<str>, Arc<Resource>>;

/// Everything one proxy is served, by type (in [`type_url::ALL`] order):
/// its own resources, and those it shares with other proxies.
#[derive(Debug, Default)]
pub struct ProxyResources {
    /// This proxy's own resources.
    pub by_type: [ByName; 4],
    /// Resources every proxy of a kind is served alike (a sidecar that may
    /// call every service: `outbound_all`), built and held once however
    /// many proxies share them. No name is in both.
    pub shared: Option<Arc<ProxyResources>>,
}

impl PartialEq for ProxyResources {
    /// Shared resources compare by identity: a translation reuses the
    /// previous shared set when it is unchanged, so a new `Arc` is a change
    /// (and a thousand proxies never compare thousands of resources each).
    fn eq(&self, other: &ProxyResources) -> bool {
        self.by_type == other.by_type
            && match (&self.shared, &other.shared) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

/// How many versions of the shared resources a delta stream may be behind
/// and still be sent only what changed.
const SHARED_DIFFS_KEPT: usize = 16;

/// The names whose resource changed (added, replaced or removed) between
/// two versions of the shared resources, by type.
#[derive(Debug)]
pub struct SharedDiff {
    pub from: Arc<ProxyResources>,
    pub to: Arc<ProxyResources>,
    pub changed: [Vec<Arc<str>>; 4],
}

impl SharedDiff {
    fn between(from: &Arc<ProxyResources>, to: &Arc<ProxyResources>) -> SharedDiff {
        // Both maps are sorted: one walk through them side by side.
        let changed = std::array::from_fn(|t| {
            let (mut a, mut b) = (
                from.by_type[t].iter().peekable(),
                to.by_type[t].iter().peekable(),
            );
            let mut names = Vec::new();
            loop {
                match (a.peek(), b.peek()) {
                    (None, None) => break,
                    (Some((na, ra)), Some((nb, rb))) if na == nb => {
                        if ra.hash != rb.hash {
                            names.push((*nb).clone());
                        }
                        a.next();
                        b.next();
                    }
                    (Some((na, _)), Some((nb, _))) if na < nb => {
                        names.push((*na).clone());
                        a.next();
                    }
                    (Some((na, _)), None) => {
                        names.push((*na).clone());
                        a.next();
                    }
                    (_, Some((nb, _))) => {
                        names.push((*nb).clone());
                        b.next();
                    }
                }
            }
            names
        });
        SharedDiff {
            from: from.clone(),
            to: to.clone(),
            changed,
        }
    }
}

/// One type's resources of a proxy: its own and the shared ones, as one
/// map by name.
#[derive(Debug, Clone, Copy)]
pub struct Resources<'a> {
    own: &'a ByName,
    shared: Option<&'a ByName>,
}

impl<'a> Resources<'a> {
    pub fn new(own: &'a ByName) -> Resources<'a> {
        Resources { own, shared: None }
    }

    pub fn get(&self, name: &str) -> Option<&'a Arc<Resource>> {
        self.own
            .get(name)
            .or_else(|| self.shared.and_then(|s| s.get(name)))
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.own.len() + self.shared.map_or(0, BTreeMap::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// By name, both maps merged.
    pub fn iter(&self) -> impl Iterator<Item = (&'a Arc<str>, &'a Arc<Resource>)> + 'a {
        let mut own = self.own.iter().peekable();
        let mut shared = self.shared.into_iter().flatten().peekable();
        std::iter::from_fn(move || match (own.peek(), shared.peek()) {
            (Some((a, _)), Some((b, _))) if a <= b => own.next(),
            (Some(_), Some(_)) => shared.next(),
            (Some(_), None) => own.next(),
            (None, _) => shared.next(),
        })
    }

    pub fn values(&self) -> impl Iterator<Item = &'a Arc<Resource>> + 'a {
        self.iter().map(|(_, r)| r)
    }

    pub fn keys(&self) -> impl Iterator<Item = &'a Arc<str>> + 'a {
        self.iter().map(|(n, _)| n)
    }
}

impl std::ops::Index<&str> for Resources<'_> {
    type Output = Arc<Resource>;

    fn index(&self, name: &str) -> &Arc<Resource> {
        self.get(name)
            .unwrap_or_else(|| panic!("no resource {name:?}"))
    }
}

impl std::ops::Index<&String> for Resources<'_> {
    type Output = Arc<Resource>;

    fn index(&self, name: &String) -> &Arc<Resource> {
        &self[name.as_str()]
    }
}

impl ProxyResources {
    /// Type `t`'s resources (in [`type_url::ALL`] order).
    pub fn of(&self, t: usize) -> Resources<'_> {
        Resources {
            own: &self.by_type[t],
            shared: self.shared.as_ref().map(|s| &s.by_type[t]),
        }
    }

    pub fn of_type(&self, type_url: &str) -> Option<Resources<'_>> {
        type_url::index(type_url).map(|i| self.of(i))
    }

    fn insert(&mut self, type_url: &str, resource: &Arc<Resource>) {
        let i = type_url::index(type_url).expect("a served type");
        if self
            .shared
            .as_ref()
            .is_some_and(|s| s.by_type[i].contains_key(&*resource.name))
        {
            // Built the same way for every proxy: the shared one is it.
            return;
        }
        self.by_type[i].insert(resource.name.clone(), resource.clone());
    }
}

/// A translated mesh: the resources of each proxy entry (by index in
/// `mesh.proxies`), shared by every node that entry matches.
#[derive(Debug, Default)]
pub struct Translation {
    pub proxies: Vec<Arc<ProxyResources>>,
    /// How the shared resources differ from those of the last few
    /// translations, oldest first: a delta stream that held one of those
    /// looks at the names changed since alone.
    pub shared_diffs: Vec<Arc<SharedDiff>>,
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
    translate_reusing(mesh, None, previous)
}

/// [`translate`], given also the mesh `previous` was translated from: a
/// service that did not change keeps its cluster, endpoints and outbound
/// listeners (and, without routes attached, its route configuration) from
/// `previous` instead of being built and encoded again (under endpoint
/// churn, a handful of thousands of services change).
pub fn translate_reusing(
    mesh: &Mesh,
    previous_mesh: Option<&Mesh>,
    previous: Option<&Translation>,
) -> Translation {
    let mtls = mesh.mtls_mode();
    let mesh_tls = mtls != remora_api::MtlsMode::Disabled;
    let index = mesh.service_index();
    let previous_shared =
        previous.and_then(|prev| prev.proxies.iter().find_map(|p| p.shared.clone()));
    // What an unchanged service's resources are taken from: the previous
    // shared set, when the mesh-wide inputs of those resources are the same.
    let reusable = previous_mesh
        .zip(previous_shared.clone())
        .filter(|(old, _)| old.trust_domain == mesh.trust_domain && old.mtls_mode() == mtls);
    let unchanged: Vec<bool> = match &reusable {
        Some((old, _)) => {
            let old_index: HashMap<(&str, &str), &Service> = old
                .services
                .iter()
                .map(|s| ((s.name.as_str(), s.namespace.as_str()), s))
                .collect();
            mesh.services
                .iter()
                .map(|s| old_index.get(&(s.name.as_str(), s.namespace.as_str())) == Some(&s))
                .collect()
        }
        None => vec![false; mesh.services.len()],
    };
    let kept = |i: usize, type_url: &str, name: &str| -> Option<Arc<Resource>> {
        let (_, shared) = reusable.as_ref().filter(|_| unchanged[i])?;
        shared.by_type[type_url::index(type_url)?]
            .get(name)
            .cloned()
    };
    // The services a route is attached to.
    let routed: std::collections::HashSet<(&str, &str)> = mesh
        .routes
        .iter()
        .flat_map(|route| {
            route.parent_refs.iter().map(move |p| {
                (
                    p.name.as_str(),
                    p.namespace.as_deref().unwrap_or(&route.namespace),
                )
            })
        })
        .collect();
    let routes_kept = reusable
        .as_ref()
        .is_some_and(|(old, _)| old.routes == mesh.routes);
    let listeners_kept = reusable
        .as_ref()
        .is_some_and(|(old, _)| old.tracing == mesh.tracing);
    let services: Vec<ServiceResources> = mesh
        .services
        .iter()
        .enumerate()
        .map(|(i, service)| {
            let (routes, reaches) = if service.protocol.is_http() {
                // Without routes of its own, a service's route
                // configuration is built from the service alone.
                let name = route::route_name(service);
                // (Routes that changed may have been attached before.)
                let alone = routes_kept
                    && !routed.contains(&(service.name.as_str(), service.namespace.as_str()));
                let kept = alone.then(|| kept(i, type_url::ROUTE, &name)).flatten();
                match kept {
                    Some(routes) => (Some(routes), BTreeSet::from([i])),
                    None => {
                        let (config, reaches) = route::route_configuration(mesh, i, &index);
                        (Some(Resource::new(name, &config)), reaches)
                    }
                }
            } else {
                (None, BTreeSet::from([i]))
            };
            let name = cluster_name(service);
            ServiceResources {
                cluster: kept(i, type_url::CLUSTER, &name).unwrap_or_else(|| {
                    let mut built = cluster::cluster(service);
                    if mesh_tls {
                        let identity = mesh
                            .service_identity(service)
                            .expect("validated: service identities");
                        built.transport_socket = Some(wire::upstream_mtls(&identity.uri()));
                    }
                    Resource::new(name.clone(), &built)
                }),
                assignment: kept(i, type_url::ENDPOINT, &name).unwrap_or_else(|| {
                    Resource::new(name.clone(), &cluster::load_assignment(service))
                }),
                routes,
                reaches,
            }
        })
        .collect();

    let collector = mesh.tracing.as_ref().map(collector_resources);
    // A service reached from a proxy: its listeners at `listens`, its
    // routes, and the clusters and endpoints its routes send to.
    let add_outbound =
        |out: &mut ProxyResources, service: &Service, listens: &[SocketAddr], capture: bool| {
            let i = index
                .position(&service.name, &service.namespace)
                .expect("a service of the mesh");
            let built = &services[i];
            for &listen in listens {
                let name = listener::outbound_name(listen);
                // The previous shared set's listeners were built with
                // `capture` (as the shared set is).
                let kept = (listeners_kept && capture)
                    .then(|| kept(i, type_url::LISTENER, &name))
                    .flatten();
                let listener = kept.unwrap_or_else(|| {
                    Resource::new(
                        name,
                        &listener::outbound(service, listen, capture, mesh.tracing.as_ref()),
                    )
                });
                out.insert(type_url::LISTENER, &listener);
            }
            if let Some(routes) = &built.routes {
                out.insert(type_url::ROUTE, routes);
            }
            for &reached in &built.reaches {
                out.insert(type_url::CLUSTER, &services[reached].cluster);
                out.insert(type_url::ENDPOINT, &services[reached].assignment);
            }
        };
    // What every sidecar with `outbound_all` shares: each service with
    // addresses, at them; built once, kept from the previous translation
    // when it did not change.
    let everything = mesh.proxies.iter().any(|p| p.outbound_all).then(|| {
        let mut shared = ProxyResources::default();
        for service in mesh.services.iter().filter(|s| !s.addresses.is_empty()) {
            let listens: Vec<SocketAddr> = service
                .addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, service.port))
                .collect();
            add_outbound(&mut shared, service, &listens, true);
        }
        let previous = previous_shared
            .clone()
            .filter(|prev| same_versions(&prev.by_type, &shared.by_type));
        previous.unwrap_or_else(|| Arc::new(shared))
    });
    // A stream that skipped versions (a slow proxy) follows the chain.
    let mut shared_diffs: Vec<Arc<SharedDiff>> = previous
        .map(|prev| prev.shared_diffs.clone())
        .unwrap_or_default();
    if let Some((from, to)) = previous_shared
        .zip(everything.clone())
        .filter(|(from, to)| !Arc::ptr_eq(from, to))
    {
        shared_diffs.push(Arc::new(SharedDiff::between(&from, &to)));
        let excess = shared_diffs.len().saturating_sub(SHARED_DIFFS_KEPT);
        shared_diffs.drain(..excess);
    }
    // The capture listeners and clusters: the same for every sidecar.
    let capture = if mesh.proxies.iter().any(|p| p.capture) {
        listener::capture()
    } else {
        Vec::new()
    };
    let proxies = mesh
        .proxies
        .iter()
        .enumerate()
        .map(|(p, entry)| {
            let mut out = ProxyResources {
                shared: everything.clone().filter(|_| entry.outbound_all),
                ..ProxyResources::default()
            };
            if let Some((cluster, assignment)) = &collector {
                out.insert(type_url::CLUSTER, cluster);
                out.insert(type_url::ENDPOINT, assignment);
            }
            if entry.capture {
                for (type_url, resource) in &capture {
                    out.insert(type_url, resource);
                }
            }
            for inbound in &entry.inbound {
                let service = index
                    .get(&inbound.service, "default")
                    .expect("validated: inbound services exist");
                for (type_url, resource) in
                    listener::inbound(service, inbound, entry.capture, mtls, mesh.tracing.as_ref())
                {
                    out.insert(type_url, &resource);
                }
            }
            for outbound in &entry.outbound {
                let service = index
                    .get(&outbound.service, "default")
                    .expect("validated: outbound services exist");
                add_outbound(&mut out, service, &outbound.listens(service), entry.capture);
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
        shared_diffs,
        unknown: Arc::new(ProxyResources::default()),
    }
}

/// The same names at the same versions: a version is the hash of what a
/// resource says, so this compares thousands of resources without reading
/// their bytes.
fn same_versions(a: &[ByName; 4], b: &[ByName; 4]) -> bool {
    a.iter().zip(b).all(|(a, b)| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|((na, ra), (nb, rb))| na == nb && (Arc::ptr_eq(ra, rb) || ra.hash == rb.hash))
    })
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

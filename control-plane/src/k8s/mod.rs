//! The Kubernetes source: Services, EndpointSlices, Pods, GAMMA
//! `HTTPRoute`s and `GRPCRoute`s, and Remora's `TrafficPolicy` and
//! `AuthorizationPolicy` objects, turned into the same [`Mesh`] a mesh file
//! gives, so translation, ADS and debouncing are shared.
//!
//! Objects come from manifest files ([`manifests`]); each one is judged on
//! its own: an object that does not parse, or that the mesh's checks reject,
//! is reported with the field path of what is wrong (`spec.rules[0]...`)
//! and left out, never blocking the rest.

pub mod fake;
pub mod leader;
pub mod manifests;
mod objects;
pub mod status;
pub mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use remora_api::{ConfigError, MtlsMode};

use crate::mesh::{self, Inbound, Mesh, MeshEndpoint, ProxyEntry, Route, ServiceProtocol};
pub use objects::{Objects, RouteObject};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The name of the sidecar container (a native sidecar: an init container
/// with `restartPolicy: Always`); a pod with it gets a proxy entry.
pub const SIDECAR_CONTAINER: &str = "remora-proxy";

/// Which object, as `kubectl` names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// What became of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Left out. `reason` is a Gateway API condition reason (`Invalid`,
    /// `BackendNotFound`, `Conflicted`, ...), `message` names the field path.
    Rejected {
        reason: &'static str,
        message: String,
    },
}

/// Every object Remora acts on, with its verdict, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub objects: BTreeMap<ObjectRef, Verdict>,
}

impl Report {
    pub fn rejected(&self) -> impl Iterator<Item = (&ObjectRef, &str, &str)> {
        self.objects
            .iter()
            .filter_map(|(object, verdict)| match verdict {
                Verdict::Accepted => None,
                Verdict::Rejected { reason, message } => Some((object, *reason, message.as_str())),
            })
    }

    fn reject(&mut self, object: ObjectRef, reason: &'static str, message: String) {
        self.objects
            .insert(object, Verdict::Rejected { reason, message });
    }
}

/// Mesh-wide settings a cluster does not carry in its objects.
#[derive(Debug, Clone)]
pub struct Settings {
    pub trust_domain: String,
    pub mtls: MtlsMode,
}

impl Settings {
    /// With `domain` (`--trust-domain`) as the trust domain, when given;
    /// an error names the flag.
    pub fn with_trust_domain(mut self, domain: Option<&str>) -> anyhow::Result<Settings> {
        if let Some(domain) = domain {
            remora_api::identity::check_trust_domain(domain)
                .map_err(|e| anyhow::anyhow!("--trust-domain: {e}"))?;
            self.trust_domain = domain.to_string();
        }
        Ok(self)
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            trust_domain: remora_api::identity::DEFAULT_TRUST_DOMAIN.to_string(),
            mtls: MtlsMode::Disabled,
        }
    }
}

/// Builds the mesh from the objects: every valid object is in it, every
/// invalid one is in the report, and the mesh passes the mesh file's checks.
/// Errors that no object owns (a bad trust domain) are returned.
pub fn build(objects: &Objects, settings: &Settings) -> Result<(Mesh, Report), Vec<ConfigError>> {
    let mut report = objects.report.clone();
    let mut excluded: HashSet<ObjectRef> = report.objects.keys().cloned().collect();
    // Each round leaves out the objects the checks blame; a few rounds
    // settle it (a left-out Service can make a route's reference dangle).
    for _ in 0..16 {
        let (mesh, owners) = assemble(objects, settings, &excluded, &mut report);
        let errors = mesh::validate::check(&mesh);
        if errors.is_empty() {
            for object in objects.all() {
                report.objects.entry(object).or_insert(Verdict::Accepted);
            }
            return Ok((mesh, report));
        }
        let mut orphans = Vec::new();
        for error in errors {
            match owners.blame(&error.path) {
                Some((object, path)) => {
                    let reason = if error.message.starts_with("no service") {
                        "BackendNotFound"
                    } else {
                        "Invalid"
                    };
                    excluded.insert(object.clone());
                    report.objects.entry(object).or_insert(Verdict::Rejected {
                        reason,
                        message: format!("{path}: {}", error.message),
                    });
                }
                None => orphans.push(error),
            }
        }
        if !orphans.is_empty() {
            return Err(orphans);
        }
    }
    Err(vec![ConfigError::new(
        "",
        "the objects did not settle into a valid mesh",
    )])
}

/// Which object each part of an assembled mesh came from.
#[derive(Default)]
struct Owners {
    services: Vec<ServiceOwners>,
    routes: Vec<ObjectRef>,
    proxies: Vec<ObjectRef>,
}

struct ServiceOwners {
    service: ObjectRef,
    policy: Option<ObjectRef>,
    authorization: Vec<ObjectRef>,
}

impl Owners {
    /// The object a mesh field path belongs to, and the path inside it.
    fn blame(&self, path: &str) -> Option<(ObjectRef, String)> {
        let (list, index, rest) = split_path(path)?;
        match list {
            "services" => {
                let owners = self.services.get(index)?;
                if let Some(rest) = rest.strip_prefix(".policy")
                    && let Some(policy) = &owners.policy
                {
                    return Some((policy.clone(), format!("spec{rest}")));
                }
                if let Some(rest) = rest.strip_prefix(".authorization[") {
                    let (j, rest) = rest.split_once(']')?;
                    let object = owners.authorization.get(j.parse::<usize>().ok()?)?;
                    return Some((object.clone(), format!("spec{rest}")));
                }
                Some((owners.service.clone(), format!("spec{rest}")))
            }
            "routes" => {
                let object = self.routes.get(index)?;
                let path = match rest.strip_prefix(".name") {
                    Some(_) => "metadata.name".to_string(),
                    None => format!("spec{rest}"),
                };
                Some((object.clone(), path))
            }
            "proxies" => Some((self.proxies.get(index)?.clone(), "metadata".to_string())),
            _ => None,
        }
    }
}

/// `services[3].policy.x` → (`services`, 3, `.policy.x`).
fn split_path(path: &str) -> Option<(&str, usize, &str)> {
    let (list, rest) = path.split_once('[')?;
    let (index, rest) = rest.split_once(']')?;
    Some((list, index.parse().ok()?, rest))
}

/// One port of a Kubernetes Service, as a mesh service.
struct PortEntry {
    port: u16,
    target: IntOrString,
    mesh_index: usize,
}

fn assemble(
    objects: &Objects,
    settings: &Settings,
    excluded: &HashSet<ObjectRef>,
    report: &mut Report,
) -> (Mesh, Owners) {
    let mut mesh = Mesh {
        trust_domain: settings.trust_domain.clone(),
        mtls: Some(settings.mtls),
        ..Mesh::default()
    };
    let mut owners = Owners::default();
    let live = |o: &ObjectRef| !excluded.contains(o);

    // Policies by the Service they target; of two on one Service the
    // oldest wins (GEP-713), then the first by namespace/name.
    let mut traffic: HashMap<(&str, &str), &objects::Traffic> = HashMap::new();
    let mut policies: Vec<&objects::Traffic> = objects
        .traffic
        .iter()
        .map(|p| &**p)
        .filter(|p| live(&p.object))
        .collect();
    policies.sort_by(|a, b| a.order().cmp(&b.order()));
    for policy in policies {
        for target in &policy.spec.target_refs {
            let key = (policy.object.namespace.as_str(), target.name.as_str());
            match traffic.get(&key) {
                Some(winner) if winner.object != policy.object => {
                    report
                        .objects
                        .entry(policy.object.clone())
                        .or_insert(Verdict::Rejected {
                            reason: "Conflicted",
                            message: format!(
                                "spec.targetRefs: Service {} already has {}",
                                target.name, winner.object
                            ),
                        });
                }
                _ => {
                    traffic.insert(key, policy);
                }
            }
        }
    }

    let index = Index::new(objects, excluded);
    let mut ports_of: HashMap<(&str, &str), Vec<PortEntry>> = HashMap::new();
    for (s, service) in objects.services.iter().enumerate() {
        if !live(&service.object) {
            continue;
        }
        let spec = &service.spec;
        let addresses: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let identity = index.pods_of_service[s]
            .first()
            .map(|&p| service_account(&objects.pods[p]).to_string())
            .unwrap_or_else(|| "default".to_string());
        let policy = traffic
            .get(&(
                service.object.namespace.as_str(),
                service.object.name.as_str(),
            ))
            .copied();
        let authorization: Vec<&objects::Authorization> = objects
            .authorization
            .iter()
            .map(|a| &**a)
            .filter(|a| {
                live(&a.object)
                    && a.object.namespace == service.object.namespace
                    && a.spec
                        .target_refs
                        .iter()
                        .any(|t| t.name == service.object.name)
            })
            .collect();
        let several = spec.ports.len() > 1;
        let mut entries = Vec::new();
        for port in &spec.ports {
            let name = if several {
                format!("{}-{}", service.object.name, port.port)
            } else {
                service.object.name.clone()
            };
            let mut policy_spec = policy.map(|p| p.spec.clone()).unwrap_or_default();
            policy_spec.target_refs.clear();
            entries.push(PortEntry {
                port: port.port,
                target: port.target.clone(),
                mesh_index: mesh.services.len(),
            });
            mesh.services.push(mesh::Service {
                name,
                namespace: service.object.namespace.clone(),
                port: port.port,
                addresses: addresses.clone(),
                protocol: port.protocol,
                endpoints: endpoints(&index, service, port),
                policy: policy_spec,
                identity: identity.clone(),
                authorization: authorization
                    .iter()
                    .map(|a| {
                        let mut config = a.spec.clone();
                        config.name = a.object.name.clone();
                        config.target_refs.clear();
                        config
                    })
                    .collect(),
            });
            owners.services.push(ServiceOwners {
                service: service.object.clone(),
                policy: policy.map(|p| p.object.clone()),
                authorization: authorization.iter().map(|a| a.object.clone()).collect(),
            });
        }
        ports_of.insert(
            (
                service.object.namespace.as_str(),
                service.object.name.as_str(),
            ),
            entries,
        );
    }

    // A policy none of whose Services exists applies to nothing (GEP-713's
    // TargetNotFound).
    let targets = objects
        .traffic
        .iter()
        .map(|p| (&p.object, &p.spec.target_refs))
        .chain(
            objects
                .authorization
                .iter()
                .map(|a| (&a.object, &a.spec.target_refs)),
        );
    for (object, refs) in targets.filter(|(o, _)| live(o)) {
        let found = refs
            .iter()
            .any(|t| ports_of.contains_key(&(object.namespace.as_str(), t.name.as_str())));
        if !found && !report.objects.contains_key(object) {
            let names: Vec<&str> = refs.iter().map(|t| t.name.as_str()).collect();
            report.reject(
                object.clone(),
                "TargetNotFound",
                format!(
                    "spec.targetRefs: no Service {} in {}",
                    names.join(", "),
                    object.namespace
                ),
            );
        }
    }

    for route in objects.routes.iter().filter(|r| live(&r.object)) {
        match gamma_route(route, &ports_of, &mesh) {
            Ok(Some(mesh_route)) => {
                mesh.routes.push(mesh_route);
                owners.routes.push(route.object.clone());
            }
            Ok(None) => {}
            Err((reason, message)) => report.reject(route.object.clone(), reason, message),
        }
    }

    for (p, pod) in objects.pods.iter().enumerate() {
        if !live(&pod.object) {
            continue;
        }
        if let Some(entry) = proxy_entry(objects, p, &index, &ports_of, &mesh) {
            mesh.proxies.push(entry);
            owners.proxies.push(pod.object.clone());
        }
    }
    (mesh, owners)
}

fn service_account(pod: &objects::PodObject) -> &str {
    pod.service_account.as_deref().unwrap_or("default")
}

/// Who selects whom, and which slices belong to which Service, computed
/// once per build: the build stays linear in the objects (a cluster of
/// thousands of Services and pods rebuilds in milliseconds).
struct Index<'a> {
    /// By Service (its index in `objects.services`): the pods its selector
    /// picks in its namespace, by name (none without a selector).
    pods_of_service: Vec<Vec<usize>>,
    /// By pod: the Services that select it.
    services_of_pod: Vec<Vec<usize>>,
    /// By (namespace, Service name): its slices.
    slices: HashMap<(&'a str, &'a str), Vec<&'a objects::SliceObject>>,
}

impl<'a> Index<'a> {
    fn new(objects: &'a Objects, excluded: &HashSet<ObjectRef>) -> Index<'a> {
        // Pods by one label: (namespace, key, value) → pods.
        let mut by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        for (p, pod) in objects.pods.iter().enumerate() {
            if excluded.contains(&pod.object) {
                continue;
            }
            for (k, v) in &pod.labels {
                by_label
                    .entry((pod.object.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(p);
            }
        }
        let mut pods_of_service = vec![Vec::new(); objects.services.len()];
        let mut services_of_pod = vec![Vec::new(); objects.pods.len()];
        for (s, service) in objects.services.iter().enumerate() {
            let Some(selector) = service.spec.selector.as_ref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let ns = service.object.namespace.as_str();
            // The smallest candidate set among the selector's labels.
            let candidates = selector
                .iter()
                .map(|(k, v)| {
                    by_label
                        .get(&(ns, k.as_str(), v.as_str()))
                        .map_or(&[][..], Vec::as_slice)
                })
                .min_by_key(|c| c.len())
                .unwrap_or(&[]);
            let mut selected: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&p| {
                    let labels = &objects.pods[p].labels;
                    selector
                        .iter()
                        .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
                })
                .collect();
            selected.sort_by(|a, b| objects.pods[*a].object.cmp(&objects.pods[*b].object));
            for &p in &selected {
                services_of_pod[p].push(s);
            }
            pods_of_service[s] = selected;
        }
        let mut slices: HashMap<(&str, &str), Vec<&objects::SliceObject>> = HashMap::new();
        for slice in objects
            .slices
            .iter()
            .filter(|s| !excluded.contains(&s.object))
        {
            slices
                .entry((slice.object.namespace.as_str(), slice.service.as_str()))
                .or_default()
                .push(slice);
        }
        Index {
            pods_of_service,
            services_of_pod,
            slices,
        }
    }
}

/// Ready endpoints of the Service's slices on this port; when none is
/// ready, the serving ones (terminating but still serving, as kube-proxy
/// falls back to them).
fn endpoints(
    index: &Index<'_>,
    service: &objects::ServiceObject,
    port: &objects::ServicePort,
) -> Vec<MeshEndpoint> {
    let mut ready = Vec::new();
    let mut serving = Vec::new();
    let key = (
        service.object.namespace.as_str(),
        service.object.name.as_str(),
    );
    for slice in index.slices.get(&key).into_iter().flatten() {
        let Some(slice_port) = slice
            .ports
            .iter()
            .find(|(name, _)| *name == port.name)
            .map(|(_, number)| *number)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            for address in &endpoint.addresses {
                let entry = MeshEndpoint {
                    address: SocketAddr::new(*address, slice_port),
                    weight: 1,
                    zone: endpoint.zone.clone(),
                };
                if endpoint.ready {
                    ready.push(entry);
                } else if endpoint.serving {
                    serving.push(entry);
                }
            }
        }
    }
    let mut out = if ready.is_empty() { serving } else { ready };
    out.sort_by_key(|e| e.address);
    out.dedup_by_key(|e| e.address);
    out
}

/// An HTTPRoute or GRPCRoute with Service parents, in mesh terms: a
/// multi-port Service's ports are mesh services of their own
/// (`NAME-PORT`). `None`: no Service parent, not a mesh route.
fn gamma_route(
    route: &RouteObject,
    ports_of: &HashMap<(&str, &str), Vec<PortEntry>>,
    mesh: &Mesh,
) -> Result<Option<Route>, (&'static str, String)> {
    let namespace = &route.object.namespace;
    let mut parent_refs = Vec::new();
    for (j, parent) in route.spec.parent_refs.iter().enumerate() {
        let core = parent.group.as_deref().is_none_or(str::is_empty);
        if parent.kind != "Service" || !core {
            // A Gateway parent: another controller's business.
            continue;
        }
        if let Some(section) = &parent.section_name {
            return Err((
                "Invalid",
                format!(
                    "spec.parentRefs[{j}].sectionName: {section:?}: a Service parent is chosen by port"
                ),
            ));
        }
        let ns = parent.namespace.as_deref().unwrap_or(namespace);
        let Some(ports) = ports_of.get(&(ns, parent.name.as_str())) else {
            return Err((
                "BackendNotFound",
                format!("spec.parentRefs[{j}].name: no Service {ns}/{}", parent.name),
            ));
        };
        let chosen: Vec<&PortEntry> = ports
            .iter()
            .filter(|p| parent.port.is_none_or(|port| port == p.port))
            .collect();
        if chosen.is_empty() {
            return Err((
                "Invalid",
                format!(
                    "spec.parentRefs[{j}].port: Service {ns}/{} has no port {}",
                    parent.name,
                    parent.port.unwrap_or_default()
                ),
            ));
        }
        for entry in chosen {
            let mut mesh_parent = parent.clone();
            mesh_parent.name = mesh.services[entry.mesh_index].name.clone();
            mesh_parent.group = None;
            parent_refs.push(mesh_parent);
        }
    }
    if parent_refs.is_empty() {
        return Ok(None);
    }
    let mut rules = route.spec.rules.clone();
    for (j, rule) in rules.iter_mut().enumerate() {
        for (k, backend) in rule.backend_refs.iter_mut().enumerate() {
            let at = format!("spec.rules[{j}].backendRefs[{k}]");
            let core = backend.group.as_deref().is_none_or(str::is_empty);
            if backend.kind != "Service" || !core {
                return Err((
                    "InvalidKind",
                    format!("{at}.kind: {:?}: only Service backends", backend.kind),
                ));
            }
            let ns = backend.namespace.as_deref().unwrap_or(namespace);
            let Some(ports) = ports_of.get(&(ns, backend.name.as_str())) else {
                return Err((
                    "BackendNotFound",
                    format!("{at}.name: no Service {ns}/{}", backend.name),
                ));
            };
            let entry = match backend.port {
                Some(port) => ports.iter().find(|p| p.port == port),
                None if ports.len() == 1 => ports.first(),
                None => {
                    return Err((
                        "Invalid",
                        format!(
                            "{at}.port: required: Service {ns}/{} has several ports",
                            backend.name
                        ),
                    ));
                }
            };
            let Some(entry) = entry else {
                return Err((
                    "BackendNotFound",
                    format!(
                        "{at}.port: Service {ns}/{} has no port {}",
                        backend.name,
                        backend.port.unwrap_or_default()
                    ),
                ));
            };
            backend.name = mesh.services[entry.mesh_index].name.clone();
            backend.group = None;
        }
    }
    Ok(Some(Route {
        kind: route.kind,
        name: route.object.name.clone(),
        namespace: namespace.clone(),
        parent_refs,
        rules,
    }))
}

/// A running pod with the sidecar: node id `POD.NAMESPACE`, its traffic
/// captured; inbound, each port of each Service that selects it; outbound,
/// every Service with a cluster IP (`outbound_all`: built once, shared).
fn proxy_entry(
    objects: &Objects,
    p: usize,
    index: &Index<'_>,
    ports_of: &HashMap<(&str, &str), Vec<PortEntry>>,
    mesh: &Mesh,
) -> Option<ProxyEntry> {
    let pod = &objects.pods[p];
    if !pod.sidecar {
        return None;
    }
    let ip = pod.ip?;
    let mut inbound: Vec<Inbound> = Vec::new();
    for &s in &index.services_of_pod[p] {
        let service = &objects.services[s];
        let key = (
            service.object.namespace.as_str(),
            service.object.name.as_str(),
        );
        for entry in ports_of.get(&key).into_iter().flatten() {
            let target = match &entry.target {
                IntOrString::Int(port) => u16::try_from(*port).ok(),
                IntOrString::String(name) => pod.ports.get(name).copied(),
            };
            let Some(target) = target else { continue };
            let listen = SocketAddr::new(ip, target);
            if inbound.iter().any(|i| i.listen == listen) {
                continue;
            }
            inbound.push(Inbound {
                service: mesh.services[entry.mesh_index].key(),
                listen,
                target: SocketAddr::new(
                    if ip.is_ipv4() {
                        IpAddr::from([127, 0, 0, 1])
                    } else {
                        IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                    },
                    target,
                ),
            });
        }
    }
    Some(ProxyEntry {
        node_id: format!("{}.{}", pod.object.name, pod.object.namespace),
        capture: true,
        identity: Some(format!("{}.{}", service_account(pod), pod.object.namespace)),
        inbound,
        outbound: Vec::new(),
        outbound_all: true,
    })
}

/// How a Service port is spoken: its `appProtocol`, else its name's prefix
/// (`grpc-`, `http2-`, `h2c-`, `http-`, `tcp-`), else HTTP.
fn port_protocol(app_protocol: Option<&str>, name: &str) -> ServiceProtocol {
    let by_name = |name: &str| {
        let prefix = name.split('-').next().unwrap_or(name);
        match prefix {
            "grpc" | "grpc_web" => Some(ServiceProtocol::Grpc),
            "http2" | "h2c" => Some(ServiceProtocol::Http2),
            "http" => Some(ServiceProtocol::Http),
            "tcp" | "tls" | "mongo" | "mysql" | "redis" => Some(ServiceProtocol::Tcp),
            _ => None,
        }
    };
    match app_protocol {
        Some("kubernetes.io/h2c") | Some("http2") | Some("h2c") => ServiceProtocol::Http2,
        Some("grpc") => ServiceProtocol::Grpc,
        Some("http") | Some("kubernetes.io/http") => ServiceProtocol::Http,
        Some("tcp") | Some("kubernetes.io/tls") | Some("tls") => ServiceProtocol::Tcp,
        Some(other) => by_name(other).unwrap_or(ServiceProtocol::Tcp),
        None => by_name(name).unwrap_or(ServiceProtocol::Http),
    }
}

#[cfg(test)]
mod tests;

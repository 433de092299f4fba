//! The mesh file: the standalone source of services, routes, traffic
//! policies and the proxies that serve them.
//!
//! Routes have the shape of the Gateway API's HTTPRoute and GRPCRoute (with
//! a Service as parent, as GAMMA does), written in camelCase as in
//! Kubernetes; a service's traffic policy uses the proxy's own YAML field
//! names (`load_balancer`, `outlier_detection`, ...), so the same policy reads
//! the same in a proxy file, a mesh file and, later, a CRD spec.

mod load;
pub(crate) mod validate;
pub mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;

pub use remora_api::TrafficPolicySpec as TrafficPolicy;
pub use remora_api::route::{
    BackendRef, FilterType, GrpcMethod, HeaderModifier, HeaderValue, MethodMatch, ParentRef,
    PathMatch, PathMatchType, Retry, RouteFilter, RouteMatch, RouteRule, Timeouts, ValueMatch,
    ValueMatchType,
};
use remora_api::scalar;
use serde::{Deserialize, Serialize};

pub use load::{load_file, parse_yaml, parse_yaml_with};
use remora_api::identity::SpiffeId;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mesh {
    /// The SPIFFE trust domain of every identity in the mesh.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Mutual TLS between the mesh's proxies: `strict` puts mTLS on every
    /// inbound listener and every service's cluster, `permissive` also
    /// takes plaintext on inbound listeners, `disabled` none. Absent:
    /// `strict` when the control plane runs a CA, else `disabled`. Proxies
    /// need `identity:` (docs/security.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<remora_api::MtlsMode>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub proxies: Vec<ProxyEntry>,
    /// Distributed tracing for every proxy of the mesh, Envoy and
    /// remora-proxy alike: the HTTP connection managers' OpenTelemetry
    /// tracer, exporting to one OTLP/gRPC collector (docs/observability.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<MeshTracing>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeshTracing {
    /// `IP:PORT` of the OTLP/gRPC collector (usually port 4317).
    #[serde(with = "scalar::socket_addr")]
    pub collector: std::net::SocketAddr,
    /// The share of new traces sampled (0.0 to 1.0); a request that carries
    /// a sampling decision keeps it.
    #[serde(default = "default_sampling")]
    pub sampling: f64,
}

fn default_sampling() -> f64 {
    0.01
}

/// The collector's cluster in every proxy's resources.
pub const COLLECTOR_CLUSTER: &str = "remora-otlp-collector";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub port: u16,
    /// The service's virtual IPs (a Kubernetes ClusterIP), which
    /// applications dial: in sidecar mode (`capture: true`) each is an
    /// original destination the proxy routes to the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<std::net::IpAddr>,
    #[serde(default)]
    pub protocol: ServiceProtocol,
    /// `IP:PORT` or `{address, weight, zone}`.
    #[serde(default)]
    pub endpoints: Vec<MeshEndpoint>,
    #[serde(default)]
    pub policy: TrafficPolicy,
    /// The service account the service's workloads run as: the identity
    /// its callers expect (`spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/IDENTITY`).
    #[serde(default = "default_service_account")]
    pub identity: String,
    /// Who may call the service: Istio's semantics (a matching `deny`
    /// policy denies; with any `allow` policy, only what one allows
    /// passes), enforced on every inbound listener of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<remora_api::AuthorizationPolicyConfig>,
}

pub fn default_namespace() -> String {
    "default".to_string()
}

fn default_service_account() -> String {
    "default".to_string()
}

fn default_trust_domain() -> String {
    remora_api::identity::DEFAULT_TRUST_DOMAIN.to_string()
}

impl Default for Mesh {
    fn default() -> Mesh {
        Mesh {
            trust_domain: default_trust_domain(),
            mtls: None,
            services: Vec::new(),
            routes: Vec::new(),
            proxies: Vec::new(),
            tracing: None,
        }
    }
}

impl Service {
    /// `name.namespace`, the service's identity in resource names.
    pub fn key(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceProtocol {
    /// HTTP/1.1 to the endpoints (clients may use HTTP/1.1 or h2c).
    #[default]
    Http,
    /// HTTP/2 with prior knowledge to the endpoints.
    Http2,
    /// HTTP/2 to the endpoints; routes are GRPCRoutes.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl ServiceProtocol {
    pub fn is_http(self) -> bool {
        self != ServiceProtocol::Tcp
    }
}

/// `127.0.0.1:8081` or `{address: 127.0.0.1:8081, weight: 3, zone: a}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshEndpoint {
    #[serde(with = "scalar::socket_addr")]
    pub address: SocketAddr,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFields {
    #[serde(with = "scalar::socket_addr")]
    address: SocketAddr,
    #[serde(default = "remora_api::route::default_weight")]
    weight: u32,
    #[serde(default)]
    zone: Option<String>,
}

impl<'de> Deserialize<'de> for MeshEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar::string_or_map(
            d,
            "an endpoint: IP:PORT, or {address: IP:PORT, weight: N, zone: NAME}",
            |text| {
                Ok(MeshEndpoint {
                    address: scalar::parse_socket_addr(text)?,
                    weight: 1,
                    zone: None,
                })
            },
            |f: EndpointFields| MeshEndpoint {
                address: f.address,
                weight: f.weight,
                zone: f.zone,
            },
        )
    }
}

/// An HTTPRoute or GRPCRoute whose parent is a Service (GAMMA).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    pub kind: RouteKind,
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum RouteKind {
    #[serde(rename = "HTTPRoute")]
    Http,
    #[serde(rename = "GRPCRoute")]
    Grpc,
}

/// One proxy, or a family of proxies sharing a configuration (`node_id`
/// ending in `*` is a prefix).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyEntry {
    pub node_id: String,
    /// Sidecar mode: the pod's traffic is captured (`remora-proxy init`)
    /// and arrives at capture listeners on 15001 (outbound) and 15006
    /// (inbound); each outbound service is a listener at its address and
    /// port that binds no socket, each inbound one at its `listen`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capture: bool,
    /// The service account the proxy's workload runs as (`NAME`, or
    /// `NAME.NAMESPACE`; the namespace defaults to its first inbound
    /// service's). Absent: the first inbound service's `identity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Traffic into the workload: the service it serves.
    #[serde(default)]
    pub inbound: Vec<Inbound>,
    /// Services the workload may call, each at a local listener.
    #[serde(default)]
    pub outbound: Vec<Outbound>,
    /// Sidecar mode: the workload may call every service that has
    /// addresses, at them (Istio's default without a Sidecar resource).
    /// Their resources are built once and shared by every such proxy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outbound_all: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// `name` or `name.namespace`.
    pub service: String,
    /// Where the proxy accepts the service's traffic.
    #[serde(with = "scalar::socket_addr")]
    pub listen: SocketAddr,
    /// The workload itself.
    #[serde(with = "scalar::socket_addr")]
    pub target: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// `name` or `name.namespace`.
    pub service: String,
    /// Where the workload sends its requests for the service. Sidecar mode:
    /// the original destination it dials; absent, each of the service's
    /// `addresses` at its port.
    #[serde(
        default,
        with = "scalar::socket_addr::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub listen: Option<SocketAddr>,
}

/// The outbound capture port `remora-proxy init` redirects to.
pub const CAPTURE_OUTBOUND_PORT: u16 = 15001;
/// The inbound capture port `remora-proxy init` redirects to.
pub const CAPTURE_INBOUND_PORT: u16 = 15006;

impl Outbound {
    /// The addresses the workload reaches the service at: `listen`, or in
    /// sidecar mode the service's addresses at its port.
    pub fn listens(&self, service: &Service) -> Vec<SocketAddr> {
        match self.listen {
            Some(listen) => vec![listen],
            None => service
                .addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, service.port))
                .collect(),
        }
    }
}

impl ProxyEntry {
    pub fn matches(&self, node_id: &str) -> bool {
        match self.node_id.strip_suffix('*') {
            Some(prefix) => node_id.starts_with(prefix),
            None => self.node_id == node_id,
        }
    }
}

/// The services of a mesh by name and namespace, for lookups in loops
/// over thousands of proxies or routes (a scan each would be quadratic).
pub struct ServiceIndex<'a> {
    mesh: &'a Mesh,
    by_name: HashMap<(&'a str, &'a str), usize>,
}

impl<'a> ServiceIndex<'a> {
    /// The position of the service `name` in `namespace` (the first, if
    /// an invalid mesh has two).
    pub fn position(&self, name: &str, namespace: &str) -> Option<usize> {
        self.by_name.get(&(name, namespace)).copied()
    }

    /// The service `name` in `namespace`.
    pub fn find(&self, name: &str, namespace: &str) -> Option<&'a Service> {
        self.position(name, namespace)
            .map(|i| &self.mesh.services[i])
    }

    /// The service named `name` or `name.namespace` (namespace defaulting to `namespace`).
    pub fn get(&self, reference: &str, namespace: &str) -> Option<&'a Service> {
        let (name, ns) = reference.split_once('.').unwrap_or((reference, namespace));
        self.find(name, ns)
    }
}

impl Mesh {
    pub fn service_index(&self) -> ServiceIndex<'_> {
        let mut by_name = HashMap::with_capacity(self.services.len());
        for (i, service) in self.services.iter().enumerate() {
            by_name
                .entry((service.name.as_str(), service.namespace.as_str()))
                .or_insert(i);
        }
        ServiceIndex {
            mesh: self,
            by_name,
        }
    }

    /// The mesh's mTLS mode (`disabled` if never resolved).
    pub fn mtls_mode(&self) -> remora_api::MtlsMode {
        self.mtls.unwrap_or(remora_api::MtlsMode::Disabled)
    }

    /// A service's workload identity.
    pub fn service_identity(&self, service: &Service) -> Result<SpiffeId, String> {
        SpiffeId::new(&self.trust_domain, &service.namespace, &service.identity)
    }

    /// The identity a proxy entry's workload runs as.
    pub fn proxy_identity(
        &self,
        entry: &ProxyEntry,
        services: &ServiceIndex<'_>,
    ) -> Result<SpiffeId, String> {
        let inbound = entry
            .inbound
            .first()
            .and_then(|i| services.get(&i.service, "default"));
        let namespace = inbound.map_or("default", |s| s.namespace.as_str());
        match &entry.identity {
            Some(identity) => {
                let (account, namespace) =
                    identity.split_once('.').unwrap_or((identity, namespace));
                SpiffeId::new(&self.trust_domain, namespace, account)
            }
            None => match inbound {
                Some(service) => self.service_identity(service),
                None => SpiffeId::new(&self.trust_domain, namespace, "default"),
            },
        }
    }

    /// The proxy entry for a node: an exact `node_id` first, then the longest prefix.
    pub fn proxy_for(&self, node_id: &str) -> Option<usize> {
        self.proxies
            .iter()
            .position(|p| p.node_id == node_id)
            .or_else(|| self.proxy_by_prefix(node_id))
    }

    /// The entry whose `prefix*` node id is the longest that matches.
    pub fn proxy_by_prefix(&self, node_id: &str) -> Option<usize> {
        self.proxies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.node_id.ends_with('*') && p.matches(node_id))
            .max_by_key(|(_, p)| p.node_id.len())
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(yaml: &str) -> String {
        parse_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn the_example_mesh_parses() {
        let mesh = parse_yaml(include_str!("../../../examples/mesh/mesh.yaml")).unwrap();
        assert!(mesh.services.len() >= 2);
        assert!(!mesh.proxies.is_empty());
    }

    /// Found by fuzz_the_mesh_file: a node id ending in a multibyte
    /// character made the `*` check slice inside it and panic.
    #[test]
    fn node_ids_ending_in_any_character_are_checked_without_panicking() {
        let mesh = parse_yaml("proxies: [{node_id: \"client\u{b3}\", outbound: []}]").unwrap();
        assert_eq!(mesh.proxies[0].node_id, "client\u{b3}");
        let e = errors_of("proxies: [{node_id: \"a*\u{e9}\", outbound: []}]");
        assert!(e.contains("* may only end the id"), "{e}");
    }

    #[test]
    fn shape_errors_name_the_field_path() {
        let e = errors_of("services: [{name: a, port: 80, bogus: 1}]");
        assert!(
            e.starts_with("services[0].bogus: unknown field `bogus`"),
            "{e}"
        );
        let e = errors_of("services: [{name: a, port: 80, endpoints: [nowhere]}]");
        assert!(e.starts_with("services[0].endpoints[0]"), "{e}");
        let e = errors_of(
            "services: [{name: a, port: 80, policy: {load_balancer: {policy: fastest}}}]",
        );
        assert!(
            e.starts_with("services[0].policy.load_balancer.policy"),
            "{e}"
        );
    }

    #[test]
    fn reference_and_semantic_errors_name_the_field_path() {
        let yaml = "
services:
  - {name: a, port: 80}
  - {name: a, port: 81}
  - {name: t, port: 90, protocol: tcp}
  - {name: h, port: 80, policy: {load_balancer: {hash_on: {header: x}}, rate_limit: {requests_per_second: 5, key: source_ip}}}
routes:
  - kind: HTTPRoute
    name: r
    parentRefs: [{name: t}]
    rules:
      - matches: [{path: {type: RegularExpression, value: '(('}, headers: [{name: 'bad header', value: x}]}]
        backendRefs: [{name: missing}]
  - kind: GRPCRoute
    name: g
    parentRefs: [{name: a, port: 81}]
    rules: [{matches: [{method: GET}]}]
proxies:
  - {node_id: p, outbound: [{service: nope, listen: 127.0.0.1:1}]}
  - {node_id: p, inbound: [{service: a, listen: 127.0.0.1:1, target: 127.0.0.1:2}], outbound: [{service: a, listen: 127.0.0.1:1}]}
";
        let e = errors_of(yaml);
        for expected in [
            "services[1].name: duplicate service \"a.default\"",
            "services[3].policy.load_balancer.hash_on: only for ring_hash and maglev",
            "services[3].policy.rate_limit.key: \"source_ip\": over xDS a rate limit is one bucket per proxy",
            "routes[0].parentRefs[0].name: service \"t.default\" is TCP",
            "routes[0].rules[0].matches[0].path.value: invalid regex \"((\"",
            "routes[0].rules[0].matches[0].headers[0].name: \"bad header\" is not a valid header name",
            "routes[0].rules[0].backendRefs[0].name: no service \"missing.default\"",
            "routes[1].parentRefs[0].port: service \"a.default\" has port 80",
            "routes[1].rules[0].matches[0].method: a GRPCRoute method is {service, method}",
            "proxies[0].outbound[0].service: no service \"nope.default\"",
            "proxies[1].node_id: duplicate node id \"p\"",
            "proxies[1].outbound[0].listen: 127.0.0.1:1 is also proxies[1].inbound[0].listen",
        ] {
            assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
        }
    }

    /// Every whole mesh file shown in the docs parses and validates.
    #[test]
    fn every_mesh_in_the_docs_is_valid() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut checked = 0;
        for entry in std::fs::read_dir(root.join("docs")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for rest in text.split("```yaml\n").skip(1) {
                let block = rest.split("```").next().unwrap();
                let mesh = block.lines().any(|l| l.starts_with("services:"))
                    && block.lines().any(|l| l.starts_with("proxies:"));
                if !mesh || block.contains("...") {
                    continue;
                }
                parse_yaml(block).unwrap_or_else(|e| panic!("{}: {e}\n{block}", path.display()));
                checked += 1;
            }
        }
        assert!(checked >= 3, "{checked} meshes found in the docs");
    }

    #[test]
    fn mesh_mtls_modes_are_checked() {
        use remora_api::MtlsMode;
        assert!(parse_yaml("mtls: permissive").is_ok());
        let e = errors_of("mtls: sometimes");
        assert!(e.contains("mtls"), "{e}");
        // Absent: what the control plane says (strict with a CA).
        assert_eq!(parse_yaml("").unwrap().mtls, Some(MtlsMode::Disabled));
        assert_eq!(
            parse_yaml_with("", MtlsMode::Strict).unwrap().mtls,
            Some(MtlsMode::Strict)
        );
        assert_eq!(
            parse_yaml_with("mtls: disabled", MtlsMode::Strict)
                .unwrap()
                .mtls,
            Some(MtlsMode::Disabled)
        );
        let e = parse_yaml_with(
            "services: [{name: a, port: 80, policy: {health_check: {http: {path: /h}}}}]",
            MtlsMode::Strict,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("strict by default"), "{e}");
        let e = errors_of(
            "mtls: strict\nservices: [{name: a, port: 80, policy: {health_check: {http: {path: /h}}}}]",
        );
        assert!(
            e.contains(
                "services[0].policy.health_check: HTTP and gRPC health checks do not speak mTLS yet"
            ),
            "{e}"
        );
        assert!(parse_yaml("mtls: strict").is_ok());
    }

    #[test]
    fn sidecar_entries_reach_services_at_their_addresses() {
        let yaml = "
services:
  - {name: a, port: 80, addresses: [10.96.0.1]}
  - {name: b, port: 81}
proxies:
  - {node_id: plain, outbound: [{service: a}]}
  - {node_id: side, capture: true, outbound: [{service: a}, {service: b}]}
  - {node_id: clash, capture: true, outbound: [{service: a}, {service: b, listen: 10.96.0.2:15001}]}
  - {node_id: dup, capture: true, outbound: [{service: a}, {service: a, listen: 10.96.0.1:80}]}
  - {node_id: everything, outbound_all: true}
";
        let e = errors_of(yaml);
        for expected in [
            "proxies[0].outbound[0].listen: required (only a sidecar, capture: true, reaches services at their addresses)",
            "proxies[1].outbound[1].listen: required: service \"b.default\" has no addresses to capture",
            "proxies[2].outbound[1].listen: port 15001 is the sidecar's outbound capture port",
            "proxies[3].outbound[1].listen: 10.96.0.1:80 is also proxies[3].outbound[0].listen",
            "proxies[4].outbound_all: only a sidecar (capture: true) reaches services at their addresses",
        ] {
            assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
        }
        let mesh = parse_yaml(
            "
services: [{name: a, port: 80, addresses: [10.96.0.1, 'fd00::1']}]
proxies: [{node_id: side, capture: true, outbound: [{service: a}]}]
",
        )
        .unwrap();
        let entry = &mesh.proxies[0];
        assert_eq!(
            entry.outbound[0].listens(&mesh.services[0]),
            [
                "10.96.0.1:80".parse().unwrap(),
                "[fd00::1]:80".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_node_finds_its_exact_entry_first_then_the_longest_prefix() {
        let mesh = parse_yaml(
            "
proxies:
  - {node_id: 'web-*'}
  - {node_id: 'web-canary-*'}
  - {node_id: web-1}
",
        )
        .unwrap();
        assert_eq!(mesh.proxy_for("web-1"), Some(2));
        assert_eq!(mesh.proxy_for("web-canary-7"), Some(1));
        assert_eq!(mesh.proxy_for("web-2"), Some(0));
        assert_eq!(mesh.proxy_for("api-1"), None);
    }
}

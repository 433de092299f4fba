//! The Kubernetes objects the mesh is built from, each read from its JSON
//! form (a manifest document, or later an API server's answer) into what
//! the mesh needs. An object that does not parse is reported by field path.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use remora_api::route::{ParentRef, RouteRule};
use remora_api::{AuthorizationPolicyConfig, TrafficPolicySpec};
use serde::Deserialize;

use super::{ObjectRef, Report, SERVICE_NAME_LABEL, SIDECAR_CONTAINER, port_protocol};
use crate::mesh::{RouteKind, ServiceProtocol};

/// Every object read, and the ones that could not be.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub(super) services: Vec<Arc<ServiceObject>>,
    pub(super) slices: Vec<Arc<SliceObject>>,
    pub(super) pods: Vec<Arc<PodObject>>,
    pub(super) routes: Vec<Arc<RouteObject>>,
    pub(super) traffic: Vec<Arc<Traffic>>,
    pub(super) authorization: Vec<Arc<Authorization>>,
    /// Objects that did not parse, with why.
    pub(super) report: Report,
    /// Documents of kinds Remora does not read (Deployments, ConfigMaps...).
    pub ignored: usize,
}

#[derive(Debug, Clone)]
pub(super) struct ServiceObject {
    pub(super) object: ObjectRef,
    pub(super) spec: ServiceSpec,
}

#[derive(Debug, Clone)]
pub(super) struct ServiceSpec {
    pub(super) cluster_ips: Vec<String>,
    pub(super) selector: Option<BTreeMap<String, String>>,
    pub(super) ports: Vec<ServicePort>,
}

#[derive(Debug, Clone)]
pub(super) struct ServicePort {
    pub(super) port: u16,
    /// `""` on a single unnamed port, as on its EndpointSlice port.
    pub(super) name: String,
    pub(super) target: IntOrString,
    pub(super) protocol: ServiceProtocol,
}

#[derive(Debug, Clone)]
pub(super) struct SliceObject {
    pub(super) object: ObjectRef,
    /// The Service it belongs to (its `kubernetes.io/service-name` label).
    pub(super) service: String,
    /// Port name → number.
    pub(super) ports: Vec<(String, u16)>,
    pub(super) endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone)]
pub(super) struct SliceEndpoint {
    pub(super) addresses: Vec<IpAddr>,
    pub(super) ready: bool,
    pub(super) serving: bool,
    pub(super) zone: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) struct PodObject {
    pub(super) object: ObjectRef,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) service_account: Option<String>,
    /// None until it is scheduled and running.
    pub(super) ip: Option<IpAddr>,
    /// It runs the `remora-proxy` sidecar.
    pub(super) sidecar: bool,
    /// Named container ports.
    pub(super) ports: HashMap<String, u16>,
}

/// An HTTPRoute or GRPCRoute (`gateway.networking.k8s.io/v1`).
#[derive(Debug, Clone)]
pub struct RouteObject {
    pub(super) object: ObjectRef,
    pub(super) kind: RouteKind,
    pub(super) spec: RouteSpec,
}

impl RouteObject {
    /// A mesh route (GAMMA): one of its parents is a Service. The others
    /// belong to a Gateway's controller.
    pub(super) fn has_service_parent(&self) -> bool {
        self.spec
            .parent_refs
            .iter()
            .any(|p| p.kind == "Service" && p.group.as_deref().is_none_or(str::is_empty))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RouteSpec {
    #[serde(default)]
    pub(super) parent_refs: Vec<ParentRef>,
    /// Ignored for Service parents, as GAMMA says.
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) hostnames: Vec<String>,
    #[serde(default)]
    pub(super) rules: Vec<RouteRule>,
}

#[derive(Debug, Clone)]
pub(super) struct Traffic {
    pub(super) object: ObjectRef,
    pub(super) created: Option<Time>,
    pub(super) spec: TrafficPolicySpec,
}

impl Traffic {
    /// GEP-713's precedence: the oldest first, then by namespace and name.
    pub(super) fn order(&self) -> (Option<&Time>, &str, &str) {
        (
            self.created.as_ref(),
            &self.object.namespace,
            &self.object.name,
        )
    }
}

#[derive(Debug, Clone)]
pub(super) struct Authorization {
    pub(super) object: ObjectRef,
    pub(super) spec: AuthorizationPolicyConfig,
}

/// The parts every object has.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
}

/// A custom or Gateway API object: metadata and a spec of our types.
#[derive(Deserialize)]
struct Custom<S> {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: S,
}

/// What one object gave when read: kept by the Kubernetes source from one
/// rebuild to the next while the object's `resourceVersion` stays, so an
/// unchanged object is not read again (nor copied: a rebuild's [`Objects`]
/// shares the kept ones).
#[derive(Debug, Clone)]
pub(super) enum Parsed {
    Service(Arc<ServiceObject>),
    Slice(Arc<SliceObject>),
    /// `None`: not running, or without an address yet.
    Pod(Option<Arc<PodObject>>),
    Route(Arc<RouteObject>),
    Traffic(Arc<Traffic>),
    Authorization(Arc<Authorization>),
    /// A kind Remora reads that did not parse, with why.
    Invalid(ObjectRef, String),
    /// A kind Remora does not read.
    Ignored,
    /// A `List`'s items, each read on its own.
    List(Vec<serde_json::Value>),
}

impl Objects {
    /// Reads one object (a `List` is read item by item). Kinds Remora does
    /// not use are counted in `ignored`.
    pub fn add(&mut self, value: serde_json::Value) {
        self.push(Objects::parse(value));
    }

    /// Adds what an object gave.
    pub(super) fn push(&mut self, parsed: Parsed) {
        match parsed {
            Parsed::Service(service) => self.services.push(service),
            Parsed::Slice(slice) => self.slices.push(slice),
            Parsed::Pod(pod) => self.pods.extend(pod),
            Parsed::Route(route) => self.routes.push(route),
            Parsed::Traffic(policy) => self.traffic.push(policy),
            Parsed::Authorization(policy) => self.authorization.push(policy),
            Parsed::Invalid(object, message) => self.report.reject(object, "Invalid", message),
            Parsed::Ignored => self.ignored += 1,
            Parsed::List(items) => {
                for item in items {
                    self.add(item);
                }
            }
        }
    }

    /// Reads one object.
    pub(super) fn parse(value: serde_json::Value) -> Parsed {
        // Read from a reference: the object is parsed once more by kind.
        let Ok(envelope) = Envelope::deserialize(&value) else {
            return Parsed::Ignored;
        };
        let group = envelope
            .api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group);
        let kind: &'static str = match (group, envelope.kind.as_str()) {
            (_, "List") => {
                if let serde_json::Value::Object(mut fields) = value
                    && let Some(serde_json::Value::Array(items)) = fields.remove("items")
                {
                    return Parsed::List(items);
                }
                return Parsed::List(Vec::new());
            }
            ("", "Service") => "Service",
            ("discovery.k8s.io", "EndpointSlice") => "EndpointSlice",
            ("", "Pod") => "Pod",
            ("gateway.networking.k8s.io", "HTTPRoute") => "HTTPRoute",
            ("gateway.networking.k8s.io", "GRPCRoute") => "GRPCRoute",
            (remora_api::crd::GROUP, "TrafficPolicy") => "TrafficPolicy",
            (remora_api::crd::GROUP, "AuthorizationPolicy") => "AuthorizationPolicy",
            _ => return Parsed::Ignored,
        };
        let object = ObjectRef {
            kind,
            namespace: envelope
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_string()),
            name: envelope.metadata.name.clone().unwrap_or_default(),
        };
        if object.name.is_empty() {
            return Parsed::Invalid(object, "metadata.name: required".to_string());
        }
        match Objects::read(kind, object.clone(), value) {
            Ok(parsed) => parsed,
            Err(message) => Parsed::Invalid(object, message),
        }
    }

    fn read(
        kind: &'static str,
        object: ObjectRef,
        value: serde_json::Value,
    ) -> Result<Parsed, String> {
        Ok(match kind {
            "Service" => {
                let service: Service = parse(value)?;
                Parsed::Service(Arc::new(read_service(object, service)?))
            }
            "EndpointSlice" => {
                let slice: EndpointSlice = parse(value)?;
                Parsed::Slice(Arc::new(read_slice(object, slice)?))
            }
            "Pod" => {
                let pod: Pod = parse(value)?;
                Parsed::Pod(read_pod(object, pod)?.map(Arc::new))
            }
            "HTTPRoute" | "GRPCRoute" => {
                let route: Custom<RouteSpec> = parse(value)?;
                Parsed::Route(Arc::new(RouteObject {
                    object,
                    kind: if kind == "HTTPRoute" {
                        RouteKind::Http
                    } else {
                        RouteKind::Grpc
                    },
                    spec: route.spec,
                }))
            }
            "TrafficPolicy" => {
                let policy: Custom<TrafficPolicySpec> = parse(value)?;
                check_targets(&policy.spec.target_refs)?;
                Parsed::Traffic(Arc::new(Traffic {
                    object,
                    created: policy.metadata.creation_timestamp,
                    spec: policy.spec,
                }))
            }
            "AuthorizationPolicy" => {
                let policy: Custom<AuthorizationPolicyConfig> = parse(value)?;
                check_targets(&policy.spec.target_refs)?;
                if !policy.spec.name.is_empty() {
                    return Err("spec.name: the policy's name is the object's".to_string());
                }
                Parsed::Authorization(Arc::new(Authorization {
                    object,
                    spec: policy.spec,
                }))
            }
            _ => unreachable!("kinds are matched in parse"),
        })
    }

    /// Every object read, valid or not.
    pub(super) fn all(&self) -> impl Iterator<Item = ObjectRef> + '_ {
        self.services
            .iter()
            .map(|o| &o.object)
            .chain(self.slices.iter().map(|o| &o.object))
            .chain(self.pods.iter().map(|o| &o.object))
            .chain(
                self.routes
                    .iter()
                    .filter(|r| r.has_service_parent())
                    .map(|o| &o.object),
            )
            .chain(self.traffic.iter().map(|o| &o.object))
            .chain(self.authorization.iter().map(|o| &o.object))
            .cloned()
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

fn check_targets(targets: &[remora_api::TargetRef]) -> Result<(), String> {
    if targets.is_empty() {
        return Err("spec.targetRefs: at least one Service is required".to_string());
    }
    for (i, target) in targets.iter().enumerate() {
        if target.kind != "Service" || !target.group.is_empty() {
            return Err(format!(
                "spec.targetRefs[{i}]: only Services (kind Service, group \"\") may be targeted, not {:?} in group {:?}",
                target.kind, target.group
            ));
        }
    }
    Ok(())
}

fn read_service(object: ObjectRef, service: Service) -> Result<ServiceObject, String> {
    let spec = service.spec.unwrap_or_default();
    let mut cluster_ips = spec.cluster_ips.unwrap_or_default();
    if cluster_ips.is_empty()
        && let Some(ip) = spec.cluster_ip
    {
        cluster_ips.push(ip);
    }
    cluster_ips.retain(|ip| ip != "None" && !ip.is_empty());
    for (i, ip) in cluster_ips.iter().enumerate() {
        if ip.parse::<IpAddr>().is_err() {
            return Err(format!("spec.clusterIPs[{i}]: {ip:?} is not an IP address"));
        }
    }
    let mut ports = Vec::new();
    for (i, port) in spec.ports.unwrap_or_default().into_iter().enumerate() {
        if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
            // UDP and SCTP: not proxied.
            continue;
        }
        let number = u16::try_from(port.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("spec.ports[{i}].port: {} is outside 1..=65535", port.port))?;
        let name = port.name.unwrap_or_default();
        ports.push(ServicePort {
            port: number,
            protocol: port_protocol(port.app_protocol.as_deref(), &name),
            name,
            target: port.target_port.unwrap_or(IntOrString::Int(port.port)),
        });
    }
    Ok(ServiceObject {
        object,
        spec: ServiceSpec {
            cluster_ips,
            selector: spec.selector,
            ports,
        },
    })
}

fn read_slice(object: ObjectRef, slice: EndpointSlice) -> Result<SliceObject, String> {
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned()
        .ok_or_else(|| format!("metadata.labels: {SERVICE_NAME_LABEL} is required"))?;
    let mut ports = Vec::new();
    for (i, port) in slice.ports.unwrap_or_default().into_iter().enumerate() {
        let Some(number) = port.port else { continue };
        let number = u16::try_from(number)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("ports[{i}].port: {number} is outside 1..=65535"))?;
        ports.push((port.name.unwrap_or_default(), number));
    }
    let mut endpoints = Vec::new();
    if slice.address_type == "IPv4" || slice.address_type == "IPv6" {
        for (i, endpoint) in slice.endpoints.into_iter().enumerate() {
            let mut addresses = Vec::new();
            for (j, address) in endpoint.addresses.iter().enumerate() {
                addresses.push(address.parse::<IpAddr>().map_err(|_| {
                    format!("endpoints[{i}].addresses[{j}]: {address:?} is not an IP address")
                })?);
            }
            let conditions = endpoint.conditions.unwrap_or_default();
            // Unset means ready (and serving), as the API says.
            let ready = conditions.ready.unwrap_or(true);
            endpoints.push(SliceEndpoint {
                addresses,
                ready,
                serving: conditions.serving.unwrap_or(ready),
                zone: endpoint.zone,
            });
        }
    }
    Ok(SliceObject {
        object,
        service,
        ports,
        endpoints,
    })
}

/// A pod that has finished (`Succeeded`, `Failed`) is skipped.
fn read_pod(object: ObjectRef, pod: Pod) -> Result<Option<PodObject>, String> {
    let status = pod.status.unwrap_or_default();
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    let ip = match status.pod_ip {
        Some(ip) => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| format!("status.podIP: {ip:?} is not an IP address"))?,
        ),
        None => None,
    };
    let spec = pod.spec.unwrap_or_default();
    let init = spec.init_containers.unwrap_or_default();
    let sidecar = spec
        .containers
        .iter()
        .chain(&init)
        .any(|c| c.name == SIDECAR_CONTAINER);
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = u16::try_from(p.container_port).ok()?;
            Some((p.name.clone()?, port))
        })
        .collect();
    Ok(Some(PodObject {
        object,
        labels: pod.metadata.labels.unwrap_or_default(),
        service_account: spec.service_account_name,
        ip,
        sidecar,
        ports,
    }))
}

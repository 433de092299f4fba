//! The sidecar injector: a mutating admission webhook
//! (`admission.k8s.io/v1` `AdmissionReview`) that gives a new pod
//! `remora-proxy` as a native sidecar, the capture init container, an
//! identity token and probes that keep working under strict mTLS
//! (docs/kubernetes.md, "Sidecar injection").
//!
//! `review` is the whole decision, from request bytes to response bytes; it
//! never fails: anything it cannot read gets a well-formed answer that says
//! what is wrong. `server` serves it over HTTPS, `tls` keeps the serving
//! certificate.

pub mod patch;
pub mod server;
#[cfg(test)]
mod tests;
pub mod tls;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use remora_api::probe::{
    AppProbeConfig, GrpcProbeConfig, HttpGetProbeConfig, ProbeHeader, TcpSocketProbeConfig,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The pod annotation (or namespace label `remora.dev/inject=enabled`)
/// that asks for injection; `"false"` opts a pod out.
pub const INJECT: &str = "remora.dev/inject";
/// Written on an injected pod: injection is idempotent by it.
pub const STATUS: &str = "remora.dev/status";
/// The sidecar's and the init container's names.
pub const PROXY_CONTAINER: &str = "remora-proxy";
pub const INIT_CONTAINER: &str = "remora-init";
/// The label the control plane's own pods carry (never injected).
pub const CONTROL_PLANE_LABEL: (&str, &str) = ("app.kubernetes.io/name", "remora-control-plane");
/// Where the projected service-account token is mounted in the sidecar.
pub const TOKEN_DIR: &str = "/var/run/secrets/remora/tokens";
/// The binary's path in the images (`command` of both containers).
pub const BINARY: &str = "/usr/local/bin/remora-proxy";

/// How pods are injected (`--inject-config FILE`, the chart's ConfigMap).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// The proxy image (`remora.dev/proxy-image` overrides it per pod).
    pub image: String,
    /// The capture init container's image (it needs iptables); default:
    /// `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<String>,
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    /// The control plane's ADS address, `HOST:PORT`.
    pub xds_address: String,
    /// The CA's address; absent: the proxy gets no identity (no mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_address: Option<String>,
    /// The audience of the projected service-account token the proxy
    /// presents to the CA.
    #[serde(default = "default_audience")]
    pub token_audience: String,
    /// The proxy's log level (`remora.dev/log-level` per pod).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// The proxy's user and group: `init` exempts its traffic from capture.
    #[serde(default = "default_proxy_uid")]
    pub proxy_uid: u32,
    /// The proxy's admin port: `/ready`, `/metrics`, `/app-health/...`.
    #[serde(default = "default_admin_port")]
    pub admin_port: u16,
    /// In-flight requests' time to finish on shutdown; capped to fit the
    /// pod's `terminationGracePeriodSeconds` (`remora.dev/drain-timeout`
    /// per pod).
    #[serde(default = "default_drain", with = "remora_api::scalar::duration")]
    pub drain_timeout: Duration,
    /// The sidecar's resources, Kubernetes' shape.
    #[serde(default = "default_resources")]
    pub resources: Value,
    /// The init container's resources.
    #[serde(default = "default_init_resources")]
    pub init_resources: Value,
    /// Never captured, for every pod (e.g. the cloud metadata address).
    #[serde(default)]
    pub exclude_outbound_cidrs: Vec<String>,
    #[serde(default)]
    pub exclude_inbound_ports: Vec<u16>,
    #[serde(default)]
    pub exclude_outbound_ports: Vec<u16>,
    /// Rewrite HTTP, TCP and gRPC probes through the admin port (`remora.dev/rewrite-app-probes`
    /// per pod).
    #[serde(default = "yes")]
    pub rewrite_probes: bool,
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn default_audience() -> String {
    "remora-ca".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_proxy_uid() -> u32 {
    1337
}
fn default_admin_port() -> u16 {
    15000
}
fn default_drain() -> Duration {
    Duration::from_secs(5)
}
fn default_resources() -> Value {
    json!({"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}})
}
fn default_init_resources() -> Value {
    json!({"requests": {"cpu": "10m", "memory": "10Mi"}, "limits": {"cpu": "100m", "memory": "50Mi"}})
}
fn yes() -> bool {
    true
}

impl InjectConfig {
    /// Reads and checks the config: errors name the field.
    pub fn parse(text: &str) -> Result<InjectConfig, remora_api::ConfigErrors> {
        let config: InjectConfig = remora_api::parse_yaml_as(text)?;
        let mut errors = Vec::new();
        let mut error = |path: &str, message: String| {
            errors.push(remora_api::ConfigError::new(path, message));
        };
        for (path, image) in [
            ("image", Some(&config.image)),
            ("init_image", config.init_image.as_ref()),
        ] {
            if image.is_some_and(|i| i.trim().is_empty() || i.contains(char::is_whitespace)) {
                error(path, format!("{image:?} is not an image reference"));
            }
        }
        if !matches!(
            config.image_pull_policy.as_str(),
            "Always" | "IfNotPresent" | "Never"
        ) {
            error(
                "image_pull_policy",
                format!(
                    "{:?}: Always, IfNotPresent or Never",
                    config.image_pull_policy
                ),
            );
        }
        for (path, address) in [
            ("xds_address", Some(&config.xds_address)),
            ("ca_address", config.ca_address.as_ref()),
        ] {
            if let Some(address) = address
                && !address
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            {
                error(path, format!("{address:?}: expected HOST:PORT"));
            }
        }
        if config.token_audience.trim().is_empty() {
            error("token_audience", "must not be empty".into());
        }
        if config.proxy_uid == 0 {
            error(
                "proxy_uid",
                "0 is root: the proxy runs as its own user".into(),
            );
        }
        if config.admin_port == 0 {
            error("admin_port", "must be a port (1-65535)".into());
        }
        for (path, resources) in [
            ("resources", &config.resources),
            ("init_resources", &config.init_resources),
        ] {
            if let Err((field, message)) = check_resources(resources) {
                error(&format!("{path}{field}"), message);
            }
        }
        for (i, cidr) in config.exclude_outbound_cidrs.iter().enumerate() {
            if !is_cidr(cidr) {
                error(
                    &format!("exclude_outbound_cidrs[{i}]"),
                    format!("{cidr:?} is not a CIDR (10.0.0.0/8, fd00::/8)"),
                );
            }
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(remora_api::ConfigErrors(errors))
        }
    }
}

/// `{requests: {cpu, memory}, limits: {...}}` with Kubernetes quantities.
fn check_resources(resources: &Value) -> Result<(), (String, String)> {
    let Some(map) = resources.as_object() else {
        return Err((
            String::new(),
            "expected {requests: {...}, limits: {...}}".into(),
        ));
    };
    for (section, values) in map {
        if section != "requests" && section != "limits" {
            return Err((
                format!(".{section}"),
                "unknown field: requests or limits".into(),
            ));
        }
        let Some(values) = values.as_object() else {
            return Err((
                format!(".{section}"),
                "expected {cpu: ..., memory: ...}".into(),
            ));
        };
        for (name, value) in values {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            if !is_quantity(&text) {
                return Err((
                    format!(".{section}.{name}"),
                    format!("{value} is not a Kubernetes quantity (100m, 64Mi)"),
                ));
            }
        }
    }
    Ok(())
}

/// A Kubernetes resource quantity: a number and an optional suffix.
fn is_quantity(text: &str) -> bool {
    let number_end = text
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '+' || *c == '-'))))
        .map_or(text.len(), |(i, _)| i);
    let (number, suffix) = text.split_at(number_end);
    let digits = number.trim_start_matches(['+', '-']);
    !digits.is_empty()
        && digits.chars().filter(|c| *c == '.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit())
        && (matches!(
            suffix,
            "" | "m"
                | "k"
                | "M"
                | "G"
                | "T"
                | "P"
                | "E"
                | "Ki"
                | "Mi"
                | "Gi"
                | "Ti"
                | "Pi"
                | "Ei"
                | "n"
                | "u"
        ) || (suffix.starts_with(['e', 'E'])
            && suffix[1..]
                .trim_start_matches(['+', '-'])
                .parse::<u32>()
                .is_ok()))
}

fn is_cidr(text: &str) -> bool {
    let Some((address, bits)) = text.split_once('/') else {
        return false;
    };
    match (address.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(bits)) => bits <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(bits)) => bits <= 128,
        _ => false,
    }
}

/// Which webhook path the request came by: the namespace-label webhook
/// (inject unless the pod opts out) or the opt-in one (inject only pods
/// annotated `remora.dev/inject: "true"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// `/inject`: the namespace is labelled `remora.dev/inject=enabled`.
    Namespace,
    /// `/inject/opt-in`: any other namespace.
    OptIn,
}

/// What the webhook decided for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Allowed with this JSON patch.
    Injected(Vec<Value>),
    /// Allowed unchanged, and why.
    Skipped(String),
    /// Refused, with the message the user sees (`kubectl` events).
    Denied(String),
}

impl Outcome {
    pub fn result(&self) -> &'static str {
        match self {
            Outcome::Injected(_) => "injected",
            Outcome::Skipped(_) => "skipped",
            Outcome::Denied(_) => "denied",
        }
    }
}

/// Answers one `AdmissionReview` request body: always a well-formed
/// `AdmissionReview` (JSON), and what was decided.
pub fn review(body: &[u8], config: &InjectConfig, selection: Selection) -> (Vec<u8>, Outcome) {
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    let (api_version, uid, outcome) = match parsed {
        Err(error) => (
            "admission.k8s.io/v1".to_string(),
            String::new(),
            Outcome::Denied(format!("the request is not JSON: {error}")),
        ),
        Ok(review) => {
            let api_version = review["apiVersion"]
                .as_str()
                .unwrap_or("admission.k8s.io/v1")
                .to_string();
            let uid = review["request"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let outcome = match check_review(&review) {
                Err(message) => Outcome::Denied(message),
                Ok(request) => decide(request, config, selection),
            };
            (api_version, uid, outcome)
        }
    };
    (answer(&api_version, &uid, &outcome), outcome)
}

/// `pod` as the webhook would admit it (in a namespace with injection
/// enabled), and what it decided: the CLI's `inject`.
pub fn inject_pod(pod: &Value, config: &InjectConfig) -> (Value, Outcome) {
    let request = json!({
        "uid": "remora-control-plane-inject",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "namespace": pod["metadata"]["namespace"].as_str().unwrap_or("default"),
        "operation": "CREATE",
        "object": pod,
    });
    let outcome = decide(&request, config, Selection::Namespace);
    let mut injected = pod.clone();
    if let Outcome::Injected(ops) = &outcome
        && let Err(message) = patch::apply(&mut injected, ops)
    {
        return (pod.clone(), Outcome::Denied(message));
    }
    (injected, outcome)
}

/// A refusal of a request that could not be read at all.
pub fn refusal(message: String) -> (Vec<u8>, Outcome) {
    let outcome = Outcome::Denied(message);
    (answer("admission.k8s.io/v1", "", &outcome), outcome)
}

/// The `AdmissionReview` response for `outcome`.
fn answer(api_version: &str, uid: &str, outcome: &Outcome) -> Vec<u8> {
    let mut response = json!({"uid": uid, "allowed": !matches!(outcome, Outcome::Denied(_))});
    match outcome {
        Outcome::Injected(ops) => {
            let patch = serde_json::to_vec(ops).expect("JSON values serialize");
            response["patchType"] = "JSONPatch".into();
            response["patch"] = base64::engine::general_purpose::STANDARD
                .encode(patch)
                .into();
        }
        Outcome::Skipped(_) => {}
        Outcome::Denied(message) => {
            response["status"] = json!({"code": 400, "reason": "BadRequest", "message": format!("remora sidecar injector: {message}")});
        }
    }
    let answer = json!({
        // Kubernetes wants the version it sent back.
        "apiVersion": if api_version == "admission.k8s.io/v1beta1" { api_version } else { "admission.k8s.io/v1" },
        "kind": "AdmissionReview",
        "response": response,
    });
    serde_json::to_vec(&answer).expect("JSON values serialize")
}

/// The review's `request`, checked: an `AdmissionReview` about a Pod.
fn check_review(review: &Value) -> Result<&Value, String> {
    if !review.is_object() {
        return Err("expected an AdmissionReview object".into());
    }
    if review["kind"] != "AdmissionReview" {
        return Err(format!(
            "kind: expected AdmissionReview, got {}",
            review["kind"]
        ));
    }
    if !matches!(
        review["apiVersion"].as_str(),
        Some("admission.k8s.io/v1" | "admission.k8s.io/v1beta1")
    ) {
        return Err(format!(
            "apiVersion: expected admission.k8s.io/v1, got {}",
            review["apiVersion"]
        ));
    }
    let request = &review["request"];
    if !request.is_object() {
        return Err("request: missing".into());
    }
    if request["uid"].as_str().is_none_or(str::is_empty) {
        return Err("request.uid: missing".into());
    }
    let kind = &request["kind"];
    if kind["kind"] != "Pod" || kind["group"].as_str().is_some_and(|g| !g.is_empty()) {
        return Err(format!("request.kind: expected a core/v1 Pod, got {kind}"));
    }
    if request["subResource"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(format!(
            "request.subResource: {} is not a pod",
            request["subResource"]
        ));
    }
    Ok(request)
}

fn decide(request: &Value, config: &InjectConfig, selection: Selection) -> Outcome {
    if request["operation"] != "CREATE" {
        return Outcome::Skipped(format!(
            "operation {}: only new pods are injected",
            request["operation"]
        ));
    }
    let pod = &request["object"];
    if !pod.is_object() {
        return Outcome::Denied("request.object: not a Pod object".into());
    }
    if let Err(message) = check_pod_shape(pod) {
        return Outcome::Denied(message);
    }
    let namespace = request["namespace"]
        .as_str()
        .or(pod["metadata"]["namespace"].as_str())
        .unwrap_or_default();
    let annotations = &pod["metadata"]["annotations"];
    let annotation = |name: &str| annotations[name].as_str();
    if matches!(namespace, "kube-system" | "kube-public" | "kube-node-lease") {
        return Outcome::Skipped(format!("namespace {namespace} is never injected"));
    }
    if pod["spec"]["hostNetwork"] == true {
        return Outcome::Skipped("hostNetwork pod: capture would take the node's traffic".into());
    }
    if pod["metadata"]["labels"][CONTROL_PLANE_LABEL.0] == CONTROL_PLANE_LABEL.1 {
        return Outcome::Skipped("the control plane's own pod".into());
    }
    if annotation(STATUS).is_some()
        || has_container(pod, PROXY_CONTAINER)
        || has_container(pod, INIT_CONTAINER)
    {
        return Outcome::Skipped("already injected".into());
    }
    // The annotation, else the label (which an objectSelector can see).
    let asked = annotation(INJECT).map(|v| ("annotations", v)).or_else(|| {
        pod["metadata"]["labels"][INJECT]
            .as_str()
            .map(|v| ("labels", v))
    });
    let is = |value: &str, words: [&str; 2]| words.iter().any(|w| value.eq_ignore_ascii_case(w));
    match asked {
        Some((_, value)) if is(value, ["false", "disabled"]) => {
            return Outcome::Skipped(format!("{INJECT}: \"false\""));
        }
        Some((_, value)) if is(value, ["true", "enabled"]) => {}
        Some((field, value)) => {
            return Outcome::Denied(format!(
                "metadata.{field}[{INJECT}]: {value:?}: \"true\" or \"false\""
            ));
        }
        None if selection == Selection::OptIn => {
            return Outcome::Skipped(format!(
                "namespace not labelled {INJECT}=enabled and no {INJECT} annotation"
            ));
        }
        None => {}
    }
    match inject(pod, config) {
        Ok(injected) => Outcome::Injected(patch::diff(pod, &injected)),
        Err(message) => Outcome::Denied(message),
    }
}

/// The parts of a Pod the injector reads must have their types.
fn check_pod_shape(pod: &Value) -> Result<(), String> {
    if pod["kind"].as_str().is_some_and(|k| k != "Pod") {
        return Err(format!(
            "request.object.kind: expected Pod, got {}",
            pod["kind"]
        ));
    }
    let spec = &pod["spec"];
    if !spec.is_object() {
        return Err("request.object.spec: missing".into());
    }
    for field in ["containers", "initContainers", "volumes"] {
        if !(spec[field].is_null() || spec[field].is_array()) {
            return Err(format!("spec.{field}: expected a list"));
        }
    }
    if spec["containers"].as_array().is_none_or(|c| c.is_empty()) {
        return Err("spec.containers: a pod needs at least one container".into());
    }
    for field in ["containers", "initContainers"] {
        for (i, container) in spec[field].as_array().into_iter().flatten().enumerate() {
            if container["name"].as_str().is_none_or(str::is_empty) {
                return Err(format!("spec.{field}[{i}].name: missing"));
            }
        }
    }
    for field in ["annotations", "labels"] {
        let value = &pod["metadata"][field];
        if !(value.is_null()
            || value
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string)))
        {
            return Err(format!("metadata.{field}: expected a map of strings"));
        }
    }
    Ok(())
}

fn has_container(pod: &Value, name: &str) -> bool {
    ["containers", "initContainers"].iter().any(|field| {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == name)
    })
}

/// The per-pod settings, from the config and the pod's annotations.
struct PodSettings {
    image: String,
    init_image: String,
    log_level: String,
    resources: Value,
    drain_timeout: Duration,
    rewrite_probes: bool,
    exclude_inbound_ports: Vec<u16>,
    exclude_outbound_ports: Vec<u16>,
    exclude_outbound_cidrs: Vec<String>,
}

fn settings(pod: &Value, config: &InjectConfig) -> Result<PodSettings, String> {
    let annotations = &pod["metadata"]["annotations"];
    let get = |name: &str| annotations[name].as_str().map(str::trim);
    let named = |name: &str, message: String| format!("metadata.annotations[{name}]: {message}");
    let ports = |name: &str, base: &[u16]| -> Result<Vec<u16>, String> {
        let mut ports = base.to_vec();
        for part in get(name)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match part.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(named(name, format!("{part:?} is not a port (1-65535)"))),
            }
        }
        ports.sort_unstable();
        ports.dedup();
        Ok(ports)
    };
    let mut cidrs = config.exclude_outbound_cidrs.clone();
    for part in get("remora.dev/exclude-outbound-cidrs")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if !is_cidr(part) {
            return Err(named(
                "remora.dev/exclude-outbound-cidrs",
                format!("{part:?} is not a CIDR (10.0.0.0/8, fd00::/8)"),
            ));
        }
        cidrs.push(part.to_string());
    }
    let mut resources = config.resources.clone();
    for (name, section, resource) in [
        ("remora.dev/proxy-cpu", "requests", "cpu"),
        ("remora.dev/proxy-memory", "requests", "memory"),
        ("remora.dev/proxy-cpu-limit", "limits", "cpu"),
        ("remora.dev/proxy-memory-limit", "limits", "memory"),
    ] {
        if let Some(value) = get(name) {
            if !is_quantity(value) {
                return Err(named(
                    name,
                    format!("{value:?} is not a Kubernetes quantity (100m, 64Mi)"),
                ));
            }
            resources[section][resource] = value.into();
        }
    }
    let log_level = match get("remora.dev/log-level") {
        Some(level) if level.is_empty() || level.contains(char::is_whitespace) => {
            return Err(named(
                "remora.dev/log-level",
                format!("{level:?} is not a log filter (info, debug)"),
            ));
        }
        Some(level) => level.to_string(),
        None => config.log_level.clone(),
    };
    let mut drain_timeout = match get("remora.dev/drain-timeout") {
        Some(text) => remora_api::scalar::parse_duration(text)
            .map_err(|e| named("remora.dev/drain-timeout", e))?,
        None => config.drain_timeout,
    };
    // The sidecar is stopped after the application, within the grace
    // period; leave it a second to exit after its drain.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    drain_timeout = drain_timeout.min(Duration::from_secs(grace.saturating_sub(1).max(1)));
    let rewrite_probes = match get("remora.dev/rewrite-app-probes") {
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(named(
                "remora.dev/rewrite-app-probes",
                format!("{v:?}: \"true\" or \"false\""),
            ));
        }
        None => config.rewrite_probes,
    };
    let image = match get("remora.dev/proxy-image") {
        Some(image) if image.is_empty() || image.contains(char::is_whitespace) => {
            return Err(named(
                "remora.dev/proxy-image",
                format!("{image:?} is not an image reference"),
            ));
        }
        Some(image) => image.to_string(),
        None => config.image.clone(),
    };
    Ok(PodSettings {
        init_image: config.init_image.clone().unwrap_or_else(|| image.clone()),
        image,
        log_level,
        resources,
        drain_timeout,
        rewrite_probes,
        exclude_inbound_ports: ports(
            "remora.dev/exclude-inbound-ports",
            &config.exclude_inbound_ports,
        )?,
        exclude_outbound_ports: ports(
            "remora.dev/exclude-outbound-ports",
            &config.exclude_outbound_ports,
        )?,
        exclude_outbound_cidrs: cidrs,
    })
}

/// The pod as injected.
fn inject(pod: &Value, config: &InjectConfig) -> Result<Value, String> {
    let settings = settings(pod, config)?;
    let mut pod = pod.clone();
    let probes = if settings.rewrite_probes {
        rewrite_probes(&mut pod, config.admin_port)
    } else {
        BTreeMap::new()
    };
    let first_app = pod["spec"]["containers"][0]["name"].clone();

    let metadata = pod["metadata"].as_object_mut().ok_or("metadata: missing")?;
    let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
    annotations[STATUS] = "injected".into();
    // `kubectl logs` and `exec` pick the application, not the proxy.
    if annotations["kubectl.kubernetes.io/default-container"].is_null() {
        annotations["kubectl.kubernetes.io/default-container"] = first_app;
    }

    let spec = pod["spec"].as_object_mut().ok_or("spec: missing")?;
    let mut init_containers = vec![
        init_container(config, &settings),
        sidecar(config, &settings, &probes),
    ];
    if let Some(Value::Array(existing)) = spec.remove("initContainers") {
        init_containers.extend(existing);
    }
    spec.insert("initContainers".into(), Value::Array(init_containers));
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    if let Value::Array(volumes) = volumes {
        volumes.push(json!({
            "name": "remora-token",
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": config.token_audience,
                "expirationSeconds": 3600,
                "path": "remora-ca",
            }}]},
        }));
    }
    Ok(pod)
}

/// The capture init container: `remora-proxy init`, with the pod's
/// exclusions; root with NET_ADMIN and NET_RAW only.
fn init_container(config: &InjectConfig, settings: &PodSettings) -> Value {
    let id = config.proxy_uid.to_string();
    let mut args = vec![
        "init".to_string(),
        "--proxy-uid".into(),
        id.clone(),
        "--proxy-gid".into(),
        id,
        "--proxy-ports".into(),
        config.admin_port.to_string(),
    ];
    let list = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    if !settings.exclude_inbound_ports.is_empty() {
        args.extend([
            "--exclude-inbound-ports".into(),
            list(&settings.exclude_inbound_ports),
        ]);
    }
    if !settings.exclude_outbound_ports.is_empty() {
        args.extend([
            "--exclude-outbound-ports".into(),
            list(&settings.exclude_outbound_ports),
        ]);
    }
    if !settings.exclude_outbound_cidrs.is_empty() {
        args.extend([
            "--exclude-outbound-cidrs".into(),
            settings.exclude_outbound_cidrs.join(","),
        ]);
    }
    json!({
        "name": INIT_CONTAINER,
        "image": settings.init_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": [BINARY],
        "args": args,
        "resources": config.init_resources,
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

/// The proxy as a native sidecar (an init container that keeps running),
/// with a startup probe: the application starts once the proxy has its
/// config (and its certificate).
fn sidecar(
    config: &InjectConfig,
    settings: &PodSettings,
    probes: &BTreeMap<String, AppProbeConfig>,
) -> Value {
    let field = |path: &str| json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}});
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
        json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
        json!({"name": "POD_IP", "valueFrom": field("status.podIP")}),
        json!({"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")}),
        json!({"name": "REMORA_ADMIN_ADDRESS", "value": format!("0.0.0.0:{}", config.admin_port)}),
        json!({"name": "REMORA_LOG_LEVEL", "value": settings.log_level}),
        json!({"name": "REMORA_DRAIN_TIMEOUT", "value": format!("{}ms", settings.drain_timeout.as_millis())}),
    ];
    if !probes.is_empty() {
        env.push(json!({"name": "REMORA_APP_PROBES", "value": serde_json::to_string(probes).expect("probes serialize")}));
    }
    let mut args = vec![
        "--xds".to_string(),
        config.xds_address.clone(),
        "--node-id".into(),
        "$(POD_NAME).$(POD_NAMESPACE)".into(),
        "--delta".into(),
    ];
    if let Some(ca) = &config.ca_address {
        args.extend([
            "--ca".into(),
            ca.clone(),
            "--token-file".into(),
            format!("{TOKEN_DIR}/remora-ca"),
        ]);
    }
    let ready = json!({"path": "/ready", "port": config.admin_port, "scheme": "HTTP"});
    json!({
        "name": PROXY_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": config.image_pull_policy,
        "restartPolicy": "Always",
        "command": [BINARY],
        "args": args,
        "env": env,
        "ports": [{"name": "remora-admin", "containerPort": config.admin_port, "protocol": "TCP"}],
        "startupProbe": {"httpGet": ready, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 600},
        "readinessProbe": {"httpGet": ready, "periodSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/live", "port": config.admin_port, "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 6},
        "resources": settings.resources,
        "securityContext": {
            "runAsUser": config.proxy_uid,
            "runAsGroup": config.proxy_uid,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "remora-token", "mountPath": TOKEN_DIR, "readOnly": true}],
    })
}

/// Points every HTTP, TCP and gRPC probe of the application's containers
/// at the admin port's `/app-health/CONTAINER/KIND`, as Istio does;
/// returns the original probes, as the proxy runs them. Exec probes are
/// left alone (they run in the container), as is a probe on a port name
/// the container does not declare.
fn rewrite_probes(pod: &mut Value, admin_port: u16) -> BTreeMap<String, AppProbeConfig> {
    let mut probes = BTreeMap::new();
    let Some(containers) = pod["spec"]["containers"].as_array_mut() else {
        return probes;
    };
    for container in containers {
        let name = container["name"].as_str().unwrap_or_default().to_string();
        let ports = container["ports"].clone();
        // A number, a number as a string, or the name of a container port.
        let resolve = |port: &Value| {
            let port = match port {
                Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
                Value::String(s) => s.parse::<u16>().ok().or_else(|| {
                    ports
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|p| p["name"] == *s)
                        .and_then(|p| p["containerPort"].as_u64())
                        .and_then(|p| u16::try_from(p).ok())
                }),
                _ => None,
            };
            port.filter(|p| *p > 0)
        };
        let text = |value: &Value| value.as_str().filter(|h| !h.is_empty()).map(str::to_string);
        for (field, kind) in [
            ("livenessProbe", "livez"),
            ("readinessProbe", "readyz"),
            ("startupProbe", "startupz"),
        ] {
            // `get_mut`: indexing a missing field would insert a null.
            let Some(probe) = container.get_mut(field) else {
                continue;
            };
            let mut config = AppProbeConfig {
                http_get: None,
                tcp_socket: None,
                grpc: None,
                timeout_seconds: probe["timeoutSeconds"]
                    .as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .unwrap_or(1),
            };
            let handler = if probe["httpGet"].is_object() {
                let get = &probe["httpGet"];
                let Some(port) = resolve(&get["port"]) else {
                    continue;
                };
                let headers = get["httpHeaders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|h| {
                        Some(ProbeHeader {
                            name: h["name"].as_str()?.to_string(),
                            value: h["value"].as_str().unwrap_or_default().to_string(),
                        })
                    });
                config.http_get = Some(HttpGetProbeConfig {
                    path: text(&get["path"]).unwrap_or_else(|| "/".into()),
                    port,
                    host: text(&get["host"]),
                    scheme: get["scheme"]
                        .as_str()
                        .unwrap_or("HTTP")
                        .to_ascii_uppercase(),
                    http_headers: headers.collect(),
                });
                "httpGet"
            } else if probe["tcpSocket"].is_object() {
                let tcp = &probe["tcpSocket"];
                let Some(port) = resolve(&tcp["port"]) else {
                    continue;
                };
                config.tcp_socket = Some(TcpSocketProbeConfig {
                    port,
                    host: text(&tcp["host"]),
                });
                "tcpSocket"
            } else if probe["grpc"].is_object() {
                let grpc = &probe["grpc"];
                let Some(port) = resolve(&grpc["port"]) else {
                    continue;
                };
                config.grpc = Some(GrpcProbeConfig {
                    port,
                    service: text(&grpc["service"]),
                });
                "grpc"
            } else {
                continue;
            };
            let path = format!("/app-health/{name}/{kind}");
            probes.insert(path.clone(), config);
            if let Some(probe) = probe.as_object_mut() {
                probe.remove(handler);
                probe.insert(
                    "httpGet".into(),
                    json!({"path": path, "port": admin_port, "scheme": "HTTP"}),
                );
            }
        }
    }
    probes
}

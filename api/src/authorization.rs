//! Who may call a workload (Istio's semantics) and how the mesh's
//! listeners take mutual TLS.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::identity::SpiffeId;

/// One authorization policy. Every condition given must hold (any entry of
/// a list); a policy with none matches every request.
///
/// In Kubernetes this is an `AuthorizationPolicy` object's `spec` (group
/// `remora.dev`, version `v1alpha1`), attached to Services by `targetRefs`;
/// its name is the object's.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "remora.dev",
        version = "v1alpha1",
        kind = "AuthorizationPolicy",
        plural = "authorizationpolicies",
        shortname = "rap",
        category = "remora",
        namespaced,
        status = "crate::crd::PolicyStatus",
        doc = "Who may call the Services it targets: Istio's semantics, enforced by their proxies (docs/kubernetes.md).",
        printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
        printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRefs[*].name"}"#,
        printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
        validation = kube::core::Rule::new("has(self.spec.targetRefs) && size(self.spec.targetRefs) > 0").message("spec.targetRefs: at least one Service is required").field_path(".spec.targetRefs"),
        validation = kube::core::Rule::new("!has(self.spec.targetRefs) || self.spec.targetRefs.all(r, r.kind == 'Service' && (!has(r.group) || r.group == ''))").message("spec.targetRefs: only Services (kind Service, group \"\") may be targeted").field_path(".spec.targetRefs"),
        validation = kube::core::Rule::new("!has(self.spec.headers) || self.spec.headers.all(h, [has(h.exact), has(h.regex), has(h.present)].filter(x, x).size() == 1)").message("spec.headers: each header has exactly one of exact, regex, present").field_path(".spec.headers"),
    )
)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationPolicyConfig {
    /// The policy's name (in Kubernetes, the object's own).
    #[schemars(skip)]
    #[serde(default)]
    pub name: String,
    /// The Services the policy applies to (an `AuthorizationPolicy` object
    /// only).
    #[schemars(length(max = 16))]
    #[serde(default, rename = "targetRefs", skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<crate::TargetRef>,
    pub action: AuthorizationAction,
    /// Peer identities: a SPIFFE ID, `spiffe://DOMAIN/ns/NAMESPACE/*` for a
    /// whole namespace, or `*` for any authenticated peer. A peer without
    /// an identity (plaintext) matches none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    /// Destination ports (the original destination's for captured traffic).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// HTTP: exact paths, or prefixes ending in `*` (`/api/*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// HTTP headers, each of which must match.
    #[schemars(length(max = 64))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatchConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizationAction {
    Allow,
    Deny,
}

/// What a listener takes from peers in the mesh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MtlsMode {
    /// Only mutual TLS with a certificate of the mesh's trust bundle.
    Strict,
    /// Mutual TLS when the client starts a handshake, plaintext otherwise.
    Permissive,
    #[default]
    Disabled,
}

/// A header or query parameter condition: exactly one of `exact`, `regex`, `present`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMatchConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: must be present (any value); `false`: must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// A policy's conditions, parsed and checked: what a proxy matches
/// requests against, built once per config snapshot.
#[derive(Debug)]
pub struct Conditions {
    pub from: Vec<PeerMatch>,
    pub ports: Vec<u16>,
    pub paths: Vec<PathMatch>,
    pub methods: Vec<http::Method>,
    pub headers: Vec<(http::HeaderName, HeaderMatch)>,
}

/// A `from` entry.
#[derive(Debug)]
pub enum PeerMatch {
    /// A SPIFFE ID.
    Exact(String),
    /// `spiffe://DOMAIN/ns/NAMESPACE/` (a namespace: `…/*` in the config).
    Prefix(String),
    /// `*`: any authenticated peer.
    Any,
}

/// A `paths` entry.
#[derive(Debug)]
pub enum PathMatch {
    Exact(String),
    /// `/api/*` in the config.
    Prefix(String),
}

/// A `headers` entry's condition.
#[derive(Debug)]
pub enum HeaderMatch {
    Exact(String),
    /// Anchored: must match the whole value.
    Regex(regex::Regex),
    /// `true`: present with any value; `false`: absent.
    Present(bool),
}

/// The policies of one listener (`http`: it sees requests), each checked
/// and parsed; errors are pushed by field path under `at` (`at[i].field`),
/// and an entry with an error keeps only its valid conditions.
pub fn compile_authorization(
    configs: &[AuthorizationPolicyConfig],
    http: bool,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<Conditions> {
    let mut names = std::collections::HashSet::new();
    configs
        .iter()
        .enumerate()
        .map(|(i, config)| {
            let at = format!("{at}[{i}]");
            if config.name.is_empty() || config.name == "default-deny" {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    "a name is required (and default-deny is taken)",
                ));
            } else if !names.insert(config.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    format!("duplicate policy name {:?}", config.name),
                ));
            }
            if !config.target_refs.is_empty() {
                errors.push(ConfigError::new(
                    format!("{at}.targetRefs"),
                    "only an AuthorizationPolicy object has targetRefs; here the policy applies where it is written",
                ));
            }
            config.conditions(http, &at, errors)
        })
        .collect()
}

/// [`compile_authorization`]'s errors alone: what a control plane checks
/// before it sends policies to proxies.
pub fn check_authorization(
    configs: &[AuthorizationPolicyConfig],
    http: bool,
    at: &str,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    compile_authorization(configs, http, at, &mut errors);
    errors
}

impl AuthorizationPolicyConfig {
    fn conditions(&self, http: bool, at: &str, errors: &mut Vec<ConfigError>) -> Conditions {
        if !http {
            for (field, set) in [
                ("paths", !self.paths.is_empty()),
                ("methods", !self.methods.is_empty()),
                ("headers", !self.headers.is_empty()),
            ] {
                if set {
                    errors.push(ConfigError::new(
                        format!("{at}.{field}"),
                        "a TCP listener knows no requests: only from and ports apply",
                    ));
                }
            }
        }
        Conditions {
            from: self
                .from
                .iter()
                .enumerate()
                .filter_map(|(j, f)| peer(f, &format!("{at}.from[{j}]"), errors))
                .collect(),
            ports: self.ports.clone(),
            paths: self
                .paths
                .iter()
                .map(|p| match p.strip_suffix('*') {
                    Some(prefix) => PathMatch::Prefix(prefix.to_string()),
                    None => PathMatch::Exact(p.clone()),
                })
                .collect(),
            methods: self
                .methods
                .iter()
                .enumerate()
                .filter_map(|(j, m)| match http::Method::from_bytes(m.as_bytes()) {
                    Ok(method) => Some(method),
                    Err(_) => {
                        errors.push(ConfigError::new(
                            format!("{at}.methods[{j}]"),
                            format!("{m:?} is not an HTTP method"),
                        ));
                        None
                    }
                })
                .collect(),
            headers: self
                .headers
                .iter()
                .enumerate()
                .filter_map(|(j, h)| header(h, &format!("{at}.headers[{j}]"), errors))
                .collect(),
        }
    }
}

fn peer(text: &str, at: &str, errors: &mut Vec<ConfigError>) -> Option<PeerMatch> {
    if text == "*" {
        return Some(PeerMatch::Any);
    }
    if let Some(namespace) = text.strip_suffix("/*") {
        // spiffe://DOMAIN/ns/NAMESPACE/* : checked as an ID with a placeholder account.
        return match format!("{namespace}/sa/placeholder").parse::<SpiffeId>() {
            Ok(id) => Some(PeerMatch::Prefix(format!(
                "spiffe://{}/ns/{}/",
                id.trust_domain, id.namespace
            ))),
            Err(_) => {
                errors.push(ConfigError::new(
                    at,
                    format!("{text:?}: a namespace is spiffe://DOMAIN/ns/NAMESPACE/*"),
                ));
                None
            }
        };
    }
    match text.parse::<SpiffeId>() {
        Ok(id) => Some(PeerMatch::Exact(id.uri())),
        Err(e) => {
            errors.push(ConfigError::new(at, e));
            None
        }
    }
}

fn header(
    config: &ValueMatchConfig,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<(http::HeaderName, HeaderMatch)> {
    let Ok(name) = http::HeaderName::from_bytes(config.name.as_bytes()) else {
        errors.push(ConfigError::new(
            format!("{at}.name"),
            format!("{:?} is not a header name", config.name),
        ));
        return None;
    };
    let matcher = match (&config.exact, &config.regex, config.present) {
        (Some(exact), None, None) => HeaderMatch::Exact(exact.clone()),
        (None, Some(regex), None) => match regex::Regex::new(&format!("^(?:{regex})$")) {
            Ok(regex) => HeaderMatch::Regex(regex),
            Err(e) => {
                errors.push(ConfigError::new(format!("{at}.regex"), e.to_string()));
                return None;
            }
        },
        (None, None, Some(present)) => HeaderMatch::Present(present),
        _ => {
            errors.push(ConfigError::new(
                at.to_string(),
                "exactly one of exact, regex, present",
            ));
            return None;
        }
    };
    Some((name, matcher))
}

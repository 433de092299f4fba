//! Authorization by identity, with Istio's semantics: a request (or a TCP
//! connection) that matches any `deny` policy is denied; otherwise, if the
//! listener has `allow` policies, it must match one of them; a listener
//! with no `allow` policy allows what no `deny` policy matched. A policy
//! matches when every condition it gives holds.
//!
//! Compiled once per snapshot; a check allocates nothing.

use http::{HeaderMap, Method};
use metrics::Counter;
use regex::Regex;

use crate::config::{AuthorizationAction, AuthorizationPolicyConfig, ConfigError};
use crate::identity::SpiffeId;
use crate::telemetry::{self, Telemetry};

/// What one request or connection is checked on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    /// The SPIFFE ID of an mTLS peer; none in plaintext.
    pub(crate) identity: Option<&'a str>,
    pub(crate) port: Option<u16>,
    /// HTTP only.
    pub(crate) request: Option<(&'a Method, &'a str, &'a HeaderMap)>,
}

/// A listener's policies.
#[derive(Debug, Default)]
pub(crate) struct Authorization {
    deny: Vec<Policy>,
    allow: Vec<Policy>,
    /// `remora_authz_denied_total{listener,policy="default-deny"}`.
    default_deny: Option<Counter>,
}

#[derive(Debug)]
struct Policy {
    name: Box<str>,
    from: Vec<From>,
    ports: Vec<u16>,
    paths: Vec<PathMatch>,
    methods: Vec<Method>,
    headers: Vec<(http::HeaderName, ValueMatch)>,
    /// `remora_authz_denied_total{listener,policy}` (deny policies).
    denied: Counter,
}

#[derive(Debug)]
enum From {
    Exact(String),
    /// `spiffe://DOMAIN/ns/NAMESPACE/` (a namespace: `…/*` in the config).
    Prefix(String),
    Any,
}

#[derive(Debug)]
enum PathMatch {
    Exact(String),
    Prefix(String),
}

#[derive(Debug)]
enum ValueMatch {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

/// The errors of policies for a listener (`http`: it sees requests), by
/// field path under `at`: what a control plane checks before it sends them.
pub fn check_authorization(
    configs: &[AuthorizationPolicyConfig],
    http: bool,
    at: &str,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    Authorization::compile(configs, "check", http, at, &Telemetry::new(), &mut errors);
    errors
}

/// Denied: by which policy (`default-deny` when no allow policy matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Denied<'a>(pub(crate) &'a str);

impl Authorization {
    pub(crate) fn compile(
        configs: &[AuthorizationPolicyConfig],
        listener: &str,
        http: bool,
        at: &str,
        telemetry: &Telemetry,
        errors: &mut Vec<ConfigError>,
    ) -> Authorization {
        let mut out = Authorization::default();
        let mut names = std::collections::HashSet::new();
        for (i, config) in configs.iter().enumerate() {
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
            if !http {
                for (field, set) in [
                    ("paths", !config.paths.is_empty()),
                    ("methods", !config.methods.is_empty()),
                    ("headers", !config.headers.is_empty()),
                ] {
                    if set {
                        errors.push(ConfigError::new(
                            format!("{at}.{field}"),
                            "a TCP listener knows no requests: only from and ports apply",
                        ));
                    }
                }
            }
            let policy = Policy {
                name: config.name.as_str().into(),
                from: config
                    .from
                    .iter()
                    .enumerate()
                    .filter_map(|(j, f)| from(f, &format!("{at}.from[{j}]"), errors))
                    .collect(),
                ports: config.ports.clone(),
                paths: config
                    .paths
                    .iter()
                    .map(|p| match p.strip_suffix('*') {
                        Some(prefix) => PathMatch::Prefix(prefix.to_string()),
                        None => PathMatch::Exact(p.clone()),
                    })
                    .collect(),
                methods: config
                    .methods
                    .iter()
                    .enumerate()
                    .filter_map(|(j, m)| match Method::from_bytes(m.as_bytes()) {
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
                headers: config
                    .headers
                    .iter()
                    .enumerate()
                    .filter_map(|(j, h)| header(h, &format!("{at}.headers[{j}]"), errors))
                    .collect(),
                denied: telemetry.counter(
                    telemetry::AUTHZ_DENIED_TOTAL,
                    &[("listener", listener), ("policy", &config.name)],
                ),
            };
            match config.action {
                AuthorizationAction::Deny => out.deny.push(policy),
                AuthorizationAction::Allow => out.allow.push(policy),
            }
        }
        if !out.allow.is_empty() {
            out.default_deny = Some(telemetry.counter(
                telemetry::AUTHZ_DENIED_TOTAL,
                &[("listener", listener), ("policy", "default-deny")],
            ));
        }
        out
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }

    /// Allowed, or the policy that denies (counted).
    pub(crate) fn check(&self, subject: &Subject<'_>) -> Result<(), Denied<'_>> {
        for policy in &self.deny {
            if policy.matches(subject) {
                policy.denied.increment(1);
                return Err(Denied(&policy.name));
            }
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| p.matches(subject)) {
            return Ok(());
        }
        if let Some(counter) = &self.default_deny {
            counter.increment(1);
        }
        Err(Denied("default-deny"))
    }
}

impl Policy {
    fn matches(&self, subject: &Subject<'_>) -> bool {
        let from = self.from.is_empty()
            || subject.identity.is_some_and(|id| {
                self.from.iter().any(|f| match f {
                    From::Exact(exact) => exact == id,
                    From::Prefix(prefix) => id.starts_with(prefix.as_str()),
                    From::Any => true,
                })
            });
        let port = self.ports.is_empty() || subject.port.is_some_and(|p| self.ports.contains(&p));
        if !(from && port) {
            return false;
        }
        let Some((method, path, headers)) = subject.request else {
            return self.paths.is_empty() && self.methods.is_empty() && self.headers.is_empty();
        };
        let path = path.split('?').next().unwrap_or(path);
        (self.paths.is_empty()
            || self.paths.iter().any(|p| match p {
                PathMatch::Exact(exact) => exact == path,
                PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            }))
            && (self.methods.is_empty() || self.methods.contains(method))
            && self.headers.iter().all(|(name, want)| {
                let value = headers.get(name).and_then(|v| v.to_str().ok());
                match (want, value) {
                    (ValueMatch::Present(present), value) => value.is_some() == *present,
                    (ValueMatch::Exact(exact), Some(value)) => value == exact,
                    (ValueMatch::Regex(regex), Some(value)) => regex.is_match(value),
                    (_, None) => false,
                }
            })
    }
}

fn from(text: &str, at: &str, errors: &mut Vec<ConfigError>) -> Option<From> {
    if text == "*" {
        return Some(From::Any);
    }
    if let Some(namespace) = text.strip_suffix("/*") {
        // spiffe://DOMAIN/ns/NAMESPACE/* : checked as an ID with a placeholder account.
        return match format!("{namespace}/sa/placeholder").parse::<SpiffeId>() {
            Ok(id) => Some(From::Prefix(format!(
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
        Ok(id) => Some(From::Exact(id.uri())),
        Err(e) => {
            errors.push(ConfigError::new(at, e));
            None
        }
    }
}

fn header(
    config: &crate::config::ValueMatchConfig,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<(http::HeaderName, ValueMatch)> {
    let Ok(name) = http::HeaderName::from_bytes(config.name.as_bytes()) else {
        errors.push(ConfigError::new(
            format!("{at}.name"),
            format!("{:?} is not a header name", config.name),
        ));
        return None;
    };
    let matcher = match (&config.exact, &config.regex, config.present) {
        (Some(exact), None, None) => ValueMatch::Exact(exact.clone()),
        (None, Some(regex), None) => match Regex::new(&format!("^(?:{regex})$")) {
            Ok(regex) => ValueMatch::Regex(regex),
            Err(e) => {
                errors.push(ConfigError::new(format!("{at}.regex"), e.to_string()));
                return None;
            }
        },
        (None, None, Some(present)) => ValueMatch::Present(present),
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

#[cfg(test)]
mod tests;

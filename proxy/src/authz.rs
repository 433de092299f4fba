//! Authorization by identity, with Istio's semantics: a request (or a TCP
//! connection) that matches any `deny` policy is denied; otherwise, if the
//! listener has `allow` policies, it must match one of them; a listener
//! with no `allow` policy allows what no `deny` policy matched. A policy
//! matches when every condition it gives holds.
//!
//! Compiled once per snapshot; a check allocates nothing.

use http::{HeaderMap, Method};
use metrics::Counter;
use remora_api::authorization::{
    Conditions, HeaderMatch, PathMatch, PeerMatch, compile_authorization,
};

use crate::config::{AuthorizationAction, AuthorizationPolicyConfig, ConfigError};
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
    conditions: Conditions,
    /// `remora_authz_denied_total{listener,policy}` (deny policies).
    denied: Counter,
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
        let compiled = compile_authorization(configs, http, at, errors);
        for (config, conditions) in configs.iter().zip(compiled) {
            let policy = Policy {
                name: config.name.as_str().into(),
                conditions,
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
        let from = self.conditions.from.is_empty()
            || subject.identity.is_some_and(|id| {
                self.conditions.from.iter().any(|f| match f {
                    PeerMatch::Exact(exact) => exact == id,
                    PeerMatch::Prefix(prefix) => id.starts_with(prefix.as_str()),
                    PeerMatch::Any => true,
                })
            });
        let port = self.conditions.ports.is_empty()
            || subject
                .port
                .is_some_and(|p| self.conditions.ports.contains(&p));
        if !(from && port) {
            return false;
        }
        let Some((method, path, headers)) = subject.request else {
            return self.conditions.paths.is_empty()
                && self.conditions.methods.is_empty()
                && self.conditions.headers.is_empty();
        };
        let path = path.split('?').next().unwrap_or(path);
        (self.conditions.paths.is_empty()
            || self.conditions.paths.iter().any(|p| match p {
                PathMatch::Exact(exact) => exact == path,
                PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            }))
            && (self.conditions.methods.is_empty() || self.conditions.methods.contains(method))
            && self.conditions.headers.iter().all(|(name, want)| {
                let value = headers.get(name).and_then(|v| v.to_str().ok());
                match (want, value) {
                    (HeaderMatch::Present(present), value) => value.is_some() == *present,
                    (HeaderMatch::Exact(exact), Some(value)) => value == exact,
                    (HeaderMatch::Regex(regex), Some(value)) => regex.is_match(value),
                    (_, None) => false,
                }
            })
    }
}

#[cfg(test)]
mod tests;

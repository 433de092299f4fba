//! A service's authorization policies as Envoy RBAC filters on its inbound
//! listener, with Istio's semantics: a DENY filter holding the deny
//! policies runs first, then an ALLOW filter holding the allow policies
//! (absent when there are none, so everything not denied passes). Within a
//! policy every condition given must hold: the principals are the `from`
//! identities, the permission is the AND of the ports, paths, methods and
//! headers (each list an OR).

use std::collections::HashMap;

use remora_api::{AuthorizationAction, AuthorizationPolicyConfig, ValueMatchConfig};
use remora_xds_proto::filters::{http_connection_manager as hcm, http_rbac, network_rbac};
use remora_xds_proto::listener::{Filter, filter};
use remora_xds_proto::matcher::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher, string_matcher::MatchPattern,
};
use remora_xds_proto::rbac::{
    self, Permission, Policy, Principal, permission, principal, rbac::Action,
};
use remora_xds_proto::route::{HeaderMatcher, header_matcher::HeaderMatchSpecifier};

pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";

/// The RBAC rules of each action present, deny first.
fn rules(policies: &[AuthorizationPolicyConfig]) -> Vec<(AuthorizationAction, rbac::Rbac)> {
    let mut out = Vec::new();
    for (action, envoy) in [
        (AuthorizationAction::Deny, Action::Deny),
        (AuthorizationAction::Allow, Action::Allow),
    ] {
        let of_action: HashMap<String, Policy> = policies
            .iter()
            .filter(|p| p.action == action)
            .map(|p| (p.name.clone(), policy(p)))
            .collect();
        if !of_action.is_empty() {
            out.push((
                action,
                rbac::Rbac {
                    action: envoy as i32,
                    policies: of_action,
                    ..Default::default()
                },
            ));
        }
    }
    out
}

fn label(action: AuthorizationAction) -> &'static str {
    match action {
        AuthorizationAction::Deny => "deny",
        AuthorizationAction::Allow => "allow",
    }
}

/// HTTP filters, to run before the others.
pub fn http_filters(policies: &[AuthorizationPolicyConfig]) -> Vec<hcm::HttpFilter> {
    rules(policies)
        .into_iter()
        .map(|(action, rules)| hcm::HttpFilter {
            name: HTTP_RBAC.into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(
                remora_xds_proto::pack(&http_rbac::Rbac {
                    rules: Some(rules),
                    rules_stat_prefix: format!("{}_", label(action)),
                    ..Default::default()
                }),
            )),
            ..Default::default()
        })
        .collect()
}

/// Network filters, to run before the TCP proxy.
pub fn network_filters(policies: &[AuthorizationPolicyConfig], stat_prefix: &str) -> Vec<Filter> {
    rules(policies)
        .into_iter()
        .map(|(action, rules)| Filter {
            name: NETWORK_RBAC.into(),
            config_type: Some(filter::ConfigType::TypedConfig(remora_xds_proto::pack(
                &network_rbac::Rbac {
                    rules: Some(rules),
                    stat_prefix: format!("{}_{}", stat_prefix.replace('|', "_"), label(action)),
                    ..Default::default()
                },
            ))),
        })
        .collect()
}

fn policy(p: &AuthorizationPolicyConfig) -> Policy {
    let principals = if p.from.is_empty() {
        vec![Principal {
            identifier: Some(principal::Identifier::Any(true)),
        }]
    } else {
        p.from.iter().map(|from| peer(from)).collect()
    };
    let mut all = Vec::new();
    if !p.ports.is_empty() {
        all.push(any_of(
            p.ports
                .iter()
                .map(|port| rule(permission::Rule::DestinationPort(u32::from(*port))))
                .collect(),
        ));
    }
    if !p.paths.is_empty() {
        all.push(any_of(
            p.paths
                .iter()
                .map(|path| {
                    let pattern = match path.strip_suffix('*') {
                        Some(prefix) => MatchPattern::Prefix(prefix.into()),
                        None => MatchPattern::Exact(path.clone()),
                    };
                    rule(permission::Rule::UrlPath(PathMatcher {
                        rule: Some(path_matcher::Rule::Path(StringMatcher {
                            match_pattern: Some(pattern),
                            ..Default::default()
                        })),
                    }))
                })
                .collect(),
        ));
    }
    if !p.methods.is_empty() {
        all.push(any_of(
            p.methods
                .iter()
                .map(|method| {
                    rule(permission::Rule::Header(header(&ValueMatchConfig {
                        name: ":method".into(),
                        exact: Some(method.clone()),
                        regex: None,
                        present: None,
                    })))
                })
                .collect(),
        ));
    }
    for h in &p.headers {
        all.push(rule(permission::Rule::Header(header(h))));
    }
    let permission = match all.len() {
        0 => rule(permission::Rule::Any(true)),
        1 => all.pop().expect("one"),
        _ => rule(permission::Rule::AndRules(permission::Set { rules: all })),
    };
    Policy {
        permissions: vec![permission],
        principals,
        ..Default::default()
    }
}

fn rule(rule: permission::Rule) -> Permission {
    Permission { rule: Some(rule) }
}

fn any_of(mut rules: Vec<Permission>) -> Permission {
    if rules.len() == 1 {
        return rules.pop().expect("one");
    }
    rule(permission::Rule::OrRules(permission::Set { rules }))
}

/// A `from` entry: an exact SPIFFE ID, a namespace (`…/ns/NS/*`, a URI
/// prefix) or `*` (any authenticated peer).
fn peer(from: &str) -> Principal {
    let principal_name = match from {
        "*" => None,
        _ => Some(StringMatcher {
            match_pattern: Some(match from.strip_suffix('*') {
                Some(prefix) => MatchPattern::Prefix(prefix.into()),
                None => MatchPattern::Exact(from.into()),
            }),
            ..Default::default()
        }),
    };
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated { principal_name },
        )),
    }
}

fn header(h: &ValueMatchConfig) -> HeaderMatcher {
    let (specifier, invert) = match (&h.exact, &h.regex, h.present) {
        (Some(exact), _, _) => (
            HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(exact.clone())),
                ..Default::default()
            }),
            false,
        ),
        (None, Some(regex), _) => (
            HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                    regex: regex.clone(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            false,
        ),
        (None, None, present) => (
            HeaderMatchSpecifier::PresentMatch(true),
            present == Some(false),
        ),
    };
    HeaderMatcher {
        name: h.name.clone(),
        invert_match: invert,
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

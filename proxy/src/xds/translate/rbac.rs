//! Envoy's RBAC filters (`envoy.filters.http.rbac`, `envoy.filters.network.rbac`)
//! → a listener's `authorization:` policies.
//!
//! Envoy chains filters: each DENY filter denies what one of its policies
//! matches, each ALLOW filter denies what none matches. Remora's policies
//! have Istio's semantics (deny policies first, then any allow policy
//! makes the listener default-deny), which is the same as any number of
//! DENY filters and at most one ALLOW filter; more than one ALLOW filter
//! (an AND of allow lists) is refused. A policy's principals become `from`
//! (authenticated URI SANs: exact, a namespace prefix, or any) and its
//! permission the AND of ports, paths, methods and headers; a policy with
//! several permissions becomes one policy per permission.

use remora_xds_proto::matcher::{path_matcher, string_matcher::MatchPattern};
use remora_xds_proto::rbac::{self, Permission, Principal, permission, principal};

use super::{Rejection, Result};
use crate::config::{AuthorizationAction, AuthorizationPolicyConfig};

/// The policies of one filter's `rules`, appended to `out`; `allow_seen`
/// tracks whether an ALLOW filter came before.
pub(super) fn rules(
    rules: Option<&rbac::Rbac>,
    allow_seen: &mut bool,
    out: &mut Vec<AuthorizationPolicyConfig>,
) -> Result<()> {
    // No rules: the filter does nothing.
    let Some(rules) = rules else {
        return Ok(());
    };
    if rules.audit_logging_options.is_some() {
        return Err(Rejection::unsupported(
            "rules.audit_logging_options",
            "RBAC audit logging",
        ));
    }
    let action = match rbac::rbac::Action::try_from(rules.action) {
        Ok(rbac::rbac::Action::Allow) => {
            if std::mem::replace(allow_seen, true) {
                return Err(Rejection::unsupported(
                    "rules.action",
                    "a second ALLOW filter (every allow policy must be in one filter)",
                ));
            }
            AuthorizationAction::Allow
        }
        Ok(rbac::rbac::Action::Deny) => AuthorizationAction::Deny,
        _ => {
            return Err(Rejection::unsupported(
                "rules.action",
                &format!("the RBAC action {}", rules.action),
            ));
        }
    };
    if action == AuthorizationAction::Allow && rules.policies.is_empty() {
        // An ALLOW filter without policies allows nothing.
        out.push(AuthorizationPolicyConfig {
            name: "rbac-allows-nothing".into(),
            target_refs: Vec::new(),
            action: AuthorizationAction::Deny,
            from: Vec::new(),
            ports: Vec::new(),
            paths: Vec::new(),
            methods: Vec::new(),
            headers: Vec::new(),
        });
        return Ok(());
    }
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    for name in names {
        let at = format!("rules.policies[{name:?}]");
        let policy = &rules.policies[name];
        if policy.condition.is_some() || policy.checked_condition.is_some() {
            return Err(Rejection::unsupported(
                format!("{at}.condition"),
                "CEL conditions",
            ));
        }
        let from = principals(&policy.principals).map_err(|e| e.at(&at))?;
        if policy.permissions.is_empty() {
            return Err(Rejection::new(
                format!("{at}.permissions"),
                "at least one permission is required",
            ));
        }
        for (i, p) in policy.permissions.iter().enumerate() {
            let mut config = AuthorizationPolicyConfig {
                target_refs: Vec::new(),
                name: if i == 0 {
                    name.clone()
                } else {
                    format!("{name}[{i}]")
                },
                action,
                from: from.clone(),
                ports: Vec::new(),
                paths: Vec::new(),
                methods: Vec::new(),
                headers: Vec::new(),
            };
            conditions(p, &mut config).map_err(|e| e.at(&format!("{at}.permissions[{i}]")))?;
            out.push(config);
        }
    }
    Ok(())
}

/// `from`: empty when any principal matches anyone.
fn principals(list: &[Principal]) -> Result<Vec<String>> {
    if list.is_empty() {
        return Err(Rejection::new(
            "principals",
            "at least one principal is required",
        ));
    }
    let mut from = Vec::new();
    for (i, p) in list.iter().enumerate() {
        if !peer(p, &mut from).map_err(|e| e.at(&format!("principals[{i}]")))? {
            return Ok(Vec::new());
        }
    }
    Ok(from)
}

/// Adds a principal's identities to `from`; `false` when it matches anyone.
fn peer(p: &Principal, from: &mut Vec<String>) -> Result<bool> {
    use principal::Identifier;
    match &p.identifier {
        Some(Identifier::Any(true)) => Ok(false),
        Some(Identifier::OrIds(set)) => {
            for (i, id) in set.ids.iter().enumerate() {
                if !peer(id, from).map_err(|e| e.at(&format!("or_ids.ids[{i}]")))? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Some(Identifier::Authenticated(authenticated)) => {
            let Some(name) = &authenticated.principal_name else {
                from.push("*".into());
                return Ok(true);
            };
            if name.ignore_case {
                return Err(Rejection::unsupported(
                    "authenticated.principal_name.ignore_case",
                    "a case-insensitive principal",
                ));
            }
            match &name.match_pattern {
                Some(MatchPattern::Exact(exact)) => from.push(exact.clone()),
                // A namespace: spiffe://DOMAIN/ns/NAMESPACE/
                Some(MatchPattern::Prefix(prefix)) if prefix.ends_with('/') => {
                    from.push(format!("{prefix}*"))
                }
                _ => {
                    return Err(Rejection::unsupported(
                        "authenticated.principal_name",
                        "a principal other than an exact SPIFFE ID or a namespace prefix (spiffe://DOMAIN/ns/NAMESPACE/)",
                    ));
                }
            }
            Ok(true)
        }
        _ => Err(Rejection::unsupported(
            "identifier",
            "a principal other than any, or_ids and authenticated",
        )),
    }
}

/// A permission as the AND of a policy's condition lists.
fn conditions(p: &Permission, config: &mut AuthorizationPolicyConfig) -> Result<()> {
    match &p.rule {
        Some(permission::Rule::Any(true)) => Ok(()),
        Some(permission::Rule::AndRules(set)) => {
            for (i, rule) in set.rules.iter().enumerate() {
                condition(rule, config).map_err(|e| e.at(&format!("and_rules.rules[{i}]")))?;
            }
            Ok(())
        }
        _ => condition(p, config),
    }
}

/// What one condition list can hold.
enum Kind {
    Port(u16),
    Path(String),
    Method(String),
}

/// One condition: a port, path or method, an OR of one kind of those, or
/// a header.
fn condition(p: &Permission, config: &mut AuthorizationPolicyConfig) -> Result<()> {
    let mut kinds = Vec::new();
    match &p.rule {
        Some(permission::Rule::OrRules(set)) => {
            for (i, rule) in set.rules.iter().enumerate() {
                kinds.push(one(rule).map_err(|e| e.at(&format!("or_rules.rules[{i}]")))?);
            }
        }
        Some(permission::Rule::Header(h)) if h.name != ":method" => {
            let value = super::route_match::header_value(h).map_err(|e| e.at("header"))?;
            config.headers.push(value);
            return Ok(());
        }
        _ => kinds.push(one(p)?),
    }
    let field = match kinds.first() {
        Some(Kind::Port(_)) => "ports",
        Some(Kind::Path(_)) => "paths",
        Some(Kind::Method(_)) => "methods",
        None => {
            return Err(Rejection::new(
                "or_rules.rules",
                "at least one rule is required",
            ));
        }
    };
    let taken = match field {
        "ports" => !config.ports.is_empty(),
        "paths" => !config.paths.is_empty(),
        _ => !config.methods.is_empty(),
    };
    if taken {
        return Err(Rejection::unsupported(
            "",
            &format!("a second {field} condition in one permission (an AND of two {field} lists)"),
        ));
    }
    for kind in kinds {
        match (field, kind) {
            ("ports", Kind::Port(port)) => config.ports.push(port),
            ("paths", Kind::Path(path)) => config.paths.push(path),
            ("methods", Kind::Method(method)) => config.methods.push(method),
            _ => {
                return Err(Rejection::unsupported(
                    "or_rules",
                    "an OR of different kinds of rules (ports, paths, methods)",
                ));
            }
        }
    }
    Ok(())
}

fn one(p: &Permission) -> Result<Kind> {
    use remora_xds_proto::route::header_matcher::HeaderMatchSpecifier;
    match &p.rule {
        Some(permission::Rule::DestinationPort(port)) => u16::try_from(*port)
            .ok()
            .filter(|p| *p != 0)
            .map(Kind::Port)
            .ok_or_else(|| Rejection::new("destination_port", format!("{port} is not a port"))),
        Some(permission::Rule::UrlPath(path)) => {
            let Some(path_matcher::Rule::Path(matcher)) = &path.rule else {
                return Err(Rejection::new("url_path.path", "required"));
            };
            if matcher.ignore_case {
                return Err(Rejection::unsupported(
                    "url_path.path.ignore_case",
                    "a case-insensitive path",
                ));
            }
            match &matcher.match_pattern {
                Some(MatchPattern::Exact(exact)) if !exact.ends_with('*') => {
                    Ok(Kind::Path(exact.clone()))
                }
                Some(MatchPattern::Prefix(prefix)) => Ok(Kind::Path(format!("{prefix}*"))),
                _ => Err(Rejection::unsupported(
                    "url_path.path",
                    "a path match other than exact or prefix",
                )),
            }
        }
        Some(permission::Rule::Header(h)) if h.name == ":method" && !h.invert_match => {
            #[allow(deprecated)]
            let method = match &h.header_match_specifier {
                Some(HeaderMatchSpecifier::ExactMatch(m)) => Some(m.clone()),
                Some(HeaderMatchSpecifier::StringMatch(s)) if !s.ignore_case => {
                    match &s.match_pattern {
                        Some(MatchPattern::Exact(m)) => Some(m.clone()),
                        _ => None,
                    }
                }
                _ => None,
            };
            method
                .map(Kind::Method)
                .ok_or_else(|| Rejection::unsupported("header", "a :method match other than exact"))
        }
        _ => Err(Rejection::unsupported(
            "rule",
            "a permission other than any, and_rules, or_rules, destination_port, url_path and header",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Name;
    use remora_xds_proto::filters::{http_rbac, network_rbac};
    use remora_xds_proto::matcher::StringMatcher;

    #[test]
    fn the_filter_type_urls_are_envoys() {
        assert_eq!(
            network_rbac::Rbac::type_url(),
            "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
        );
        assert_eq!(
            http_rbac::Rbac::type_url(),
            "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
        );
    }

    fn authenticated(pattern: Option<MatchPattern>) -> Principal {
        Principal {
            identifier: Some(principal::Identifier::Authenticated(
                principal::Authenticated {
                    principal_name: pattern.map(|p| StringMatcher {
                        match_pattern: Some(p),
                        ..Default::default()
                    }),
                },
            )),
        }
    }

    fn port(p: u32) -> Permission {
        Permission {
            rule: Some(permission::Rule::DestinationPort(p)),
        }
    }

    fn allow(policies: Vec<(&str, rbac::Policy)>) -> rbac::Rbac {
        rbac::Rbac {
            action: rbac::rbac::Action::Allow as i32,
            policies: policies
                .into_iter()
                .map(|(n, p)| (n.to_string(), p))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn principals_and_permissions_become_policies() {
        let rules = allow(vec![(
            "b",
            rbac::Policy {
                principals: vec![
                    authenticated(Some(MatchPattern::Exact("spiffe://td/ns/a/sa/web".into()))),
                    authenticated(Some(MatchPattern::Prefix("spiffe://td/ns/ops/".into()))),
                ],
                permissions: vec![
                    Permission {
                        rule: Some(permission::Rule::AndRules(permission::Set {
                            rules: vec![Permission {
                                rule: Some(permission::Rule::OrRules(permission::Set {
                                    rules: vec![port(80), port(8080)],
                                })),
                            }],
                        })),
                    },
                    port(9090),
                ],
                ..Default::default()
            },
        )]);
        let mut out = Vec::new();
        let mut allow_seen = false;
        super::rules(Some(&rules), &mut allow_seen, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].name, "b");
        assert_eq!(
            out[0].from,
            ["spiffe://td/ns/a/sa/web", "spiffe://td/ns/ops/*"]
        );
        assert_eq!(out[0].ports, [80, 8080]);
        assert_eq!(out[1].name, "b[1]");
        assert_eq!(out[1].ports, [9090]);
        // A second ALLOW filter would AND two allow lists: refused.
        let e = super::rules(Some(&rules), &mut allow_seen, &mut out).unwrap_err();
        assert!(e.to_string().contains("a second ALLOW filter"), "{e}");
    }

    #[test]
    fn an_allow_filter_without_policies_denies_everything() {
        let mut out = Vec::new();
        super::rules(Some(&allow(vec![])), &mut false, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].action, AuthorizationAction::Deny);
        assert!(out[0].from.is_empty() && out[0].ports.is_empty());
    }

    #[test]
    fn what_cannot_be_expressed_is_refused_by_field() {
        let regex = allow(vec![(
            "p",
            rbac::Policy {
                principals: vec![authenticated(Some(MatchPattern::Suffix("/sa/web".into())))],
                permissions: vec![port(80)],
                ..Default::default()
            },
        )]);
        let e = super::rules(Some(&regex), &mut false, &mut Vec::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("rules.policies[\"p\"].principals[0].authenticated.principal_name"),
            "{e}"
        );
        let not = allow(vec![(
            "p",
            rbac::Policy {
                principals: vec![Principal {
                    identifier: Some(principal::Identifier::Any(true)),
                }],
                permissions: vec![Permission {
                    rule: Some(permission::Rule::NotRule(Box::new(port(80)))),
                }],
                ..Default::default()
            },
        )]);
        let e = super::rules(Some(&not), &mut false, &mut Vec::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("rules.policies[\"p\"].permissions[0].rule"),
            "{e}"
        );
    }
}

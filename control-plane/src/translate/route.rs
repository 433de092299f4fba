//! A service's RouteConfiguration: the HTTPRoutes and GRPCRoutes whose
//! parent it is, ordered by the Gateway API's precedence (exact path, then
//! longer prefix, then method, then more header and query matches; file
//! order breaks ties), and a last route to the service itself.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use remora_xds_proto::route::{
    self, HeaderMatcher, QueryParameterMatcher, RetryPolicy, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use remora_xds_proto::{core, matcher};

use super::wire::{duration, u32v};
use crate::mesh::{
    self, HeaderModifier, Mesh, MethodMatch, PathMatchType, RouteKind, RouteRule, Service,
    ServiceIndex, ValueMatch, ValueMatchType,
};

/// `NAME.NAMESPACE:PORT`.
pub fn route_name(service: &Service) -> String {
    format!("{}:{}", service.key(), service.port)
}

/// One (rule, match) pair and its precedence.
struct Candidate<'a> {
    route: &'a mesh::Route,
    rule: &'a RouteRule,
    rule_index: usize,
    matched: Option<(usize, &'a mesh::RouteMatch)>,
    order: usize,
}

pub fn route_configuration(
    mesh: &Mesh,
    service_index: usize,
    index: &ServiceIndex<'_>,
) -> (RouteConfiguration, BTreeSet<usize>) {
    let service = &mesh.services[service_index];
    let mut candidates = Vec::new();
    for route in &mesh.routes {
        let parented = route.parent_refs.iter().any(|p| {
            p.name == service.name
                && p.namespace.as_deref().unwrap_or(&route.namespace) == service.namespace
        });
        if !parented {
            continue;
        }
        for (rule_index, rule) in route.rules.iter().enumerate() {
            if rule.matches.is_empty() {
                let order = candidates.len();
                candidates.push(Candidate {
                    route,
                    rule,
                    rule_index,
                    matched: None,
                    order,
                });
            }
            for (k, m) in rule.matches.iter().enumerate() {
                let order = candidates.len();
                candidates.push(Candidate {
                    route,
                    rule,
                    rule_index,
                    matched: Some((k, m)),
                    order,
                });
            }
        }
    }
    candidates.sort_by_key(|c| (precedence(c.route.kind, c.matched.map(|m| m.1)), c.order));

    let mut reaches = BTreeSet::from([service_index]);
    let mut routes = Vec::new();
    for c in &candidates {
        let backends = backends(mesh, c.route, c.rule, service, index);
        reaches.extend(backends.iter().map(|(i, _)| *i));
        let action = action(mesh, c.rule, service, &backends);
        let name = match c.matched {
            Some((k, _)) => format!(
                "{}/{}/rule{}/match{k}",
                c.route.namespace, c.route.name, c.rule_index
            ),
            None => format!(
                "{}/{}/rule{}",
                c.route.namespace, c.route.name, c.rule_index
            ),
        };
        for route_match in route_matches(c.route.kind, c.matched.map(|m| m.1)) {
            let mut route = Route {
                name: name.clone(),
                r#match: Some(route_match),
                action: Some(route::route::Action::Route(action.clone())),
                ..Default::default()
            };
            apply_filters(&mut route, c.rule);
            routes.push(route);
        }
    }
    routes.push(Route {
        name: "default".into(),
        r#match: Some(prefix("/")),
        action: Some(route::route::Action::Route(action(
            mesh,
            &RouteRule::default(),
            service,
            &[(service_index, 1)],
        ))),
        ..Default::default()
    });
    if let Some(cache) = &service.policy.cache {
        // Every route to the service caches its answers (remora-proxy
        // reads this; Envoy ignores it).
        let extras = serde_json::json!({ "cache": cache }).to_string();
        for route in &mut routes {
            route.metadata = Some(super::cluster::remora_metadata(extras.clone()));
        }
    }
    let config = RouteConfiguration {
        name: route_name(service),
        virtual_hosts: vec![VirtualHost {
            name: service.key(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    };
    (config, reaches)
}

/// Smaller sorts first.
fn precedence(
    kind: RouteKind,
    m: Option<&mesh::RouteMatch>,
) -> (u8, Reverse<usize>, u8, Reverse<usize>, Reverse<usize>) {
    let Some(m) = m else {
        return (1, Reverse(1), 1, Reverse(0), Reverse(0));
    };
    let (path_rank, length) = match kind {
        RouteKind::Http => match &m.path {
            Some(p) if p.kind == PathMatchType::Exact => (0, p.value.len()),
            Some(p) if p.kind == PathMatchType::PathPrefix => (1, p.value.len()),
            Some(p) => (2, p.value.len()),
            None => (1, 1),
        },
        RouteKind::Grpc => match &m.method {
            Some(MethodMatch::Grpc(g)) if g.kind == ValueMatchType::Exact => {
                match (&g.service, &g.method) {
                    (Some(s), Some(method)) => (0, s.len() + method.len() + 2),
                    (Some(s), None) => (1, s.len() + 2),
                    _ => (2, 0),
                }
            }
            Some(_) => (2, 0),
            None => (1, 1),
        },
    };
    let method = u8::from(!(kind == RouteKind::Http && m.method.is_some()));
    (
        path_rank,
        Reverse(length),
        method,
        Reverse(m.headers.len()),
        Reverse(m.query_params.len()),
    )
}

fn prefix(value: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::Prefix(value.into())),
        ..Default::default()
    }
}

fn regex(pattern: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher {
        regex: pattern.into(),
        ..Default::default()
    }
}

fn string_matcher(value: &ValueMatch) -> matcher::StringMatcher {
    use matcher::string_matcher::MatchPattern;
    matcher::StringMatcher {
        match_pattern: Some(match value.kind {
            ValueMatchType::Exact => MatchPattern::Exact(value.value.clone()),
            ValueMatchType::RegularExpression => MatchPattern::SafeRegex(regex(&value.value)),
        }),
        ignore_case: false,
    }
}

fn header(name: &str, value: &ValueMatch) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_ascii_lowercase(),
        header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
            string_matcher(value),
        )),
        ..Default::default()
    }
}

/// Envoy route matches for one Gateway API match. An element-wise
/// `PathPrefix` of `/a` becomes two: exactly `/a`, and the prefix `/a/`.
fn route_matches(kind: RouteKind, m: Option<&mesh::RouteMatch>) -> Vec<RouteMatch> {
    use route::route_match::PathSpecifier;
    let Some(m) = m else {
        return vec![prefix("/")];
    };
    let mut headers: Vec<HeaderMatcher> = m.headers.iter().map(|h| header(&h.name, h)).collect();
    let query_parameters: Vec<QueryParameterMatcher> = m
        .query_params
        .iter()
        .map(|q| QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(
                route::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                    string_matcher(q),
                ),
            ),
        })
        .collect();
    let mut paths: Vec<PathSpecifier> = Vec::new();
    match kind {
        RouteKind::Http => {
            if let Some(MethodMatch::Http(method)) = &m.method {
                headers.push(header(
                    ":method",
                    &ValueMatch {
                        kind: ValueMatchType::Exact,
                        name: ":method".into(),
                        value: method.clone(),
                    },
                ));
            }
            match &m.path {
                None => paths.push(PathSpecifier::Prefix("/".into())),
                Some(p) => match p.kind {
                    PathMatchType::Exact => paths.push(PathSpecifier::Path(p.value.clone())),
                    PathMatchType::RegularExpression => {
                        paths.push(PathSpecifier::SafeRegex(regex(&p.value)))
                    }
                    PathMatchType::PathPrefix => {
                        let trimmed = p.value.trim_end_matches('/');
                        if trimmed.is_empty() {
                            paths.push(PathSpecifier::Prefix("/".into()));
                        } else {
                            paths.push(PathSpecifier::Path(trimmed.into()));
                            paths.push(PathSpecifier::Prefix(format!("{trimmed}/")));
                        }
                    }
                },
            }
        }
        RouteKind::Grpc => match &m.method {
            Some(MethodMatch::Grpc(g)) => match (g.kind, &g.service, &g.method) {
                (ValueMatchType::Exact, Some(s), Some(method)) => {
                    paths.push(PathSpecifier::Path(format!("/{s}/{method}")))
                }
                (ValueMatchType::Exact, Some(s), None) => {
                    paths.push(PathSpecifier::Prefix(format!("/{s}/")))
                }
                (ValueMatchType::Exact, None, Some(method)) => paths.push(
                    PathSpecifier::SafeRegex(regex(&format!("/[^/]+/{}", regex::escape(method)))),
                ),
                (ValueMatchType::RegularExpression, s, method) => {
                    paths.push(PathSpecifier::SafeRegex(regex(&format!(
                        "/{}/{}",
                        s.as_deref().unwrap_or("[^/]+"),
                        method.as_deref().unwrap_or("[^/]+")
                    ))))
                }
                (ValueMatchType::Exact, None, None) => {
                    paths.push(PathSpecifier::Prefix("/".into()))
                }
            },
            _ => paths.push(PathSpecifier::Prefix("/".into())),
        },
    }
    paths
        .into_iter()
        .map(|path| RouteMatch {
            path_specifier: Some(path),
            headers: headers.clone(),
            query_parameters: query_parameters.clone(),
            ..Default::default()
        })
        .collect()
}

/// The rule's backends as (service index, weight); none means the parent.
fn backends(
    _mesh: &Mesh,
    route: &mesh::Route,
    rule: &RouteRule,
    parent: &Service,
    index: &ServiceIndex<'_>,
) -> Vec<(usize, u32)> {
    if rule.backend_refs.is_empty() {
        let i = index.position(&parent.name, &parent.namespace);
        return vec![(i.expect("validated: a route's parent exists"), 1)];
    }
    rule.backend_refs
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| {
            let ns = b.namespace.as_deref().unwrap_or(&route.namespace);
            let i = index.position(&b.name, ns);
            (i.expect("validated: backends exist"), b.weight)
        })
        .collect()
}

fn action(
    mesh: &Mesh,
    rule: &RouteRule,
    parent: &Service,
    backends: &[(usize, u32)],
) -> RouteAction {
    use route::route_action::ClusterSpecifier;
    let cluster_specifier = if backends.len() == 1 {
        ClusterSpecifier::Cluster(super::cluster_name(&mesh.services[backends[0].0]))
    } else {
        ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: backends
                .iter()
                .map(|(i, weight)| route::weighted_cluster::ClusterWeight {
                    name: super::cluster_name(&mesh.services[*i]),
                    weight: Some(u32v(*weight)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    let kind = if parent.protocol == mesh::ServiceProtocol::Grpc {
        RouteKind::Grpc
    } else {
        RouteKind::Http
    };
    // A rule's own retry and timeouts, else the parent service's policy's.
    let timeouts = rule
        .timeouts
        .as_ref()
        .or(parent.policy.timeouts.as_ref())
        .cloned()
        .unwrap_or_default();
    let retry = rule.retry.as_ref().or(parent.policy.retry.as_ref());
    let retry_policy = match (retry, timeouts.backend_request) {
        (None, None) => None,
        (retry, per_try) => Some(retry_policy(kind, retry, per_try)),
    };
    let hash_on = backends
        .first()
        .map(|(i, _)| &mesh.services[*i].policy.load_balancer)
        .filter(|lb| lb.policy.is_hash_based())
        .and_then(|lb| lb.hash_on.as_ref());
    RouteAction {
        cluster_specifier: Some(cluster_specifier),
        // Envoy's default is 15 s; Remora's is none. Zero means none to both.
        timeout: Some(duration(timeouts.request.unwrap_or_default())),
        retry_policy,
        hash_policy: hash_on.map(hash_policy).into_iter().collect(),
        ..Default::default()
    }
}

fn retry_policy(
    kind: RouteKind,
    retry: Option<&mesh::Retry>,
    per_try: Option<std::time::Duration>,
) -> RetryPolicy {
    let Some(retry) = retry else {
        return RetryPolicy {
            num_retries: Some(u32v(0)),
            per_try_timeout: per_try.map(duration),
            ..Default::default()
        };
    };
    let retry_on = match kind {
        RouteKind::Http if retry.codes.is_empty() => "connect-failure,refused-stream,reset",
        RouteKind::Http => "connect-failure,refused-stream,reset,retriable-status-codes",
        RouteKind::Grpc => {
            "connect-failure,refused-stream,reset,unavailable,cancelled,resource-exhausted"
        }
    };
    RetryPolicy {
        retry_on: retry_on.into(),
        num_retries: Some(u32v(retry.attempts)),
        per_try_timeout: per_try.map(duration),
        retriable_status_codes: retry.codes.iter().map(|c| u32::from(*c)).collect(),
        retry_back_off: retry.backoff.map(|base| route::retry_policy::RetryBackOff {
            base_interval: Some(duration(base)),
            max_interval: Some(duration(base * 10)),
        }),
        ..Default::default()
    }
}

fn hash_policy(on: &remora_api::HashOnConfig) -> route::route_action::HashPolicy {
    use route::route_action::hash_policy::{self, PolicySpecifier};
    let specifier = if let Some(name) = &on.header {
        PolicySpecifier::Header(hash_policy::Header {
            header_name: name.clone(),
            ..Default::default()
        })
    } else if let Some(cookie) = &on.cookie {
        PolicySpecifier::Cookie(hash_policy::Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.map(duration),
            path: cookie.path.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if let Some(name) = &on.query {
        PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: name.clone() })
    } else {
        PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: true })
    };
    route::route_action::HashPolicy {
        policy_specifier: Some(specifier),
        terminal: false,
    }
}

fn apply_filters(route: &mut Route, rule: &RouteRule) {
    for filter in &rule.filters {
        if let Some(m) = &filter.request_header_modifier {
            route.request_headers_to_add.extend(header_options(m));
            route
                .request_headers_to_remove
                .extend(m.remove.iter().cloned());
        }
        if let Some(m) = &filter.response_header_modifier {
            route.response_headers_to_add.extend(header_options(m));
            route
                .response_headers_to_remove
                .extend(m.remove.iter().cloned());
        }
    }
}

fn header_options(m: &HeaderModifier) -> Vec<core::HeaderValueOption> {
    use core::header_value_option::HeaderAppendAction;
    let option = |h: &mesh::HeaderValue, action: HeaderAppendAction| core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: h.name.to_ascii_lowercase(),
            value: h.value.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    m.set
        .iter()
        .map(|h| option(h, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(
            m.add
                .iter()
                .map(|h| option(h, HeaderAppendAction::AppendIfExistsOrAdd)),
        )
        .collect()
}

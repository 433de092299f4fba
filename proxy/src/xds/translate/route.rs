//! RouteConfiguration → the proxy's ordered route list.
//!
//! Envoy first picks a virtual host by the request's host (an exact domain,
//! then the longest `*.suffix`, then `*`) and then the first matching route
//! in it. The proxy has one ordered list with a host condition per route,
//! so the virtual hosts are laid out in that order, each domain's routes
//! ending with a 404 so a request never falls through to a less specific
//! virtual host.

use std::cmp::Reverse;
use std::time::Duration;

use remora_xds_proto::core;
use remora_xds_proto::route::{self, Route, RouteAction, RouteConfiguration, VirtualHost};

use super::route_match::route_match;
use super::route_policy::{hash_policy, per_filter_rate_limit, retry_policy};
use super::{Rejection, Result, duration, duration_or_none, opt_duration, u32v};
use crate::config::{
    BackendRef, DirectResponseConfig, HeaderEditsConfig, HeaderValueConfig, RateLimitConfig,
    RetryConfig, RouteConfig,
};

/// Envoy's default route timeout.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) fn route_configuration(rc: &RouteConfiguration) -> Result<Vec<RouteConfig>> {
    if rc.vhds.is_some() {
        return Err(Rejection::unsupported("vhds", "virtual host discovery"));
    }
    if !rc.cluster_specifier_plugins.is_empty() {
        return Err(Rejection::unsupported(
            "cluster_specifier_plugins",
            "cluster specifier plugins",
        ));
    }
    if !rc.request_mirror_policies.is_empty() {
        return Err(Rejection::unsupported(
            "request_mirror_policies",
            "request mirroring",
        ));
    }
    if !rc.vhost_header.is_empty() {
        return Err(Rejection::unsupported(
            "vhost_header",
            "a virtual host header",
        ));
    }
    let outer = Scope {
        rate_limit: per_filter_rate_limit(&rc.typed_per_filter_config, "typed_per_filter_config")?,
        headers: edits(
            &rc.request_headers_to_add,
            &rc.request_headers_to_remove,
            &rc.response_headers_to_add,
            &rc.response_headers_to_remove,
            "",
        )?,
        retry: None,
    };

    // Each domain with its virtual host, most specific first.
    let mut domains: Vec<(u8, Reverse<usize>, &str, usize)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (v, vh) in rc.virtual_hosts.iter().enumerate() {
        if vh.domains.is_empty() {
            return Err(Rejection::new(
                format!("virtual_hosts[{v}].domains"),
                "at least one domain is required",
            ));
        }
        for (d, domain) in vh.domains.iter().enumerate() {
            let at = format!("virtual_hosts[{v}].domains[{d}]");
            let lower = domain.to_ascii_lowercase();
            if !seen.insert(lower) {
                return Err(Rejection::new(
                    at,
                    format!("the domain {domain:?} is listed twice"),
                ));
            }
            let rank = domain_rank(domain).map_err(|m| Rejection::new(at, m))?;
            domains.push((rank, Reverse(domain.len()), domain, v));
        }
    }
    domains.sort_by_key(|&(rank, length, _, v)| (rank, length, v));

    let translated: Vec<Vec<RouteConfig>> = rc
        .virtual_hosts
        .iter()
        .enumerate()
        .map(|(v, vh)| virtual_host(vh, &outer).map_err(|e| e.at(&format!("virtual_hosts[{v}]"))))
        .collect::<Result<_>>()?;

    let mut out = Vec::new();
    let last = domains.len().saturating_sub(1);
    for (k, &(_, _, domain, v)) in domains.iter().enumerate() {
        let host = (domain != "*").then(|| domain.to_string());
        let prefix = match &host {
            Some(host) => format!("{host}/"),
            None => String::new(),
        };
        for route in &translated[v] {
            let mut route = route.clone();
            route.name = format!("{prefix}{}", route.name);
            route.matches.host = host.clone();
            out.push(route);
        }
        if k != last {
            out.push(not_found(
                format!("{prefix}{}/no-route", rc.virtual_hosts[v].name),
                host,
            ));
        }
    }
    Ok(out)
}

/// 0: exact, 1: `*.suffix`, 2: `*`.
fn domain_rank(domain: &str) -> std::result::Result<u8, String> {
    if domain == "*" {
        return Ok(2);
    }
    if domain.contains(':') && !domain.starts_with('[') {
        return Err(format!(
            "the domain {domain:?} has a port; domains with ports are not supported by remora-proxy"
        ));
    }
    match domain.strip_prefix("*.") {
        Some(rest) if !rest.is_empty() && !rest.contains('*') => Ok(1),
        _ if domain.contains('*') => Err(format!(
            "the domain {domain:?}: only exact names, *.suffix and * are supported by remora-proxy"
        )),
        _ => Ok(0),
    }
}

fn not_found(name: String, host: Option<String>) -> RouteConfig {
    let mut route = empty_route(name);
    route.matches.host = host;
    route.direct_response = Some(DirectResponseConfig {
        status: 404,
        body: None,
    });
    route
}

fn empty_route(name: String) -> RouteConfig {
    let mut route = super::defaults!(RouteConfig, "{name: x}");
    route.name = name;
    route
}

/// What an enclosing virtual host or route configuration gives its routes.
struct Scope {
    rate_limit: Option<Option<RateLimitConfig>>,
    headers: HeaderEdits,
    retry: Option<RetryConfig>,
}

#[derive(Default, Clone)]
struct HeaderEdits {
    request: HeaderEditsConfig,
    response: HeaderEditsConfig,
}

fn virtual_host(vh: &VirtualHost, outer: &Scope) -> Result<Vec<RouteConfig>> {
    if vh.require_tls != 0 {
        return Err(Rejection::unsupported("require_tls", "requiring TLS"));
    }
    if !vh.rate_limits.is_empty() {
        return Err(Rejection::unsupported(
            "rate_limits",
            "global rate limiting",
        ));
    }
    if vh.hedge_policy.is_some() {
        return Err(Rejection::unsupported("hedge_policy", "request hedging"));
    }
    if !vh.request_mirror_policies.is_empty() {
        return Err(Rejection::unsupported(
            "request_mirror_policies",
            "request mirroring",
        ));
    }
    if vh.matcher.is_some() {
        return Err(Rejection::unsupported("matcher", "the generic matcher"));
    }
    if vh.retry_policy_typed_config.is_some() {
        return Err(Rejection::unsupported(
            "retry_policy_typed_config",
            "retry policy extensions",
        ));
    }
    let mut headers = edits(
        &vh.request_headers_to_add,
        &vh.request_headers_to_remove,
        &vh.response_headers_to_add,
        &vh.response_headers_to_remove,
        "",
    )?;
    // Route-level edits run first, then the virtual host's, then the configuration's.
    append_edits(&mut headers, &outer.headers);
    let scope = Scope {
        rate_limit: match per_filter_rate_limit(
            &vh.typed_per_filter_config,
            "typed_per_filter_config",
        )? {
            Some(limit) => Some(limit),
            None => outer.rate_limit.clone(),
        },
        headers,
        retry: vh
            .retry_policy
            .as_ref()
            .map(|p| retry_policy(p).map_err(|e| e.at("retry_policy")))
            .transpose()?,
    };
    let mut out = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        let route = self::route(r, &scope, format!("{}/{i}", vh.name))
            .map_err(|e| e.at(&format!("routes[{i}]")))?;
        out.push(route);
    }
    Ok(out)
}

fn route(r: &Route, scope: &Scope, index_name: String) -> Result<RouteConfig> {
    let name = if r.name.is_empty() {
        index_name
    } else {
        format!("{index_name}/{}", r.name)
    };
    let mut out = empty_route(name);
    out.matches = route_match(
        r.r#match
            .as_ref()
            .ok_or_else(|| Rejection::new("match", "required"))?,
    )
    .map_err(|e| e.at("match"))?;
    let mut headers = edits(
        &r.request_headers_to_add,
        &r.request_headers_to_remove,
        &r.response_headers_to_add,
        &r.response_headers_to_remove,
        "",
    )?;
    append_edits(&mut headers, &scope.headers);
    out.request_headers = headers.request;
    out.response_headers = headers.response;
    out.rate_limit =
        match per_filter_rate_limit(&r.typed_per_filter_config, "typed_per_filter_config")? {
            Some(limit) => limit,
            None => scope.rate_limit.clone().flatten(),
        };
    let extras = super::route_policy::route_extras(r)?;
    out.cache = extras.cache;
    if let Some(global) = extras.rate_limit_global {
        let Some(limit) = &mut out.rate_limit else {
            return Err(Rejection::new(
                "metadata.filter_metadata[\"remora\"].extras",
                "rate_limit_global needs the route's local rate limit (typed_per_filter_config)",
            ));
        };
        limit.global = Some(global);
    }
    match &r.action {
        Some(route::route::Action::Route(action)) => {
            route_action(action, scope, &mut out).map_err(|e| e.at("route"))?
        }
        Some(route::route::Action::DirectResponse(direct)) => {
            let body = match direct.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => None,
                Some(core::data_source::Specifier::InlineString(s)) => Some(s.clone()),
                Some(core::data_source::Specifier::InlineBytes(b)) => {
                    Some(String::from_utf8(b.clone()).map_err(|_| {
                        Rejection::unsupported(
                            "direct_response.body.inline_bytes",
                            "a body that is not UTF-8",
                        )
                    })?)
                }
                Some(_) => {
                    return Err(Rejection::unsupported(
                        "direct_response.body",
                        "a body from a file or the environment",
                    ));
                }
            };
            let status = u16::try_from(direct.status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| {
                    Rejection::new(
                        "direct_response.status",
                        format!("{} is not an HTTP status", direct.status),
                    )
                })?;
            out.direct_response = Some(DirectResponseConfig { status, body });
        }
        Some(route::route::Action::Redirect(_)) => {
            return Err(Rejection::unsupported("redirect", "a redirect"));
        }
        Some(_) => return Err(Rejection::unsupported("action", "this route action")),
        None => {
            return Err(Rejection::new(
                "route",
                "an action (route or direct_response) is required",
            ));
        }
    }
    Ok(out)
}

fn route_action(a: &RouteAction, scope: &Scope, out: &mut RouteConfig) -> Result<()> {
    use route::route_action::{ClusterSpecifier, HostRewriteSpecifier};
    match &a.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) if !name.is_empty() => {
            out.backends.push(BackendRef {
                cluster: name.clone(),
                weight: 1,
            })
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            for (i, c) in w.clusters.iter().enumerate() {
                let at = format!("weighted_clusters.clusters[{i}]");
                if !c.request_headers_to_add.is_empty()
                    || !c.request_headers_to_remove.is_empty()
                    || !c.response_headers_to_add.is_empty()
                    || !c.response_headers_to_remove.is_empty()
                    || !c.typed_per_filter_config.is_empty()
                    || c.host_rewrite_specifier.is_some()
                {
                    return Err(Rejection::unsupported(
                        at,
                        "header edits or filter configs per weighted cluster",
                    ));
                }
                if c.name.is_empty() {
                    return Err(Rejection::unsupported(
                        format!("{at}.cluster_header"),
                        "a cluster named by a header",
                    ));
                }
                let weight = u32v(&c.weight).unwrap_or(0);
                if weight > 0 {
                    out.backends.push(BackendRef {
                        cluster: c.name.clone(),
                        weight,
                    });
                }
            }
            if out.backends.is_empty() {
                return Err(Rejection::new("weighted_clusters", "every weight is zero"));
            }
        }
        Some(ClusterSpecifier::ClusterHeader(_)) => {
            return Err(Rejection::unsupported(
                "cluster_header",
                "a cluster named by a header",
            ));
        }
        Some(_) => {
            return Err(Rejection::unsupported(
                "cluster_specifier_plugin",
                "cluster specifier plugins",
            ));
        }
        _ => return Err(Rejection::new("cluster", "required")),
    }
    if !a.prefix_rewrite.is_empty() || a.regex_rewrite.is_some() || a.path_rewrite_policy.is_some()
    {
        return Err(Rejection::unsupported("prefix_rewrite", "path rewriting"));
    }
    if a.host_rewrite_specifier.is_some() {
        let _: Option<&HostRewriteSpecifier> = a.host_rewrite_specifier.as_ref();
        return Err(Rejection::unsupported(
            "host_rewrite_literal",
            "host rewriting",
        ));
    }
    if !a.request_mirror_policies.is_empty() {
        return Err(Rejection::unsupported(
            "request_mirror_policies",
            "request mirroring",
        ));
    }
    if a.priority != core::RoutingPriority::Default as i32 {
        return Err(Rejection::unsupported(
            "priority",
            "the HIGH routing priority",
        ));
    }
    if !a.rate_limits.is_empty() {
        return Err(Rejection::unsupported(
            "rate_limits",
            "global rate limiting",
        ));
    }
    if a.hedge_policy.is_some() {
        return Err(Rejection::unsupported("hedge_policy", "request hedging"));
    }
    if a.metadata_match.is_some() {
        return Err(Rejection::unsupported(
            "metadata_match",
            "subset load balancing",
        ));
    }
    if a.internal_redirect_policy.is_some() {
        return Err(Rejection::unsupported(
            "internal_redirect_policy",
            "internal redirects",
        ));
    }
    if a.retry_policy_typed_config.is_some() {
        return Err(Rejection::unsupported(
            "retry_policy_typed_config",
            "retry policy extensions",
        ));
    }
    for (i, upgrade) in a.upgrade_configs.iter().enumerate() {
        if !upgrade.upgrade_type.eq_ignore_ascii_case("websocket") {
            return Err(Rejection::unsupported(
                format!("upgrade_configs[{i}].upgrade_type"),
                &format!("the upgrade {:?} (only websocket)", upgrade.upgrade_type),
            ));
        }
    }
    out.timeout = match &a.timeout {
        None => Some(ROUTE_TIMEOUT),
        Some(d) => duration_or_none(duration(d, "timeout")?),
    };
    out.stream_idle_timeout =
        opt_duration(&a.idle_timeout, "idle_timeout")?.and_then(duration_or_none);
    #[allow(deprecated)]
    let grpc_max = match (&a.max_stream_duration, &a.max_grpc_timeout) {
        (Some(m), _) => {
            if m.max_stream_duration.is_some() {
                return Err(Rejection::unsupported(
                    "max_stream_duration.max_stream_duration",
                    "a maximum stream duration (use timeout)",
                ));
            }
            opt_duration(
                &m.grpc_timeout_header_max,
                "max_stream_duration.grpc_timeout_header_max",
            )?
        }
        (None, Some(d)) => Some(duration(d, "max_grpc_timeout")?),
        (None, None) => None,
    };
    out.max_grpc_timeout = grpc_max.and_then(duration_or_none);
    out.retry = match &a.retry_policy {
        Some(p) => Some(retry_policy(p).map_err(|e| e.at("retry_policy"))?),
        None => scope.retry.clone(),
    };
    match a.hash_policy.as_slice() {
        [] => {}
        [policy] => out.hash_on = Some(hash_policy(policy).map_err(|e| e.at("hash_policy[0]"))?),
        _ => {
            return Err(Rejection::unsupported(
                "hash_policy[1]",
                "more than one hash policy",
            ));
        }
    }
    Ok(())
}

fn edits(
    request_add: &[core::HeaderValueOption],
    request_remove: &[String],
    response_add: &[core::HeaderValueOption],
    response_remove: &[String],
    path: &str,
) -> Result<HeaderEdits> {
    let side = |add: &[core::HeaderValueOption],
                remove: &[String],
                field: &str|
     -> Result<HeaderEditsConfig> {
        let mut out = HeaderEditsConfig {
            remove: remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
            ..Default::default()
        };
        for (i, option) in add.iter().enumerate() {
            use core::header_value_option::HeaderAppendAction;
            let at = super::join(path, &format!("{field}[{i}]"));
            let header = option
                .header
                .as_ref()
                .ok_or_else(|| Rejection::new(format!("{at}.header"), "required"))?;
            if header.value.contains('%') {
                return Err(Rejection::unsupported(
                    format!("{at}.header.value"),
                    "a header value with %COMMAND% substitution",
                ));
            }
            let value = HeaderValueConfig {
                name: header.key.to_ascii_lowercase(),
                value: if header.raw_value.is_empty() {
                    header.value.clone()
                } else {
                    String::from_utf8(header.raw_value.clone()).map_err(|_| {
                        Rejection::unsupported(
                            format!("{at}.header.raw_value"),
                            "a value that is not UTF-8",
                        )
                    })?
                },
            };
            #[allow(deprecated)]
            let append = option.append.as_ref().map(|a| a.value);
            match (append, HeaderAppendAction::try_from(option.append_action)) {
                (Some(false), _) | (None, Ok(HeaderAppendAction::OverwriteIfExistsOrAdd)) => {
                    out.set.push(value)
                }
                (Some(true), _) | (None, Ok(HeaderAppendAction::AppendIfExistsOrAdd)) => {
                    out.add.push(value)
                }
                _ => {
                    return Err(Rejection::unsupported(
                        format!("{at}.append_action"),
                        "append actions other than APPEND_IF_EXISTS_OR_ADD and OVERWRITE_IF_EXISTS_OR_ADD",
                    ));
                }
            }
        }
        Ok(out)
    };
    Ok(HeaderEdits {
        request: side(request_add, request_remove, "request_headers_to_add")?,
        response: side(response_add, response_remove, "response_headers_to_add")?,
    })
}

fn append_edits(into: &mut HeaderEdits, outer: &HeaderEdits) {
    for (into, outer) in [
        (&mut into.request, &outer.request),
        (&mut into.response, &outer.response),
    ] {
        into.remove.extend(outer.remove.iter().cloned());
        into.set.extend(outer.set.iter().cloned());
        into.add.extend(outer.add.iter().cloned());
    }
}

//! Checks across the mesh file: names, references between services, routes
//! and proxies, regexes and header names. Each error names its field path.

use std::collections::{HashMap, HashSet};

use remora_api::{ConfigError, LbPolicy};

use super::{
    FilterType, Mesh, MethodMatch, PathMatchType, RouteKind, Service, ServiceProtocol,
    ValueMatchType,
};

pub(crate) fn check(mesh: &Mesh) -> Vec<ConfigError> {
    let index = mesh.service_index();
    let mut errors = Vec::new();
    let mut err = |path: String, message: String| errors.push(ConfigError::new(path, message));
    if let Some(tracing) = &mesh.tracing
        && !(0.0..=1.0).contains(&tracing.sampling)
    {
        err(
            "tracing.sampling".into(),
            format!("{} is not a share between 0.0 and 1.0", tracing.sampling),
        );
    }

    let mut services = HashSet::new();
    for (i, service) in mesh.services.iter().enumerate() {
        let at = format!("services[{i}]");
        check_name(&service.name, &format!("{at}.name"), &mut err);
        check_name(&service.namespace, &format!("{at}.namespace"), &mut err);
        if !services.insert((service.name.as_str(), service.namespace.as_str())) {
            err(
                format!("{at}.name"),
                format!("duplicate service {:?}", service.key()),
            );
        }
        if service.port == 0 {
            err(format!("{at}.port"), "must be 1 to 65535".into());
        }
        for (j, endpoint) in service.endpoints.iter().enumerate() {
            if endpoint.weight == 0 || endpoint.weight > 128 {
                err(
                    format!("{at}.endpoints[{j}].weight"),
                    format!("{} is outside 1..=128", endpoint.weight),
                );
            }
        }
        check_policy(service, &format!("{at}.policy"), &mut err);
    }

    let mut routes = HashSet::new();
    for (i, route) in mesh.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        check_name(&route.name, &format!("{at}.name"), &mut err);
        if !routes.insert((route.name.as_str(), route.namespace.as_str(), route.kind)) {
            err(
                format!("{at}.name"),
                format!("duplicate route {:?} in {:?}", route.name, route.namespace),
            );
        }
        if route.parent_refs.is_empty() {
            err(
                format!("{at}.parentRefs"),
                "at least one Service parent is needed".into(),
            );
        }
        for (j, parent) in route.parent_refs.iter().enumerate() {
            let p = format!("{at}.parentRefs[{j}]");
            if parent.kind != "Service" {
                err(
                    format!("{p}.kind"),
                    format!("{:?}: only Service parents are supported", parent.kind),
                );
                continue;
            }
            if parent.group.as_deref().is_some_and(|g| !g.is_empty()) {
                err(
                    format!("{p}.group"),
                    "a Service is in the core group: \"\" or none".into(),
                );
            }
            if parent.section_name.is_some() {
                err(
                    format!("{p}.sectionName"),
                    "a Service parent is chosen by port".into(),
                );
            }
            let ns = parent.namespace.as_deref().unwrap_or(&route.namespace);
            match index.find(&parent.name, ns) {
                None => err(
                    format!("{p}.name"),
                    format!("no service \"{}.{ns}\"", parent.name),
                ),
                Some(service) => {
                    if parent.port.is_some_and(|port| port != service.port) {
                        err(
                            format!("{p}.port"),
                            format!("service {:?} has port {}", service.key(), service.port),
                        );
                    }
                    if !service.protocol.is_http() {
                        err(
                            format!("{p}.name"),
                            format!(
                                "service {:?} is TCP; routes need an HTTP or gRPC service",
                                service.key()
                            ),
                        );
                    }
                }
            }
        }
        for (j, rule) in route.rules.iter().enumerate() {
            let r = format!("{at}.rules[{j}]");
            for (k, m) in rule.matches.iter().enumerate() {
                let mp = format!("{r}.matches[{k}]");
                if let Some(path) = &m.path {
                    if route.kind == RouteKind::Grpc {
                        err(
                            format!("{mp}.path"),
                            "a GRPCRoute matches on method, not path".into(),
                        );
                    }
                    match path.kind {
                        PathMatchType::RegularExpression => {
                            check_regex(&path.value, &format!("{mp}.path.value"), &mut err)
                        }
                        _ if !path.value.starts_with('/') => err(
                            format!("{mp}.path.value"),
                            format!("{:?} must start with /", path.value),
                        ),
                        _ => {}
                    }
                }
                if route.kind == RouteKind::Grpc && !m.query_params.is_empty() {
                    err(
                        format!("{mp}.queryParams"),
                        "a GRPCRoute has no query parameter matches".into(),
                    );
                }
                for (field, list) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
                    for (l, value) in list.iter().enumerate() {
                        let vp = format!("{mp}.{field}[{l}]");
                        if field == "headers" {
                            check_header_name(&value.name, &format!("{vp}.name"), &mut err);
                        } else if value.name.is_empty() {
                            err(format!("{vp}.name"), "must not be empty".into());
                        }
                        if value.kind == ValueMatchType::RegularExpression {
                            check_regex(&value.value, &format!("{vp}.value"), &mut err);
                        }
                    }
                }
                match (&m.method, route.kind) {
                    (None, _) => {}
                    (Some(MethodMatch::Http(method)), RouteKind::Http) => {
                        if http::Method::from_bytes(method.as_bytes()).is_err() {
                            err(
                                format!("{mp}.method"),
                                format!("{method:?} is not an HTTP method"),
                            );
                        }
                    }
                    (Some(MethodMatch::Grpc(method)), RouteKind::Grpc) => {
                        if method.service.is_none() && method.method.is_none() {
                            err(
                                format!("{mp}.method"),
                                "give service, method or both".into(),
                            );
                        }
                        if method.kind == ValueMatchType::RegularExpression {
                            for value in [&method.service, &method.method].into_iter().flatten() {
                                check_regex(value, &format!("{mp}.method"), &mut err);
                            }
                        } else {
                            for value in [&method.service, &method.method].into_iter().flatten() {
                                if value.is_empty() || value.contains('/') {
                                    err(
                                        format!("{mp}.method"),
                                        format!("{value:?} must be a non-empty name without /"),
                                    );
                                }
                            }
                        }
                    }
                    (Some(MethodMatch::Http(_)), RouteKind::Grpc) => err(
                        format!("{mp}.method"),
                        "a GRPCRoute method is {service, method}".into(),
                    ),
                    (Some(MethodMatch::Grpc(_)), RouteKind::Http) => err(
                        format!("{mp}.method"),
                        "an HTTPRoute method is an HTTP method such as GET".into(),
                    ),
                }
            }
            for (k, filter) in rule.filters.iter().enumerate() {
                let fp = format!("{r}.filters[{k}]");
                let modifier = match filter.kind {
                    FilterType::RequestHeaderModifier => (
                        &filter.request_header_modifier,
                        "requestHeaderModifier",
                        filter.response_header_modifier.is_some(),
                    ),
                    FilterType::ResponseHeaderModifier => (
                        &filter.response_header_modifier,
                        "responseHeaderModifier",
                        filter.request_header_modifier.is_some(),
                    ),
                };
                match modifier {
                    (None, field, _) => err(
                        format!("{fp}.{field}"),
                        "is required by the filter's type".into(),
                    ),
                    (Some(_), _, true) => {
                        err(fp.clone(), "set only the modifier that matches type".into())
                    }
                    (Some(m), field, false) => {
                        for (l, h) in m.set.iter().chain(&m.add).enumerate() {
                            check_header_name(
                                &h.name,
                                &format!("{fp}.{field}.header[{l}]"),
                                &mut err,
                            );
                        }
                        for (l, h) in m.remove.iter().enumerate() {
                            check_header_name(h, &format!("{fp}.{field}.remove[{l}]"), &mut err);
                        }
                    }
                }
            }
            let mut total = 0u64;
            for (k, backend) in rule.backend_refs.iter().enumerate() {
                let bp = format!("{r}.backendRefs[{k}]");
                if backend.kind != "Service"
                    || backend.group.as_deref().is_some_and(|g| !g.is_empty())
                {
                    err(
                        format!("{bp}.kind"),
                        format!("{:?}: only Service backends (group \"\")", backend.kind),
                    );
                    continue;
                }
                let ns = backend.namespace.as_deref().unwrap_or(&route.namespace);
                match index.find(&backend.name, ns) {
                    None => err(
                        format!("{bp}.name"),
                        format!("no service \"{}.{ns}\"", backend.name),
                    ),
                    Some(service) => {
                        if backend.port.is_some_and(|port| port != service.port) {
                            err(
                                format!("{bp}.port"),
                                format!("service {:?} has port {}", service.key(), service.port),
                            );
                        }
                        if !service.protocol.is_http() {
                            err(
                                format!("{bp}.name"),
                                format!("service {:?} is TCP", service.key()),
                            );
                        }
                    }
                }
                if backend.weight > 1_000_000 {
                    err(
                        format!("{bp}.weight"),
                        format!("{} is over 1000000", backend.weight),
                    );
                }
                total += u64::from(backend.weight);
            }
            if !rule.backend_refs.is_empty() && total == 0 {
                err(
                    format!("{r}.backendRefs"),
                    "the weights add up to 0; give at least one a weight".into(),
                );
            }
            if let Some(retry) = &rule.retry {
                check_retry(retry, route.kind, &format!("{r}.retry"), &mut err);
            }
            if let Some(timeouts) = &rule.timeouts {
                check_timeouts(timeouts, &format!("{r}.timeouts"), &mut err);
            }
        }
    }

    if let Err(e) = remora_api::identity::check_trust_domain(&mesh.trust_domain) {
        err("trust_domain".into(), e);
    }
    let mtls = mesh.mtls_mode() != remora_api::MtlsMode::Disabled;
    for (i, service) in mesh.services.iter().enumerate() {
        for e in remora_api::check_authorization(
            &service.authorization,
            service.protocol.is_http(),
            &format!("services[{i}].authorization"),
        ) {
            err(e.path, e.message);
        }
        if !mtls {
            for (j, policy) in service.authorization.iter().enumerate() {
                if !policy.from.is_empty() {
                    err(
                        format!("services[{i}].authorization[{j}].from"),
                        "peers have identities only over mTLS, and the mesh's mtls is disabled: \
                         this policy would match no request"
                            .into(),
                    );
                }
            }
        }
        if mtls
            && service
                .policy
                .health_check
                .as_ref()
                .is_some_and(|h| h.http.is_some() || h.grpc.is_some())
        {
            err(
                format!("services[{i}].policy.health_check"),
                "HTTP and gRPC health checks do not speak mTLS yet; use a tcp check with mtls \
                 (mtls is strict by default on a control plane with a CA: set mtls: disabled to turn it off)"
                    .into(),
            );
        }
        if let Err(e) = mesh.service_identity(service)
            && e.starts_with("service account")
        {
            err(format!("services[{i}].identity"), e);
        }
    }
    let mut node_ids = HashSet::new();
    for (i, proxy) in mesh.proxies.iter().enumerate() {
        let at = format!("proxies[{i}]");
        if proxy.outbound_all && !proxy.capture {
            err(
                format!("{at}.outbound_all"),
                "only a sidecar (capture: true) reaches services at their addresses".into(),
            );
        }
        if proxy.identity.is_some()
            && let Err(e) = mesh.proxy_identity(proxy, &index)
            && !e.starts_with("trust domain")
        {
            err(format!("{at}.identity"), e);
        }
        if proxy.node_id.trim().is_empty() || proxy.node_id == "*" {
            err(
                format!("{at}.node_id"),
                "must be a node id, or a prefix ending in * (not * alone)".into(),
            );
        }
        let before_last = proxy
            .node_id
            .char_indices()
            .next_back()
            .map_or("", |(last, _)| &proxy.node_id[..last]);
        if before_last.contains('*') {
            err(
                format!("{at}.node_id"),
                "* may only end the id (a prefix)".into(),
            );
        }
        if !node_ids.insert(proxy.node_id.as_str()) {
            err(
                format!("{at}.node_id"),
                format!("duplicate node id {:?}", proxy.node_id),
            );
        }
        let mut listens: HashMap<std::net::SocketAddr, String> = HashMap::new();
        for (j, inbound) in proxy.inbound.iter().enumerate() {
            let p = format!("{at}.inbound[{j}]");
            if index.get(&inbound.service, "default").is_none() {
                err(
                    format!("{p}.service"),
                    format!("no service {:?}", qualified(&inbound.service)),
                );
            }
            if let Some(other) = listens.insert(inbound.listen, p.clone()) {
                err(
                    format!("{p}.listen"),
                    format!("{} is also {other}.listen", inbound.listen),
                );
            }
        }
        for (j, outbound) in proxy.outbound.iter().enumerate() {
            let p = format!("{at}.outbound[{j}]");
            let Some(service) = index.get(&outbound.service, "default") else {
                err(
                    format!("{p}.service"),
                    format!("no service {:?}", qualified(&outbound.service)),
                );
                continue;
            };
            if outbound.listen.is_none() && !proxy.capture {
                err(
                    format!("{p}.listen"),
                    "required (only a sidecar, capture: true, reaches services at their addresses)"
                        .into(),
                );
            } else if outbound.listen.is_none() && service.addresses.is_empty() {
                err(
                    format!("{p}.listen"),
                    format!(
                        "required: service {:?} has no addresses to capture",
                        qualified(&outbound.service)
                    ),
                );
            }
            for listen in outbound.listens(service) {
                if let Some(other) = listens.insert(listen, p.clone()) {
                    err(
                        format!("{p}.listen"),
                        format!("{listen} is also {other}.listen"),
                    );
                }
            }
        }
        if proxy.capture {
            for (port, what) in [
                (crate::mesh::CAPTURE_OUTBOUND_PORT, "outbound"),
                (crate::mesh::CAPTURE_INBOUND_PORT, "inbound"),
            ] {
                if let Some((_, other)) = listens.iter().find(|(a, _)| a.port() == port) {
                    err(
                        format!("{other}.listen"),
                        format!("port {port} is the sidecar's {what} capture port"),
                    );
                }
            }
        }
    }
    errors
}

fn qualified(reference: &str) -> String {
    if reference.contains('.') {
        reference.to_string()
    } else {
        format!("{reference}.default")
    }
}

/// Kubernetes object names: lowercase letters, digits, `-`, at most 63.
fn check_name(name: &str, path: &str, err: &mut impl FnMut(String, String)) {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        err(
            path.to_string(),
            format!(
                "{name:?} must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'"
            ),
        );
    }
}

fn check_regex(pattern: &str, path: &str, err: &mut impl FnMut(String, String)) {
    if let Err(e) = regex::Regex::new(pattern) {
        err(path.to_string(), format!("invalid regex {pattern:?}: {e}"));
    }
}

fn check_header_name(name: &str, path: &str, err: &mut impl FnMut(String, String)) {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        err(
            path.to_string(),
            format!("{name:?} is not a valid header name"),
        );
    }
}

fn check_retry(
    retry: &super::Retry,
    kind: RouteKind,
    at: &str,
    err: &mut impl FnMut(String, String),
) {
    for (k, code) in retry.codes.iter().enumerate() {
        if !(400..=599).contains(code) {
            err(
                format!("{at}.codes[{k}]"),
                format!("{code} is outside 400..=599"),
            );
        }
    }
    if kind == RouteKind::Grpc && !retry.codes.is_empty() {
        err(
            format!("{at}.codes"),
            "gRPC calls retry on gRPC statuses, not HTTP codes".into(),
        );
    }
    if retry.backoff.is_some_and(|b| b.is_zero()) {
        err(format!("{at}.backoff"), "must be greater than 0".into());
    }
}

fn check_timeouts(timeouts: &super::Timeouts, at: &str, err: &mut impl FnMut(String, String)) {
    if let (Some(request), Some(backend)) = (timeouts.request, timeouts.backend_request)
        && backend > request
    {
        err(
            format!("{at}.backendRequest"),
            "must not be longer than timeouts.request".into(),
        );
    }
}

fn check_policy(service: &Service, at: &str, err: &mut impl FnMut(String, String)) {
    let policy = &service.policy;
    if !policy.target_refs.is_empty() {
        err(
            format!("{at}.targetRefs"),
            "only a TrafficPolicy object has targetRefs; a service's policy is its own".into(),
        );
    }
    if let Some(retry) = &policy.retry {
        let kind = if service.protocol == ServiceProtocol::Grpc {
            RouteKind::Grpc
        } else {
            RouteKind::Http
        };
        check_retry(retry, kind, &format!("{at}.retry"), err);
        if !service.protocol.is_http() {
            err(
                format!("{at}.retry"),
                "applies to HTTP and gRPC services only".into(),
            );
        }
    }
    if let Some(timeouts) = &policy.timeouts {
        check_timeouts(timeouts, &format!("{at}.timeouts"), err);
        if !service.protocol.is_http() {
            err(
                format!("{at}.timeouts"),
                "applies to HTTP and gRPC services only".into(),
            );
        }
    }
    let lb = &policy.load_balancer;
    if lb.hash_on.is_some() && !lb.policy.is_hash_based() {
        err(
            format!("{at}.load_balancer.hash_on"),
            format!("only for ring_hash and maglev, not {}", lb.policy.name()),
        );
    }
    if lb.policy == LbPolicy::Maglev
        && let Some(size) = lb.table_size
        && !is_prime(size)
    {
        err(
            format!("{at}.load_balancer.table_size"),
            format!("{size} is not a prime"),
        );
    }
    if let Some(check) = &policy.health_check {
        let kinds = usize::from(check.http.is_some())
            + usize::from(check.grpc.is_some())
            + usize::from(check.tcp.is_some());
        if kinds != 1 {
            err(
                format!("{at}.health_check"),
                "exactly one of http, grpc and tcp must be set".into(),
            );
        }
        if check.grpc.is_some()
            && !matches!(
                service.protocol,
                ServiceProtocol::Grpc | ServiceProtocol::Http2
            )
        {
            err(
                format!("{at}.health_check.grpc"),
                "needs an http2 or grpc service".into(),
            );
        }
    }
    if policy
        .rate_limit
        .as_ref()
        .is_some_and(|r| r.requests_per_second <= 0.0)
    {
        err(
            format!("{at}.rate_limit.requests_per_second"),
            "must be greater than 0".into(),
        );
    }
    if let Some(limit) = &policy.rate_limit
        && limit.key != "none"
    {
        err(
            format!("{at}.rate_limit.key"),
            format!(
                "{:?}: over xDS a rate limit is one bucket per proxy (key: none)",
                limit.key
            ),
        );
    }
    if let Some(global) = policy.rate_limit.as_ref().and_then(|r| r.global.as_ref())
        && !global.redis.starts_with("redis://")
    {
        err(
            format!("{at}.rate_limit.global.redis"),
            format!(
                "{:?} is not a Redis URL (redis://HOST:PORT/DB)",
                global.redis
            ),
        );
    }
    if policy.rate_limit.is_some() && !service.protocol.is_http() {
        err(
            format!("{at}.rate_limit"),
            "applies to HTTP and gRPC services only".into(),
        );
    }
    if let Some(cache) = &policy.cache {
        if !service.protocol.is_http() {
            err(
                format!("{at}.cache"),
                "applies to HTTP and gRPC services only".into(),
            );
        }
        for problem in cache.check(&format!("{at}.cache")) {
            err(problem.path, problem.message);
        }
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

//! Request matching: host, path (exact, prefix, regex), method, headers and
//! query parameters, compiled once per snapshot. Regexes are anchored (they
//! must match the whole value), as Envoy's `safe_regex` is.

use http::{HeaderMap, HeaderName, Method, Uri};
use regex::Regex;

use crate::config::{ConfigError, MatchConfig, ValueMatchConfig};

/// The parts of a request that routing looks at, extracted once per request.
pub struct RequestView<'a> {
    pub(crate) method: &'a Method,
    /// Host without port; empty when the request has none.
    pub(crate) host: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        let authority = uri.authority().map(|a| a.as_str()).or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        RequestView {
            method,
            host: authority.map(strip_port).unwrap_or(""),
            path: uri.path(),
            query: uri.query(),
            headers,
        }
    }
}

fn strip_port(authority: &str) -> &str {
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if let Some(rest) = authority.strip_prefix('[') {
        // [::1]:80 → ::1
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    authority
        .split_once(':')
        .map_or(authority, |(host, _)| host)
}

#[derive(Debug)]
pub(crate) struct RouteMatch {
    host: Option<HostMatch>,
    path: Option<PathMatch>,
    method: Option<Method>,
    headers: Box<[(HeaderName, ValueMatch)]>,
    query: Box<[(String, ValueMatch)]>,
}

#[derive(Debug)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum ValueMatch {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

impl RouteMatch {
    /// Compiles `config`, adding a path-named error for each problem.
    pub(crate) fn compile(
        config: &MatchConfig,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> RouteMatch {
        let host = config
            .host
            .as_deref()
            .and_then(|host| match compile_host(host) {
                Ok(m) => Some(m),
                Err(message) => {
                    errors.push(ConfigError::new(format!("{path}.host"), message));
                    None
                }
            });

        let given = [&config.path, &config.path_prefix, &config.path_regex];
        if given.iter().filter(|p| p.is_some()).count() > 1 {
            errors.push(ConfigError::new(
                path,
                "only one of path, path_prefix and path_regex may be set",
            ));
        }
        let mut path_match = None;
        for (field, value) in [("path", &config.path), ("path_prefix", &config.path_prefix)] {
            if let Some(value) = value {
                if !value.starts_with('/') {
                    errors.push(ConfigError::new(
                        format!("{path}.{field}"),
                        format!("{value:?} must start with /"),
                    ));
                } else if field == "path" {
                    path_match = Some(PathMatch::Exact(value.clone()));
                } else {
                    path_match = Some(PathMatch::Prefix(value.clone()));
                }
            }
        }
        if let Some(pattern) = &config.path_regex {
            match anchored_regex(pattern) {
                Ok(re) => path_match = Some(PathMatch::Regex(re)),
                Err(message) => {
                    errors.push(ConfigError::new(format!("{path}.path_regex"), message))
                }
            }
        }

        let method = config
            .method
            .as_deref()
            .and_then(|m| match compile_method(m) {
                Ok(method) => Some(method),
                Err(message) => {
                    errors.push(ConfigError::new(format!("{path}.method"), message));
                    None
                }
            });

        let mut headers = Vec::with_capacity(config.headers.len());
        for (i, header) in config.headers.iter().enumerate() {
            let at = format!("{path}.headers[{i}]");
            let name = match HeaderName::from_bytes(header.name.as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    errors.push(ConfigError::new(
                        format!("{at}.name"),
                        format!("{:?} is not a valid header name", header.name),
                    ));
                    None
                }
            };
            if let (Some(name), Some(value)) = (name, compile_value(header, &at, errors)) {
                headers.push((name, value));
            }
        }

        let mut query = Vec::with_capacity(config.query_params.len());
        for (i, param) in config.query_params.iter().enumerate() {
            let at = format!("{path}.query_params[{i}]");
            if param.name.is_empty() {
                errors.push(ConfigError::new(format!("{at}.name"), "must not be empty"));
            }
            if let Some(value) = compile_value(param, &at, errors) {
                query.push((param.name.clone(), value));
            }
        }

        RouteMatch {
            host,
            path: path_match,
            method,
            headers: headers.into(),
            query: query.into(),
        }
    }

    pub(crate) fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(method) = &self.method
            && method != req.method
        {
            return false;
        }
        if let Some(host) = &self.host
            && !host.matches(req.host)
        {
            return false;
        }
        if let Some(path) = &self.path
            && !path.matches(req.path)
        {
            return false;
        }
        self.headers
            .iter()
            .all(|(name, m)| m.matches_header(req.headers, name))
            && self
                .query
                .iter()
                .all(|(name, m)| m.matches_query(req.query, name))
    }
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(exact) => host.eq_ignore_ascii_case(exact),
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

impl ValueMatch {
    fn matches_value(&self, value: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(exact) => value == exact.as_bytes(),
            ValueMatch::Regex(re) => std::str::from_utf8(value).is_ok_and(|v| re.is_match(v)),
            ValueMatch::Present(present) => *present,
        }
    }

    fn matches_header(&self, headers: &HeaderMap, name: &HeaderName) -> bool {
        let mut values = headers.get_all(name).iter().peekable();
        match self {
            ValueMatch::Present(present) => values.peek().is_some() == *present,
            _ => values.any(|v| self.matches_value(v.as_bytes())),
        }
    }

    fn matches_query(&self, query: Option<&str>, name: &str) -> bool {
        let mut values = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == name).then_some(value)
            })
            .peekable();
        match self {
            ValueMatch::Present(present) => values.peek().is_some() == *present,
            _ => values.any(|v| self.matches_value(v.as_bytes())),
        }
    }
}

fn compile_host(host: &str) -> Result<HostMatch, String> {
    let valid = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if host == "*" {
        return Ok(HostMatch::Any);
    }
    if let Some(suffix) = host.strip_prefix("*.")
        && valid(suffix)
        && !suffix.contains('*')
    {
        return Ok(HostMatch::Suffix(format!(
            ".{}",
            suffix.to_ascii_lowercase()
        )));
    }
    if valid(host) {
        return Ok(HostMatch::Exact(host.to_ascii_lowercase()));
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        && v6.parse::<std::net::Ipv6Addr>().is_ok()
    {
        return Ok(HostMatch::Exact(v6.to_ascii_lowercase()));
    }
    Err(format!(
        "invalid host {host:?}: expected a name such as api.example.com, a wildcard such as *.example.com, or * (without a port)"
    ))
}

fn compile_method(method: &str) -> Result<Method, String> {
    let upper = method.to_ascii_uppercase();
    let standard = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if method != upper && standard.contains(&upper.as_str()) {
        return Err(format!(
            "methods are case-sensitive: {method:?} is not {upper:?}"
        ));
    }
    Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("{method:?} is not a valid HTTP method"))
}

fn compile_value(
    config: &ValueMatchConfig,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<ValueMatch> {
    let given = usize::from(config.exact.is_some())
        + usize::from(config.regex.is_some())
        + usize::from(config.present.is_some());
    if given != 1 {
        errors.push(ConfigError::new(
            at,
            "exactly one of exact, regex and present must be set",
        ));
        return None;
    }
    if let Some(exact) = &config.exact {
        return Some(ValueMatch::Exact(exact.clone()));
    }
    if let Some(present) = config.present {
        return Some(ValueMatch::Present(present));
    }
    let pattern = config.regex.as_deref().unwrap_or_default();
    match anchored_regex(pattern) {
        Ok(re) => Some(ValueMatch::Regex(re)),
        Err(message) => {
            errors.push(ConfigError::new(format!("{at}.regex"), message));
            None
        }
    }
}

pub(crate) fn anchored_regex(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regex {pattern:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_yaml;

    fn compile(yaml: &str) -> Result<RouteMatch, String> {
        let config: MatchConfig = {
            let full = format!(
                "listeners: [{{name: l, address: 127.0.0.1:1, routes: [{{name: r, match: {yaml}}}]}}]"
            );
            parse_yaml(&full).map_err(|e| e.to_string())?.listeners[0].routes[0]
                .matches
                .clone()
        };
        let mut errors = Vec::new();
        let m = RouteMatch::compile(&config, "m", &mut errors);
        if errors.is_empty() {
            Ok(m)
        } else {
            Err(errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> (Method, Uri, HeaderMap) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        (method.parse().unwrap(), uri.parse().unwrap(), map)
    }

    fn matches(m: &RouteMatch, method: &str, uri: &str, headers: &[(&str, &str)]) -> bool {
        let (method, uri, headers) = request(method, uri, headers);
        m.matches(&RequestView::new(&method, &uri, &headers))
    }

    #[test]
    fn an_empty_match_takes_everything() {
        let m = compile("{}").unwrap();
        assert!(matches(&m, "DELETE", "/anything?x=1", &[]));
    }

    #[test]
    fn paths_match_exactly_by_prefix_or_by_whole_regex() {
        let exact = compile("{path: /a}").unwrap();
        assert!(matches(&exact, "GET", "/a?q=1", &[]));
        assert!(!matches(&exact, "GET", "/a/b", &[]));
        let prefix = compile("{path_prefix: /api}").unwrap();
        assert!(matches(&prefix, "GET", "/api/v1", &[]));
        assert!(matches(&prefix, "GET", "/apis", &[]));
        assert!(!matches(&prefix, "GET", "/ap", &[]));
        let regex = compile(r"{path_regex: '/v[0-9]+/.*'}").unwrap();
        assert!(matches(&regex, "GET", "/v2/users", &[]));
        assert!(
            !matches(&regex, "GET", "/x/v2/users", &[]),
            "regex is anchored"
        );
    }

    #[test]
    fn hosts_match_without_port_and_case() {
        let exact = compile("{host: Api.Example.com}").unwrap();
        assert!(matches(
            &exact,
            "GET",
            "/",
            &[("host", "api.example.COM:8080")]
        ));
        assert!(matches(&exact, "GET", "http://api.example.com/", &[]));
        assert!(!matches(&exact, "GET", "/", &[("host", "example.com")]));
        let wild = compile("{host: '*.example.com'}").unwrap();
        assert!(matches(&wild, "GET", "/", &[("host", "a.b.example.com")]));
        assert!(!matches(&wild, "GET", "/", &[("host", "example.com")]));
        let v6 = compile("{host: '[::1]'}").unwrap();
        assert!(matches(&v6, "GET", "/", &[("host", "[::1]:80")]));
    }

    #[test]
    fn methods_and_headers_and_query_params_must_all_hold() {
        let m = compile(
            "{method: POST, headers: [{name: x-canary, exact: '1'}, {name: x-debug, present: false}, {name: x-v, regex: 'v[0-9]'}], query_params: [{name: tenant, exact: acme}, {name: dry, present: true}]}",
        )
        .unwrap();
        let good = [("x-canary", "1"), ("x-v", "v3")];
        assert!(matches(&m, "POST", "/?tenant=acme&dry", &good));
        assert!(!matches(&m, "GET", "/?tenant=acme&dry", &good));
        assert!(
            !matches(&m, "POST", "/?tenant=acme", &good),
            "dry must be present"
        );
        assert!(!matches(&m, "POST", "/?tenant=other&dry", &good));
        assert!(!matches(
            &m,
            "POST",
            "/?tenant=acme&dry",
            &[("x-canary", "2"), ("x-v", "v3")]
        ));
        assert!(!matches(
            &m,
            "POST",
            "/?tenant=acme&dry",
            &[("x-canary", "1"), ("x-v", "v3"), ("x-debug", "")]
        ));
        assert!(!matches(
            &m,
            "POST",
            "/?tenant=acme&dry",
            &[("x-canary", "1"), ("x-v", "v33")]
        ));
        assert!(
            matches(
                &m,
                "POST",
                "/?dry=&tenant=x&tenant=acme",
                &[("x-canary", "0"), ("x-canary", "1"), ("x-v", "v3")]
            ),
            "any value may match"
        );
    }

    #[test]
    fn bad_matchers_are_named() {
        assert_eq!(
            compile("{path: api}").unwrap_err(),
            "m.path: \"api\" must start with /"
        );
        assert_eq!(
            compile("{path: /a, path_prefix: /b}").unwrap_err(),
            "m: only one of path, path_prefix and path_regex may be set"
        );
        assert!(
            compile("{path_regex: '('}")
                .unwrap_err()
                .starts_with("m.path_regex: invalid regex \"(\"")
        );
        assert_eq!(
            compile("{method: get}").unwrap_err(),
            "m.method: methods are case-sensitive: \"get\" is not \"GET\""
        );
        assert_eq!(
            compile("{headers: [{name: 'a b', exact: x}]}").unwrap_err(),
            "m.headers[0].name: \"a b\" is not a valid header name"
        );
        assert_eq!(
            compile("{headers: [{name: a, exact: x, present: true}]}").unwrap_err(),
            "m.headers[0]: exactly one of exact, regex and present must be set"
        );
        assert_eq!(
            compile("{query_params: [{name: a}]}").unwrap_err(),
            "m.query_params[0]: exactly one of exact, regex and present must be set"
        );
        assert!(
            compile("{host: 'a.com:80'}")
                .unwrap_err()
                .starts_with("m.host: invalid host \"a.com:80\"")
        );
        assert!(
            compile("{host: 'a.*.com'}")
                .unwrap_err()
                .starts_with("m.host: invalid host")
        );
    }
}

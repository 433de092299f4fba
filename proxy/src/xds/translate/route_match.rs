//! Envoy's RouteMatch → the proxy's match conditions: path (prefix, exact,
//! separated prefix, regex), headers, query parameters, and the string
//! matchers they use.

use remora_xds_proto::matcher;
use remora_xds_proto::route::{self, HeaderMatcher, RouteMatch};

use super::{Rejection, Result, check_regex};
use crate::config::{MatchConfig, ValueMatchConfig};

pub(super) fn route_match(m: &RouteMatch) -> Result<MatchConfig> {
    use route::route_match::PathSpecifier;
    let mut out = MatchConfig::default();
    if m.runtime_fraction.is_some() {
        return Err(Rejection::unsupported(
            "runtime_fraction",
            "matching a fraction of requests",
        ));
    }
    if m.tls_context.is_some() || !m.dynamic_metadata.is_empty() || !m.filter_state.is_empty() {
        return Err(Rejection::unsupported(
            "tls_context",
            "matching on TLS, dynamic metadata or filter state",
        ));
    }
    if !m.cookies.is_empty() {
        return Err(Rejection::unsupported("cookies", "cookie matching"));
    }
    let case_insensitive = m.case_sensitive.as_ref().is_some_and(|v| !v.value);
    match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) if case_insensitive => {
            out.path_regex = Some(format!("(?i){}.*", regex::escape(p)))
        }
        Some(PathSpecifier::Prefix(p)) => out.path_prefix = Some(p.clone()),
        Some(PathSpecifier::Path(p)) if case_insensitive => {
            out.path_regex = Some(format!("(?i){}", regex::escape(p)))
        }
        Some(PathSpecifier::Path(p)) => out.path = Some(p.clone()),
        Some(PathSpecifier::SafeRegex(r)) => {
            check_regex(&r.regex, "safe_regex.regex")?;
            out.path_regex = Some(r.regex.clone());
        }
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            let flag = if case_insensitive { "(?i)" } else { "" };
            out.path_regex = Some(format!("{flag}{}(?:[/?#].*)?", regex::escape(p)));
        }
        Some(PathSpecifier::ConnectMatcher(_)) => {
            return Err(Rejection::unsupported(
                "connect_matcher",
                "CONNECT matching",
            ));
        }
        Some(PathSpecifier::PathMatchPolicy(_)) => {
            return Err(Rejection::unsupported(
                "path_match_policy",
                "URI template matching",
            ));
        }
        None => return Err(Rejection::new("prefix", "a path specifier is required")),
    }
    for (i, h) in m.headers.iter().enumerate() {
        let at = format!("headers[{i}]");
        if h.name == ":method" {
            match header_value(h).map_err(|e| e.at(&at))? {
                ValueMatchConfig {
                    exact: Some(method),
                    ..
                } => out.method = Some(method),
                _ => {
                    return Err(Rejection::unsupported(
                        at,
                        "a :method condition other than an exact match",
                    ));
                }
            }
            continue;
        }
        if h.name.starts_with(':') {
            return Err(Rejection::unsupported(
                format!("{at}.name"),
                &format!("matching the pseudo-header {}", h.name),
            ));
        }
        out.headers.push(header_value(h).map_err(|e| e.at(&at))?);
    }
    if m.grpc.is_some() {
        out.headers.push(ValueMatchConfig {
            name: "content-type".into(),
            exact: None,
            regex: Some("application/grpc(?:[+;].*)?".into()),
            present: None,
        });
    }
    for (i, q) in m.query_parameters.iter().enumerate() {
        use route::query_parameter_matcher::QueryParameterMatchSpecifier;
        let at = format!("query_parameters[{i}]");
        let mut value = ValueMatchConfig {
            name: q.name.clone(),
            exact: None,
            regex: None,
            present: None,
        };
        match &q.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(s)) => {
                string_match(s, &mut value).map_err(|e| e.at(&format!("{at}.string_match")))?
            }
            Some(QueryParameterMatchSpecifier::PresentMatch(present)) => {
                value.present = Some(*present)
            }
            None => value.present = Some(true),
        }
        out.query_params.push(value);
    }
    Ok(out)
}

pub(super) fn header_value(h: &HeaderMatcher) -> Result<ValueMatchConfig> {
    use route::header_matcher::HeaderMatchSpecifier;
    let mut value = ValueMatchConfig {
        name: h.name.to_ascii_lowercase(),
        exact: None,
        regex: None,
        present: None,
    };
    if h.treat_missing_header_as_empty {
        return Err(Rejection::unsupported(
            "treat_missing_header_as_empty",
            "treating a missing header as empty",
        ));
    }
    #[allow(deprecated)]
    match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::PresentMatch(present)) => {
            value.present = Some(*present != h.invert_match);
            return Ok(value);
        }
        None => {
            value.present = Some(!h.invert_match);
            return Ok(value);
        }
        _ if h.invert_match => {
            return Err(Rejection::unsupported(
                "invert_match",
                "an inverted value match",
            ));
        }
        Some(HeaderMatchSpecifier::StringMatch(s)) => {
            string_match(s, &mut value).map_err(|e| e.at("string_match"))?
        }
        Some(HeaderMatchSpecifier::ExactMatch(s)) => value.exact = Some(s.clone()),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
            check_regex(&r.regex, "safe_regex_match.regex")?;
            value.regex = Some(r.regex.clone());
        }
        Some(HeaderMatchSpecifier::PrefixMatch(p)) => {
            value.regex = Some(format!("{}.*", regex::escape(p)))
        }
        Some(HeaderMatchSpecifier::SuffixMatch(p)) => {
            value.regex = Some(format!(".*{}", regex::escape(p)))
        }
        Some(HeaderMatchSpecifier::ContainsMatch(p)) => {
            value.regex = Some(format!(".*{}.*", regex::escape(p)))
        }
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return Err(Rejection::unsupported(
                "range_match",
                "a numeric range match",
            ));
        }
    }
    Ok(value)
}

/// An Envoy string matcher as an exact value or an anchored regex.
pub(super) fn string_match(s: &matcher::StringMatcher, value: &mut ValueMatchConfig) -> Result<()> {
    use matcher::string_matcher::MatchPattern;
    let flag = if s.ignore_case { "(?i)" } else { "" };
    match &s.match_pattern {
        Some(MatchPattern::Exact(e)) if !s.ignore_case => value.exact = Some(e.clone()),
        Some(MatchPattern::Exact(e)) => value.regex = Some(format!("{flag}{}", regex::escape(e))),
        Some(MatchPattern::Prefix(p)) => {
            value.regex = Some(format!("{flag}{}.*", regex::escape(p)))
        }
        Some(MatchPattern::Suffix(p)) => {
            value.regex = Some(format!("{flag}.*{}", regex::escape(p)))
        }
        Some(MatchPattern::Contains(p)) => {
            value.regex = Some(format!("{flag}.*{}.*", regex::escape(p)))
        }
        Some(MatchPattern::SafeRegex(r)) => {
            check_regex(&r.regex, "safe_regex.regex")?;
            value.regex = Some(r.regex.clone());
        }
        Some(MatchPattern::Custom(_)) => {
            return Err(Rejection::unsupported("custom", "a custom string matcher"));
        }
        None => return Err(Rejection::new("exact", "a match pattern is required")),
    }
    Ok(())
}

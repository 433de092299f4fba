//! A route's policies from Envoy: the retry policy, the hash policy for
//! consistent hashing, and the per-route local rate limit.

use remora_xds_proto::filters::local_ratelimit;
use remora_xds_proto::protobuf;
use remora_xds_proto::route::{self};

use super::listener::LOCAL_RATE_LIMIT;
use super::{
    Rejection, Result, duration_or_none, local_rate_limit, opt_duration, u32v, unpack_typed,
};
use crate::config::{
    BackoffConfig, HashCookieConfig, HashOnConfig, RateLimitConfig, RetryConfig, RetryOn,
};

pub(super) fn retry_policy(p: &route::RetryPolicy) -> Result<RetryConfig> {
    if p.retry_priority.is_some() || !p.retry_host_predicate.is_empty() {
        return Err(Rejection::unsupported(
            "retry_host_predicate",
            "retry host predicates and priorities",
        ));
    }
    if p.rate_limited_retry_back_off.is_some()
        || !p.retriable_headers.is_empty()
        || !p.retriable_request_headers.is_empty()
    {
        return Err(Rejection::unsupported(
            "retriable_headers",
            "retrying on headers",
        ));
    }
    if p.per_try_idle_timeout.is_some() {
        return Err(Rejection::unsupported(
            "per_try_idle_timeout",
            "a per-try idle timeout",
        ));
    }
    let mut on = Vec::new();
    for condition in p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        let parsed = match condition {
            "5xx" => RetryOn::FiveXx,
            "gateway-error" => RetryOn::GatewayError,
            "reset" => RetryOn::Reset,
            "connect-failure" => RetryOn::ConnectFailure,
            "refused-stream" => RetryOn::RefusedStream,
            "retriable-4xx" => RetryOn::Retriable4xx,
            "retriable-status-codes" => RetryOn::RetriableStatusCodes,
            "cancelled" => RetryOn::Cancelled,
            "deadline-exceeded" => RetryOn::DeadlineExceeded,
            "internal" => RetryOn::Internal,
            "resource-exhausted" => RetryOn::ResourceExhausted,
            "unavailable" => RetryOn::Unavailable,
            other => {
                return Err(Rejection::unsupported(
                    "retry_on",
                    &format!("the retry condition {other:?}"),
                ));
            }
        };
        if !on.contains(&parsed) {
            on.push(parsed);
        }
    }
    let mut backoff = BackoffConfig::default();
    if let Some(b) = &p.retry_back_off {
        let base = opt_duration(&b.base_interval, "retry_back_off.base_interval")?
            .ok_or_else(|| Rejection::new("retry_back_off.base_interval", "required"))?;
        backoff.base = base;
        backoff.max =
            opt_duration(&b.max_interval, "retry_back_off.max_interval")?.unwrap_or(base * 10);
    }
    let mut codes = Vec::with_capacity(p.retriable_status_codes.len());
    for (i, code) in p.retriable_status_codes.iter().enumerate() {
        codes.push(
            u16::try_from(*code)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    Rejection::new(
                        format!("retriable_status_codes[{i}]"),
                        format!("{code} is not an HTTP status"),
                    )
                })?,
        );
    }
    let mut retry = super::defaults!(RetryConfig, "{}");
    // Envoy's default is one retry; Envoy retries any method the policy allows.
    retry.attempts = u32v(&p.num_retries).unwrap_or(1);
    retry.on = on;
    retry.retriable_status_codes = codes;
    retry.per_try_timeout =
        opt_duration(&p.per_try_timeout, "per_try_timeout")?.and_then(duration_or_none);
    retry.backoff = backoff;
    retry.retry_non_idempotent = true;
    Ok(retry)
}

pub(super) fn hash_policy(h: &route::route_action::HashPolicy) -> Result<HashOnConfig> {
    use route::route_action::hash_policy::PolicySpecifier;
    let mut on = HashOnConfig {
        header: None,
        cookie: None,
        source_ip: None,
        query: None,
    };
    match &h.policy_specifier {
        Some(PolicySpecifier::Header(header)) => {
            if header.regex_rewrite.is_some() {
                return Err(Rejection::unsupported(
                    "header.regex_rewrite",
                    "rewriting the hashed header",
                ));
            }
            on.header = Some(header.header_name.to_ascii_lowercase());
        }
        Some(PolicySpecifier::Cookie(cookie)) => {
            if !cookie.attributes.is_empty() {
                return Err(Rejection::unsupported(
                    "cookie.attributes",
                    "cookie attributes",
                ));
            }
            on.cookie = Some(HashCookieConfig {
                name: cookie.name.clone(),
                ttl: opt_duration(&cookie.ttl, "cookie.ttl")?,
                path: (!cookie.path.is_empty()).then(|| cookie.path.clone()),
            });
        }
        Some(PolicySpecifier::ConnectionProperties(p)) if p.source_ip => on.source_ip = Some(true),
        Some(PolicySpecifier::QueryParameter(q)) => on.query = Some(q.name.clone()),
        Some(PolicySpecifier::FilterState(_)) => {
            return Err(Rejection::unsupported(
                "filter_state",
                "hashing on filter state",
            ));
        }
        _ => {
            return Err(Rejection::new(
                "policy_specifier",
                "a hash input is required",
            ));
        }
    }
    Ok(on)
}

/// `typed_per_filter_config`: `Some(limit)` when the local rate limit is
/// configured here (`Some(None)`: turned off here); other filters are not
/// in the proxy's chain, so their configs cannot be honoured.
pub(super) fn per_filter_rate_limit(
    configs: &std::collections::HashMap<String, protobuf::Any>,
    path: &str,
) -> Result<Option<Option<RateLimitConfig>>> {
    let mut names: Vec<&String> = configs.keys().collect();
    names.sort();
    let mut out = None;
    for name in names {
        let any = &configs[name];
        let at = format!("{path}[{name:?}]");
        if any.type_url != LOCAL_RATE_LIMIT {
            return Err(Rejection::unsupported(
                at,
                &format!("a per-route config of type {}", any.type_url),
            ));
        }
        let limit: local_ratelimit::LocalRateLimit = unpack_typed(any, &at)?;
        out = Some(local_rate_limit(&limit, &at)?);
    }
    Ok(out)
}

/// `metadata.filter_metadata["remora"].extras` on a route: settings Envoy
/// has no field for (Envoy ignores them).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteExtras {
    /// `{redis, timeout, failure, bucket}`: makes the route's local rate
    /// limit global (Envoy has no Redis-backed limit).
    pub(super) rate_limit_global: Option<crate::config::GlobalRateLimitConfig>,
    /// The route's response cache (docs/cache.md).
    pub(super) cache: Option<crate::config::CacheConfig>,
}

pub(super) fn route_extras(r: &remora_xds_proto::route::Route) -> Result<RouteExtras> {
    let Some(text) = r
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("remora"))
        .and_then(|s| s.fields.get("extras"))
        .and_then(|v| match &v.kind {
            Some(protobuf::value::Kind::StringValue(s)) => Some(s),
            _ => None,
        })
    else {
        return Ok(RouteExtras::default());
    };
    serde_json::from_str(text)
        .map_err(|e| Rejection::new("metadata.filter_metadata[\"remora\"].extras", e.to_string()))
}

//! Rate limits: a token bucket (GCRA, via governor) per key, refilled at
//! `requests_per_second` and holding `burst` requests. The key is `none`
//! (one bucket), `source_ip`, `header:NAME` (one bucket per value;
//! requests without the header share one) or `peer_identity` (one bucket
//! per mTLS peer's SPIFFE ID; plaintext requests share one). Over the limit, HTTP gets 429
//! with `retry-after`, gRPC gets RESOURCE_EXHAUSTED. Keys are forgotten once
//! their bucket is full again, so the table does not grow without bound.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::HOST;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{ConfigError, RateLimitConfig};
use crate::telemetry::{self, Telemetry};

mod global;

/// Checks between sweeps of forgotten keys.
const SWEEP_EVERY: u64 = 4096;

#[derive(Debug)]
pub(crate) struct RateLimit {
    buckets: Buckets,
    checks: AtomicU64,
    /// `global:`: the shared buckets in Redis, checked after the local one.
    global: Option<Box<global::Global>>,
}

#[derive(Debug)]
enum Buckets {
    One(DefaultDirectRateLimiter),
    BySourceIp(DefaultKeyedRateLimiter<IpAddr>),
    ByHeader(HeaderName, DefaultKeyedRateLimiter<HeaderValue>),
    ByPeer(DefaultKeyedRateLimiter<Arc<str>>),
}

/// Who a request or connection comes from, as rate limit keys see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    pub(crate) headers: &'a HeaderMap,
    /// The request's `:authority` or absolute target.
    pub(crate) authority: Option<&'a str>,
    pub(crate) ip: IpAddr,
    /// An mTLS peer's SPIFFE ID.
    pub(crate) identity: Option<&'a Arc<str>>,
}

impl RateLimit {
    /// `rate` per second with `burst` (default: one second's worth);
    /// `rate_field` names the rate in errors.
    pub(crate) fn compile(
        (rate_field, rate): (&str, f64),
        burst: Option<u32>,
        key: &str,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<RateLimit> {
        if !(rate.is_finite() && rate > 0.0 && rate <= 1e9) {
            errors.push(ConfigError::new(
                format!("{path}.{rate_field}"),
                format!("{rate} must be above 0 (and at most 1e9)"),
            ));
            return None;
        }
        let burst = burst.unwrap_or(rate.ceil().max(1.0) as u32);
        let Some(burst) = NonZeroU32::new(burst) else {
            errors.push(ConfigError::new(
                format!("{path}.burst"),
                "must be at least 1",
            ));
            return None;
        };
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))?.allow_burst(burst);
        let buckets = match key {
            "none" => Buckets::One(RateLimiter::direct(quota)),
            "source_ip" => Buckets::BySourceIp(RateLimiter::keyed(quota)),
            "peer_identity" => Buckets::ByPeer(RateLimiter::keyed(quota)),
            other => match other
                .strip_prefix("header:")
                .map(|name| HeaderName::from_bytes(name.trim().as_bytes()))
            {
                Some(Ok(name)) => Buckets::ByHeader(name, RateLimiter::keyed(quota)),
                _ => {
                    errors.push(ConfigError::new(
                        format!("{path}.key"),
                        format!(
                            "{other:?} is not a key: use none, source_ip, peer_identity or header:NAME"
                        ),
                    ));
                    return None;
                }
            },
        };
        Some(RateLimit {
            buckets,
            checks: AtomicU64::new(0),
            global: None,
        })
    }

    /// Adds `config.global` (if any): `scope` names the listener or route,
    /// so that only the same limit on other proxies shares its buckets.
    pub(crate) fn with_global(
        mut self,
        config: &RateLimitConfig,
        scope: &str,
        path: &str,
        telemetry: &Telemetry,
        errors: &mut Vec<ConfigError>,
    ) -> RateLimit {
        if let Some(g) = &config.global {
            let scope = g.bucket.as_deref().unwrap_or(scope);
            let rate = config.requests_per_second;
            let burst = config.burst.unwrap_or(rate.ceil().max(1.0) as u32);
            self.global = global::Global::compile(
                g,
                rate,
                burst,
                scope,
                &format!("{path}.global"),
                (
                    telemetry.counter(telemetry::GLOBAL_RATE_LIMIT_CALLS, &[("scope", scope)]),
                    telemetry.counter(telemetry::GLOBAL_RATE_LIMIT_FAILURES, &[("scope", scope)]),
                ),
                errors,
            )
            .map(Box::new);
        }
        self
    }

    /// The local bucket, then (if it admits) the shared one: `Ok` when the
    /// request may go, else how long until it could.
    pub(crate) async fn admit(&self, caller: Caller<'_>) -> Result<(), Duration> {
        self.check(caller)?;
        if self.global.is_some() {
            return self.check_global(caller).await;
        }
        Ok(())
    }

    #[cfg(test)]
    fn is_global(&self) -> bool {
        self.global.is_some()
    }

    /// The shared limit, after the local one admitted the request.
    async fn check_global(&self, caller: Caller<'_>) -> Result<(), Duration> {
        let Some(global) = &self.global else {
            return Ok(());
        };
        let octets;
        let key: Option<&[u8]> = match &self.buckets {
            Buckets::One(_) => None,
            Buckets::BySourceIp(_) => {
                octets = match caller.ip {
                    IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                    IpAddr::V6(ip) => ip.octets(),
                };
                Some(&octets)
            }
            Buckets::ByPeer(_) => Some(caller.identity.map_or(&b""[..], |i| i.as_bytes())),
            Buckets::ByHeader(name, _) => Some(
                caller
                    .headers
                    .get(name)
                    .map(|v| v.as_bytes())
                    .or_else(|| {
                        caller
                            .authority
                            .filter(|_| *name == HOST)
                            .map(str::as_bytes)
                    })
                    .unwrap_or(b""),
            ),
        };
        global.check(key).await
    }

    /// `Ok` when the request may go; else how long until it could.
    /// `authority` is the request's (`:authority` or an absolute target):
    /// a `header:host` key reads it when the request has no `Host` header,
    /// as an HTTP/2 request usually has not.
    pub(crate) fn check(&self, caller: Caller<'_>) -> Result<(), Duration> {
        let Caller {
            headers,
            authority,
            ip: client,
            identity,
        } = caller;
        let outcome = match &self.buckets {
            Buckets::One(limiter) => limiter.check(),
            Buckets::BySourceIp(limiter) => {
                self.sweep(|| limiter.retain_recent());
                limiter.check_key(&client)
            }
            Buckets::ByPeer(limiter) => {
                self.sweep(|| limiter.retain_recent());
                match identity {
                    Some(identity) => limiter.check_key(identity),
                    None => limiter.check_key(&Arc::from("")),
                }
            }
            Buckets::ByHeader(name, limiter) => {
                self.sweep(|| limiter.retain_recent());
                let key = headers
                    .get(name)
                    .cloned()
                    .or_else(|| {
                        let authority = authority.filter(|_| *name == HOST)?;
                        HeaderValue::from_str(authority).ok()
                    })
                    .unwrap_or_else(|| HeaderValue::from_static(""));
                limiter.check_key(&key)
            }
        };
        outcome.map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn sweep(&self, forget: impl FnOnce()) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller<'a>(headers: &'a HeaderMap, authority: Option<&'a str>, ip: IpAddr) -> Caller<'a> {
        Caller {
            headers,
            authority,
            ip,
            identity: None,
        }
    }

    fn limit(rate: f64, burst: Option<u32>, key: &str) -> Result<RateLimit, String> {
        let mut errors = Vec::new();
        RateLimit::compile(
            ("requests_per_second", rate),
            burst,
            key,
            "r.rate_limit",
            &mut errors,
        )
        .ok_or_else(|| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn the_burst_passes_then_the_rate_holds() {
        let l = limit(1.0, Some(3), "none").unwrap();
        let headers = HeaderMap::new();
        for _ in 0..3 {
            assert!(l.check(caller(&headers, None, A)).is_ok());
        }
        let wait = l.check(caller(&headers, None, A)).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }

    #[test]
    fn keys_get_their_own_buckets() {
        let by_ip = limit(1.0, Some(1), "source_ip").unwrap();
        let headers = HeaderMap::new();
        assert!(by_ip.check(caller(&headers, None, A)).is_ok());
        assert!(by_ip.check(caller(&headers, None, A)).is_err());
        assert!(by_ip.check(caller(&headers, None, B)).is_ok());

        let by_header = limit(1.0, Some(1), "header:x-tenant").unwrap();
        let tenant = |t: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("x-tenant", HeaderValue::from_static(t));
            h
        };
        assert!(by_header.check(caller(&tenant("a"), None, A)).is_ok());
        assert!(by_header.check(caller(&tenant("a"), None, B)).is_err());
        assert!(by_header.check(caller(&tenant("b"), None, A)).is_ok());

        // `header:host` keys an HTTP/2 request (no Host) by its :authority.
        let by_host = limit(1.0, Some(1), "header:host").unwrap();
        let none = HeaderMap::new();
        assert!(by_host.check(caller(&none, Some("a.example"), A)).is_ok());
        assert!(by_host.check(caller(&none, Some("a.example"), A)).is_err());
        assert!(by_host.check(caller(&none, Some("b.example"), A)).is_ok());
    }

    #[test]
    fn bad_limits_are_named() {
        assert_eq!(
            limit(0.0, None, "none").unwrap_err(),
            "r.rate_limit.requests_per_second: 0 must be above 0 (and at most 1e9)"
        );
        assert_eq!(
            limit(1.0, Some(0), "none").unwrap_err(),
            "r.rate_limit.burst: must be at least 1"
        );
        assert!(
            limit(1.0, None, "cookie")
                .unwrap_err()
                .starts_with("r.rate_limit.key: \"cookie\" is not a key")
        );
        assert!(limit(1.0, None, "peer_identity").is_ok());
    }

    #[test]
    fn peer_identity_keys_one_bucket_per_identity() {
        let by_peer = limit(1.0, Some(1), "peer_identity").unwrap();
        let headers = HeaderMap::new();
        let (web, batch): (Arc<str>, Arc<str>) = (
            "spiffe://cluster.local/ns/a/sa/web".into(),
            "spiffe://cluster.local/ns/a/sa/batch".into(),
        );
        let from = |identity| Caller {
            identity,
            ..caller(&headers, None, A)
        };
        assert!(by_peer.check(from(Some(&web))).is_ok());
        assert!(by_peer.check(from(Some(&web))).is_err());
        assert!(by_peer.check(from(Some(&batch))).is_ok());
        assert!(
            by_peer.check(from(None)).is_ok(),
            "plaintext shares one bucket"
        );
        assert!(by_peer.check(from(None)).is_err());
    }
}

#[cfg(test)]
mod global_tests {
    use super::*;

    fn global(yaml: &str) -> Vec<String> {
        let config: RateLimitConfig = crate::config::parse_yaml_as(yaml).unwrap();
        let mut errors = Vec::new();
        let limit = RateLimit::compile(
            ("requests_per_second", config.requests_per_second),
            config.burst,
            &config.key,
            "routes[0].rate_limit",
            &mut errors,
        )
        .unwrap();
        let limit = limit.with_global(
            &config,
            "route/web/all",
            "routes[0].rate_limit",
            &Telemetry::new(),
            &mut errors,
        );
        if errors.is_empty() {
            assert!(limit.is_global());
        }
        errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_malformed_redis_url_names_the_field_and_an_unreachable_one_is_accepted() {
        let e = global("{requests_per_second: 10, global: {redis: 'http://nowhere'}}");
        assert!(
            e.len() == 1
                && e[0].starts_with(
                    "routes[0].rate_limit.global.redis: \"http://nowhere\" is not a Redis URL"
                ),
            "{e:?}"
        );
        // Nothing listens there: accepted, Redis may come later.
        assert!(
            global("{requests_per_second: 10, global: {redis: 'redis://127.0.0.1:1/0'}}")
                .is_empty()
        );
        let e = global(
            "{requests_per_second: 10, global: {redis: 'redis://127.0.0.1:1/0', timeout: 0s}}",
        );
        assert_eq!(
            e,
            ["routes[0].rate_limit.global.timeout: must be greater than 0"]
        );
    }
}

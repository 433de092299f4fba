//! The parts of RFC 9111 (HTTP caching) and RFC 9110 (conditional
//! requests) a shared cache needs: `Cache-Control` directives, freshness
//! lifetime, age, and entity-tag comparison.

use std::time::{Duration, SystemTime};

use http::header::{AGE, CACHE_CONTROL, DATE, EXPIRES, PRAGMA};
use http::{HeaderMap, HeaderValue};

/// The `Cache-Control` directives a shared cache acts on (request or
/// response). A qualified `no-cache="field"` or `private="field"` is taken
/// as the unqualified directive: the field is not stripped, the whole
/// response is treated the stricter way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    /// `must-revalidate` or `proxy-revalidate`: never served stale.
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub only_if_cached: bool,
}

impl Directives {
    /// Every `Cache-Control` field line of `headers`; a request's
    /// `Pragma: no-cache` counts as `no-cache` when it has no
    /// `Cache-Control` (RFC 9111 §5.4).
    pub(crate) fn of(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        let mut any = false;
        for value in headers.get_all(CACHE_CONTROL) {
            any = true;
            let Ok(text) = value.to_str() else {
                // Unparseable: the safe reading.
                d.no_store = true;
                continue;
            };
            for directive in text.split(',') {
                let directive = directive.trim();
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive, None),
                };
                let seconds = || arg.and_then(delta_seconds);
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    "only-if-cached" => d.only_if_cached = true,
                    // An invalid value is the strictest reading (§4.2.1).
                    "max-age" => d.max_age = Some(seconds().unwrap_or(0)),
                    "s-maxage" => d.s_maxage = Some(seconds().unwrap_or(0)),
                    _ => {}
                }
            }
        }
        if !any
            && headers
                .get_all(PRAGMA)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
        {
            d.no_cache = true;
        }
        d
    }
}

/// The largest `delta-seconds` kept: 2^31 (RFC 9111 §1.2.2).
const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// A `delta-seconds` value; too large saturates at 2^31 (RFC 9111 §1.2.2).
fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        text.parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |s| s.min(MAX_DELTA_SECONDS)),
    )
}

pub(crate) fn http_date(value: Option<&HeaderValue>) -> Option<SystemTime> {
    httpdate::parse_http_date(value?.to_str().ok()?).ok()
}

/// The freshness lifetime the response itself gives (§4.2.1): `s-maxage`,
/// else `max-age`, else `Expires` − `Date`; `None` when it gives none. An
/// invalid `Expires` means already stale.
pub(crate) fn explicit_lifetime(headers: &HeaderMap, cc: &Directives) -> Option<Duration> {
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(s));
    }
    let expires = headers.get(EXPIRES)?;
    let Some(expires) = http_date(Some(expires)) else {
        return Some(Duration::ZERO);
    };
    let date = http_date(headers.get(DATE)).unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// The response's age when it arrived (§4.2.3, without the request's
/// round trip): its `Age`, or the time since its `Date`, whichever is more.
/// `Date` has a resolution of one second, so a response made 0.9 s into
/// a second seems 0.9 s old at once: the time since `Date` counts one
/// second less, in whole seconds.
pub(crate) fn initial_age(headers: &HeaderMap, now: SystemTime) -> Duration {
    let age = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(delta_seconds)
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent = http_date(headers.get(DATE))
        .and_then(|date| now.duration_since(date).ok())
        .map_or(Duration::ZERO, |d| {
            Duration::from_secs(d.as_secs().saturating_sub(1))
        });
    age.max(apparent)
}

/// Whether a status may be stored without explicit freshness: the
/// heuristically cacheable statuses of RFC 9110 §15.1 (less 206: range
/// responses are not stored).
pub(crate) fn cacheable_status(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// `If-None-Match` against an entry's `ETag`, by weak comparison
/// (RFC 9110 §13.1.2): `*` matches any entity tag.
pub(crate) fn none_match(if_none_match: &HeaderMap, etag: Option<&HeaderValue>) -> bool {
    let Some(etag) = etag.map(|e| opaque(e.as_bytes())) else {
        return false;
    };
    if_none_match
        .get_all(http::header::IF_NONE_MATCH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|tag| {
            let tag = tag.trim_ascii();
            tag == b"*" || opaque(tag) == etag
        })
}

fn opaque(tag: &[u8]) -> &[u8] {
    let tag = tag.trim_ascii();
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// `If-Modified-Since` (used only without `If-None-Match`): not modified
/// when the entry's `Last-Modified` is no later than the date given.
pub(crate) fn not_modified_since(request: &HeaderMap, last_modified: Option<&HeaderValue>) -> bool {
    match (
        http_date(request.get(http::header::IF_MODIFIED_SINCE)),
        http_date(last_modified),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn directives_are_read_from_every_line_in_any_case() {
        let d = Directives::of(&headers(&[
            ("cache-control", "Public, MAX-AGE=60"),
            ("cache-control", "s-maxage=\"30\", must-revalidate"),
        ]));
        assert!(d.public && d.must_revalidate && !d.no_store);
        assert_eq!((d.max_age, d.s_maxage), (Some(60), Some(30)));
        let d = Directives::of(&headers(&[(
            "cache-control",
            "no-cache=\"set-cookie\", private",
        )]));
        assert!(d.no_cache && d.private);
        // An invalid max-age is the strictest reading.
        assert_eq!(
            Directives::of(&headers(&[("cache-control", "max-age=soon")])).max_age,
            Some(0)
        );
        assert_eq!(
            Directives::of(&headers(&[("cache-control", "max-age=99999999999999")])).max_age,
            Some(1 << 31)
        );
    }

    #[test]
    fn pragma_no_cache_counts_only_without_cache_control() {
        assert!(Directives::of(&headers(&[("pragma", "no-cache")])).no_cache);
        assert!(
            !Directives::of(&headers(&[
                ("pragma", "no-cache"),
                ("cache-control", "max-age=5")
            ]))
            .no_cache
        );
    }

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires() {
        let h = headers(&[("cache-control", "max-age=10, s-maxage=20")]);
        assert_eq!(
            explicit_lifetime(&h, &Directives::of(&h)),
            Some(Duration::from_secs(20))
        );
        let h = headers(&[
            ("date", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ("expires", "Tue, 01 Dec 2026 10:01:40 GMT"),
        ]);
        assert_eq!(
            explicit_lifetime(&h, &Directives::of(&h)),
            Some(Duration::from_secs(100))
        );
        let h = headers(&[("expires", "0")]);
        assert_eq!(
            explicit_lifetime(&h, &Directives::of(&h)),
            Some(Duration::ZERO)
        );
        assert_eq!(
            explicit_lifetime(&HeaderMap::new(), &Directives::default()),
            None
        );
    }

    #[test]
    fn age_is_the_larger_of_age_and_time_since_date() {
        let now = httpdate::parse_http_date("Tue, 01 Dec 2026 10:00:30 GMT").unwrap();
        let h = headers(&[("date", "Tue, 01 Dec 2026 10:00:00 GMT"), ("age", "5")]);
        assert_eq!(initial_age(&h, now), Duration::from_secs(29));
        // Made late in the second of its Date, received early in the next.
        let h = headers(&[("date", "Tue, 01 Dec 2026 10:00:29 GMT")]);
        assert_eq!(
            initial_age(&h, now + Duration::from_millis(300)),
            Duration::ZERO
        );
        let h = headers(&[("age", "50")]);
        assert_eq!(initial_age(&h, now), Duration::from_secs(50));
    }

    #[test]
    fn etags_compare_weakly_and_star_matches() {
        let etag = HeaderValue::from_static("W/\"v1\"");
        assert!(none_match(
            &headers(&[("if-none-match", "\"v0\", \"v1\"")]),
            Some(&etag)
        ));
        assert!(none_match(&headers(&[("if-none-match", "*")]), Some(&etag)));
        assert!(!none_match(
            &headers(&[("if-none-match", "\"v2\"")]),
            Some(&etag)
        ));
        assert!(!none_match(&headers(&[("if-none-match", "*")]), None));
    }

    #[test]
    fn if_modified_since_compares_dates() {
        let modified = HeaderValue::from_static("Tue, 01 Dec 2026 10:00:00 GMT");
        let req = headers(&[("if-modified-since", "Tue, 01 Dec 2026 10:00:00 GMT")]);
        assert!(not_modified_since(&req, Some(&modified)));
        let req = headers(&[("if-modified-since", "Tue, 01 Dec 2026 09:59:59 GMT")]);
        assert!(!not_modified_since(&req, Some(&modified)));
        assert!(!not_modified_since(&req, None));
    }
}

//! One authority per request. Routing, rate-limit keys, the access log and
//! the upstream all read the request's authority; a request that could
//! show them different ones is refused or made consistent here, before
//! anything looks at it (RFC 9112 §3.2, RFC 9113 §8.3.1).
//!
//! - HTTP/1.1 must carry exactly one `Host`; HTTP/1.0 at most one.
//! - An absolute-form target (`GET http://a.example/ HTTP/1.1`) wins over
//!   `Host`: the proxy replaces `Host` with the target's authority, as
//!   RFC 9112 §3.2.2 asks of an intermediary. A target with user info is
//!   refused.
//! - HTTP/2: at most one `host`, and if it is there with `:authority` the two
//!   must name the same authority; `:authority` is then the one passed on.
//! - `Host` must be a valid authority (`host[:port]`).

use http::header::{HOST, HeaderValue};
use http::{Request, Version};

/// The request's authority: the target's, else `Host` (empty when neither;
/// [`normalize`] has made them agree).
pub(super) fn of<'a>(uri: &'a http::Uri, headers: &'a http::HeaderMap) -> &'a str {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default()
}

/// Makes the request's `Host` agree with its target, or says why it cannot.
pub(super) fn normalize<B>(request: &mut Request<B>) -> Result<(), &'static str> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if let Some(host) = host
        && !valid_host(host.as_bytes())
    {
        return Err("the Host header is not a valid authority");
    }
    let target = request.uri().authority();
    if target.is_some_and(|a| a.as_str().contains('@')) {
        return Err("the request target carries user info");
    }
    match request.version() {
        Version::HTTP_2 | Version::HTTP_3 => {
            if let (Some(target), Some(host)) = (target, host) {
                if !same_authority(target.as_str(), host.as_bytes()) {
                    return Err("the host header and :authority differ");
                }
                // :authority is the one that travels on (as Host to HTTP/1.1).
                request.headers_mut().remove(HOST);
            }
            Ok(())
        }
        version => match target {
            Some(target) => {
                if host.is_none_or(|h| h.as_bytes() != target.as_str().as_bytes()) {
                    let value = HeaderValue::from_str(target.as_str())
                        .map_err(|_| "the request target is not a valid authority")?;
                    request.headers_mut().insert(HOST, value);
                }
                Ok(())
            }
            None if host.is_none() && version == Version::HTTP_11 => {
                Err("an HTTP/1.1 request without a Host header")
            }
            None => Ok(()),
        },
    }
}

/// `host[:port]` as RFC 3986 allows it in `Host` (a reg-name, an IPv4
/// address or a bracketed IPv6 literal, then digits): checked byte by byte,
/// with no allocation, on every request.
fn valid_host(host: &[u8]) -> bool {
    if host.is_empty() {
        // RFC 9112 §3.2: the value is empty when the target has no authority.
        return true;
    }
    let (name, port) = match host.first() {
        Some(b'[') => match host.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &host[1..end];
                if literal.is_empty()
                    || !literal
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                {
                    return false;
                }
                (&host[..=end], &host[end + 1..])
            }
            None => return false,
        },
        _ => match host.iter().rposition(|&b| b == b':') {
            Some(colon) => (&host[..colon], &host[colon..]),
            None => (host, &host[host.len()..]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let name_ok = name.first() == Some(&b'[')
        || (!name.is_empty()
            && name.iter().all(|&b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'-' | b'.'
                            | b'_'
                            | b'~'
                            | b'%'
                            | b'!'
                            | b'$'
                            | b'&'
                            | b'\''
                            | b'('
                            | b')'
                            | b'*'
                            | b'+'
                            | b','
                            | b';'
                            | b'='
                    )
            }));
    port_ok && name_ok
}

/// Host names compare without case; ports as written.
fn same_authority(a: &str, b: &[u8]) -> bool {
    a.as_bytes().eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, target: &str, hosts: &[&str]) -> Request<()> {
        let mut request = Request::builder()
            .version(version)
            .uri(target)
            .body(())
            .unwrap();
        for host in hosts {
            request
                .headers_mut()
                .append(HOST, HeaderValue::from_str(host).unwrap());
        }
        request
    }

    fn host(request: &Request<()>) -> Vec<&str> {
        request
            .headers()
            .get_all(HOST)
            .iter()
            .map(|h| h.to_str().unwrap())
            .collect()
    }

    #[test]
    fn http1_needs_exactly_one_host() {
        let mut ok = request(Version::HTTP_11, "/p", &["a.example"]);
        assert_eq!(normalize(&mut ok), Ok(()));
        assert_eq!(host(&ok), ["a.example"]);
        let mut none = request(Version::HTTP_11, "/p", &[]);
        assert!(normalize(&mut none).is_err());
        let mut two = request(Version::HTTP_11, "/p", &["a.example", "b.example"]);
        assert_eq!(normalize(&mut two), Err("more than one Host header"));
        let mut old = request(Version::HTTP_10, "/p", &[]);
        assert_eq!(normalize(&mut old), Ok(()), "HTTP/1.0 may omit Host");
        for bad in ["a b", "a/b", "u@a", "a:8x", "[zz]", "[::1"] {
            let mut r = request(Version::HTTP_11, "/p", &[bad]);
            assert!(normalize(&mut r).is_err(), "{bad:?} is not a host");
        }
        for good in [
            "a.example:8080",
            "[::1]:80",
            "10.0.0.1",
            "xn--bcher-kva.example",
            "",
        ] {
            let mut r = request(Version::HTTP_11, "/p", &[good]);
            assert_eq!(normalize(&mut r), Ok(()), "{good:?} is a host");
        }
    }

    #[test]
    fn an_absolute_target_replaces_host() {
        let mut r = request(
            Version::HTTP_11,
            "http://public.example/p",
            &["admin.example"],
        );
        assert_eq!(normalize(&mut r), Ok(()));
        assert_eq!(host(&r), ["public.example"]);
        let mut missing = request(Version::HTTP_11, "http://public.example:8080/p", &[]);
        assert_eq!(normalize(&mut missing), Ok(()));
        assert_eq!(host(&missing), ["public.example:8080"]);
        let mut userinfo = request(Version::HTTP_11, "http://u:p@public.example/p", &[]);
        assert!(normalize(&mut userinfo).is_err());
    }

    #[test]
    fn http2_authority_and_host_must_agree() {
        let mut same = request(Version::HTTP_2, "http://A.example/p", &["a.example"]);
        assert_eq!(normalize(&mut same), Ok(()));
        let mut differ = request(Version::HTTP_2, "http://a.example/p", &["admin.example"]);
        assert_eq!(
            normalize(&mut differ),
            Err("the host header and :authority differ")
        );
        let mut host_only = request(Version::HTTP_2, "/p", &["a.example"]);
        assert_eq!(normalize(&mut host_only), Ok(()));
    }
}

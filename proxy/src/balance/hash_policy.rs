//! The hash input of a consistent-hash balancer (`hash_on`): a header, a
//! cookie, the client's IP or a query parameter, hashed with xxh64 (seed 0),
//! so a key maps the same way in every proxy and after every restart.
//!
//! With `cookie: {ttl}`, a client that has no cookie yet gets one: the proxy
//! makes a random value, routes by its hash, and sets it on the response, so
//! the client's next requests hash to the same endpoint.

use std::fmt::Write;
use std::net::IpAddr;

use http::header::{COOKIE, HeaderName, HeaderValue};
use http::{HeaderMap, Uri};
use xxhash_rust::xxh64::{Xxh64, xxh64};

use crate::config::{ConfigError, HashOnConfig};

#[derive(Debug, Clone)]
pub(crate) enum HashPolicy {
    Header(HeaderName),
    Cookie { name: String, set: Option<String> },
    SourceIp,
    Query(String),
}

/// What a request offers to hash on.
#[derive(Debug)]
pub(crate) enum HashInput {
    Key(u64),
    /// The configured input is absent; the balancer falls back and counts it.
    Missing,
    /// No cookie yet: route by this new value's hash and set the cookie.
    NewCookie {
        hash: u64,
        set_cookie: HeaderValue,
    },
}

impl HashPolicy {
    pub(crate) fn compile(
        config: &HashOnConfig,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<HashPolicy> {
        let given = usize::from(config.header.is_some())
            + usize::from(config.cookie.is_some())
            + usize::from(config.source_ip.is_some())
            + usize::from(config.query.is_some());
        if given != 1 {
            errors.push(ConfigError::new(
                path,
                "exactly one of header, cookie, source_ip and query must be set",
            ));
            return None;
        }
        if let Some(header) = &config.header {
            return match HeaderName::from_bytes(header.as_bytes()) {
                Ok(name) => Some(HashPolicy::Header(name)),
                Err(_) => {
                    errors.push(ConfigError::new(
                        format!("{path}.header"),
                        format!("{header:?} is not a valid header name"),
                    ));
                    None
                }
            };
        }
        if let Some(query) = &config.query {
            if query.is_empty() {
                errors.push(ConfigError::new(
                    format!("{path}.query"),
                    "must not be empty",
                ));
                return None;
            }
            return Some(HashPolicy::Query(query.clone()));
        }
        if let Some(source_ip) = config.source_ip {
            if !source_ip {
                errors.push(ConfigError::new(
                    format!("{path}.source_ip"),
                    "set source_ip: true, or leave it out",
                ));
                return None;
            }
            return Some(HashPolicy::SourceIp);
        }
        let cookie = config.cookie.as_ref()?;
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        };
        if !token(&cookie.name) {
            errors.push(ConfigError::new(
                format!("{path}.cookie.name"),
                format!("{:?} is not a valid cookie name", cookie.name),
            ));
            return None;
        }
        if let Some(p) = &cookie.path
            && (!p.starts_with('/') || p.bytes().any(|b| b == b';' || !b.is_ascii_graphic()))
        {
            errors.push(ConfigError::new(
                format!("{path}.cookie.path"),
                format!("{p:?} is not a cookie path (it starts with / and has no ; or spaces)"),
            ));
            return None;
        }
        let set = cookie.ttl.map(|ttl| {
            let mut attributes = String::new();
            if !ttl.is_zero() {
                let _ = write!(attributes, "; Max-Age={}", ttl.as_secs().max(1));
            }
            let _ = write!(
                attributes,
                "; Path={}; HttpOnly",
                cookie.path.as_deref().unwrap_or("/")
            );
            attributes
        });
        Some(HashPolicy::Cookie {
            name: cookie.name.clone(),
            set,
        })
    }

    pub(crate) fn input(&self, headers: &HeaderMap, uri: &Uri, client: IpAddr) -> HashInput {
        match self {
            HashPolicy::Header(name) => {
                let mut values = headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    return HashInput::Missing;
                }
                let mut hasher = Xxh64::new(0);
                for (i, value) in values.enumerate() {
                    if i > 0 {
                        hasher.update(b",");
                    }
                    hasher.update(value.as_bytes());
                }
                HashInput::Key(hasher.digest())
            }
            HashPolicy::SourceIp => HashInput::Key(match client {
                IpAddr::V4(ip) => xxh64(&ip.octets(), 0),
                IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                    Some(v4) => xxh64(&v4.octets(), 0),
                    None => xxh64(&ip.octets(), 0),
                },
            }),
            HashPolicy::Query(name) => uri
                .query()
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (key == name).then(|| HashInput::Key(xxh64(value.as_bytes(), 0)))
                })
                .unwrap_or(HashInput::Missing),
            HashPolicy::Cookie { name, set } => {
                if let Some(value) = find_cookie(headers, name) {
                    return HashInput::Key(xxh64(value.as_bytes(), 0));
                }
                let Some(attributes) = set else {
                    return HashInput::Missing;
                };
                let value = format!("{:016x}", crate::rand::next_u64());
                let hash = xxh64(value.as_bytes(), 0);
                match HeaderValue::from_str(&format!("{name}={value}{attributes}")) {
                    Ok(set_cookie) => HashInput::NewCookie { hash, set_cookie },
                    Err(_) => HashInput::Missing,
                }
            }
        }
    }
}

fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then(|| value.trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HashCookieConfig;
    use std::time::Duration;

    fn policy(config: HashOnConfig) -> Result<HashPolicy, String> {
        let mut errors = Vec::new();
        HashPolicy::compile(&config, "lb.hash_on", &mut errors).ok_or_else(|| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    fn empty() -> HashOnConfig {
        HashOnConfig {
            header: None,
            cookie: None,
            source_ip: None,
            query: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    fn key(input: HashInput) -> Option<u64> {
        match input {
            HashInput::Key(k) => Some(k),
            _ => None,
        }
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn each_input_hashes_deterministically_or_is_missing() {
        let uri: Uri = "/x?user=ann&b=2".parse().unwrap();
        let header = policy(HashOnConfig {
            header: Some("x-user".into()),
            ..empty()
        })
        .unwrap();
        let h = headers(&[("x-user", "ann")]);
        assert_eq!(key(header.input(&h, &uri, CLIENT)), Some(xxh64(b"ann", 0)));
        assert!(matches!(
            header.input(&HeaderMap::new(), &uri, CLIENT),
            HashInput::Missing
        ));

        let query = policy(HashOnConfig {
            query: Some("user".into()),
            ..empty()
        })
        .unwrap();
        assert_eq!(
            key(query.input(&HeaderMap::new(), &uri, CLIENT)),
            Some(xxh64(b"ann", 0))
        );
        assert!(matches!(
            query.input(&HeaderMap::new(), &"/x".parse().unwrap(), CLIENT),
            HashInput::Missing
        ));

        let ip = policy(HashOnConfig {
            source_ip: Some(true),
            ..empty()
        })
        .unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            key(ip.input(&HeaderMap::new(), &uri, CLIENT)),
            key(ip.input(&HeaderMap::new(), &uri, mapped))
        );
    }

    #[test]
    fn a_missing_cookie_with_a_ttl_is_generated_and_set() {
        let config = HashOnConfig {
            cookie: Some(HashCookieConfig {
                name: "sticky".into(),
                ttl: Some(Duration::from_secs(3600)),
                path: Some("/app".into()),
            }),
            ..empty()
        };
        let cookie = policy(config).unwrap();
        let uri: Uri = "/".parse().unwrap();
        let HashInput::NewCookie { hash, set_cookie } =
            cookie.input(&HeaderMap::new(), &uri, CLIENT)
        else {
            panic!()
        };
        let set_cookie = set_cookie.to_str().unwrap().to_string();
        assert!(
            set_cookie.ends_with("; Max-Age=3600; Path=/app; HttpOnly"),
            "{set_cookie}"
        );
        let value = set_cookie
            .strip_prefix("sticky=")
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        // The client sends it back and lands on the same hash.
        let back = headers(&[("cookie", &format!("a=1; sticky={value}; b=2"))]);
        assert_eq!(key(cookie.input(&back, &uri, CLIENT)), Some(hash));

        let no_ttl = policy(HashOnConfig {
            cookie: Some(HashCookieConfig {
                name: "s".into(),
                ttl: None,
                path: None,
            }),
            ..empty()
        })
        .unwrap();
        assert!(matches!(
            no_ttl.input(&HeaderMap::new(), &uri, CLIENT),
            HashInput::Missing
        ));
    }

    #[test]
    fn bad_hash_inputs_are_named() {
        assert_eq!(
            policy(empty()).unwrap_err(),
            "lb.hash_on: exactly one of header, cookie, source_ip and query must be set"
        );
        assert_eq!(
            policy(HashOnConfig {
                header: Some("a".into()),
                query: Some("b".into()),
                ..empty()
            })
            .unwrap_err(),
            "lb.hash_on: exactly one of header, cookie, source_ip and query must be set"
        );
        assert_eq!(
            policy(HashOnConfig {
                source_ip: Some(false),
                ..empty()
            })
            .unwrap_err(),
            "lb.hash_on.source_ip: set source_ip: true, or leave it out"
        );
        assert!(
            policy(HashOnConfig {
                header: Some("bad header".into()),
                ..empty()
            })
            .unwrap_err()
            .starts_with("lb.hash_on.header:")
        );
        let bad_cookie = HashOnConfig {
            cookie: Some(HashCookieConfig {
                name: "a;b".into(),
                ttl: None,
                path: None,
            }),
            ..empty()
        };
        assert!(
            policy(bad_cookie)
                .unwrap_err()
                .starts_with("lb.hash_on.cookie.name:")
        );
    }
}

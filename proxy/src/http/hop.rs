//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, so the
//! proxy drops them before passing a message on. `te: trailers` survives
//! (gRPC needs it); an upgrade keeps `connection: upgrade` and `upgrade`.

use http::HeaderMap;
use http::header::{
    CONNECTION, CONTENT_LENGTH, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE,
};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Removes the hop-by-hop headers: the fixed ones and every header that
/// any `Connection` line names, token by token (RFC 9110 §7.6.1). A
/// message framed by `Transfer-Encoding` loses its `Content-Length` too
/// (RFC 9112 §6.3: the encoding overrides the length, and an intermediary
/// must not pass on both), since the next hop frames the body anew.
pub fn strip(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
    }
    // Empty until a token names a header, so the common case allocates nothing.
    let mut named: Vec<HeaderName> = Vec::new();
    for line in headers.get_all(CONNECTION) {
        for token in line.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"close")
                || (keep_upgrade && token.eq_ignore_ascii_case(b"upgrade"))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token)
                && name != TE
            {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(HTTP2_SETTINGS);
    if let Some(te) = headers.get(TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        headers.remove(TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn connection_scoped_headers_are_dropped() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
            ("x-end", "2"),
        ]);
        strip(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-end"]);
    }

    #[test]
    fn te_trailers_and_upgrades_survive_when_asked() {
        let mut h = headers(&[
            ("te", "trailers"),
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
        ]);
        strip(&mut h, true);
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
    }

    #[test]
    fn every_connection_line_and_token_is_honoured() {
        let mut h = headers(&[
            ("connection", "x-one"),
            ("connection", " X-Two ,\tclose,,x-three "),
            ("x-one", "1"),
            ("x-two", "2"),
            ("x-three", "3"),
            ("x-end", "4"),
        ]);
        strip(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-end"]);
    }

    #[test]
    fn a_non_ascii_connection_value_still_drops_the_headers_it_names() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_bytes(b"x-hop, \xe9t\xe9").unwrap(),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        strip(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn transfer_encoding_takes_content_length_with_it() {
        let mut h = headers(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
        strip(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut only_length = headers(&[("content-length", "5")]);
        strip(&mut only_length, false);
        assert_eq!(only_length.get("content-length").unwrap(), "5");
    }
}

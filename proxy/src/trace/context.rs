//! Trace context in headers: W3C Trace Context (`traceparent`,
//! `tracestate`) and Zipkin B3 (the single `b3` header and the `x-b3-*`
//! headers), read and written.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Propagation;

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub(crate) const B3: HeaderName = HeaderName::from_static("b3");
pub(crate) const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub(crate) const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub(crate) const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub(crate) const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub(crate) const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// What the caller's headers said about the trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Incoming {
    /// The caller's trace and span, when it sent valid ones.
    pub(crate) ids: Option<([u8; 16], [u8; 8])>,
    /// The caller's sampling decision, when it made one.
    pub(crate) sampled: Option<bool>,
    pub(crate) tracestate: Option<HeaderValue>,
}

/// Reads `traceparent` first, then `b3`, then `x-b3-*`.
pub(crate) fn extract(headers: &HeaderMap) -> Incoming {
    let tracestate = headers.get(TRACESTATE).cloned();
    if let Some((trace, span, sampled)) = headers.get(TRACEPARENT).and_then(traceparent) {
        return Incoming {
            ids: Some((trace, span)),
            sampled: Some(sampled),
            tracestate,
        };
    }
    if let Some(incoming) = headers
        .get(B3)
        .and_then(|v| v.to_str().ok())
        .and_then(b3_single)
    {
        return incoming;
    }
    let sampled = match headers.get(B3_SAMPLED).map(HeaderValue::as_bytes) {
        Some(b"1" | b"true" | b"d") => Some(true),
        Some(b"0" | b"false") => Some(false),
        _ => None,
    }
    .or(headers
        .get(B3_FLAGS)
        .filter(|f| f.as_bytes() == b"1")
        .map(|_| true));
    let ids = match (headers.get(B3_TRACE_ID), headers.get(B3_SPAN_ID)) {
        (Some(trace), Some(span)) => trace_id(trace.as_bytes()).zip(span_id(span.as_bytes())),
        _ => None,
    };
    Incoming {
        ids,
        sampled,
        tracestate: None,
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; a later
/// version may append fields, which are ignored (W3C §3.2.4).
fn traceparent(value: &HeaderValue) -> Option<([u8; 16], [u8; 8], bool)> {
    let v = value.as_bytes();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace = hex::<16>(&v[3..35]).filter(|t| *t != [0; 16])?;
    let span = hex::<8>(&v[36..52]).filter(|s| *s != [0; 8])?;
    let flags = hex::<1>(&v[53..55])?[0];
    Some((trace, span, flags & 1 == 1))
}

/// `{trace}-{span}[-{sampled}[-{parent}]]`, or just `0`, `1` or `d`.
fn b3_single(value: &str) -> Option<Incoming> {
    let mut parts = value.trim().split('-');
    let first = parts.next()?;
    let decision = |s: &str| match s {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    };
    if first.len() == 1 {
        return Some(Incoming {
            sampled: Some(decision(first)?),
            ..Incoming::default()
        });
    }
    let trace = trace_id(first.as_bytes())?;
    let span = span_id(parts.next()?.as_bytes())?;
    let sampled = match parts.next() {
        Some(s) => Some(decision(s)?),
        None => None,
    };
    Some(Incoming {
        ids: Some((trace, span)),
        sampled,
        tracestate: None,
    })
}

/// 32 hex digits, or 16 (a 64-bit B3 trace id, padded on the left).
fn trace_id(text: &[u8]) -> Option<[u8; 16]> {
    let id = match text.len() {
        32 => hex::<16>(text)?,
        16 => {
            let low = hex::<8>(text)?;
            let mut id = [0; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return None,
    };
    (id != [0; 16]).then_some(id)
}

fn span_id(text: &[u8]) -> Option<[u8; 8]> {
    (text.len() == 16)
        .then(|| hex::<8>(text))
        .flatten()
        .filter(|s| *s != [0; 8])
}

fn hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = (digit(text[2 * i])? << 4) | digit(text[2 * i + 1])?;
    }
    Some(out)
}

pub(crate) fn to_hex(bytes: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

pub(crate) fn hex_string(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    to_hex(bytes, &mut out);
    String::from_utf8(out).expect("hex digits")
}

/// The header value, in the vector's own allocation.
fn value(bytes: Vec<u8>) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes)).expect("hex digits and dashes")
}

/// Writes the context of `span` (a child of `parent`) in each format,
/// replacing what the caller sent in those formats; other formats pass
/// through unchanged.
pub(crate) fn inject(
    headers: &mut HeaderMap,
    formats: &[Propagation],
    trace: &[u8; 16],
    span: &[u8; 8],
    parent: &[u8; 8],
    sampled: bool,
    tracestate: Option<&HeaderValue>,
) {
    for format in formats {
        match format {
            Propagation::W3c => {
                let mut v = Vec::with_capacity(55);
                v.extend_from_slice(b"00-");
                to_hex(trace, &mut v);
                v.push(b'-');
                to_hex(span, &mut v);
                v.extend_from_slice(if sampled { b"-01" } else { b"-00" });
                headers.insert(TRACEPARENT, value(v));
                match tracestate {
                    Some(state) => headers.insert(TRACESTATE, state.clone()),
                    None => headers.remove(TRACESTATE),
                };
            }
            Propagation::B3 => {
                let mut v = Vec::with_capacity(70);
                to_hex(trace, &mut v);
                v.push(b'-');
                to_hex(span, &mut v);
                v.extend_from_slice(if sampled { b"-1-" } else { b"-0-" });
                to_hex(parent, &mut v);
                headers.insert(B3, value(v));
            }
            Propagation::B3Multi => {
                let mut t = Vec::with_capacity(32);
                to_hex(trace, &mut t);
                headers.insert(B3_TRACE_ID, value(t));
                let mut s = Vec::with_capacity(16);
                to_hex(span, &mut s);
                headers.insert(B3_SPAN_ID, value(s));
                let mut p = Vec::with_capacity(16);
                to_hex(parent, &mut p);
                headers.insert(B3_PARENT, value(p));
                headers.insert(
                    B3_SAMPLED,
                    HeaderValue::from_static(if sampled { "1" } else { "0" }),
                );
                headers.remove(B3_FLAGS);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    const TRACE: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    const SPAN: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

    #[test]
    fn traceparent_is_read_with_its_sampled_flag() {
        let h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let incoming = extract(&h);
        assert_eq!(incoming.ids, Some((TRACE, SPAN)));
        assert_eq!(incoming.sampled, Some(true));
        assert_eq!(incoming.tracestate.unwrap(), "congo=t61rcWkgMzE");
        let h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]);
        assert_eq!(extract(&h).sampled, Some(false));
    }

    #[test]
    fn bad_traceparents_are_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            let h: HeaderMap = [(TRACEPARENT, HeaderValue::from_static(bad))]
                .into_iter()
                .collect();
            assert_eq!(extract(&h), Incoming::default(), "{bad}");
        }
        // A later version may carry more fields.
        let later = headers(&[(
            "traceparent",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
        )]);
        assert_eq!(extract(&later).ids, Some((TRACE, SPAN)));
    }

    #[test]
    fn b3_single_and_multi_are_read() {
        let h = headers(&[(
            "b3",
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90",
        )]);
        assert_eq!(extract(&h).ids, Some((TRACE, SPAN)));
        assert_eq!(extract(&h).sampled, Some(true));
        assert_eq!(extract(&headers(&[("b3", "0")])).sampled, Some(false));
        let h = headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ]);
        let incoming = extract(&h);
        let mut short = [0; 16];
        short[8..].copy_from_slice(&TRACE[8..]);
        assert_eq!(incoming.ids, Some((short, SPAN)));
        assert_eq!(incoming.sampled, Some(false));
        assert_eq!(
            extract(&headers(&[("x-b3-flags", "1")])).sampled,
            Some(true)
        );
    }

    #[test]
    fn every_format_is_written_and_read_back() {
        let parent = [9; 8];
        for format in [Propagation::W3c, Propagation::B3, Propagation::B3Multi] {
            let mut h = HeaderMap::new();
            inject(&mut h, &[format], &TRACE, &SPAN, &parent, true, None);
            let incoming = extract(&h);
            assert_eq!(incoming.ids, Some((TRACE, SPAN)), "{format:?}");
            assert_eq!(incoming.sampled, Some(true), "{format:?}");
        }
        let mut h = HeaderMap::new();
        inject(
            &mut h,
            &[Propagation::W3c],
            &TRACE,
            &SPAN,
            &parent,
            false,
            None,
        );
        assert_eq!(
            h[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
    }
}

//! OTLP's `ExportTraceServiceRequest`, written straight from span records
//! into protobuf bytes: no intermediate `Span` or `KeyValue` structs, no
//! allocation per attribute. The field numbers are those of
//! `proto/opentelemetry/proto/{common,resource,trace}/v1/*.proto`; the
//! tests decode the bytes with the generated types.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, skip_field,
};

use super::{SpanAttributes, SpanRecord};

/// An already encoded message, which tonic's prost codec sends as it is.
#[derive(Debug, Default)]
pub(super) struct Encoded(pub(super) bytes::Bytes);

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

fn bytes(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

fn varint(out: &mut Vec<u8>, tag: u32, value: u64) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(value, out);
}

/// A length-delimited field whose body `write` appends to `out` in place:
/// two bytes are kept for the length (a span's is 128 to 16,383 bytes), and
/// the body moves only when its length needs another width.
fn delimited(out: &mut Vec<u8>, tag: u32, write: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, out);
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    write(out);
    let len = out.len() - at - 2;
    if encoded_len_varint(len as u64) == 2 {
        out[at] = (len as u8 & 0x7f) | 0x80;
        out[at + 1] = (len >> 7) as u8;
    } else {
        let mut prefix = Vec::with_capacity(10);
        encode_varint(len as u64, &mut prefix);
        out.splice(at..at + 2, prefix);
    }
}

/// The length of a length-delimited field of `len` bytes (tag < 16).
fn delimited_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// A span's attribute (field 9): `KeyValue { key = 1, value = 2 }`, its
/// `AnyValue` body already sized.
fn attribute(out: &mut Vec<u8>, key: &str, any_len: usize, write_any: impl FnOnce(&mut Vec<u8>)) {
    let kv_len = delimited_len(key.len()) + delimited_len(any_len);
    encode_key(9, WireType::LengthDelimited, out);
    encode_varint(kv_len as u64, out);
    bytes(out, 1, key.as_bytes());
    encode_key(2, WireType::LengthDelimited, out);
    encode_varint(any_len as u64, out);
    write_any(out);
}

/// `AnyValue { string_value = 1 }`.
fn string_attribute(out: &mut Vec<u8>, key: &str, value: &str) {
    utf8_attribute(out, key, value.as_bytes());
}

/// `AnyValue { string_value = 1 }` from bytes that are UTF-8.
fn utf8_attribute(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    attribute(out, key, delimited_len(value.len()), |out| {
        bytes(out, 1, value);
    });
}

/// `AnyValue { int_value = 3 }`.
fn int_attribute(out: &mut Vec<u8>, key: &str, value: i64) {
    attribute(out, key, 1 + encoded_len_varint(value as u64), |out| {
        varint(out, 3, value as u64);
    });
}

/// An address as `Display` writes it, IPv4 without the formatter (two or
/// three addresses a span, tens of thousands of spans a second).
fn push_ip(text: &mut String, ip: std::net::IpAddr) {
    use std::fmt::Write as _;
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                push_decimal(text, octet.into());
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(text, "{v6}");
        }
    }
}

fn push_decimal(text: &mut String, mut value: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        text.push(char::from(digit));
    }
}

/// One `Span` message's body.
fn span(out: &mut Vec<u8>, record: &SpanRecord, text: &mut String) {
    use std::fmt::Write as _;
    let server = record.kind == super::span::SpanKind::Server;
    let a: &SpanAttributes = &record.attributes;
    bytes(out, 1, &record.trace_id);
    bytes(out, 2, &record.span_id);
    if let Some(state) = record.tracestate.as_ref().filter(|s| !s.is_empty()) {
        bytes(out, 3, state.as_bytes());
    }
    if let Some(parent) = &record.parent {
        bytes(out, 4, parent);
    }
    text.clear();
    text.push_str(a.method.as_str());
    if let (Some(route), true) = (&a.route, server) {
        text.push(' ');
        text.push_str(route);
    }
    bytes(out, 5, text.as_bytes());
    varint(out, 6, record.kind as i32 as u64);
    encode_key(7, WireType::SixtyFourBit, out);
    out.put_u64_le(record.start_ns);
    encode_key(8, WireType::SixtyFourBit, out);
    out.put_u64_le(record.end_ns);

    string_attribute(out, "http.request.method", a.method.as_str());
    if let Some(place) = &a.place {
        utf8_attribute(out, "url.path", place.path());
    }
    let mut address = |out: &mut Vec<u8>, key: &str, ip: std::net::IpAddr| {
        text.clear();
        push_ip(text, ip);
        string_attribute(out, key, text);
    };
    if server {
        if let Some(host) = a.place.as_ref().map(|p| p.host()).filter(|h| !h.is_empty()) {
            utf8_attribute(out, "server.address", host);
        }
    } else if let Some(upstream) = a.upstream {
        address(out, "server.address", upstream.ip());
        int_attribute(out, "server.port", i64::from(upstream.port()));
    }
    if let Some(peer) = a.peer {
        address(out, "network.peer.address", peer.ip());
        if server {
            int_attribute(out, "network.peer.port", i64::from(peer.port()));
        }
    }
    if let Some(status) = a.status {
        int_attribute(out, "http.response.status_code", i64::from(status));
    }
    if record.resend_count > 0 {
        int_attribute(
            out,
            "http.request.resend_count",
            i64::from(record.resend_count),
        );
    }
    if let Some(error) = a.error_type {
        string_attribute(out, "error.type", error);
    }
    if let Some(listener) = &a.listener {
        string_attribute(out, "remora.listener", listener);
    }
    if let Some(route) = &a.route {
        string_attribute(out, "remora.route", route);
    }
    if let Some(cluster) = &a.cluster {
        string_attribute(out, "remora.cluster", cluster);
    }
    if let Some(upstream) = a.upstream {
        text.clear();
        match upstream {
            std::net::SocketAddr::V4(v4) => {
                push_ip(text, (*v4.ip()).into());
                text.push(':');
                push_decimal(text, v4.port().into());
            }
            std::net::SocketAddr::V6(_) => {
                let _ = write!(text, "{upstream}");
            }
        }
        string_attribute(out, "remora.upstream", text);
    }
    if let Some(identity) = &a.peer_identity {
        string_attribute(out, "remora.peer_identity", identity);
    }
    if a.error {
        // Status { code = 3: STATUS_CODE_ERROR (2) }
        bytes(out, 15, &[0x18, 0x02]);
    }
    encode_key(16, WireType::ThirtyTwoBit, out);
    out.put_u32_le(u32::from(record.sampled));
}

/// The whole request: one resource, one scope, these spans. The spans are
/// written once, into their place in the request: the fields that enclose
/// them are written last, into room kept before them.
pub(super) fn request(resource: &[u8], spans: &[SpanRecord]) -> bytes::Bytes {
    // ExportTraceServiceRequest { resource_spans = 1: ResourceSpans {
    //   resource = 1, scope_spans = 2: ScopeSpans { ... } } }: three keys,
    // three lengths (at most 5 bytes each) and the resource.
    let room = 3 * (1 + 5) + resource.len();
    let mut out = Vec::with_capacity(room + spans.len() * 512 + 64);
    out.resize(room, 0);
    let mut text = String::with_capacity(64);
    // InstrumentationScope { name = 1, version = 2 }
    delimited(&mut out, 1, |scope| {
        bytes(scope, 1, b"remora-proxy");
        bytes(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
    });
    for record in spans {
        delimited(&mut out, 2, |out| span(out, record, &mut text));
    }
    let scope_spans = out.len() - room;
    let resource_spans = delimited_len(resource.len()) + delimited_len(scope_spans);
    let mut head = Vec::with_capacity(room);
    encode_key(1, WireType::LengthDelimited, &mut head);
    encode_varint(resource_spans as u64, &mut head);
    bytes(&mut head, 1, resource);
    encode_key(2, WireType::LengthDelimited, &mut head);
    encode_varint(scope_spans as u64, &mut head);
    let start = room - head.len();
    out[start..room].copy_from_slice(&head);
    bytes::Bytes::from(out).slice(start..)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use prost::Message;
    use remora_xds_proto::opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest;
    use remora_xds_proto::opentelemetry::proto::common::v1::any_value::Value;

    use super::super::{PathHost, SpanAttributes, SpanRecord, span::SpanKind};

    fn record(path: &str, kind: SpanKind, upstream: Option<SocketAddr>) -> SpanRecord {
        SpanRecord {
            trace_id: [7; 16],
            span_id: [9; 8],
            parent: None,
            sampled: true,
            tracestate: None,
            kind,
            start_ns: 1,
            end_ns: 2,
            resend_count: 0,
            attributes: SpanAttributes {
                place: (!path.is_empty()).then(|| PathHost::new(path, "example.com:8080")),
                upstream,
                peer: upstream,
                ..SpanAttributes::default()
            },
        }
    }

    fn string(span: &remora_xds_proto::opentelemetry::proto::trace::v1::Span, key: &str) -> String {
        span.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {key}"))
    }

    #[test]
    fn spans_of_every_length_decode() {
        // A bare client span is under 128 bytes (a one-byte length), a
        // usual one two bytes, one with a 20 KB path three.
        let long = format!("/{}", "x".repeat(20_000));
        let upstream: SocketAddr = "10.1.200.7:9090".parse().unwrap();
        let spans = [
            record("", SpanKind::Client, None),
            record("/items/42", SpanKind::Server, Some(upstream)),
            record(&long, SpanKind::Server, None),
        ];
        let resource = remora_xds_proto::opentelemetry::proto::resource::v1::Resource {
            attributes: vec![super::super::string("service.name", "web")],
            ..Default::default()
        }
        .encode_to_vec();
        let encoded = super::request(&resource, &spans);
        let decoded = ExportTraceServiceRequest::decode(encoded).expect("a valid request");
        let resource_spans = &decoded.resource_spans[0];
        assert_eq!(
            resource_spans.resource.as_ref().unwrap().attributes[0].key,
            "service.name"
        );
        let scope = &resource_spans.scope_spans[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "remora-proxy");
        assert_eq!(scope.spans.len(), 3);
        assert!(
            scope.spans[0]
                .attributes
                .iter()
                .all(|a| a.key != "url.path")
        );
        assert_eq!(string(&scope.spans[1], "url.path"), "/items/42");
        assert_eq!(string(&scope.spans[1], "server.address"), "example.com");
        assert_eq!(
            string(&scope.spans[1], "network.peer.address"),
            "10.1.200.7"
        );
        assert_eq!(
            string(&scope.spans[1], "remora.upstream"),
            "10.1.200.7:9090"
        );
        assert_eq!(string(&scope.spans[2], "url.path"), long);
        assert_eq!(scope.spans[2].trace_id, vec![7; 16]);
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.12.1",
            "::1",
            "fe80::1:2",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut text = String::new();
            super::push_ip(&mut text, ip);
            assert_eq!(text, ip.to_string());
        }
    }

    #[test]
    fn a_place_is_kept_inline_or_on_the_heap() {
        for (path, authority, host) in [
            ("/a", "svc.ns:80", "svc.ns"),
            ("/a", "[::1]:8080", "[::1]"),
            ("/a", "[::1]", "[::1]"),
            ("/", "", ""),
        ] {
            let place = PathHost::new(path, authority);
            assert_eq!(place.path(), path.as_bytes());
            assert_eq!(place.host(), host.as_bytes());
        }
        let long = "/p".repeat(100);
        let place = PathHost::new(&long, "h:1");
        assert_eq!(place.path(), long.as_bytes());
        assert_eq!(place.host(), b"h");
    }
}

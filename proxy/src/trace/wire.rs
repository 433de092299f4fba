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
pub(super) struct Encoded(pub(super) Vec<u8>);

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

/// A length-delimited field whose body `write` produces.
fn message(out: &mut Vec<u8>, scratch: &mut Vec<u8>, tag: u32, write: impl FnOnce(&mut Vec<u8>)) {
    scratch.clear();
    write(scratch);
    bytes(out, tag, scratch);
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
    attribute(out, key, delimited_len(value.len()), |out| {
        bytes(out, 1, value.as_bytes());
    });
}

/// `AnyValue { int_value = 3 }`.
fn int_attribute(out: &mut Vec<u8>, key: &str, value: i64) {
    attribute(out, key, 1 + encoded_len_varint(value as u64), |out| {
        varint(out, 3, value as u64);
    });
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
    if let Some(path) = &a.path {
        string_attribute(out, "url.path", path);
    }
    let mut address = |out: &mut Vec<u8>, key: &str, ip: std::net::IpAddr| {
        text.clear();
        let _ = write!(text, "{ip}");
        string_attribute(out, key, text);
    };
    if server {
        if let Some(host) = &a.host {
            string_attribute(out, "server.address", host);
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
        let _ = write!(text, "{upstream}");
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

/// The whole request: one resource, one scope, these spans.
pub(super) fn request(resource: &[u8], spans: &[SpanRecord]) -> Vec<u8> {
    let mut scope_spans = Vec::with_capacity(spans.len() * 400 + 64);
    let mut scratch = Vec::with_capacity(512);
    let mut text = String::with_capacity(64);
    // InstrumentationScope { name = 1, version = 2 }
    message(&mut scope_spans, &mut scratch, 1, |scope| {
        bytes(scope, 1, b"remora-proxy");
        bytes(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
    });
    for record in spans {
        scratch.clear();
        span(&mut scratch, record, &mut text);
        bytes(&mut scope_spans, 2, &scratch);
    }
    // ResourceSpans { resource = 1, scope_spans = 2 }
    let mut resource_spans = Vec::with_capacity(scope_spans.len() + resource.len() + 16);
    bytes(&mut resource_spans, 1, resource);
    bytes(&mut resource_spans, 2, &scope_spans);
    // ExportTraceServiceRequest { resource_spans = 1 }
    let mut out = Vec::with_capacity(resource_spans.len() + 8);
    bytes(&mut out, 1, &resource_spans);
    out
}

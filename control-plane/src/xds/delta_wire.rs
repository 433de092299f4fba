//! A delta response as a stream holds it: the resources are the
//! translation's own `Arc`s, written straight into the gRPC frame.
//!
//! A thousand streams sent the same changed endpoints used to copy each
//! resource's name, version and bytes into a `DeltaDiscoveryResponse` of
//! their own, which prost then encoded and dropped. [`DeltaResponse`]
//! holds the `Arc`s and [`DeltaCodec`] writes the fields from them: the
//! bytes on the wire are the ones prost writes for the same message (a
//! test compares them), with no copy of a resource before the frame.

use std::sync::Arc;

use bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use remora_xds_proto::discovery::{self, DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};

use crate::translate::Resource;

/// A `DeltaDiscoveryResponse` whose resources are shared, not copied.
#[derive(Debug, Clone)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub resources: Vec<Arc<Resource>>,
    pub type_url: &'static str,
    pub removed_resources: Vec<String>,
    pub nonce: String,
    /// `control_plane.identifier`.
    pub control_plane: Arc<str>,
}

impl DeltaResponse {
    /// The same response as prost's message (the generated server's
    /// stream, and the tests).
    pub fn into_message(self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info,
            resources: self
                .resources
                .iter()
                .map(|r| discovery::Resource {
                    name: r.name.to_string(),
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.type_url.to_string(),
            removed_resources: self.removed_resources,
            nonce: self.nonce,
            control_plane: Some(remora_xds_proto::core::ControlPlane {
                identifier: self.control_plane.to_string(),
            }),
            ..Default::default()
        }
    }

    /// Writes the message as prost does: fields in the order of their
    /// numbers, each empty string left out (proto3).
    pub fn encode(&self, buf: &mut impl BufMut) {
        string(1, &self.system_version_info, buf);
        for resource in &self.resources {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(resource_len(resource) as u64, buf);
            // envoy.service.discovery.v3.Resource: version = 1,
            // resource (Any) = 2, name = 3.
            string(1, &resource.version, buf);
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(any_len(resource) as u64, buf);
            string(1, &resource.any.type_url, buf);
            bytes(2, &resource.any.value, buf);
            string(3, &resource.name, buf);
        }
        string(4, self.type_url, buf);
        string(5, &self.nonce, buf);
        for name in &self.removed_resources {
            // Repeated strings are written even when empty.
            encode_key(6, WireType::LengthDelimited, buf);
            encode_varint(name.len() as u64, buf);
            buf.put_slice(name.as_bytes());
        }
        // control_plane (7): a ControlPlane { identifier = 1 }.
        encode_key(7, WireType::LengthDelimited, buf);
        encode_varint(string_len(1, &self.control_plane) as u64, buf);
        string(1, &self.control_plane, buf);
    }

    pub fn encoded_len(&self) -> usize {
        let resources: usize = self
            .resources
            .iter()
            .map(|r| nested_len(2, resource_len(r)))
            .sum();
        let removed: usize = self
            .removed_resources
            .iter()
            .map(|name| nested_len(6, name.len()))
            .sum();
        string_len(1, &self.system_version_info)
            + resources
            + string_len(4, self.type_url)
            + removed
            + string_len(5, &self.nonce)
            + nested_len(7, string_len(1, &self.control_plane))
    }
}

/// A proto3 `string` or `bytes` field: left out when empty.
fn bytes(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    if value.is_empty() {
        return;
    }
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

fn string(tag: u32, value: &str, buf: &mut impl BufMut) {
    bytes(tag, value.as_bytes(), buf);
}

fn bytes_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        nested_len(tag, value.len())
    }
}

fn string_len(tag: u32, value: &str) -> usize {
    bytes_len(tag, value.as_bytes())
}

/// A length-delimited field of `len` bytes, with its key and length.
fn nested_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn any_len(resource: &Resource) -> usize {
    string_len(1, &resource.any.type_url) + bytes_len(2, &resource.any.value)
}

fn resource_len(resource: &Resource) -> usize {
    string_len(3, &resource.name)
        + string_len(1, &resource.version)
        + nested_len(2, any_len(resource))
}

/// Encodes [`DeltaResponse`]s and decodes requests with prost.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeltaCodec;

pub struct DeltaEncoder;

impl Encoder for DeltaEncoder {
    type Item = DeltaResponse;
    type Error = Status;

    fn encode(&mut self, item: DeltaResponse, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf);
        Ok(())
    }
}

impl Codec for DeltaCodec {
    type Encode = DeltaResponse;
    type Decode = DeltaDiscoveryRequest;
    type Encoder = DeltaEncoder;
    type Decoder = tonic_prost::ProstDecoder<DeltaDiscoveryRequest>;

    fn encoder(&mut self) -> DeltaEncoder {
        DeltaEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use remora_xds_proto::endpoint::ClusterLoadAssignment;

    fn resource(name: &str, endpoints: usize) -> Arc<Resource> {
        let assignment = ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![Default::default(); endpoints],
            ..Default::default()
        };
        Resource::new(name.to_string(), &assignment)
    }

    #[test]
    fn the_bytes_are_those_prost_writes_for_the_same_message() {
        let big = "x".repeat(300);
        let cases = [
            DeltaResponse {
                system_version_info: "17".into(),
                resources: vec![resource("a", 1), resource(&big, 2000), resource("", 0)],
                type_url: remora_xds_proto::type_url::ENDPOINT,
                removed_resources: vec!["gone".into(), String::new(), big.clone()],
                nonce: "3".into(),
                control_plane: "remora-control-plane/test".into(),
            },
            DeltaResponse {
                system_version_info: String::new(),
                resources: Vec::new(),
                type_url: remora_xds_proto::type_url::CLUSTER,
                removed_resources: Vec::new(),
                nonce: String::new(),
                control_plane: "".into(),
            },
        ];
        for response in cases {
            let mut ours = Vec::new();
            response.encode(&mut ours);
            assert_eq!(ours.len(), response.encoded_len());
            let message = response.clone().into_message();
            assert_eq!(ours, message.encode_to_vec());
            let decoded = DeltaDiscoveryResponse::decode(ours.as_slice()).expect("decodes");
            assert_eq!(decoded, message);
        }
    }
}

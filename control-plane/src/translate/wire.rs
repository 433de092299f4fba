//! Small constructors for protobuf well-known types and Envoy addresses.

use std::net::SocketAddr;
use std::time::Duration;

use remora_xds_proto::core;
use remora_xds_proto::protobuf;

pub fn duration(d: Duration) -> protobuf::Duration {
    protobuf::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn u32v(value: u32) -> protobuf::UInt32Value {
    protobuf::UInt32Value { value }
}

pub fn u64v(value: u64) -> protobuf::UInt64Value {
    protobuf::UInt64Value { value }
}

pub fn address(addr: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// Resources of other types come over the same ADS stream.
pub fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

pub fn percent(value: f64) -> remora_xds_proto::types::Percent {
    remora_xds_proto::types::Percent { value }
}

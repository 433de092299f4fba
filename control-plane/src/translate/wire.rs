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

/// SDS secret names, as Istio's: the workload certificate and the roots.
/// remora-proxy presents its own identity whatever the names say.
pub(crate) const WORKLOAD_SECRET: &str = "default";
pub(crate) const ROOT_SECRET: &str = "ROOTCA";

fn sds(name: &str) -> remora_xds_proto::tls::SdsSecretConfig {
    remora_xds_proto::tls::SdsSecretConfig {
        name: name.into(),
        sds_config: Some(ads()),
    }
}

fn tls_socket(any: remora_xds_proto::protobuf::Any) -> core::TransportSocket {
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any)),
    }
}

/// A mesh listener's mutual TLS: the workload certificate, client
/// certificates required and checked against the mesh's roots.
pub fn downstream_mtls() -> core::TransportSocket {
    use remora_xds_proto::tls::{CommonTlsContext, DownstreamTlsContext, common_tls_context};
    tls_socket(remora_xds_proto::pack(&DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                    ROOT_SECRET,
                )),
            ),
            ..Default::default()
        }),
        require_client_certificate: Some(remora_xds_proto::protobuf::BoolValue { value: true }),
        ..Default::default()
    }))
}

/// A mesh cluster's mutual TLS: the workload certificate, and the server
/// must present `identity` (a URI SAN) under the mesh's roots.
pub fn upstream_mtls(identity: &str) -> core::TransportSocket {
    use remora_xds_proto::matcher::{StringMatcher, string_matcher::MatchPattern};
    use remora_xds_proto::tls::{
        CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, UpstreamTlsContext,
        common_tls_context, subject_alt_name_matcher::SanType,
    };
    let sans = CertificateValidationContext {
        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(identity.into())),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    tls_socket(remora_xds_proto::pack(&UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(sans),
                        validation_context_sds_secret_config: Some(sds(ROOT_SECRET)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

//! The wire types of Remora's control plane and xDS client.
//!
//! The Envoy v3 xDS API comes from the `envoy-types` crate and is re-exported
//! here under short names, so the rest of Remora names one module for each
//! resource kind and never depends on `envoy-types` directly. Remora's own
//! protos (the certificate service) are compiled from `proto/` at build time
//! with protox, so no `protoc` is needed.

pub use envoy_types::pb::google::protobuf;

/// `google.rpc.Status`, the `error_detail` of a NACK.
pub use envoy_types::pb::google::rpc;

use envoy_types::pb::envoy as pb;

/// Discovery requests and responses, state-of-the-world and delta, and the
/// `AggregatedDiscoveryService` client and server.
pub use pb::service::discovery::v3 as discovery;

/// `Node`, `Address`, `ConfigSource`, health checks, HTTP/2 options.
pub use pb::config::core::v3 as core;

/// `Cluster` (CDS).
pub use pb::config::cluster::v3 as cluster;

/// `ClusterLoadAssignment` (EDS).
pub use pb::config::endpoint::v3 as endpoint;

/// `Listener` (LDS).
pub use pb::config::listener::v3 as listener;

/// `RouteConfiguration` (RDS).
pub use pb::config::route::v3 as route;

/// `FractionalPercent`, `TokenBucket`, `Percent`.
pub use pb::r#type::v3 as types;

/// String and regex matchers.
pub use pb::r#type::matcher::v3 as matcher;

/// TLS contexts (transport sockets).
pub use pb::extensions::transport_sockets::tls::v3 as tls;

/// RBAC policies (the `rbac` HTTP and network filters' rules).
pub use pb::config::rbac::v3 as rbac;

/// `envoy.config.trace.v3`: tracers (the OpenTelemetry one) for the HTTP
/// connection manager's `tracing`.
pub use pb::config::trace::v3 as trace_config;

/// `HttpProtocolOptions` for upstream clusters (HTTP/2, idle timeouts).
pub use pb::extensions::upstreams::http::v3 as upstream_http;

/// The filters Remora writes into listeners.
pub mod filters {
    use super::pb::extensions::filters;

    pub use filters::http::adaptive_concurrency::v3 as adaptive_concurrency;
    pub use filters::http::local_ratelimit::v3 as local_ratelimit;
    pub use filters::http::rbac::v3 as http_rbac;
    pub use filters::http::router::v3 as router;
    pub use filters::listener::tls_inspector::v3 as tls_inspector;
    pub use filters::network::http_connection_manager::v3 as http_connection_manager;
    pub use filters::network::rbac::v3 as network_rbac;
    pub use filters::network::tcp_proxy::v3 as tcp_proxy;
}

/// Type URLs of the resources served over ADS.
pub mod type_url {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// SDS: certificates and trust bundles, served by the control plane to
    /// Envoy nodes (remora-proxy gets its certificate from the CA itself).
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// In the order a client should apply them (Envoy's: CDS, EDS, LDS, RDS).
    pub const ALL: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

    /// The position of a type in [`ALL`], which both sides use to index
    /// per-type state; `None` for a type neither serves.
    pub fn index(type_url: &str) -> Option<usize> {
        ALL.iter().position(|t| *t == type_url)
    }

    /// What the control plane serves: [`ALL`], then [`SECRET`].
    pub const SERVED: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];

    /// The position of a type in [`SERVED`].
    pub fn served_index(type_url: &str) -> Option<usize> {
        SERVED.iter().position(|t| *t == type_url)
    }

    /// Short names for logs and metrics labels.
    pub fn short(type_url: &str) -> &'static str {
        match type_url {
            LISTENER => "listener",
            ROUTE => "route",
            CLUSTER => "cluster",
            ENDPOINT => "endpoint",
            SECRET => "secret",
            _ => "unknown",
        }
    }
}

/// Packs a message into a `google.protobuf.Any` with its type URL.
pub fn pack<T: prost::Name + prost::Message>(message: &T) -> protobuf::Any {
    protobuf::Any {
        type_url: T::type_url(),
        value: message.encode_to_vec(),
    }
}

/// Unpacks an `Any`, checking its type URL first.
pub fn unpack<T: prost::Name + prost::Message + Default>(
    any: &protobuf::Any,
) -> Result<T, UnpackError> {
    if any.type_url != T::type_url() {
        return Err(UnpackError::WrongType {
            expected: T::type_url(),
            found: any.type_url.clone(),
        });
    }
    T::decode(any.value.as_slice()).map_err(|e| UnpackError::Decode {
        type_url: any.type_url.clone(),
        reason: e.to_string(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnpackError {
    WrongType { expected: String, found: String },
    Decode { type_url: String, reason: String },
}

impl std::fmt::Display for UnpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnpackError::WrongType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            UnpackError::Decode { type_url, reason } => {
                write!(f, "cannot decode {type_url}: {reason}")
            }
        }
    }
}

impl std::error::Error for UnpackError {}

/// Remora's certificate service: proxies send a CSR, the control plane's CA signs it.
pub mod ca {
    tonic::include_proto!("remora.ca.v1");
}

/// OTLP traces (OpenTelemetry's protos, `proto/opentelemetry`): what the
/// proxy's span exporter sends, and the collector's `TraceService`.
pub mod opentelemetry {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.common.v1");
            }
        }
        pub mod resource {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.resource.v1");
            }
        }
        pub mod trace {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.trace.v1");
            }
        }
        pub mod collector {
            pub mod trace {
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_match_the_generated_types() {
        use prost::Name;
        assert_eq!(type_url::LISTENER, listener::Listener::type_url());
        assert_eq!(type_url::ROUTE, route::RouteConfiguration::type_url());
        assert_eq!(type_url::CLUSTER, cluster::Cluster::type_url());
        assert_eq!(
            type_url::ENDPOINT,
            endpoint::ClusterLoadAssignment::type_url()
        );
        assert_eq!(type_url::SECRET, tls::Secret::type_url());
    }

    #[test]
    fn pack_and_unpack_round_trip_and_a_wrong_type_is_named() {
        let cluster = cluster::Cluster {
            name: "web".into(),
            ..Default::default()
        };
        let any = pack(&cluster);
        assert_eq!(unpack::<cluster::Cluster>(&any).unwrap(), cluster);
        let err = unpack::<listener::Listener>(&any).unwrap_err();
        assert!(
            err.to_string().contains("envoy.config.cluster.v3.Cluster"),
            "{err}"
        );
        let garbage = protobuf::Any {
            type_url: type_url::CLUSTER.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(matches!(
            unpack::<cluster::Cluster>(&garbage),
            Err(UnpackError::Decode { .. })
        ));
    }

    #[test]
    fn the_certificate_service_is_generated() {
        let request = ca::SignRequest {
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            validity_seconds: 3600,
        };
        let bytes = prost::Message::encode_to_vec(&request);
        let back: ca::SignRequest = prost::Message::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, request);
        // The server trait exists (a service can be implemented against it).
        fn _server<T: ca::certificate_service_server::CertificateService>(t: T) {
            let _ = ca::certificate_service_server::CertificateServiceServer::new(t);
        }
    }
}

//! TLS transport sockets → mesh mTLS. remora-proxy presents its own
//! identity (`identity:`) whatever secret names the resources give (SDS
//! `default`, `ROOTCA`, …): a listener chain's `DownstreamTlsContext` that
//! requires client certificates is `mtls: strict`; a cluster's
//! `UpstreamTlsContext` whose validation context lists URI SANs (exact) is
//! `mtls: {identities}`. Inline certificates and other shapes are NACKed
//! with the field named.

use remora_xds_proto::core::{TransportSocket, transport_socket};
use remora_xds_proto::tls::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext,
    common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType,
};

use super::{Rejection, Result, unpack_typed};
use crate::config::{ClusterMtlsConfig, MtlsMode};

const DOWNSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

fn typed<'a>(
    socket: &'a TransportSocket,
    want: &str,
    at: &str,
) -> Result<&'a remora_xds_proto::protobuf::Any> {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return Err(Rejection::new(format!("{at}.typed_config"), "required"));
    };
    if any.type_url != want {
        return Err(Rejection::unsupported(
            format!("{at}.typed_config"),
            &format!("the transport socket {}", any.type_url),
        ));
    }
    Ok(any)
}

/// No inline certificates: the proxy presents its mesh identity.
fn common(context: Option<&CommonTlsContext>, at: &str) -> Result<()> {
    if context.is_some_and(|c| !c.tls_certificates.is_empty()) {
        return Err(Rejection::unsupported(
            format!("{at}.common_tls_context.tls_certificates"),
            "inline certificates (remora-proxy presents its own identity from identity:)",
        ));
    }
    Ok(())
}

/// A listener chain's TLS: mutual TLS with the proxy's identity.
pub(super) fn downstream(socket: &TransportSocket, at: &str) -> Result<MtlsMode> {
    let any = typed(socket, DOWNSTREAM, at)?;
    let context: DownstreamTlsContext = unpack_typed(any, &format!("{at}.typed_config"))?;
    let at = format!("{at}.typed_config");
    common(context.common_tls_context.as_ref(), &at)?;
    if !context.require_client_certificate.is_some_and(|v| v.value) {
        return Err(Rejection::unsupported(
            format!("{at}.require_client_certificate"),
            "TLS without client certificates (mesh listeners take mutual TLS)",
        ));
    }
    Ok(MtlsMode::Strict)
}

/// A cluster's TLS: mutual TLS, accepting the URI SANs the validation
/// context names.
pub(super) fn upstream(socket: &TransportSocket, at: &str) -> Result<ClusterMtlsConfig> {
    let any = typed(socket, UPSTREAM, at)?;
    let context: UpstreamTlsContext = unpack_typed(any, &format!("{at}.typed_config"))?;
    common(
        context.common_tls_context.as_ref(),
        &format!("{at}.typed_config"),
    )?;
    let at = format!("{at}.typed_config.common_tls_context");
    let validation: Option<&CertificateValidationContext> = match context
        .common_tls_context
        .as_ref()
        .and_then(|c| c.validation_context_type.as_ref())
    {
        Some(ValidationContextType::ValidationContext(v)) => Some(v),
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            c.default_validation_context.as_ref()
        }
        _ => None,
    };
    let mut identities = Vec::new();
    for (i, san) in validation
        .map(|v| v.match_typed_subject_alt_names.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let san_at = format!("{at}.validation_context.match_typed_subject_alt_names[{i}]");
        if san.san_type != SanType::Uri as i32 {
            return Err(Rejection::unsupported(
                format!("{san_at}.san_type"),
                "SAN types other than URI (mesh peers are SPIFFE IDs)",
            ));
        }
        use remora_xds_proto::matcher::string_matcher::MatchPattern;
        match san.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
            Some(MatchPattern::Exact(uri)) => identities.push(uri.clone()),
            _ => {
                return Err(Rejection::unsupported(
                    format!("{san_at}.matcher"),
                    "SAN matchers other than exact",
                ));
            }
        }
    }
    if identities.is_empty() {
        return Err(Rejection::new(
            format!("{at}.validation_context.match_typed_subject_alt_names"),
            "name the SPIFFE IDs the endpoints may present (URI, exact)",
        ));
    }
    Ok(ClusterMtlsConfig { identities })
}

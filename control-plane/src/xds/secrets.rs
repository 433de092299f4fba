//! SDS for Envoy nodes: the workload certificate (`default`) and the mesh's
//! roots (`ROOTCA`), the names the mesh's TLS contexts point at.
//!
//! remora-proxy makes its own key and asks the CA (`CertificateService`);
//! Envoy cannot, so the control plane does it for the node: a P-256 key
//! made per stream (kept in memory, never written), signed for the identity
//! the node's bootstrap token grants, renewed at half its lifetime. The
//! token travels in the node's metadata (`REMORA_TOKEN`) and must have been
//! issued for that node id; a node without one is served no secret (its
//! TLS listeners and clusters stay warming), and the refusal is logged.

use std::time::{Duration, Instant};

use remora_api::identity::SpiffeId;
use remora_xds_proto::core::{self, DataSource, data_source::Specifier};
use remora_xds_proto::tls::{self, CertificateValidationContext, Secret, TlsCertificate};

use crate::ca::Ca;
use crate::translate::{Resource, wire};

/// The node metadata field carrying the bootstrap token.
pub const TOKEN_FIELD: &str = "REMORA_TOKEN";

/// The index of secrets in `type_url::SERVED`.
pub const SECRET_INDEX: usize = 4;

/// The identity a node's metadata token grants, checked against the CA and
/// the node id; `None` when the node carries no token.
pub fn entitlement(
    ca: &Ca,
    node_id: &str,
    node: Option<&core::Node>,
) -> Option<Result<SpiffeId, String>> {
    use remora_xds_proto::protobuf::value::Kind;
    let token = node?
        .metadata
        .as_ref()?
        .fields
        .get(TOKEN_FIELD)
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })?;
    Some(match ca.verify_token(&token) {
        Err(e) => Err(format!("node metadata {TOKEN_FIELD}: {e}")),
        Ok((claims, _)) if claims.node != node_id => Err(format!(
            "node metadata {TOKEN_FIELD} was issued for node {:?}, not {node_id:?}",
            claims.node
        )),
        Ok((_, identity)) => Ok(identity),
    })
}

/// A node's secrets and when to renew them.
pub struct NodeSecrets {
    pub identity: SpiffeId,
    pub resources: crate::translate::ByName,
    pub renew_at: Instant,
}

/// A fresh key and certificate for `identity`, and the roots.
pub fn issue(ca: &Ca, identity: &SpiffeId, lifetime: Duration) -> Result<NodeSecrets, String> {
    let (key, csr) = remora_api::identity::key_and_csr(Some(identity))?;
    let signed = ca
        .sign(&csr, identity, lifetime)
        .map_err(|e| e.to_string())?;
    let inline = |text: String| DataSource {
        specifier: Some(Specifier::InlineString(text)),
        ..Default::default()
    };
    let workload = Secret {
        name: wire::WORKLOAD_SECRET.into(),
        r#type: Some(tls::secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(signed.chain.concat())),
            private_key: Some(inline(key.serialize_pem())),
            ..Default::default()
        })),
    };
    let roots = Secret {
        name: wire::ROOT_SECRET.into(),
        r#type: Some(tls::secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline(signed.bundle)),
                ..Default::default()
            },
        )),
    };
    let lived = signed
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    Ok(NodeSecrets {
        identity: identity.clone(),
        resources: [
            Resource::new(workload.name.clone(), &workload),
            Resource::new(roots.name.clone(), &roots),
        ]
        .into_iter()
        .map(|resource| (resource.name.clone(), resource))
        .collect(),
        renew_at: Instant::now() + lived / 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_xds_proto::protobuf::{Struct, Value, value::Kind};
    use x509_parser::prelude::{GeneralName, parse_x509_certificate};

    fn node(id: &str, token: Option<&str>) -> core::Node {
        core::Node {
            id: id.into(),
            metadata: token.map(|t| Struct {
                fields: [(
                    TOKEN_FIELD.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(t.into())),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_token_issued_for_the_node_entitles_it_to_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(&dir.path().join("ca"), "example.org").unwrap();
        let other = Ca::load_or_create(&dir.path().join("other"), "example.org").unwrap();
        let id = SpiffeId::new("example.org", "shop", "envoy-sa").unwrap();
        let token = ca.issue_token("envoy-1", &id, Duration::from_secs(60));
        assert_eq!(entitlement(&ca, "envoy-1", None), None);
        assert_eq!(
            entitlement(&ca, "envoy-1", Some(&node("envoy-1", None))),
            None
        );
        assert_eq!(
            entitlement(&ca, "envoy-1", Some(&node("envoy-1", Some(&token)))),
            Some(Ok(id.clone()))
        );
        let stolen = entitlement(&ca, "envoy-2", Some(&node("envoy-2", Some(&token))));
        assert!(
            matches!(&stolen, Some(Err(e)) if e.contains("issued for node \"envoy-1\"")),
            "{stolen:?}"
        );
        let foreign = other.issue_token("envoy-1", &id, Duration::from_secs(60));
        let foreign = entitlement(&ca, "envoy-1", Some(&node("envoy-1", Some(&foreign))));
        assert!(
            matches!(&foreign, Some(Err(e)) if e.contains("REMORA_TOKEN") && e.contains("not issued by this CA")),
            "{foreign:?}"
        );
    }

    #[test]
    fn a_node_gets_a_fresh_key_and_a_leaf_for_its_identity_and_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(&dir.path().join("ca"), "example.org").unwrap();
        let id = SpiffeId::new("example.org", "shop", "envoy-sa").unwrap();
        let started = Instant::now();
        let issued = issue(&ca, &id, Duration::from_secs(600)).unwrap();
        assert!(issued.renew_at > started + Duration::from_secs(290));
        assert!(issued.renew_at < started + Duration::from_secs(310));
        let secret = |name: &str| -> Secret {
            remora_xds_proto::unpack(&issued.resources[name].any).unwrap()
        };
        let Some(tls::secret::Type::TlsCertificate(cert)) = secret("default").r#type else {
            panic!("default is not a certificate");
        };
        let text = |d: Option<DataSource>| match d.and_then(|d| d.specifier) {
            Some(Specifier::InlineString(s)) => s,
            other => panic!("not inline: {other:?}"),
        };
        let chain = text(cert.certificate_chain);
        assert!(text(cert.private_key).contains("BEGIN PRIVATE KEY"));
        let (_, pem) = x509_parser::pem::parse_x509_pem(chain.as_bytes()).unwrap();
        let (_, leaf) = parse_x509_certificate(&pem.contents).unwrap();
        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => u.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(sans, vec![id.uri()]);
        let Some(tls::secret::Type::ValidationContext(roots)) = secret("ROOTCA").r#type else {
            panic!("ROOTCA is not a validation context");
        };
        assert_eq!(text(roots.trusted_ca), ca.bundle());
        // Another issue: another key.
        let again = issue(&ca, &id, Duration::from_secs(600)).unwrap();
        assert_ne!(again.resources["default"], issued.resources["default"]);
    }
}

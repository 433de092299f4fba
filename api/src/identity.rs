//! SPIFFE IDs as the mesh uses them:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// The trust domain when none is given (Kubernetes' cluster domain).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A workload identity: a service account in a namespace, in a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    /// Checks each part: a trust domain is lowercase letters, digits, `.`,
    /// `-` and `_` (SPIFFE); namespaces and service accounts are Kubernetes
    /// names (lowercase letters, digits, `-`, `.`; at most 253).
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, String> {
        check_trust_domain(trust_domain)?;
        check_name("namespace", namespace)?;
        check_name("service account", service_account)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// The URI, as it goes in a certificate's SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = String;

    fn from_str(text: &str) -> Result<SpiffeId, String> {
        let rest = text
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("{text:?} is not a SPIFFE ID (spiffe://DOMAIN/ns/NS/sa/SA)"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [domain, "ns", namespace, "sa", account] => SpiffeId::new(domain, namespace, account),
            _ => Err(format!(
                "{text:?} is not a workload identity (spiffe://DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT)"
            )),
        }
    }
}

/// Checks a trust domain as SPIFFE allows it: lowercase letters, digits,
/// `.`, `-` and `_`, at most 255 bytes.
pub fn check_trust_domain(domain: &str) -> Result<(), String> {
    let valid = !domain.is_empty()
        && domain.len() <= 255
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "trust domain {domain:?}: lowercase letters, digits, '.', '-' and '_' only"
        ))
    }
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?}: a Kubernetes name (lowercase letters, digits, '-', '.')"
        ))
    }
}

#[cfg(feature = "csr")]
/// A new P-256 key and a CSR (PEM) for `id` alone (a URI SAN); with no
/// `id`, a CSR that names nobody, which the CA signs for the identity the
/// caller's token grants (a Kubernetes service-account token: the caller
/// cannot know its SPIFFE ID, whose trust domain is the control plane's).
pub fn key_and_csr(id: Option<&SpiffeId>) -> Result<(rcgen::KeyPair, String), String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate a key: {e}"))?;
    let mut params = rcgen::CertificateParams::default();
    if let Some(id) = id {
        params.subject_alt_names = vec![rcgen::SanType::URI(
            id.uri().try_into().map_err(|e| format!("{e}"))?,
        )];
    }
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| format!("cannot make the CSR: {e}"))?;
    Ok((key, csr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_bad_ones_say_why() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/reviews".parse().unwrap();
        assert_eq!(id.namespace, "shop");
        assert_eq!(id.service_account, "reviews");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/reviews");
        for (bad, why) in [
            ("https://cluster.local/ns/a/sa/b", "is not a SPIFFE ID"),
            ("spiffe://cluster.local/a/b", "is not a workload identity"),
            ("spiffe://Cluster.local/ns/a/sa/b", "trust domain"),
            ("spiffe://cluster.local/ns/A/sa/b", "namespace"),
            ("spiffe://cluster.local/ns/a/sa/-b", "service account"),
            (
                "spiffe://cluster.local/ns/a/sa/b/c",
                "is not a workload identity",
            ),
        ] {
            let error = bad.parse::<SpiffeId>().unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}

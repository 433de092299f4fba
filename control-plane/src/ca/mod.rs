//! The mesh's certificate authority: it signs each proxy's CSR for the
//! SPIFFE identity the proxy's bootstrap token grants ([`token`]), and
//! returns a short-lived leaf (URI SAN only) with the trust bundle.
//!
//! Its key is a root generated at first start and kept in `--ca-dir`
//! (`ca.pem`, `ca.key`, mode 0600), or the operator's root or intermediate
//! (`--ca-cert`, a PEM chain from the signing certificate up to its root,
//! and `--ca-key`). Certificates are built and parsed with rcgen and
//! x509-parser; nothing here writes ASN.1 by hand.

pub mod kubernetes;
pub mod service;
pub mod token;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use remora_api::identity::SpiffeId;
use time::OffsetDateTime;

/// A leaf's lifetime when the proxy asks for none.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime a proxy may ask for.
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest (a test's fast rotation).
pub const MIN_LIFETIME: Duration = Duration::from_secs(2);
/// A leaf is valid from a little before it was signed: clocks drift.
const BACKDATE: Duration = Duration::from_secs(60);
/// The largest CSR accepted.
const MAX_CSR_BYTES: usize = 16 * 1024;

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate and any intermediates above it, PEM, leaf
    /// side first (empty when the signer is the root itself).
    intermediates: Vec<String>,
    /// The root, PEM.
    bundle: String,
    /// The HMAC key of bootstrap tokens, derived from the CA key.
    token_key: aws_lc_rs::hmac::Key,
    /// Where the signer's key came from, for messages.
    pub source: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A signed leaf.
#[derive(Debug)]
pub struct Signed {
    /// Leaf first, then intermediates.
    pub chain: Vec<String>,
    pub bundle: String,
    pub not_after: SystemTime,
}

/// Why a CSR is refused; each says what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("the CSR is {0} bytes; at most {MAX_CSR_BYTES}")]
    TooLarge(usize),
    #[error("the CSR cannot be read: {0}")]
    Malformed(String),
    #[error("the CSR asks for {asked}, but the token grants {granted}")]
    WrongIdentity { asked: String, granted: String },
    #[error("the CSR must name one identity (a URI SAN) or none, it names {0}")]
    Names(usize),
    #[error("cannot sign: {0}")]
    Internal(String),
}

impl Ca {
    /// The root in `dir`, generated (and written) when the directory has none.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> anyhow::Result<Ca> {
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert.exists() || key.exists() {
            return Ca::from_files(&cert, &key);
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("--ca-dir {}: {e}", dir.display()))?;
        let (root, root_key) = generate_root(trust_domain)?;
        write_private(&key, root_key.as_bytes())?;
        std::fs::write(&cert, root)?;
        tracing::info!(dir = %dir.display(), "generated the mesh's root CA");
        Ca::from_files(&cert, &key)
    }

    /// The operator's signing certificate (with its chain up to the root
    /// after it in the same file) and key.
    pub fn from_files(cert: &Path, key: &Path) -> anyhow::Result<Ca> {
        let read = |path: &Path, flag: &str| {
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))
        };
        let cert_text = read(cert, "--ca-cert")?;
        let key_text = read(key, "--ca-key")?;
        Ca::from_pem(
            &cert_text,
            &key_text,
            &format!("--ca-cert {}", cert.display()),
            &format!("--ca-key {}", key.display()),
        )
    }

    /// A signing certificate (its chain up to the root after it) and key,
    /// PEM; `cert` and `key` name where they came from in messages.
    pub fn from_pem(cert_text: &str, key_text: &str, cert: &str, key: &str) -> anyhow::Result<Ca> {
        let key_pair = KeyPair::from_pem(key_text)
            .map_err(|e| anyhow::anyhow!("{key}: not a private key: {e}"))?;
        let chain: Vec<String> = pem_blocks(cert_text, "CERTIFICATE");
        let Some(signer) = chain.first() else {
            anyhow::bail!("{cert}: no certificate in the file");
        };
        let mut parsed = Vec::new();
        for block in &chain {
            let der = pem_der(block).map_err(|e| anyhow::anyhow!("{cert}: {e}"))?;
            parsed.push(der);
        }
        let info = |der: &[u8]| -> anyhow::Result<(bool, bool, Vec<u8>)> {
            let (_, c) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| anyhow::anyhow!("{cert}: {e}"))?;
            let is_ca = c
                .basic_constraints()
                .ok()
                .flatten()
                .is_some_and(|b| b.value.ca);
            let self_signed = c.subject() == c.issuer();
            Ok((is_ca, self_signed, c.public_key().raw.to_vec()))
        };
        let (is_ca, _, public) = info(&parsed[0])?;
        if !is_ca {
            anyhow::bail!("{cert}: the first certificate is not a CA (basicConstraints CA:TRUE)");
        }
        let key_public = key_pair.subject_public_key_info();
        if public != key_public {
            anyhow::bail!("{key} does not belong to the first certificate of {cert}");
        }
        let (_, root_self_signed, _) = info(parsed.last().expect("one at least"))?;
        if !root_self_signed {
            anyhow::bail!(
                "{cert}: the last certificate must be the root (self-signed); put the chain up to it after an intermediate"
            );
        }
        let bundle = chain.last().expect("one at least").clone();
        let intermediates = if chain.len() > 1 {
            chain[..chain.len() - 1].to_vec()
        } else {
            Vec::new()
        };
        let token_key = token::key_from(&key_pair.serialize_der());
        let issuer = Issuer::from_ca_cert_pem(signer, key_pair)
            .map_err(|e| anyhow::anyhow!("{cert}: {e}"))?;
        Ok(Ca {
            issuer,
            intermediates,
            bundle,
            token_key,
            source: cert.to_string(),
        })
    }

    /// The root, PEM.
    pub fn bundle(&self) -> &str {
        &self.bundle
    }

    /// Signs `csr_pem` if it asks for `granted` and nothing else, or for
    /// nothing (a caller that cannot know its SPIFFE ID, as one with a
    /// Kubernetes service-account token: the trust domain is ours); the leaf
    /// lives `lifetime` (clamped to [`MIN_LIFETIME`]..=[`MAX_LIFETIME`]).
    pub fn sign(
        &self,
        csr_pem: &str,
        granted: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Signed, SignError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(SignError::TooLarge(csr_pem.len()));
        }
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::Malformed(e.to_string()))?;
        let names = &csr.params.subject_alt_names;
        let granted_uri = granted.uri();
        match names.as_slice() {
            [] => {}
            [SanType::URI(uri)] if uri.as_str() == granted_uri => {}
            [SanType::URI(uri)] => {
                return Err(SignError::WrongIdentity {
                    asked: uri.as_str().to_string(),
                    granted: granted_uri,
                });
            }
            [other] => {
                return Err(SignError::WrongIdentity {
                    asked: format!("{other:?}"),
                    granted: granted_uri,
                });
            }
            more => return Err(SignError::Names(more.len())),
        }
        let lifetime = lifetime.clamp(MIN_LIFETIME, MAX_LIFETIME);
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            granted_uri
                .clone()
                .try_into()
                .map_err(|e| SignError::Internal(format!("{e}")))?,
        )];
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        params.serial_number = Some(serial().map_err(|e| SignError::Internal(e.to_string()))?);
        params.use_authority_key_identifier_extension = true;
        csr.params = params;
        let leaf = csr
            .signed_by(&self.issuer)
            .map_err(|e| SignError::Internal(e.to_string()))?;
        let mut chain = vec![leaf.pem()];
        chain.extend(self.intermediates.iter().cloned());
        Ok(Signed {
            chain,
            bundle: self.bundle.clone(),
            not_after: SystemTime::now() + lifetime,
        })
    }

    pub(crate) fn token_key(&self) -> &aws_lc_rs::hmac::Key {
        &self.token_key
    }
}

/// Where the CA comes from: `--ca-dir`, or `--ca-cert` with `--ca-key`.
#[derive(Debug, Clone)]
pub enum CaSource {
    Dir(PathBuf),
    Files { cert: PathBuf, key: PathBuf },
}

impl CaSource {
    pub fn open(&self, trust_domain: &str) -> anyhow::Result<Ca> {
        match self {
            CaSource::Dir(dir) => Ca::load_or_create(dir, trust_domain),
            CaSource::Files { cert, key } => Ca::from_files(cert, key),
        }
    }
}

/// A new root for `trust_domain` (ECDSA P-256, ten years): its
/// certificate and key, PEM.
pub fn generate_root(trust_domain: &str) -> anyhow::Result<(String, String)> {
    let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, trust_domain);
    name.push(DnType::CommonName, "Remora mesh root CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::from_secs(10 * 365 * 24 * 3600);
    params.serial_number = Some(serial()?);
    let root = params.self_signed(&key_pair)?;
    Ok((root.pem(), key_pair.serialize_pem()))
}

/// 16 random bytes, first bit clear (a positive serial number).
fn serial() -> anyhow::Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from(bytes.to_vec()))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

/// The PEM blocks of one label in `text`, each as its own PEM text.
fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let Some(stop) = rest[start..].find(&end) else {
            break;
        };
        let block = &rest[start..start + stop + end.len()];
        out.push(format!("{block}\n"));
        rest = &rest[start + stop + end.len()..];
    }
    out
}

fn pem_der(block: &str) -> Result<Vec<u8>, String> {
    x509_parser::pem::parse_x509_pem(block.as_bytes())
        .map(|(_, pem)| pem.contents)
        .map_err(|e| format!("not a PEM certificate: {e}"))
}

#[cfg(test)]
mod tests;

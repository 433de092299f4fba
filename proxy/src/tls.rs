//! TLS with rustls and the aws-lc-rs provider only: a listener's server
//! config from certificate files (compiled with the snapshot, so a reload
//! re-reads them), and the handshake of an accepted connection, whose
//! failures are counted by reason.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::{ConfigError, ListenerTlsConfig};
use crate::telemetry::{CountersBy, label_values};

/// The signature checks of a certificate verifier, done by the crypto
/// provider in field `$field` (the same for every verifier here).
macro_rules! provider_signatures {
    ($field:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.$field.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.$field.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$field
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// The one crypto provider: aws-lc-rs.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(configured_provider())
}

/// aws-lc-rs with AES-128-GCM/SHA-256 preferred over AES-256-GCM/SHA-384,
/// as BoringSSL (Envoy) orders them. A TLS 1.3 handshake is mostly HKDF:
/// SHA-256 has hardware support on current x86 and ARM CPUs and SHA-384
/// does not, so this about halves the hashing of a resumed handshake. Both
/// stay offered, and the same suites are enabled (rustls's defaults).
fn configured_provider() -> CryptoProvider {
    use rustls::CipherSuite as C;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            C::TLS13_AES_128_GCM_SHA256 => 0,
            C::TLS13_AES_256_GCM_SHA384 => 1,
            C::TLS13_CHACHA20_POLY1305_SHA256 => 2,
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => 3,
            C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => 4,
            C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 5,
            C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 6,
            _ => 7,
        });
    provider
}

/// Installs aws-lc-rs as the process's default provider (for libraries
/// that build their own configs); a second call changes nothing.
pub fn install_default_provider() {
    let _ = configured_provider().install_default();
}

/// A listener's server config, or errors naming the fields at `at`.
pub(crate) fn server_config(
    config: &ListenerTlsConfig,
    http: bool,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<ServerConfig>> {
    let chain = read_certs(&config.cert_file, &format!("{at}.cert_file"), errors);
    let key = match PrivateKeyDer::from_pem_file(&config.key_file) {
        Ok(key) => Some(key),
        Err(error) => {
            errors.push(ConfigError::new(
                format!("{at}.key_file"),
                format!("{}: {}", config.key_file.display(), pem_error(&error)),
            ));
            None
        }
    };
    let client_roots = match &config.client_ca_file {
        None => None,
        Some(path) => {
            let certs = read_certs(path, &format!("{at}.client_ca_file"), errors)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                if let Err(error) = roots.add(cert) {
                    errors.push(ConfigError::new(
                        format!("{at}.client_ca_file"),
                        format!("{}: {error}", path.display()),
                    ));
                    return None;
                }
            }
            Some(Arc::new(roots))
        }
    };
    let (chain, key) = (chain?, key?);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default versions");
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            match rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
            {
                Ok(verifier) => builder.with_client_cert_verifier(verifier),
                Err(error) => {
                    errors.push(ConfigError::new(
                        format!("{at}.client_ca_file"),
                        error.to_string(),
                    ));
                    return None;
                }
            }
        }
    };
    let mut server = match builder.with_single_cert(chain, key) {
        Ok(server) => server,
        Err(error) => {
            errors.push(ConfigError::new(
                format!("{at}.key_file"),
                format!("does not fit the certificate in cert_file: {error}"),
            ));
            return None;
        }
    };
    server.alpn_protocols = match &config.alpn {
        Some(alpn) => alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
        None if http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        None => Vec::new(),
    };
    Some(Arc::new(server))
}

fn read_certs(
    path: &Path,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<CertificateDer<'static>>> {
    let certs: Result<Vec<_>, _> = match CertificateDer::pem_file_iter(path) {
        Ok(iter) => iter.collect(),
        Err(error) => Err(error),
    };
    match certs {
        Ok(certs) if !certs.is_empty() => Some(certs),
        Ok(_) => {
            errors.push(ConfigError::new(
                at,
                format!("{}: no PEM certificate in the file", path.display()),
            ));
            None
        }
        Err(error) => {
            errors.push(ConfigError::new(
                at,
                format!("{}: {}", path.display(), pem_error(&error)),
            ));
            None
        }
    }
}

fn pem_error(error: &rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the right kind".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// Why a TLS handshake failed: the `reason` label of
/// `remora_tls_handshake_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// The client spoke something else (plaintext HTTP to a TLS port).
    NotTls,
    /// No client certificate, or one that does not chain to the roots,
    /// has expired or is not yet valid.
    ClientCertificate,
    /// Any other TLS error: a bad message, no common version or cipher,
    /// an alert from the client.
    Protocol,
    /// The handshake did not finish within the listener's
    /// `request_headers_timeout`.
    Timeout,
    /// The client closed or reset mid-handshake.
    Closed,
}

label_values!(HandshakeFailure {
    NotTls => "not_tls",
    ClientCertificate => "client_certificate",
    Protocol => "protocol",
    Timeout => "timeout",
    Closed => "closed",
});

/// A listener's handshake failures, by reason.
pub(crate) type HandshakeErrors = CountersBy<HandshakeFailure>;

/// An accepted connection after the TLS step.
pub(crate) enum Accepted {
    Tls(Box<TlsStream<TcpStream>>),
    /// `mtls: permissive` and the client did not start a handshake.
    Plain(TcpStream),
}

/// Runs the server handshake on `stream` within `timeout`; with
/// `permissive`, a client whose first byte cannot start a TLS record is
/// passed on in plaintext.
pub(crate) async fn accept(
    config: &Arc<ServerConfig>,
    stream: TcpStream,
    timeout: Duration,
    permissive: bool,
) -> Result<Accepted, HandshakeFailure> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Err(_) if permissive => return Ok(Accepted::Plain(stream)),
        Err(_) => return Err(HandshakeFailure::Timeout),
        Ok(Ok(0)) | Ok(Err(_)) => return Err(HandshakeFailure::Closed),
        Ok(Ok(_)) if first[0] != 0x16 && permissive => return Ok(Accepted::Plain(stream)),
        // Plaintext to a TLS port.
        Ok(Ok(_)) if first[0] != 0x16 => return Err(HandshakeFailure::NotTls),
        Ok(Ok(_)) => {}
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Err(_) => Err(HandshakeFailure::Timeout),
        Ok(Ok(stream)) => Ok(Accepted::Tls(Box::new(stream))),
        Ok(Err(error)) => Err(classify(&error)),
    }
}

fn classify(error: &io::Error) -> HandshakeFailure {
    use rustls::Error as E;
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => HandshakeFailure::Closed,
            _ => HandshakeFailure::Protocol,
        };
    };
    match tls {
        E::NoCertificatesPresented | E::InvalidCertificate(_) => {
            HandshakeFailure::ClientCertificate
        }
        E::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => HandshakeFailure::NotTls,
        _ => HandshakeFailure::Protocol,
    }
}

/// A cluster's TLS to its endpoints: one client config per ALPN (an
/// HTTP/1.1 connection offers `http/1.1`, an HTTP/2 one `h2`), and the
/// server name.
#[derive(Debug)]
pub(crate) struct UpstreamTls {
    http1: Arc<rustls::ClientConfig>,
    http2: Arc<rustls::ClientConfig>,
    /// None (mesh mTLS): the endpoint's IP, which only keys the session
    /// cache; the peer is checked by identity.
    server_name: Option<rustls::pki_types::ServerName<'static>>,
}

/// A cluster's `tls:`, or errors naming the fields at `at`.
pub(crate) fn upstream(
    config: &crate::config::UpstreamTlsConfig,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<UpstreamTls> {
    let server_name = match rustls::pki_types::ServerName::try_from(config.sni.clone()) {
        Ok(name) => name,
        Err(_) => {
            errors.push(ConfigError::new(
                format!("{at}.sni"),
                format!("{:?} is not a DNS name or IP address", config.sni),
            ));
            return None;
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default versions");
    let builder = if !config.verify {
        tracing::warn!(at, "tls.verify is false: any certificate is accepted");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &config.ca_file {
            Some(path) => {
                for cert in read_certs(path, &format!("{at}.ca_file"), errors)? {
                    if let Err(error) = roots.add(cert) {
                        errors.push(ConfigError::new(
                            format!("{at}.ca_file"),
                            format!("{}: {error}", path.display()),
                        ));
                        return None;
                    }
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    errors.push(ConfigError::new(
                        format!("{at}.ca_file"),
                        "the system has no root certificates: give ca_file",
                    ));
                    return None;
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let base = builder.with_no_client_auth();
    let with_alpn = |alpn: &[u8]| {
        let mut config = base.clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    };
    Some(UpstreamTls {
        http1: with_alpn(b"http/1.1"),
        http2: with_alpn(b"h2"),
        server_name: Some(server_name),
    })
}

/// A client that accepts any server certificate, with no warning: the
/// application's HTTPS probes (the kubelet does not verify them either).
pub(crate) fn probe_client(host: &str) -> Option<UpstreamTls> {
    let server_name = rustls::pki_types::ServerName::try_from(host.to_string()).ok()?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth();
    let config = Arc::new(config);
    Some(UpstreamTls {
        http1: config.clone(),
        http2: config,
        server_name: Some(server_name),
    })
}

impl UpstreamTls {
    /// The client handshake on a connected `stream`.
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
        http2: bool,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let config = if http2 { &self.http2 } else { &self.http1 };
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => rustls::pki_types::ServerName::IpAddress(stream.peer_addr()?.ip().into()),
        };
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, stream)
            .await
    }
}

/// `verify: false`: a verifier that accepts every certificate (signatures
/// are still checked, so the handshake itself is sound).
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    provider_signatures!(0);
}

// ---- mutual TLS with the mesh identity ----

use crate::identity::IdentityState;

/// The proxy's current mesh certificate, for servers and clients alike;
/// none before the first one or once it has expired.
#[derive(Debug)]
struct MeshCert(Arc<IdentityState>);

impl rustls::server::ResolvesServerCert for MeshCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.current().map(|c| c.certified.clone())
    }
}

impl rustls::client::ResolvesClientCert for MeshCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.current().map(|c| c.certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Client certificates must chain to the mesh's current trust bundle.
#[derive(Debug)]
struct MeshClients(Arc<IdentityState>, Arc<CryptoProvider>);

impl rustls::server::danger::ClientCertVerifier for MeshClients {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let current = self
            .0
            .current()
            .ok_or_else(|| rustls::Error::General("no mesh certificate yet".into()))?;
        current
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        if uri_sans(end_entity).is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    provider_signatures!(1);
}

/// A server must chain to the mesh's trust bundle and present one of the
/// identities the cluster expects (a URI SAN; the server name is not used).
#[derive(Debug)]
struct MeshServers {
    identity: Arc<IdentityState>,
    expected: Box<[String]>,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for MeshServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let current = self
            .identity
            .current()
            .ok_or_else(|| rustls::Error::General("no mesh certificate yet".into()))?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &current.root_store,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let names = uri_sans(end_entity);
        if !names.iter().any(|n| self.expected.iter().any(|e| e == n)) {
            tracing::debug!(presented = ?names, expected = ?self.expected, "mesh peer has an unexpected identity");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    provider_signatures!(provider);
}

/// A certificate's URI SANs.
fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The identity a TLS peer presented (its certificate's first URI SAN).
pub(crate) fn peer_identity(connection: &rustls::CommonState) -> Option<Arc<str>> {
    let certs = connection.peer_certificates()?;
    uri_sans(certs.first()?).into_iter().next().map(Arc::from)
}

/// A listener's server config for mesh mTLS: the proxy's current
/// certificate, client certificates required and checked against the
/// mesh's trust bundle.
pub(crate) fn mesh_server(identity: &Arc<IdentityState>, http: bool) -> Arc<ServerConfig> {
    let provider = provider();
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default versions")
        .with_client_cert_verifier(Arc::new(MeshClients(identity.clone(), provider)))
        .with_cert_resolver(Arc::new(MeshCert(identity.clone())));
    if http {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Arc::new(config)
}

/// A cluster's client side of mesh mTLS, accepting servers that present one
/// of `expected`.
pub(crate) fn mesh_upstream(identity: &Arc<IdentityState>, expected: &[String]) -> UpstreamTls {
    let provider = provider();
    let verifier = Arc::new(MeshServers {
        identity: identity.clone(),
        expected: expected.into(),
        provider: provider.clone(),
    });
    let base = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(MeshCert(identity.clone())));
    let with_alpn = |alpn: &[u8]| {
        let mut config = base.clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    };
    UpstreamTls {
        http1: with_alpn(b"http/1.1"),
        http2: with_alpn(b"h2"),
        server_name: None,
    }
}

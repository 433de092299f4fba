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

/// The one crypto provider: aws-lc-rs.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs aws-lc-rs as the process's default provider (for libraries
/// that build their own configs); a second call changes nothing.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
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

/// Runs the server handshake on `stream` within `timeout`.
pub(crate) async fn accept(
    config: &Arc<ServerConfig>,
    stream: TcpStream,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, HandshakeFailure> {
    // A first byte that cannot start a TLS record: plaintext to a TLS port.
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Err(_) => return Err(HandshakeFailure::Timeout),
        Ok(Ok(0)) | Ok(Err(_)) => return Err(HandshakeFailure::Closed),
        Ok(Ok(_)) if first[0] != 0x16 => return Err(HandshakeFailure::NotTls),
        Ok(Ok(_)) => {}
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Err(_) => Err(HandshakeFailure::Timeout),
        Ok(Ok(stream)) => Ok(stream),
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

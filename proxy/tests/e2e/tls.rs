//! TLS termination on a listener (`tls:` with certificate files): real
//! rustls clients speak HTTP/1.1 and HTTP/2 (chosen by ALPN) through it;
//! plaintext, garbage, a missing or foreign client certificate are each
//! refused and counted by reason; a reload serves a new certificate to new
//! handshakes; bad files are config errors that name the field.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::TestProxy;
use crate::support::upstream::Upstream;

/// A CA, and certificates it signs, written as PEM files in `dir`.
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names`; (certificate PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write_leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> (String, String) {
        let (cert, key) = self.leaf(names);
        let (cert_file, key_file) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_file, &cert).unwrap();
        std::fs::write(&key_file, &key).unwrap();
        (
            cert_file.display().to_string(),
            key_file.display().to_string(),
        )
    }
}

fn der_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

fn client_config(
    roots_pem: &str,
    client: Option<(String, String)>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in der_certs(roots_pem) {
        roots.add(cert).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                der_certs(&cert),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// GET / over TLS: (ALPN negotiated, status, `x-upstream`, server certificate).
async fn get(
    address: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<(String, u16, String, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let alpn = String::from_utf8_lossy(session.alpn_protocol().unwrap_or_default()).to_string();
    let server_cert = session.peer_certificates().unwrap()[0].to_vec();
    let request = || {
        hyper::Request::get(format!("https://localhost:{}/", address.port()))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let response = if alpn == "h2" {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request()).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request()).await
    }
    .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let upstream = response
        .headers()
        .get("x-upstream")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let _ = response.into_body().collect().await;
    Ok((alpn, status, upstream, server_cert))
}

fn listener_yaml(cert: &str, key: &str, client_ca: Option<&str>, upstream: SocketAddr) -> String {
    let client_ca = client_ca.map_or(String::new(), |f| format!(", client_ca_file: '{f}'"));
    format!(
        "
listeners:
  - name: https
    address: 127.0.0.1:0
    tls: {{cert_file: '{cert}', key_file: '{key}'{client_ca}}}
    routes: [{{name: all, backends: [{{cluster: up}}]}}]
clusters:
  - {{name: up, endpoints: ['{upstream}']}}
"
    )
}

fn refused(proxy: &TestProxy, reason: &str) -> f64 {
    proxy.metric(&format!(
        "remora_tls_handshake_errors_total{{listener=\"https\",reason=\"{reason}\"}}"
    ))
}

#[tokio::test]
async fn https_with_alpn_and_refusals_counted_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("test CA");
    let (cert, key) = pki.write_leaf(dir.path(), "server", &["localhost"]);
    let upstream = Upstream::http1("plain-upstream").await;
    let proxy = TestProxy::start(&listener_yaml(&cert, &key, None, upstream.addr)).await;
    let address = proxy.addr("https");

    let (alpn, status, from, _) = get(address, client_config(&pki.ca_pem, None, &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(
        (alpn.as_str(), status, from.as_str()),
        ("http/1.1", 200, "plain-upstream")
    );
    let (alpn, status, _, _) = get(
        address,
        client_config(&pki.ca_pem, None, &[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!((alpn.as_str(), status), ("h2", 200), "ALPN picks HTTP/2");

    // Plaintext HTTP to the TLS port: closed, counted.
    let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let _ = plain.read_to_end(&mut buffer).await;
    assert!(buffer.is_empty(), "{}", String::from_utf8_lossy(&buffer));
    // A TLS record header with garbage in it.
    let mut garbage = tokio::net::TcpStream::connect(address).await.unwrap();
    garbage
        .write_all(b"\x16\x03\x01\x00\x08notahello")
        .await
        .unwrap();
    let _ = garbage.read_to_end(&mut buffer).await;
    // A client that does not trust the server's CA gives up mid-handshake.
    let other = Pki::new("other CA");
    let error = get(address, client_config(&other.ca_pem, None, &[]))
        .await
        .unwrap_err();
    assert!(error.contains("handshake"), "{error}");
    crate::support::eventually("the refusals counted", || {
        refused(&proxy, "not_tls") == 1.0 && refused(&proxy, "protocol") >= 2.0
    })
    .await;

    // Still serving others.
    let (_, status, _, _) = get(address, client_config(&pki.ca_pem, None, &[]))
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn client_certificates_are_required_with_a_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("test CA");
    let (cert, key) = pki.write_leaf(dir.path(), "server", &["localhost"]);
    let ca_file = dir.path().join("clients.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let upstream = Upstream::http1("up").await;
    let proxy = TestProxy::start(&listener_yaml(
        &cert,
        &key,
        Some(&ca_file.display().to_string()),
        upstream.addr,
    ))
    .await;
    let address = proxy.addr("https");

    let client = pki.leaf(&["client.example"]);
    let (_, status, _, _) = get(address, client_config(&pki.ca_pem, Some(client), &[]))
        .await
        .unwrap();
    assert_eq!(status, 200);
    // No certificate; one from another CA. With TLS 1.3 the client learns
    // of the refusal on its first read, so the request fails either way.
    assert!(
        get(address, client_config(&pki.ca_pem, None, &[]))
            .await
            .is_err()
    );
    let foreign = Pki::new("foreign").leaf(&["client.example"]);
    assert!(
        get(address, client_config(&pki.ca_pem, Some(foreign), &[]))
            .await
            .is_err()
    );
    crate::support::eventually("both refusals counted", || {
        refused(&proxy, "client_certificate") == 2.0
    })
    .await;
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_to_new_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("test CA");
    let (cert, key) = pki.write_leaf(dir.path(), "first", &["localhost"]);
    let upstream = Upstream::http1("up").await;
    let proxy = TestProxy::start(&listener_yaml(&cert, &key, None, upstream.addr)).await;
    let address = proxy.addr("https");
    let config = client_config(&pki.ca_pem, None, &[]);
    let (_, _, _, first) = get(address, config.clone()).await.unwrap();

    // Same listener (name and address): the reload keeps its socket.
    let (cert, key) = pki.write_leaf(dir.path(), "second", &["localhost"]);
    let yaml = listener_yaml(&cert, &key, None, upstream.addr);
    proxy
        .proxy
        .reload(remora_proxy::config::parse_yaml(&yaml).unwrap())
        .unwrap();
    let (_, status, _, second) = get(address, config).await.unwrap();
    assert_eq!(status, 200);
    assert_ne!(first, second, "the new certificate is served");
    assert_eq!(
        second,
        der_certs(&std::fs::read_to_string(&cert).unwrap())[0].to_vec()
    );
}

#[test]
fn bad_certificate_files_name_the_field() {
    use remora_proxy::snapshot::{Mode, Snapshot};
    use remora_proxy::telemetry::Telemetry;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("test CA");
    let (cert, _) = pki.write_leaf(dir.path(), "a", &["localhost"]);
    let (_, other_key) = pki.write_leaf(dir.path(), "b", &["localhost"]);
    let missing = dir.path().join("missing.pem").display().to_string();
    let errors = |yaml: &str| {
        let config = remora_proxy::config::parse_yaml(yaml).unwrap();
        Snapshot::compile(config, None, &Telemetry::new(), 0, Mode::Check)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = errors(&listener_yaml(
        &missing,
        &other_key,
        None,
        "127.0.0.1:9".parse().unwrap(),
    ));
    assert!(
        e.contains("listeners[0].tls.cert_file: ") && e.contains("missing.pem"),
        "{e}"
    );
    let e = errors(&listener_yaml(
        &cert,
        &other_key,
        None,
        "127.0.0.1:9".parse().unwrap(),
    ));
    assert!(
        e.contains("listeners[0].tls.key_file: does not fit the certificate"),
        "{e}"
    );
    let e = errors(&listener_yaml(
        &cert,
        &cert,
        None,
        "127.0.0.1:9".parse().unwrap(),
    ));
    assert!(e.contains("listeners[0].tls.key_file: "), "{e}");
}

/// `protocol: tcp` with `tls:`: TLS terminated, the bytes relayed in the
/// clear to the cluster (Envoy's TCP proxy behind a DownstreamTlsContext).
#[tokio::test]
async fn a_tcp_listener_terminates_tls_and_relays_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("test CA");
    let (cert, key) = pki.write_leaf(dir.path(), "server", &["localhost"]);
    let (echo, _task) = crate::support::upstream::tcp_echo().await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - {{name: db, address: 127.0.0.1:0, protocol: tcp, cluster: echo, tls: {{cert_file: '{cert}', key_file: '{key}'}}}}
clusters:
  - {{name: echo, endpoints: ['{echo}']}}
"
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr("db"))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client_config(&pki.ca_pem, None, &[]))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        None,
        "no ALPN on a TCP listener"
    );
    tls.write_all(b"over tls").await.unwrap();
    let mut back = [0u8; 8];
    tls.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"over tls");
}

/// A cluster with `tls:` in front of a TLS listener (another proxy in front
/// of a plain upstream): client → proxy → TLS → proxy → upstream.
struct Chain {
    front: TestProxy,
    back: TestProxy,
    _upstream: Upstream,
    _dir: tempfile::TempDir,
}

async fn chain(protocol: &str, tls: impl Fn(&str) -> String) -> Chain {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("upstream CA");
    let (cert, key) = pki.write_leaf(dir.path(), "server", &["backend.internal"]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let upstream = Upstream::http1("behind-tls").await;
    let back = TestProxy::start(&listener_yaml(&cert, &key, None, upstream.addr)).await;
    let tls = tls(&ca_file.display().to_string());
    let front = TestProxy::start(&format!(
        "
listeners:
  - {{name: web, address: 127.0.0.1:0, routes: [{{name: all, backends: [{{cluster: secure}}]}}]}}
clusters:
  - {{name: secure, protocol: {protocol}, endpoints: ['{}'], tls: {tls}}}
",
        back.addr("https")
    ))
    .await;
    Chain {
        front,
        back,
        _upstream: upstream,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_cluster_originates_tls_verifying_the_name_and_the_roots() {
    use crate::support::client::get as fetch;
    let client = crate::support::client::http1();
    for protocol in ["http1", "http2"] {
        let c = chain(protocol, |ca| {
            format!("{{sni: backend.internal, ca_file: '{ca}'}}")
        })
        .await;
        let response = fetch(&client, &c.front.url("web", "/")).await;
        assert_eq!(response.status, 200, "{protocol}");
        assert_eq!(response.header("x-upstream"), "behind-tls");
        assert_eq!(
            c.back.metric(
                "remora_requests_total{listener=\"https\",route=\"all\",cluster=\"up\",status_class=\"2xx\"}"
            ),
            1.0,
            "{protocol}: the request arrived over TLS"
        );
    }

    // A name the certificate does not have, roots it does not chain to: the
    // handshake fails, counted as a connect failure, and the client gets 503.
    let wrong_name = chain("http1", |ca| {
        format!("{{sni: other.internal, ca_file: '{ca}'}}")
    })
    .await;
    let other_roots = tempfile::tempdir().unwrap();
    let other_ca = other_roots.path().join("other.pem");
    std::fs::write(&other_ca, Pki::new("other").ca_pem).unwrap();
    let wrong_roots = chain("http1", |_| {
        format!(
            "{{sni: backend.internal, ca_file: '{}'}}",
            other_ca.display()
        )
    })
    .await;
    for c in [&wrong_name, &wrong_roots] {
        let response = fetch(&client, &c.front.url("web", "/")).await;
        assert_eq!(response.status, 503);
        assert!(
            c.front
                .metric("remora_upstream_connect_failures_total{cluster=\"secure\"}")
                >= 1.0
        );
    }
    // verify: false takes any certificate (tests only).
    let unverified = chain("http1", |_| {
        "{sni: other.internal, verify: false}".to_string()
    })
    .await;
    let response = fetch(&client, &unverified.front.url("web", "/")).await;
    assert_eq!(response.status, 200);
}

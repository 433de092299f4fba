//! The proxy's identity lifecycle against the real control plane and its
//! CA: a key made in the proxy, a CSR for the identity its bootstrap token
//! grants, a certificate before `/ready`, renewal across several short
//! lifetimes with no moment without a valid certificate, the current one
//! kept while the CA is away and never handed out once expired; and the
//! CA's refusals (a token from another CA, a CSR for another identity).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use remora_control_plane::ca::Ca;
use remora_proxy::identity::SpiffeId;
use remora_xds_proto::ca::SignRequest;
use remora_xds_proto::ca::certificate_service_client::CertificateServiceClient;
use support::*;

const MESH: &str = "
trust_domain: example.org
services:
  - {name: web, namespace: shop, port: 80, identity: web-sa, endpoints: ['127.0.0.1:9']}
proxies:
  - {node_id: web-1, inbound: [{service: web.shop, listen: '127.0.0.1:0', target: '127.0.0.1:9'}]}
";

fn web() -> SpiffeId {
    SpiffeId::new("example.org", "shop", "web-sa").unwrap()
}

/// A proxy with `identity:` only, asking for `lifetime`.
fn proxy(ca: std::net::SocketAddr, token: &std::path::Path, lifetime: &str) -> remora_proxy::Proxy {
    let config = remora_proxy::config::parse_yaml(&format!(
        "admin: {{address: '127.0.0.1:0'}}\nidentity: {{ca: '{ca}', token_file: '{}', lifetime: {lifetime}}}\n",
        token.display()
    ))
    .unwrap();
    let identity = config.identity.clone().unwrap();
    let proxy = remora_proxy::Proxy::start(config, Default::default()).unwrap();
    proxy.spawn_identity(identity);
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_gets_renews_and_outlives_the_ca_with_its_certificate() {
    let mesh = MeshFile::new(MESH);
    let mesh_model =
        remora_control_plane::mesh::load_file(&mesh.path, remora_proxy::config::MtlsMode::Strict)
            .unwrap();
    assert_eq!(
        mesh_model
            .proxy_identity(&mesh_model.proxies[0], &mesh_model.service_index())
            .unwrap(),
        web(),
        "a proxy runs as its inbound service's identity"
    );
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(Ca::load_or_create(ca_dir.path(), "example.org").unwrap());
    let token = mesh.dir.path().join("token");
    std::fs::write(
        &token,
        ca.issue_token("web-1", &web(), Duration::from_secs(3600)),
    )
    .unwrap();
    let cp = control_plane_with_ca(&mesh, Some(ca.clone())).await;

    let proxy = proxy(cp.xds_address, &token, "3s");
    eventually("a first certificate", 10, || {
        let ready = proxy.is_ready();
        async move { ready }
    })
    .await;
    let first = proxy.identity().current().unwrap();
    assert_eq!(first.id, web());
    assert!(
        proxy
            .telemetry()
            .render()
            .contains("remora_identity_cert_expiry_timestamp_seconds")
    );

    // Renewed at 50–80 % of each 3 s lifetime: over 7 s, at least two new
    // certificates, and never a moment without a valid one.
    let start = Instant::now();
    let mut serials = vec![first.serial.clone()];
    while start.elapsed() < Duration::from_secs(7) {
        let current = proxy
            .identity()
            .current()
            .expect("a valid certificate at every moment");
        if serials.last() != Some(&current.serial) {
            serials.push(current.serial.clone());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(serials.len() >= 3, "renewals: {serials:?}");
    let view = proxy.identity().view();
    assert_eq!(
        view.spiffe_id.as_deref(),
        Some("spiffe://example.org/ns/shop/sa/web-sa")
    );
    assert_eq!(view.failures, 0);

    // The CA goes away: the proxy keeps its certificate until it expires,
    // retries, and never presents an expired one.
    drop(cp);
    let held = proxy.identity().current().unwrap();
    eventually("the expiry of the last certificate", 10, || {
        let gone = proxy.identity().current().is_none();
        async move { gone }
    })
    .await;
    assert!(std::time::SystemTime::now() >= held.not_after);
    assert!(!proxy.is_ready(), "not ready without a valid certificate");
    let view = proxy.identity().view();
    assert!(view.failures >= 1, "{view:?}");
    assert!(
        view.last_error
            .as_deref()
            .unwrap_or("")
            .contains("cannot reach the CA"),
        "{view:?}"
    );
    proxy.begin_drain();
}

#[tokio::test]
async fn the_ca_refuses_foreign_tokens_and_other_identities() {
    let mesh = MeshFile::new(MESH);
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(Ca::load_or_create(ca_dir.path(), "example.org").unwrap());
    let cp = control_plane_with_ca(&mesh, Some(ca.clone())).await;

    // A token from another CA: the proxy is refused, says why, is not ready.
    let other = Ca::load_or_create(tempfile::tempdir().unwrap().path(), "example.org").unwrap();
    let token = mesh.dir.path().join("foreign-token");
    std::fs::write(
        &token,
        other.issue_token("web-1", &web(), Duration::from_secs(600)),
    )
    .unwrap();
    let proxy = proxy(cp.xds_address, &token, "1h");
    eventually("a refusal", 10, || {
        let failed = proxy.identity().view().failures > 0;
        async move { failed }
    })
    .await;
    let view = proxy.identity().view();
    assert!(
        view.last_error
            .as_deref()
            .unwrap_or("")
            .contains("bootstrap token refused: the token was not issued by this CA"),
        "{view:?}"
    );
    assert!(!proxy.is_ready());
    proxy.begin_drain();

    // A good token, but a CSR for another identity.
    let granted = ca.issue_token("web-1", &web(), Duration::from_secs(600));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://example.org/ns/shop/sa/admin".try_into().unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let mut client = CertificateServiceClient::connect(format!("http://{}", cp.xds_address))
        .await
        .unwrap();
    let mut request = tonic::Request::new(SignRequest {
        csr_pem: csr,
        validity_seconds: 0,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {granted}").parse().unwrap(),
    );
    let status = client.sign(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "the CSR asks for spiffe://example.org/ns/shop/sa/admin, but the token grants spiffe://example.org/ns/shop/sa/web-sa"
    );
    // No token at all.
    let status = client
        .sign(SignRequest {
            csr_pem: String::new(),
            validity_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let (_, metrics) = admin(cp.admin_address, "/metrics").await;
    for line in [
        "remora_cp_certificates_total{result=\"denied\"} 1",
        "remora_cp_certificates_total{result=\"unauthenticated\"}",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

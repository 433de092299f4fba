//! Mutual TLS between two remora-proxy sidecars with certificates from the
//! control plane's CA: the caller's cluster (`mtls: {identities}`) talks
//! TLS to the callee's listener (`mtls: strict`), each presenting its own
//! SPIFFE identity. Checked by traffic: requests flow and the callee's
//! access log names the caller; plaintext, a foreign CA's client
//! certificate and a callee with an unexpected identity are refused and
//! counted; `permissive` takes both; and with 3-second certificates every
//! request of a continuous stream succeeds across several rotations.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use remora_control_plane::ca::Ca;
use remora_proxy::identity::SpiffeId;
use support::*;

const MESH: &str = "
trust_domain: example.org
services:
  - {name: web, namespace: shop, port: 80, identity: web-sa, endpoints: ['127.0.0.1:9']}
";

fn id(account: &str) -> SpiffeId {
    SpiffeId::new("example.org", "shop", account).unwrap()
}

struct Mesh {
    ca: Arc<Ca>,
    cp: remora_control_plane::ControlPlane,
    dir: tempfile::TempDir,
    _file: MeshFile,
}

impl Mesh {
    async fn start() -> Mesh {
        let file = MeshFile::new(MESH);
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(Ca::load_or_create(&dir.path().join("ca"), "example.org").unwrap());
        let cp = control_plane_with_ca(&file, Some(ca.clone())).await;
        Mesh {
            ca,
            cp,
            dir,
            _file: file,
        }
    }

    /// A proxy running as `account`, with `rest` (listeners, clusters).
    async fn proxy(&self, account: &str, lifetime: &str, rest: &str) -> remora_proxy::Proxy {
        let token = self.dir.path().join(format!("{account}.token"));
        std::fs::write(
            &token,
            self.ca
                .issue_token(account, &id(account), Duration::from_secs(3600)),
        )
        .unwrap();
        let log = self.dir.path().join(format!("{account}.log"));
        let config = remora_proxy::config::parse_yaml(&format!(
            "admin: {{address: '127.0.0.1:0'}}\naccess_log: {{path: '{}'}}\nidentity: {{ca: '{}', token_file: '{}', lifetime: {lifetime}}}\n{rest}",
            log.display(),
            self.cp.xds_address,
            token.display()
        ))
        .unwrap();
        let identity = config.identity.clone().unwrap();
        let proxy = remora_proxy::Proxy::start(config, Default::default()).unwrap();
        proxy.spawn_identity(identity);
        eventually("a certificate", 10, || {
            let ready = proxy.is_ready();
            async move { ready }
        })
        .await;
        proxy
    }

    fn access_log(&self, account: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{account}.log"))).unwrap_or_default()
    }
}

/// The callee: `mtls` on a listener in front of `app`.
fn callee(mode: &str, app: SocketAddr) -> String {
    format!(
        "
listeners:
  - {{name: inbound, address: 127.0.0.1:0, mtls: {mode}, routes: [{{name: all, backends: [{{cluster: app}}]}}]}}
clusters:
  - {{name: app, endpoints: ['{app}']}}
"
    )
}

/// The caller: a plain listener whose cluster talks mTLS to `target`,
/// expecting `identity`.
fn caller(target: SocketAddr, identity: &SpiffeId) -> String {
    format!(
        "
listeners:
  - {{name: out, address: 127.0.0.1:0, routes: [{{name: all, backends: [{{cluster: api}}]}}]}}
clusters:
  - {{name: api, endpoints: ['{target}'], mtls: {{identities: ['{identity}']}}}}
"
    )
}

fn metric(proxy: &remora_proxy::Proxy, series: &str) -> f64 {
    proxy
        .telemetry()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_talk_mtls_with_their_mesh_identities() {
    let mesh = Mesh::start().await;
    let app = Upstream::start("api-app").await;
    let api = mesh
        .proxy("api-sa", "1h", &callee("strict", app.addr))
        .await;
    let inbound = api.listener_address("inbound").unwrap();
    let web = mesh
        .proxy("web-sa", "1h", &caller(inbound, &id("api-sa")))
        .await;
    let out = web.listener_address("out").unwrap();

    assert_eq!(get(out, "/").await.unwrap(), (200, "api-app".into()));
    eventually("the callee's access log", 5, || {
        let log = mesh.access_log("api-sa");
        async move { log.contains("\"peer_identity\":\"spiffe://example.org/ns/shop/sa/web-sa\"") }
    })
    .await;
    // The golden metrics per caller identity.
    assert_eq!(
        metric(
            &api,
            "remora_peer_requests_total{listener=\"inbound\",peer_identity=\"spiffe://example.org/ns/shop/sa/web-sa\",classification=\"success\"}",
        ),
        1.0
    );

    // Plaintext straight to the strict listener: refused, counted.
    assert!(get(inbound, "/").await.is_err());
    eventually("not_tls counted", 5, || {
        let n = metric(
            &api,
            "remora_tls_handshake_errors_total{listener=\"inbound\",reason=\"not_tls\"}",
        );
        async move { n == 1.0 }
    })
    .await;

    // The caller expects another identity: its handshake fails, 503.
    let wary = mesh
        .proxy("web-sa", "1h", &caller(inbound, &id("someone-else")))
        .await;
    let (status, _) = get(wary.listener_address("out").unwrap(), "/")
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert!(
        metric(
            &wary,
            "remora_upstream_connect_failures_total{cluster=\"api\"}"
        ) >= 1.0
    );

    // A client certificate from another CA: refused.
    let foreign = Ca::load_or_create(&mesh.dir.path().join("foreign"), "example.org").unwrap();
    let before = metric(
        &api,
        "remora_tls_handshake_errors_total{listener=\"inbound\",reason=\"client_certificate\"}",
    );
    let stranger = stranger_client(&foreign, &id("web-sa"));
    let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    let attempt = tokio_rustls::TlsConnector::from(stranger)
        .connect(rustls::pki_types::ServerName::try_from("api").unwrap(), tcp)
        .await;
    if let Ok(mut tls) = attempt {
        // TLS 1.3: the refusal arrives on the first read.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tls.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let mut buf = [0u8; 16];
        assert!(matches!(tls.read(&mut buf).await, Err(_) | Ok(0)));
    }
    eventually("the foreign client refused", 5, || {
        let n = metric(
            &api,
            "remora_tls_handshake_errors_total{listener=\"inbound\",reason=\"client_certificate\"}",
        );
        async move { n == before + 1.0 }
    })
    .await;

    // Permissive: plaintext and mTLS both served.
    let open = mesh
        .proxy("api-sa", "1h", &callee("permissive", app.addr))
        .await;
    let open_inbound = open.listener_address("inbound").unwrap();
    assert_eq!(get(open_inbound, "/").await.unwrap().0, 200);
    let web2 = mesh
        .proxy("web-sa", "1h", &caller(open_inbound, &id("api-sa")))
        .await;
    assert_eq!(
        get(web2.listener_address("out").unwrap(), "/")
            .await
            .unwrap()
            .0,
        200
    );
    for proxy in [api, web, wary, open, web2] {
        proxy.begin_drain();
    }
}

/// A rustls client presenting a certificate `ca` signed for `identity`.
fn stranger_client(ca: &Ca, identity: &SpiffeId) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.uri().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let signed = ca.sign(&csr, identity, Duration::from_secs(60)).unwrap();
    let chain = signed
        .chain
        .iter()
        .map(|p| rustls::pki_types::CertificateDer::from_pem_slice(p.as_bytes()).unwrap())
        .collect();
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_auth_cert(chain, key)
        .unwrap(),
    )
}

#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// 3-second certificates on both sides, requests every 20 ms for 8 s:
/// every one succeeds while both proxies renew several times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_flow_across_certificate_rotations() {
    let mesh = Mesh::start().await;
    let app = Upstream::start("api-app").await;
    let api = mesh
        .proxy("api-sa", "3s", &callee("strict", app.addr))
        .await;
    let inbound = api.listener_address("inbound").unwrap();
    let web = mesh
        .proxy("web-sa", "3s", &caller(inbound, &id("api-sa")))
        .await;
    let out = web.listener_address("out").unwrap();
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(8) {
        let answer = get(out, "/").await;
        assert_eq!(answer, Ok((200, "api-app".to_string())), "request {sent}");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        api.identity().view().renewals >= 3,
        "{:?}",
        api.identity().view()
    );
    assert!(
        web.identity().view().renewals >= 3,
        "{:?}",
        web.identity().view()
    );
    assert!(sent > 100);
    api.begin_drain();
    web.begin_drain();
}

/// Authorization by the caller's identity on an mTLS listener: a deny
/// policy wins, an allow list makes the rest default-deny; HTTP denials
/// answer 403 and are counted by policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_allows_and_denies_by_identity() {
    let mesh = Mesh::start().await;
    let app = Upstream::start("api-app").await;
    let api = mesh
        .proxy(
            "api-sa",
            "1h",
            &format!(
                "
listeners:
  - name: inbound
    address: 127.0.0.1:0
    mtls: strict
    authorization:
      - {{name: no-admin, action: deny, paths: ['/admin/*']}}
      - {{name: web-reads, action: allow, from: ['spiffe://example.org/ns/shop/sa/web-sa'], methods: [GET]}}
    routes: [{{name: all, backends: [{{cluster: app}}]}}]
clusters:
  - {{name: app, endpoints: ['{}']}}
",
                app.addr
            ),
        )
        .await;
    let inbound = api.listener_address("inbound").unwrap();
    let web = mesh
        .proxy("web-sa", "1h", &caller(inbound, &id("api-sa")))
        .await;
    let batch = mesh
        .proxy("batch-sa", "1h", &caller(inbound, &id("api-sa")))
        .await;
    let (web_out, batch_out) = (
        web.listener_address("out").unwrap(),
        batch.listener_address("out").unwrap(),
    );
    assert_eq!(
        get(web_out, "/items").await.unwrap(),
        (200, "api-app".into())
    );
    assert_eq!(get(web_out, "/admin/users").await.unwrap().0, 403);
    assert_eq!(get(batch_out, "/items").await.unwrap().0, 403);
    for (policy, count) in [("no-admin", 1.0), ("default-deny", 1.0)] {
        assert_eq!(
            metric(
                &api,
                &format!("remora_authz_denied_total{{listener=\"inbound\",policy=\"{policy}\"}}")
            ),
            count,
            "{policy}"
        );
    }
    for proxy in [api, web, batch] {
        proxy.begin_drain();
    }
}

/// The control plane sets mTLS (`mtls: strict` in the mesh file): the
/// inbound listener gets a DownstreamTlsContext, the service's cluster an
/// UpstreamTlsContext naming the service's identity, and two remora-proxy
/// sidecars configured only over xDS talk mTLS with their own identities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_sets_mtls_between_its_proxies() {
    let app = Upstream::start("api-app").await;
    let (outbound, inbound) = (free_port(), free_port());
    let file = MeshFile::new(&format!(
        "
trust_domain: example.org
mtls: strict
services:
  - {{name: api, namespace: shop, port: 80, identity: api-sa, endpoints: ['127.0.0.1:{inbound}'], policy: {{pool: {{max_requests_per_connection: 1}}}}}}
proxies:
  - {{node_id: api-1, inbound: [{{service: api.shop, listen: '127.0.0.1:{inbound}', target: '{}'}}]}}
  - {{node_id: web-1, identity: web-sa.shop, outbound: [{{service: api.shop, listen: '127.0.0.1:{outbound}'}}]}}
",
        app.addr
    ));
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(Ca::load_or_create(&dir.path().join("ca"), "example.org").unwrap());
    let cp = control_plane_with_ca(&file, Some(ca.clone())).await;
    let api = xds_proxy(&dir, &ca, cp.xds_address, "api-1", "api-sa");
    let web = xds_proxy(&dir, &ca, cp.xds_address, "web-1", "web-sa");
    for proxy in [&api, &web] {
        eventually("xDS and a certificate", 10, || {
            let ready = proxy.is_ready();
            async move { ready }
        })
        .await;
    }
    let out = SocketAddr::from(([127, 0, 0, 1], outbound));
    let mut answer = Err(String::new());
    for _ in 0..50 {
        answer = get(out, "/").await;
        if answer.as_ref().is_ok_and(|(status, _)| *status == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer, Ok((200, "api-app".to_string())));
    // Plaintext to the inbound listener: refused.
    assert!(
        get(SocketAddr::from(([127, 0, 0, 1], inbound)), "/")
            .await
            .is_err()
    );
    eventually("the caller's identity in the callee's log", 5, || {
        let log = std::fs::read_to_string(dir.path().join("api-1.log")).unwrap_or_default();
        async move { log.contains("\"peer_identity\":\"spiffe://example.org/ns/shop/sa/web-sa\"") }
    })
    .await;
    // One request per connection: the caller resumes its TLS sessions
    // (no certificates exchanged), and every resumed request still carries
    // the caller's identity.
    for _ in 0..5 {
        assert_eq!(get(out, "/").await, Ok((200, "api-app".to_string())));
    }
    let resumed = metric(
        &api,
        &format!(
            "remora_tls_handshakes_total{{listener=\"inbound|127.0.0.1:{inbound}\",session=\"resumed\"}}"
        ),
    );
    assert!(resumed >= 4.0, "{resumed} resumed handshakes");
    let log = std::fs::read_to_string(dir.path().join("api-1.log")).unwrap_or_default();
    let identified = log
        .lines()
        .filter(|l| l.contains("\"peer_identity\":\"spiffe://example.org/ns/shop/sa/web-sa\""))
        .count();
    assert!(
        identified >= 6,
        "{identified} requests logged with the caller's identity:\n{log}"
    );
    api.begin_drain();
    web.begin_drain();
}

/// remora-proxy as node `node`, configured over xDS, its certificate for
/// `account` from the CA (both at `cp`); its access log is `DIR/NODE.log`.
fn xds_proxy(
    dir: &tempfile::TempDir,
    ca: &Ca,
    cp: SocketAddr,
    node: &str,
    account: &str,
) -> remora_proxy::Proxy {
    let token = dir.path().join(format!("{node}.token"));
    std::fs::write(
        &token,
        ca.issue_token(node, &id(account), Duration::from_secs(600)),
    )
    .unwrap();
    let log = dir.path().join(format!("{node}.log"));
    let config = remora_proxy::config::parse_yaml(&format!(
        "admin: {{address: '127.0.0.1:0'}}\naccess_log: {{path: '{}'}}\nxds: {{address: '{cp}', node_id: {node}}}\nidentity: {{ca: '{cp}', token_file: '{}'}}\n",
        log.display(),
        token.display()
    ))
    .unwrap();
    let (xds, identity) = (
        config.xds.clone().unwrap(),
        config.identity.clone().unwrap(),
    );
    let proxy = remora_proxy::Proxy::start(config, Default::default()).unwrap();
    proxy.spawn_identity(identity);
    proxy.spawn_xds(xds);
    proxy
}

/// GETs `addr` until it answers 200 (listeners and secrets arrive over
/// xDS), for up to 10 s; the last answer.
async fn get_until_ok(addr: SocketAddr) -> Result<(u16, String), String> {
    let mut answer = Err(String::new());
    for _ in 0..100 {
        answer = get(addr, "/").await;
        if answer.as_ref().is_ok_and(|(status, _)| *status == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answer
}

/// A real Envoy and remora-proxy in one strict mesh, both configured by the
/// control plane: Envoy gets its certificate and the roots over SDS (its
/// node metadata carries its bootstrap token), remora-proxy from the CA.
/// Requests flow mTLS in both directions, each side checking the other's
/// identity, and neither inbound listener takes plaintext; switched to
/// permissive, both take plaintext as well. Authorization policies in the
/// mesh file are enforced by both, Envoy through its RBAC filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_remora_talk_mtls_both_ways_with_sds() {
    let api_app = Upstream::start("api-app").await;
    let web_app = Upstream::start("web-app").await;
    let [api_in, web_in, to_api, to_web] = [free_port(), free_port(), free_port(), free_port()];
    let mesh = format!(
        "
trust_domain: example.org
mtls: strict
services:
  - {{name: api, namespace: shop, port: 80, identity: envoy-sa, endpoints: ['127.0.0.1:{api_in}']}}
  - {{name: web, namespace: shop, port: 80, identity: remora-sa, endpoints: ['127.0.0.1:{web_in}']}}
proxies:
  - node_id: envoy-1
    inbound: [{{service: api.shop, listen: '127.0.0.1:{api_in}', target: '{}'}}]
    outbound: [{{service: web.shop, listen: '127.0.0.1:{to_web}'}}]
  - node_id: remora-1
    inbound: [{{service: web.shop, listen: '127.0.0.1:{web_in}', target: '{}'}}]
    outbound: [{{service: api.shop, listen: '127.0.0.1:{to_api}'}}]
",
        api_app.addr, web_app.addr
    );
    let file = MeshFile::new(&mesh);
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(Ca::load_or_create(&dir.path().join("ca"), "example.org").unwrap());
    let cp = control_plane_with_ca(&file, Some(ca.clone())).await;
    let token = ca.issue_token("envoy-1", &id("envoy-sa"), Duration::from_secs(600));
    let envoy = Envoy::start_with_token("envoy-1", Some(&token), cp.xds_address, false);
    let remora = xds_proxy(&dir, &ca, cp.xds_address, "remora-1", "remora-sa");

    // Remora -> Envoy: remora-proxy checks Envoy presents envoy-sa.
    let answer = get_until_ok(SocketAddr::from(([127, 0, 0, 1], to_api))).await;
    assert_eq!(
        answer,
        Ok((200, "api-app".to_string())),
        "remora-proxy -> Envoy; Envoy's log:\n{}",
        envoy.log_text()
    );
    // Envoy -> Remora: the access log names Envoy's identity.
    let answer = get_until_ok(SocketAddr::from(([127, 0, 0, 1], to_web))).await;
    assert_eq!(
        answer,
        Ok((200, "web-app".to_string())),
        "Envoy -> remora-proxy; Envoy's log:\n{}",
        envoy.log_text()
    );
    eventually("Envoy's identity in remora-proxy's access log", 5, || {
        let log = std::fs::read_to_string(dir.path().join("remora-1.log")).unwrap_or_default();
        async move { log.contains("\"peer_identity\":\"spiffe://example.org/ns/shop/sa/envoy-sa\"") }
    })
    .await;
    // Both inbound listeners refuse plaintext.
    for port in [api_in, web_in] {
        let plain = get(SocketAddr::from(([127, 0, 0, 1], port)), "/").await;
        assert!(plain.is_err(), "plaintext to {port} answered {plain:?}");
    }
    let (_, metrics) = admin(cp.admin_address, "/metrics").await;
    assert!(
        metrics.contains("remora_cp_pushes_total{type=\"secret\"}"),
        "{metrics}"
    );

    // Authorization from the mesh file, as RBAC filters: Envoy enforces the
    // policy on its service, remora-proxy on its own.
    let policed = mesh
        .replace(
            "identity: envoy-sa,",
            "identity: envoy-sa, authorization: [{name: remora-reads, action: allow, from: ['spiffe://example.org/ns/shop/sa/remora-sa'], methods: [GET], paths: ['/ok*']}],",
        )
        .replace(
            "identity: remora-sa,",
            "identity: remora-sa, authorization: [{name: no-admin, action: deny, paths: ['/admin*']}],",
        );
    file.write(&policed);
    let to_api = SocketAddr::from(([127, 0, 0, 1], to_api));
    let to_web = SocketAddr::from(([127, 0, 0, 1], to_web));
    eventually("Envoy denying /no", 10, || async move {
        get(to_api, "/no")
            .await
            .is_ok_and(|(status, _)| status == 403)
    })
    .await;
    assert_eq!(get(to_api, "/ok/1").await, Ok((200, "api-app".to_string())));
    eventually("remora-proxy denying /admin", 10, || async move {
        get(to_web, "/admin")
            .await
            .is_ok_and(|(status, _)| status == 403)
    })
    .await;
    assert_eq!(get(to_web, "/admin/users").await, Ok((403, String::new())));
    let denials = format!(
        "remora_authz_denied_total{{listener=\"inbound|127.0.0.1:{web_in}\",policy=\"no-admin\"}}"
    );
    assert!(metric(&remora, &denials) >= 2.0, "{denials}");
    assert_eq!(get(to_web, "/").await, Ok((200, "web-app".to_string())));
    let (to_api, to_web) = (to_api.port(), to_web.port());

    // Permissive (Istio's TLS inspector and two chains): both inbound
    // listeners now take plaintext too, and the mesh still talks mTLS.
    file.write(&mesh.replace("mtls: strict", "mtls: permissive"));
    for (port, body) in [(api_in, "api-app"), (web_in, "web-app")] {
        let answer = get_until_ok(SocketAddr::from(([127, 0, 0, 1], port))).await;
        assert_eq!(
            answer,
            Ok((200, body.to_string())),
            "plaintext to {port} under permissive; Envoy's log:\n{}",
            envoy.log_text()
        );
    }
    // (A connection pooled to Envoy's draining listener still has the old
    // RBAC filter until Envoy closes it: hence until, not at once.)
    for (port, body) in [(to_api, "api-app"), (to_web, "web-app")] {
        let answer = get_until_ok(SocketAddr::from(([127, 0, 0, 1], port))).await;
        assert_eq!(answer, Ok((200, body.to_string())));
    }
    remora.begin_drain();
}

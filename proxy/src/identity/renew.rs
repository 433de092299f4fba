//! Getting and keeping the proxy's certificate: a key generated here (it
//! never leaves the process), a CSR for the SPIFFE ID the bootstrap token
//! grants (or, with a Kubernetes service-account token, a CSR that names
//! nobody: the CA signs it for the token's service account, in the trust
//! domain only the control plane knows), signed by the mesh's CA
//! (`CertificateService/Sign`), and renewed
//! with a new key at a jittered 50–80 % of each certificate's lifetime. If
//! the CA cannot be reached the current certificate stays in use while the
//! proxy retries with backoff; an expired one is never handed out
//! ([`IdentityState::current`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use metrics::{Counter, Gauge};
use rcgen::KeyPair;
use remora_xds_proto::ca::SignRequest;
use remora_xds_proto::ca::certificate_service_client::CertificateServiceClient;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{GeneralName, parse_x509_certificate};

use super::{SpiffeId, token_identity};
use crate::config::{ConfigError, IdentityConfig};
use crate::telemetry::{self, Telemetry};
pub use remora_api::identity::key_and_csr;

/// The first retry after a failure; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A certificate the CA signed for this proxy, with its key.
pub struct Credentials {
    pub id: SpiffeId,
    /// Leaf first, then intermediates, DER.
    pub chain: Vec<Vec<u8>>,
    /// The roots peers' chains are verified against, DER.
    pub roots: Vec<Vec<u8>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The leaf's serial number, hex.
    pub serial: String,
    /// The chain and key as rustls presents them.
    pub certified: Arc<rustls::sign::CertifiedKey>,
    /// Peers' chains are verified against `roots` with these.
    pub root_store: Arc<rustls::RootCertStore>,
    pub client_verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id.to_string())
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// The proxy's identity as it stands: shared by the renewal task, the TLS
/// code and the admin server.
#[derive(Default)]
pub struct IdentityState {
    configured: std::sync::atomic::AtomicBool,
    current: ArcSwapOption<Credentials>,
    renewals: AtomicU64,
    failures: AtomicU64,
    last_error: ArcSwapOption<String>,
}

impl std::fmt::Debug for IdentityState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityState")
            .field("current", &self.current.load_full())
            .finish_non_exhaustive()
    }
}

/// What `/identity` shows.
#[derive(Debug, Serialize)]
pub struct IdentityView {
    pub configured: bool,
    pub spiffe_id: Option<String>,
    pub serial: Option<String>,
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
    pub renewals: u64,
    pub failures: u64,
    pub last_error: Option<String>,
}

impl IdentityState {
    /// The certificate to present: none before the first one arrives, and
    /// none once it has expired.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current
            .load_full()
            .filter(|c| SystemTime::now() < c.not_after)
    }

    /// Ready: no identity configured, or a certificate that has not expired.
    pub fn is_ready(&self) -> bool {
        !self.configured.load(Ordering::Acquire) || self.current().is_some()
    }

    pub fn view(&self) -> IdentityView {
        let current = self.current.load_full();
        let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        IdentityView {
            configured: self.configured.load(Ordering::Acquire),
            spiffe_id: current.as_ref().map(|c| c.id.to_string()),
            serial: current.as_ref().map(|c| c.serial.clone()),
            not_before: current.as_ref().map(|c| unix(c.not_before)),
            not_after: current.as_ref().map(|c| unix(c.not_after)),
            renewals: self.renewals.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_error: self.last_error.load_full().map(|e| (*e).clone()),
        }
    }
}

/// `identity:`'s fields, checked by path.
pub fn check(config: &IdentityConfig) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if config.ca.parse::<std::net::SocketAddr>().is_err() && !config.ca.contains(':') {
        errors.push(ConfigError::new(
            "identity.ca",
            format!("{:?} is not HOST:PORT", config.ca),
        ));
    }
    if config.lifetime < Duration::from_secs(2) {
        errors.push(ConfigError::new("identity.lifetime", "must be at least 2s"));
    }
    if config.token_file.as_os_str().is_empty() {
        errors.push(ConfigError::new("identity.token_file", "required"));
    }
    errors
}

struct Stats {
    expiry: Gauge,
    signed: Counter,
    failed: Counter,
}

/// Starts the renewal task on the current runtime; it stops with `stop`.
pub fn spawn(
    config: IdentityConfig,
    state: Arc<IdentityState>,
    telemetry: &Telemetry,
    stop: CancellationToken,
) {
    state.configured.store(true, Ordering::Release);
    let stats = Stats {
        expiry: telemetry.gauge(telemetry::IDENTITY_CERT_EXPIRY, &[]),
        signed: telemetry.counter(telemetry::IDENTITY_RENEWALS_TOTAL, &[("result", "ok")]),
        failed: telemetry.counter(telemetry::IDENTITY_RENEWALS_TOTAL, &[("result", "error")]),
    };
    tokio::spawn(async move {
        tokio::select! {
            () = run(&config, &state, &stats) => {}
            () = stop.cancelled() => {}
        }
    });
}

async fn run(config: &IdentityConfig, state: &IdentityState, stats: &Stats) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let wait = match renew(config).await {
            Ok(credentials) => {
                let lifetime = credentials
                    .not_after
                    .duration_since(credentials.not_before)
                    .unwrap_or_default();
                let expiry = credentials
                    .not_after
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                stats.expiry.set(expiry);
                stats.signed.increment(1);
                tracing::info!(id = %credentials.id, serial = %credentials.serial, not_after = expiry as u64, "certificate from the CA");
                let renew_at = credentials.not_before + lifetime.mul_f64(jitter());
                state.current.store(Some(Arc::new(credentials)));
                state.renewals.fetch_add(1, Ordering::Relaxed);
                state.last_error.store(None);
                backoff = FIRST_BACKOFF;
                renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            }
            Err(error) => {
                stats.failed.increment(1);
                state.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, retry_in = ?backoff, "cannot get a certificate; the current one stays in use");
                state.last_error.store(Some(Arc::new(error)));
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// 0.5..0.8, from the clock's nanoseconds (spreads proxies started together).
fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    0.5 + 0.3 * (f64::from(nanos % 1_000_000) / 1_000_000.0)
}

/// One round: a new key, a CSR, the CA's answer, checked.
async fn renew(config: &IdentityConfig) -> Result<Credentials, String> {
    let token = std::fs::read_to_string(&config.token_file)
        .map_err(|e| format!("identity.token_file {}: {e}", config.token_file.display()))?;
    let token = token.trim().to_string();
    // A bootstrap token says which identity it grants; any other token (a
    // projected service-account token) is the CA's to read.
    let asked = if token.starts_with(BOOTSTRAP_PREFIX) {
        Some(token_identity(&token).map_err(|e| format!("identity.token_file: {e}"))?)
    } else {
        None
    };
    let (key, csr) = key_and_csr(asked.as_ref())?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", config.ca))
        .map_err(|e| format!("invalid identity.ca {:?}: {e}", config.ca))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach the CA at {}: {e}", config.ca))?;
    let mut request = tonic::Request::new(SignRequest {
        csr_pem: csr,
        validity_seconds: config.lifetime.as_secs(),
    });
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token is not a valid header value".to_string())?;
    request.metadata_mut().insert("authorization", bearer);
    let response = CertificateServiceClient::new(channel)
        .sign(request)
        .await
        .map_err(|status| format!("the CA refused: {}", status.message()))?
        .into_inner();
    accept(
        asked,
        key,
        &response.cert_chain_pem,
        &response.trust_bundle_pem,
    )
}

/// How a bootstrap token (`remora-control-plane token`) starts.
const BOOTSTRAP_PREFIX: &str = "rmt1.";

/// Checks the CA's answer: a chain whose leaf names exactly one SPIFFE ID
/// (`asked`, when the CSR named one) and is valid now, and a trust bundle.
fn accept(
    asked: Option<SpiffeId>,
    key: KeyPair,
    chain: &[String],
    bundle: &str,
) -> Result<Credentials, String> {
    let der = |pem: &str| {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map(|(_, p)| p.contents)
            .map_err(|e| format!("the CA sent an unreadable certificate: {e}"))
    };
    let chain: Vec<Vec<u8>> = chain.iter().map(|p| der(p)).collect::<Result<_, _>>()?;
    let roots: Vec<Vec<u8>> = split_pem(bundle)
        .iter()
        .map(|p| der(p))
        .collect::<Result<_, _>>()?;
    let leaf = chain.first().ok_or("the CA sent no certificate")?;
    if roots.is_empty() {
        return Err("the CA sent no trust bundle".into());
    }
    let (_, cert) = parse_x509_certificate(leaf).map_err(|e| format!("the CA's leaf: {e}"))?;
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::URI(uri) => uri.to_string(),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default();
    let id: SpiffeId = match (names.as_slice(), asked) {
        ([name], Some(asked)) if *name == asked.uri() => asked,
        ([name], None) => name
            .parse()
            .map_err(|e| format!("the CA's certificate names {name:?}: {e}"))?,
        (_, Some(asked)) => {
            return Err(format!("the CA's certificate names {names:?}, not {asked}"));
        }
        (_, None) => {
            return Err(format!(
                "the CA's certificate names {names:?}, not one SPIFFE ID"
            ));
        }
    };
    let validity = cert.validity();
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let (not_before, not_after) = (
        at(validity.not_before.timestamp()),
        at(validity.not_after.timestamp()),
    );
    if SystemTime::now() >= not_after {
        return Err("the CA's certificate has already expired".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key_der = key.serialize_der();
    let certified = rustls::sign::CertifiedKey::from_der(
        chain.iter().map(|c| c.clone().into()).collect(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
        &provider,
    )
    .map_err(|e| format!("the CA's certificate does not fit the key: {e}"))?;
    let mut root_store = rustls::RootCertStore::empty();
    for root in &roots {
        root_store
            .add(root.clone().into())
            .map_err(|e| format!("the CA's trust bundle: {e}"))?;
    }
    let root_store = Arc::new(root_store);
    let client_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(root_store.clone(), provider)
            .build()
            .map_err(|e| format!("the CA's trust bundle: {e}"))?;
    Ok(Credentials {
        serial: cert.raw_serial_as_string(),
        id,
        chain,
        roots,
        not_before,
        not_after,
        certified: Arc::new(certified),
        root_store,
        client_verifier,
    })
}

fn split_pem(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    text.split_inclusive(END)
        .filter(|block| block.contains("-----BEGIN CERTIFICATE-----"))
        .map(|block| block.trim_start().to_string())
        .collect()
}

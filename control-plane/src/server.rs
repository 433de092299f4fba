//! Running the control plane: load the mesh, publish its translation,
//! serve ADS and the admin endpoints, follow the mesh file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::mesh::{self, Mesh};
use crate::metrics::Metrics;
use crate::translate;
use crate::xds::registry::Registry;
use crate::xds::{AdsServer, MeshState, Shared};
use remora_api::MtlsMode;

#[derive(Debug, Clone)]
pub struct Options {
    /// Where the mesh comes from.
    pub source: Source,
    pub xds_address: SocketAddr,
    pub admin_address: SocketAddr,
    /// Quiet time after a mesh file change before it is read and pushed.
    pub debounce: Duration,
    /// The certificate authority, served as `CertificateService` beside
    /// ADS; none: not served.
    pub ca: Option<Arc<crate::ca::Ca>>,
    /// The lifetime of the leaves it signs (a proxy may ask for less).
    pub cert_lifetime: Duration,
    /// Proxies' service-account tokens checked with TokenReview (a
    /// Kubernetes source); none: bootstrap tokens only.
    pub token_reviewer: Option<crate::ca::kubernetes::TokenReviewer>,
    /// The sidecar injector (HTTPS); none: not served.
    pub webhook: Option<crate::inject::server::WebhookOptions>,
    /// The SPIFFE trust domain of a Kubernetes or manifests source (a mesh
    /// file names its own, `trust_domain`); none: `cluster.local`.
    pub trust_domain: Option<String>,
}

/// Where the mesh comes from: a mesh file, or Kubernetes manifests (a
/// file or a directory of them).
#[derive(Clone)]
pub enum Source {
    MeshFile(PathBuf),
    Manifests(PathBuf),
    /// A Kubernetes API server, watched (docs/kubernetes.md), and the
    /// lease its replicas elect a leader with.
    Kubernetes(kube::Client, crate::k8s::leader::LeaseConfig),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Source {
    /// `mesh file F`, `manifests F`, `the Kubernetes API server`.
    pub fn describe(&self) -> String {
        match self {
            Source::MeshFile(path) => format!("mesh file {}", path.display()),
            Source::Manifests(path) => format!("manifests {}", path.display()),
            Source::Kubernetes(..) => "the Kubernetes API server".to_string(),
        }
    }

    /// The file or directory a file source reads.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Source::MeshFile(path) | Source::Manifests(path) => path,
            Source::Kubernetes(..) => std::path::Path::new(""),
        }
    }

    /// Reads and validates the mesh, with `settings` where the source
    /// does not set them (a mesh file sets its own trust domain). From
    /// manifests, objects that are invalid are logged with their field
    /// paths and left out.
    pub fn load(
        &self,
        settings: &crate::k8s::Settings,
    ) -> Result<mesh::Mesh, remora_api::ConfigErrors> {
        match self {
            Source::Kubernetes(..) => Err(remora_api::ConfigErrors::one(
                "",
                "the Kubernetes source is watched, not loaded",
            )),
            Source::MeshFile(path) => mesh::load_file(path, settings.mtls),
            Source::Manifests(path) => {
                let (mesh, report) = crate::k8s::manifests::load(path, settings)?;
                for (object, reason, message) in report.rejected() {
                    tracing::warn!(%object, reason, "left out: {message}");
                }
                Ok(mesh)
            }
        }
    }

    /// The bytes of every file the source reads, to tell a change from a
    /// touch.
    pub fn fingerprint(&self) -> Option<Vec<u8>> {
        match self {
            Source::Kubernetes(..) => None,
            Source::MeshFile(path) => std::fs::read(path).ok(),
            Source::Manifests(path) => {
                let mut bytes = Vec::new();
                for file in crate::k8s::manifests::files(path).ok()? {
                    bytes.extend_from_slice(file.as_os_str().as_encoded_bytes());
                    bytes.push(0);
                    bytes.extend(std::fs::read(&file).ok()?);
                    bytes.push(0);
                }
                Some(bytes)
            }
        }
    }
}

/// Publishes mesh versions to every stream (through a `watch` channel).
#[derive(Clone)]
pub struct Publisher {
    tx: Arc<watch::Sender<Arc<MeshState>>>,
    metrics: Arc<Metrics>,
    /// What the source does not set: the mTLS mode of a mesh without
    /// `mtls` (`strict` with a CA), and the trust domain of manifests.
    pub settings: crate::k8s::Settings,
}

impl Publisher {
    pub fn new(metrics: Arc<Metrics>) -> (Publisher, watch::Receiver<Arc<MeshState>>) {
        let (tx, rx) = watch::channel(Arc::new(MeshState::empty()));
        (
            Publisher {
                tx: Arc::new(tx),
                metrics,
                settings: crate::k8s::Settings::default(),
            },
            rx,
        )
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Translates `mesh` (reusing what did not change) and publishes it.
    pub fn publish(&mut self, mesh: Mesh) -> u64 {
        self.publish_shared(Arc::new(mesh))
    }

    /// [`Publisher::publish`] for a mesh the caller keeps too.
    pub fn publish_shared(&mut self, mesh: Arc<Mesh>) -> u64 {
        let previous = self.tx.borrow().clone();
        let translation =
            translate::translate_reusing(&mesh, Some(&previous.mesh), Some(&previous.translation));
        let version = previous.version + 1;
        self.tx
            .send_replace(Arc::new(MeshState::new(version, mesh, translation)));
        self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
        self.metrics.mesh_version.store(version, Ordering::Relaxed);
        version
    }
}

/// A running control plane; dropping it stops watching the file.
pub struct ControlPlane {
    pub xds_address: SocketAddr,
    pub admin_address: SocketAddr,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    _watcher: Option<notify::RecommendedWatcher>,
    /// The Kubernetes watchers, with the source `Kubernetes`.
    pub kubernetes: Option<crate::k8s::watch::KubeWatch>,
    /// The mesh served now.
    pub state: watch::Receiver<Arc<MeshState>>,
    /// The sidecar injector, when `Options::webhook` asked for it.
    pub webhook: Option<crate::inject::server::Webhook>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ControlPlane {
    /// Loads the mesh file (failing on an invalid one), binds both
    /// addresses and starts serving.
    pub async fn start(options: Options) -> anyhow::Result<ControlPlane> {
        let settings = settings(&options)?;
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(Registry::default());
        let (mut publisher, state) = Publisher::new(metrics.clone());
        let current = state.clone();
        publisher.settings = settings.clone();
        if let Source::Kubernetes(..) = &options.source {
            // Not ready, and nothing served, until every kind is listed.
            metrics.source_out_of_sync.store(true, Ordering::Release);
        } else {
            let mesh = options.source.load(&settings).map_err(|errors| {
                anyhow::anyhow!("invalid {}:\n{errors}", options.source.describe())
            })?;
            publisher.publish(mesh);
        }

        let xds = TcpListener::bind(options.xds_address).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on --xds-address {}: {e}",
                options.xds_address
            )
        })?;
        let admin = TcpListener::bind(options.admin_address)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on --admin-address {}: {e}",
                    options.admin_address
                )
            })?;
        let xds_address = xds.local_addr()?;
        let admin_address = admin.local_addr()?;

        let shared = Shared {
            state: state.clone(),
            registry: registry.clone(),
            metrics: metrics.clone(),
            identifier: format!("remora-control-plane/{}", env!("CARGO_PKG_VERSION")).into(),
            ca: options.ca.clone(),
            cert_lifetime: options.cert_lifetime,
            // Pods are the entries: one that is not read yet will be.
            hold_unknown_nodes: matches!(
                options.source,
                Source::Kubernetes(..) | Source::Manifests(_)
            ),
        };
        let service = AdsServer::new(shared).into_service();
        let signer = options.ca.clone().map(|ca| {
            crate::ca::service::Signer::new(
                ca,
                options.cert_lifetime,
                metrics.signing.clone(),
                options.token_reviewer.clone(),
            )
        });
        let grpc = tokio::spawn(async move {
            let incoming = TcpListenerStream::new(xds);
            let result = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(service)
                .add_optional_service(signer)
                .serve_with_incoming(incoming)
                .await;
            if let Err(error) = result {
                tracing::error!(%error, "the xDS server stopped");
            }
        });
        let webhook = match options.webhook.clone() {
            Some(webhook) => Some(
                crate::inject::server::Webhook::start(webhook, metrics.injections.clone()).await?,
            ),
            None => None,
        };
        let admin_task = tokio::spawn(crate::admin::serve(
            admin,
            state,
            registry.clone(),
            metrics.clone(),
        ));
        let (watcher, kubernetes) = match &options.source {
            Source::Kubernetes(client, lease) => {
                let kube_watch = crate::k8s::watch::start(
                    client.clone(),
                    settings,
                    options.debounce,
                    publisher,
                    lease.clone(),
                );
                (None, Some(kube_watch))
            }
            _ => {
                let watcher =
                    mesh::watch::watch(options.source.clone(), options.debounce, publisher)
                        .map_err(|e| {
                            anyhow::anyhow!("cannot watch {}: {e}", options.source.describe())
                        })?;
                (Some(watcher), None)
            }
        };
        tracing::info!(%xds_address, %admin_address, source = %options.source.describe(), "control plane serving");
        Ok(ControlPlane {
            xds_address,
            admin_address,
            registry,
            metrics,
            _watcher: watcher,
            kubernetes,
            state: current,
            webhook,
            tasks: vec![grpc, admin_task],
        })
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the source does not set, from the options: with a CA every proxy
/// can have an identity, so mTLS is on unless the mesh says otherwise.
fn settings(options: &Options) -> anyhow::Result<crate::k8s::Settings> {
    if let (Some(_), Source::MeshFile(path)) = (&options.trust_domain, &options.source) {
        anyhow::bail!(
            "--trust-domain is for manifests and Kubernetes; the mesh file {} sets its own (trust_domain)",
            path.display()
        );
    }
    crate::k8s::Settings {
        mtls: if options.ca.is_some() {
            MtlsMode::Strict
        } else {
            MtlsMode::Disabled
        },
        ..Default::default()
    }
    .with_trust_domain(options.trust_domain.as_deref())
}

//! `remora-control-plane serve --mesh mesh.yaml` (or `--manifests DIR`):
//! the control plane; `check` validates a source, `crds` prints the CRDs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use remora_api::MtlsMode;

#[derive(Parser)]
#[command(
    name = "remora-control-plane",
    version,
    about = "Remora's control plane: a mesh file or Kubernetes manifests served to proxies over xDS (ADS)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the mesh over ADS, re-reading its source when it changes.
    Serve {
        #[command(flatten)]
        source: SourceFlags,
        #[arg(long, env = "REMORA_XDS_ADDRESS", default_value = "127.0.0.1:18000")]
        xds_address: SocketAddr,
        #[arg(long, env = "REMORA_ADMIN_ADDRESS", default_value = "127.0.0.1:18001")]
        admin_address: SocketAddr,
        /// How long changes gather before the mesh is rebuilt and pushed:
        /// quiet time after a file's last write; with --kubernetes, the
        /// window after an object's change (e.g. 100ms).
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        debounce: Duration,
        /// A `tracing` filter such as `info` or `debug`.
        #[arg(long, env = "REMORA_LOG_LEVEL", default_value = "info")]
        log_level: String,
        #[command(flatten)]
        ca: CaFlags,
        /// Lifetime of the certificates the CA signs.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        cert_lifetime: Duration,
        #[command(flatten)]
        webhook: Box<WebhookFlags>,
        /// The SPIFFE trust domain of every identity, with --manifests or
        /// --kubernetes (a mesh file sets its own `trust_domain`).
        #[arg(long, env = "REMORA_TRUST_DOMAIN", conflicts_with = "mesh")]
        trust_domain: Option<String>,
    },
    /// Issue a bootstrap token: it lets the node get certificates for the
    /// identity the mesh file gives it, from this CA.
    Token {
        #[arg(long)]
        mesh: PathBuf,
        /// The node id the token is for (matched as the control plane does).
        #[arg(long)]
        node_id: String,
        #[command(flatten)]
        ca: CaFlags,
        /// How long the token may be used.
        #[arg(long, default_value = "8760h", value_parser = parse_duration)]
        valid_for: Duration,
    },
    /// Print a pod as the sidecar injector would admit it (JSON), e.g.
    /// `remora-control-plane inject --inject-config inject.yaml -f pod.yaml
    /// | kubectl apply -f -`. Exits with 1 when the injector would refuse it.
    Inject {
        /// How pods are injected (the chart's ConfigMap `inject.yaml`).
        #[arg(long, env = "REMORA_INJECT_CONFIG")]
        inject_config: PathBuf,
        /// The Pod, YAML or JSON; `-`: standard input.
        #[arg(long, short)]
        file: PathBuf,
    },
    /// Print the CustomResourceDefinitions (TrafficPolicy,
    /// AuthorizationPolicy) as YAML, for `kubectl apply -f -`.
    Crds,
    /// Validate a mesh file or Kubernetes manifests and print what each
    /// proxy would be served. Exits with 1 when anything is invalid.
    Check {
        #[command(flatten)]
        source: SourceFlags,
        /// Check as a control plane that runs a CA does (a mesh without
        /// `mtls` is then `strict`).
        #[arg(long)]
        with_ca: bool,
        /// The SPIFFE trust domain, with --manifests (a mesh file sets its
        /// own `trust_domain`).
        #[arg(long, env = "REMORA_TRUST_DOMAIN", conflicts_with = "mesh")]
        trust_domain: Option<String>,
    },
}

/// Where the mesh comes from: exactly one of --mesh and --manifests.
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
struct SourceFlags {
    /// The mesh file (services, routes, policies, proxies).
    #[arg(long, env = "REMORA_MESH")]
    mesh: Option<PathBuf>,
    /// Kubernetes manifests: a YAML file, or a directory of them
    /// (Services, EndpointSlices, Pods, HTTPRoutes, GRPCRoutes,
    /// TrafficPolicies, AuthorizationPolicies).
    #[arg(long, env = "REMORA_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// Watch the Kubernetes API server (in-cluster service account, else
    /// KUBECONFIG): serve only.
    #[arg(long)]
    kubernetes: bool,
}

impl SourceFlags {
    /// The file source; `None` for `--kubernetes`.
    fn file_source(&self) -> Option<remora_control_plane::Source> {
        use remora_control_plane::Source;
        match (&self.mesh, &self.manifests) {
            (Some(mesh), _) => Some(Source::MeshFile(mesh.clone())),
            (None, Some(manifests)) => Some(Source::Manifests(manifests.clone())),
            (None, None) => None,
        }
    }
}

/// The sidecar injector (docs/kubernetes.md, "Sidecar injection").
#[derive(clap::Args, Debug, Clone)]
struct WebhookFlags {
    /// Serve the sidecar injector (HTTPS) here, e.g. 0.0.0.0:15017.
    #[arg(long, env = "REMORA_WEBHOOK_ADDRESS", requires = "inject_config")]
    webhook_address: Option<SocketAddr>,
    /// How pods are injected (image, xDS and CA addresses, resources).
    #[arg(long, env = "REMORA_INJECT_CONFIG")]
    inject_config: Option<PathBuf>,
    /// The serving certificate, PEM (e.g. a cert-manager Secret, re-read
    /// when it changes); without it one is generated.
    #[arg(long, env = "REMORA_WEBHOOK_CERT", requires = "webhook_key")]
    webhook_cert: Option<PathBuf>,
    /// The key of --webhook-cert, PEM.
    #[arg(long, env = "REMORA_WEBHOOK_KEY", requires = "webhook_cert")]
    webhook_key: Option<PathBuf>,
    /// The names a generated certificate is for (comma-separated), e.g.
    /// remora-webhook.remora-system.svc.
    #[arg(
        long,
        env = "REMORA_WEBHOOK_DNS_NAMES",
        value_delimiter = ',',
        default_value = "localhost"
    )]
    webhook_dns_names: Vec<String>,
    /// With --kubernetes: the Secret (in POD_NAMESPACE) that replicas
    /// share a generated certificate through.
    #[arg(
        long,
        env = "REMORA_WEBHOOK_SECRET",
        default_value = "remora-webhook-tls"
    )]
    webhook_secret: String,
    /// With --kubernetes: the MutatingWebhookConfiguration whose caBundle
    /// gets the generated certificate's CA.
    #[arg(
        long,
        env = "REMORA_WEBHOOK_CONFIGURATION",
        default_value = "remora-sidecar-injector"
    )]
    webhook_configuration: String,
}

impl WebhookFlags {
    fn options(
        &self,
        client: Option<&kube::Client>,
    ) -> anyhow::Result<Option<remora_control_plane::inject::server::WebhookOptions>> {
        use remora_control_plane::inject::tls::{CertSource, KubernetesCerts};
        let Some(address) = self.webhook_address else {
            return Ok(None);
        };
        let path = self.inject_config.as_ref().expect("clap requires it");
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--inject-config {}: {e}", path.display()))?;
        let config =
            remora_control_plane::inject::InjectConfig::parse(&text).map_err(|errors| {
                anyhow::anyhow!("invalid --inject-config {}:\n{errors}", path.display())
            })?;
        let certs = match (&self.webhook_cert, &self.webhook_key) {
            (Some(cert), Some(key)) => CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => CertSource::Generated {
                dns_names: self.webhook_dns_names.clone(),
                kubernetes: client.map(|client| KubernetesCerts {
                    client: client.clone(),
                    namespace: std::env::var("POD_NAMESPACE")
                        .ok()
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| "default".into()),
                    secret: self.webhook_secret.clone(),
                    webhook_configuration: self.webhook_configuration.clone(),
                }),
            },
        };
        Ok(Some(remora_control_plane::inject::server::WebhookOptions {
            address,
            config: std::sync::Arc::new(config),
            certs,
        }))
    }
}

/// Where the certificate authority's key is.
#[derive(clap::Args, Debug, Clone)]
struct CaFlags {
    /// The CA's directory: a root generated at first start is kept there
    /// (`ca.pem`, `ca.key`).
    #[arg(long, env = "REMORA_CA_DIR", conflicts_with_all = ["ca_cert", "ca_key", "ca_secret"])]
    ca_dir: Option<PathBuf>,
    /// With --kubernetes: the Secret (in POD_NAMESPACE) that holds the
    /// CA's root, generated by the first replica when absent; proxies then
    /// authenticate with projected service-account tokens (TokenReview).
    #[arg(long, env = "REMORA_CA_SECRET", conflicts_with_all = ["ca_cert", "ca_key"])]
    ca_secret: Option<String>,
    /// The audience service-account tokens must carry for the CA.
    #[arg(long, env = "REMORA_TOKEN_AUDIENCE", default_value = "remora-ca")]
    token_audience: String,
    /// The operator's CA certificate (a root, or an intermediate followed
    /// by its chain up to the root), PEM.
    #[arg(long, env = "REMORA_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The private key of --ca-cert, PEM.
    #[arg(long, env = "REMORA_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
}

impl CaFlags {
    fn source(&self) -> Option<remora_control_plane::ca::CaSource> {
        use remora_control_plane::ca::CaSource;
        match (&self.ca_dir, &self.ca_cert, &self.ca_key) {
            (Some(dir), _, _) => Some(CaSource::Dir(dir.clone())),
            (None, Some(cert), Some(key)) => Some(CaSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    remora_api::scalar::parse_duration(text)
}

fn main() -> anyhow::Result<()> {
    // The one crypto provider (tonic, kube and the CA all use rustls).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Inject {
            inject_config,
            file,
        } => {
            use remora_control_plane::inject;
            let text = std::fs::read_to_string(&inject_config)
                .map_err(|e| anyhow::anyhow!("--inject-config {}: {e}", inject_config.display()))?;
            let config = inject::InjectConfig::parse(&text).map_err(|errors| {
                anyhow::anyhow!(
                    "invalid --inject-config {}:\n{errors}",
                    inject_config.display()
                )
            })?;
            let pod_text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
            };
            let pod: serde_json::Value = serde_saphyr::from_str(&pod_text)
                .map_err(|e| anyhow::anyhow!("{}: not YAML or JSON: {e}", file.display()))?;
            let (pod, outcome) = inject::inject_pod(&pod, &config);
            match outcome {
                inject::Outcome::Denied(message) => anyhow::bail!("refused: {message}"),
                inject::Outcome::Skipped(why) => eprintln!("not injected: {why}"),
                inject::Outcome::Injected(_) => {}
            }
            println!("{}", serde_json::to_string_pretty(&pod)?);
            Ok(())
        }
        Command::Crds => {
            print!("{}", remora_api::crd::crds_yaml());
            Ok(())
        }
        Command::Check {
            source,
            with_ca,
            trust_domain,
        } => {
            let Some(source) = source.file_source() else {
                anyhow::bail!(
                    "check reads files: --mesh FILE or --manifests DIR (export the cluster's objects with kubectl get -o yaml)"
                );
            };
            let default_mtls = if with_ca {
                MtlsMode::Strict
            } else {
                MtlsMode::Disabled
            };
            let path = source.path().display().to_string();
            let (mesh, rejected) = match &source {
                remora_control_plane::Source::MeshFile(file) => {
                    let mesh = remora_control_plane::mesh::load_file(file, default_mtls)
                        .map_err(|errors| anyhow::anyhow!("invalid mesh file {path}:\n{errors}"))?;
                    (mesh, 0)
                }
                remora_control_plane::Source::Manifests(dir) => {
                    let settings = remora_control_plane::k8s::Settings {
                        mtls: default_mtls,
                        ..Default::default()
                    }
                    .with_trust_domain(trust_domain.as_deref())?;
                    let (mesh, report) = remora_control_plane::k8s::manifests::load(dir, &settings)
                        .map_err(|errors| anyhow::anyhow!("invalid manifests {path}:\n{errors}"))?;
                    let mut rejected = 0;
                    for (object, verdict) in &report.objects {
                        match verdict {
                            remora_control_plane::k8s::Verdict::Accepted => {
                                println!("accepted  {object}");
                            }
                            remora_control_plane::k8s::Verdict::Rejected { reason, message } => {
                                rejected += 1;
                                println!("REJECTED  {object} ({reason}): {message}");
                            }
                        }
                    }
                    (mesh, rejected)
                }
                remora_control_plane::Source::Kubernetes(..) => unreachable!("a file source"),
            };
            let translation = remora_control_plane::translate::translate(&mesh, None);
            for (entry, resources) in mesh.proxies.iter().zip(&translation.proxies) {
                println!("{}:", entry.node_id);
                for (i, t) in remora_xds_proto::type_url::ALL.iter().enumerate() {
                    for (name, resource) in resources.of(i).iter() {
                        println!(
                            "  {:<9} {name} ({})",
                            remora_xds_proto::type_url::short(t),
                            resource.version
                        );
                    }
                }
            }
            if rejected > 0 {
                anyhow::bail!("{rejected} object(s) in {path} rejected (above)");
            }
            Ok(())
        }
        Command::Token {
            mesh,
            node_id,
            ca,
            valid_for,
        } => {
            let mesh_path = mesh;
            let mesh = remora_control_plane::mesh::load_file(&mesh_path, MtlsMode::Strict)
                .map_err(|errors| {
                    anyhow::anyhow!("invalid mesh file {}:\n{errors}", mesh_path.display())
                })?;
            let Some(source) = ca.source() else {
                anyhow::bail!("token needs the CA: --ca-dir, or --ca-cert with --ca-key");
            };
            let Some(entry) = mesh.proxy_for(&node_id) else {
                anyhow::bail!(
                    "no proxy entry in {} matches node id {node_id:?}",
                    mesh_path.display()
                );
            };
            let identity = mesh
                .proxy_identity(&mesh.proxies[entry], &mesh.service_index())
                .map_err(|e| anyhow::anyhow!("proxies[{entry}].identity: {e}"))?;
            let ca = source.open(&mesh.trust_domain)?;
            eprintln!("token for {node_id}: {identity}, valid for {valid_for:?}");
            println!("{}", ca.issue_token(&node_id, &identity, valid_for));
            Ok(())
        }
        Command::Serve {
            source,
            xds_address,
            admin_address,
            debounce,
            log_level,
            ca,
            cert_lifetime,
            webhook,
            trust_domain,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_new(&log_level)
                        .map_err(|e| anyhow::anyhow!("invalid --log-level {log_level:?}: {e}"))?,
                )
                .init();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let file_source = source.file_source();
            if ca.ca_secret.is_some() && file_source.is_some() {
                anyhow::bail!("--ca-secret needs --kubernetes (use --ca-dir with files)");
            }
            let ca_flags = ca.clone();
            // The CA's: a mesh file's own, else --trust-domain (checked
            // before a root is generated for it).
            let ca_trust_domain = match &file_source {
                Some(source @ remora_control_plane::Source::MeshFile(_)) => source
                    .load(&remora_control_plane::k8s::Settings::default())
                    .ok()
                    .map(|m| m.trust_domain),
                _ => None,
            };
            let ca_trust_domain = match ca_trust_domain {
                Some(domain) => domain,
                None => {
                    remora_control_plane::k8s::Settings::default()
                        .with_trust_domain(trust_domain.as_deref())?
                        .trust_domain
                }
            };
            let ca = match ca.source() {
                Some(ca_source) => Some(std::sync::Arc::new(ca_source.open(&ca_trust_domain)?)),
                None => None,
            };
            runtime.block_on(async move {
                let source = match file_source {
                    Some(source) => source,
                    None => remora_control_plane::Source::Kubernetes(
                        kube::Client::try_default().await.map_err(|e| {
                            anyhow::anyhow!(
                                "--kubernetes: no Kubernetes API server to talk to (in-cluster service account or KUBECONFIG): {e}"
                            )
                        })?,
                        remora_control_plane::k8s::leader::LeaseConfig::from_env(),
                    ),
                };
                let client = match &source {
                    remora_control_plane::Source::Kubernetes(client, _) => Some(client),
                    _ => None,
                };
                let mut ca = ca;
                let mut token_reviewer = None;
                if let (Some(secret), Some(client)) = (&ca_flags.ca_secret, client) {
                    let namespace = std::env::var("POD_NAMESPACE")
                        .ok()
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| "default".into());
                    ca = Some(std::sync::Arc::new(
                        remora_control_plane::ca::kubernetes::shared_root(
                            client,
                            &namespace,
                            secret,
                            &ca_trust_domain,
                        )
                        .await?,
                    ));
                    token_reviewer = Some(remora_control_plane::ca::kubernetes::TokenReviewer {
                        client: client.clone(),
                        audience: ca_flags.token_audience.clone(),
                        trust_domain: ca_trust_domain.clone(),
                    });
                }
                let webhook = webhook.options(client)?;
                let _control_plane =
                    remora_control_plane::ControlPlane::start(remora_control_plane::Options {
                        source,
                        xds_address,
                        admin_address,
                        debounce,
                        ca,
                        cert_lifetime,
                        token_reviewer,
                        webhook,
                        trust_domain,
                    })
                    .await?;
                shutdown_signal().await;
                tracing::info!("shutting down");
                Ok(())
            })
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

//! `remora-control-plane serve --mesh mesh.yaml`: the standalone control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "remora-control-plane",
    version,
    about = "Remora's control plane: a mesh file served to proxies over xDS (ADS)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the mesh file over ADS, re-reading it when it changes.
    Serve {
        /// The mesh file (services, routes, policies, proxies).
        #[arg(long, env = "REMORA_MESH")]
        mesh: PathBuf,
        #[arg(long, env = "REMORA_XDS_ADDRESS", default_value = "127.0.0.1:18000")]
        xds_address: SocketAddr,
        #[arg(long, env = "REMORA_ADMIN_ADDRESS", default_value = "127.0.0.1:18001")]
        admin_address: SocketAddr,
        /// Quiet time after a mesh file change before it is pushed (e.g. 100ms).
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        debounce: Duration,
        /// A `tracing` filter such as `info` or `debug`.
        #[arg(long, env = "REMORA_LOG_LEVEL", default_value = "info")]
        log_level: String,
    },
    /// Validate a mesh file and print what each proxy would be served.
    Check {
        #[arg(long)]
        mesh: PathBuf,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    remora_proxy::config::scalar::parse_duration(text)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { mesh } => {
            let mesh = remora_control_plane::mesh::load_file(&mesh).map_err(|errors| {
                anyhow::anyhow!("invalid mesh file {}:\n{errors}", mesh.display())
            })?;
            let translation = remora_control_plane::translate::translate(&mesh, None);
            for (entry, resources) in mesh.proxies.iter().zip(&translation.proxies) {
                println!("{}:", entry.node_id);
                for (t, by_name) in remora_xds_proto::type_url::ALL
                    .iter()
                    .zip(&resources.by_type)
                {
                    for (name, resource) in by_name {
                        println!(
                            "  {:<9} {name} ({})",
                            remora_xds_proto::type_url::short(t),
                            resource.version
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Serve {
            mesh,
            xds_address,
            admin_address,
            debounce,
            log_level,
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
            runtime.block_on(async move {
                let _control_plane =
                    remora_control_plane::ControlPlane::start(remora_control_plane::Options {
                        mesh,
                        xds_address,
                        admin_address,
                        debounce,
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

//! Following the mesh's source (a mesh file, or a directory of Kubernetes
//! manifests): changes are debounced (a burst of writes is one change),
//! files whose bytes did not change are not re-read, and a source that
//! fails validation is logged with its field paths and counted while the
//! last good mesh keeps being served.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::server::{Publisher, Source};

/// Watches the source until the returned watcher is dropped.
pub fn watch(
    source: Source,
    debounce: Duration,
    publisher: Publisher,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    let (tx, rx) = mpsc::channel(1);
    let (directory, name): (PathBuf, Option<std::ffi::OsString>) = match &source {
        Source::MeshFile(path) => (
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            Some(
                path.file_name()
                    .map(|n| n.to_os_string())
                    .unwrap_or_default(),
            ),
        ),
        Source::Manifests(path) if path.is_dir() => (path.clone(), None),
        Source::Kubernetes(..) => unreachable!("the Kubernetes source has its own watchers"),
        Source::Manifests(path) => (
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            path.file_name().map(|n| n.to_os_string()),
        ),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let concerns = match &name {
            Some(name) => remora_api::watch::concerns_config(&event, name),
            // A directory of manifests: any file in it but a mere read.
            None => !matches!(event.kind, notify::EventKind::Access(_)),
        };
        if concerns {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&directory, RecursiveMode::NonRecursive)?;
    tokio::spawn(follow(source, debounce, publisher, rx));
    Ok(watcher)
}

async fn follow(
    source: Source,
    debounce: Duration,
    mut publisher: Publisher,
    mut rx: mpsc::Receiver<()>,
) {
    let mut last = source.fingerprint();
    while rx.recv().await.is_some() {
        // Quiet for `debounce` after the last event: editors write in steps.
        loop {
            match tokio::time::timeout(debounce, rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let current = source.fingerprint();
        if current == last {
            continue;
        }
        last = current;
        let path = source.path();
        match source.load(&publisher.settings) {
            Ok(mesh) => {
                let version = publisher.publish(mesh);
                tracing::info!(version, file = %path.display(), "mesh reloaded");
            }
            Err(errors) => {
                publisher
                    .metrics()
                    .reloads_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    file = %path.display(),
                    "mesh source rejected; the last good mesh stays:\n{errors}"
                );
            }
        }
    }
}

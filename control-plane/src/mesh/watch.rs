//! Following the mesh file: changes are debounced (a burst of writes is one
//! change), a file whose bytes did not change is not re-read, and a file
//! that fails validation is logged with its field paths and counted while
//! the last good mesh keeps being served.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::server::Publisher;

/// Watches `path` until the returned watcher is dropped.
pub fn watch(
    path: PathBuf,
    debounce: Duration,
    publisher: Publisher,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    let (tx, rx) = mpsc::channel(1);
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && remora_proxy::reload::concerns_config(&event, &name)
        {
            let _ = tx.try_send(());
        }
    })?;
    let directory = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher.watch(directory, RecursiveMode::NonRecursive)?;
    tokio::spawn(follow(path, debounce, publisher, rx));
    Ok(watcher)
}

async fn follow(
    path: PathBuf,
    debounce: Duration,
    mut publisher: Publisher,
    mut rx: mpsc::Receiver<()>,
) {
    let mut last = std::fs::read(&path).ok();
    while rx.recv().await.is_some() {
        // Quiet for `debounce` after the last event: editors write in steps.
        loop {
            match tokio::time::timeout(debounce, rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let current = std::fs::read(&path).ok();
        if current == last {
            continue;
        }
        last = current;
        match super::load_file(&path, publisher.default_mtls) {
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
                    "mesh file rejected; the last good mesh stays:\n{errors}"
                );
            }
        }
    }
}

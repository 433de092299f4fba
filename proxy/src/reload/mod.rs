//! Hot reload: the config file is watched, and SIGHUP asks for a reload too.
//!
//! The file's directory is watched rather than the file, so editors that
//! replace the file and Kubernetes ConfigMap volumes (which swap a symlink)
//! are both seen. Events are debounced; a reload happens only when the
//! file's bytes changed (SIGHUP always reloads). A rejected file is logged
//! with its field paths and counted, and the running config stays.

pub use remora_api::watch::concerns_config;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::proxy::Proxy;

/// Quiet time after the last file event before reading the file.
const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    FileChanged,
    Signal,
}

/// Watches `path` and reloads `proxy` on change or SIGHUP until the proxy
/// drains. Keep the returned watcher alive for as long as watching should go on.
pub fn watch(proxy: Proxy, path: PathBuf) -> Result<notify::RecommendedWatcher, notify::Error> {
    let (tx, rx) = mpsc::channel(1);
    let file_tx = tx.clone();
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && concerns_config(&event, &name)
        {
            let _ = file_tx.try_send(Trigger::FileChanged);
        }
    })?;
    let directory = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher.watch(directory, RecursiveMode::NonRecursive)?;
    // Registered now, before the caller announces it is up: a SIGHUP that
    // arrived before its handler would end the process.
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => {
            tokio::spawn(forward_sighup(hangups, tx));
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reloads follow file changes only")
        }
    }
    tokio::spawn(reload_loop(proxy, path, rx));
    Ok(watcher)
}

async fn forward_sighup(mut hangups: tokio::signal::unix::Signal, tx: mpsc::Sender<Trigger>) {
    while hangups.recv().await.is_some() {
        if tx.send(Trigger::Signal).await.is_err() {
            break;
        }
    }
}

async fn reload_loop(proxy: Proxy, path: PathBuf, mut rx: mpsc::Receiver<Trigger>) {
    let mut last = std::fs::read(&path).ok();
    while let Some(mut trigger) = rx.recv().await {
        // Let a burst of events settle (editors write in several steps).
        loop {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(next)) => {
                    trigger = if next == Trigger::Signal {
                        next
                    } else {
                        trigger
                    }
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if proxy.is_draining() {
            return;
        }
        let current = std::fs::read(&path).ok();
        if trigger == Trigger::FileChanged && current == last {
            continue;
        }
        last = current;
        match proxy.reload_file(&path) {
            Ok(version) => tracing::info!(version, file = %path.display(), "config reloaded"),
            Err(errors) => tracing::error!(
                file = %path.display(),
                serving = proxy.snapshot().version,
                "config rejected; the running config stays:\n{errors}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind};
    use notify::{Event, EventKind};

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_changes_to_the_config_file_trigger_a_read() {
        let name = std::ffi::OsStr::new("proxy.yaml");
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(concerns_config(
            &event(write, "/etc/remora/proxy.yaml"),
            name
        ));
        let create = EventKind::Create(CreateKind::File);
        assert!(concerns_config(
            &event(create, "/etc/remora/..data_tmp"),
            name
        ));
        // Reading the file (open, close after read) must not cause another read.
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!concerns_config(
            &event(open, "/etc/remora/proxy.yaml"),
            name
        ));
        let close = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(!concerns_config(
            &event(close, "/etc/remora/proxy.yaml"),
            name
        ));
        let written = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(concerns_config(
            &event(written, "/etc/remora/proxy.yaml"),
            name
        ));
        // Another file in the same directory, such as an access log.
        assert!(!concerns_config(
            &event(write, "/etc/remora/access.log"),
            name
        ));
    }
}

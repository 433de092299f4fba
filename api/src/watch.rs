//! Watching a config file for changes.

/// Whether a directory event may have changed the config file: not a mere
/// read (reading the file must not trigger another read; closing it after
/// writing does count), and about the file itself or, for Kubernetes
/// ConfigMap volumes, the `..data` link that is swapped on an update.
/// Writes to other files in the directory (an access log, say) are ignored.
pub fn concerns_config(event: &notify::Event, name: &std::ffi::OsStr) -> bool {
    use notify::event::{AccessKind, AccessMode};
    if let notify::EventKind::Access(access) = event.kind
        && access != AccessKind::Close(AccessMode::Write)
    {
        return false;
    }
    event.paths.iter().any(|p| {
        p.file_name()
            .is_some_and(|f| f == name || f.to_string_lossy().starts_with("..data"))
    })
}

//! Kubernetes manifests on disk: `check --manifests DIR` and
//! `serve --manifests DIR` read the objects a cluster would hold from YAML
//! (or JSON) files, multi-document, `kubectl get -o yaml` lists included.

use std::path::{Path, PathBuf};

use remora_api::ConfigErrors;

use super::{Objects, Report, Settings};
use crate::mesh::Mesh;

/// The manifest files of `path`: itself if it is a file, else the
/// `.yaml`, `.yml` and `.json` files in it, by name.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, ConfigErrors> {
    let cannot = |e: std::io::Error| {
        ConfigErrors::one("", format!("cannot read manifests {}: {e}", path.display()))
    };
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(cannot)? {
        let file = entry.map_err(cannot)?.path();
        let manifest = file
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
        if manifest && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every object of the manifests at `path`. A file that is not YAML
/// is an error; an object that does not parse is in the objects' report.
pub fn read(path: &Path) -> Result<Objects, ConfigErrors> {
    let mut objects = Objects::default();
    for file in files(path)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", file.display())))?;
        let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| ConfigErrors::one("", format!("{}: {e}", file.display())))?;
        for document in documents.into_iter().filter(|d| !d.is_null()) {
            objects.add(document);
        }
    }
    Ok(objects)
}

/// The mesh the manifests at `path` make, and what became of each object.
pub fn load(path: &Path, settings: &Settings) -> Result<(Mesh, Report), ConfigErrors> {
    let objects = read(path)?;
    super::build(&objects, settings).map_err(ConfigErrors)
}

//! Reading the mesh file: YAML to [`Mesh`] with field-path errors, then the
//! checks that need the whole file (references, duplicates, regexes).

use std::path::Path;

use remora_proxy::config::ConfigErrors;
use serde::Deserialize;

use super::Mesh;

/// Parses and validates a mesh file's text. An error names the field path,
/// e.g. `routes[0].rules[1].backendRefs[0].name: no service "reviews.default"`.
pub fn parse_yaml(text: &str) -> Result<Mesh, ConfigErrors> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let mut path = String::new();
    let mesh = serde_saphyr::with_deserializer_from_str(text, |de| {
        let mut track = serde_path_to_error::Track::new();
        let result = Mesh::deserialize(serde_path_to_error::Deserializer::new(de, &mut track));
        if result.is_err() {
            path = track.path().to_string();
        }
        result
    })
    .map_err(|error| {
        let path = if path == "." { String::new() } else { path };
        ConfigErrors::one(path, error.without_snippet().to_string())
    })?;
    let errors = super::validate::check(&mesh);
    if errors.is_empty() {
        Ok(mesh)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Reads, parses and validates a mesh file.
pub fn load_file(path: &Path) -> Result<Mesh, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors::one(
            "",
            format!("cannot read mesh file {}: {error}", path.display()),
        )
    })?;
    parse_yaml(&text)
}

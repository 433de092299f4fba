//! Reading the mesh file: YAML to [`Mesh`] with field-path errors, then the
//! checks that need the whole file (references, duplicates, regexes).

use std::path::Path;

use super::Mesh;
use remora_proxy::config::ConfigErrors;

/// Parses and validates a mesh file's text. An error names the field path,
/// e.g. `routes[0].rules[1].backendRefs[0].name: no service "reviews.default"`.
pub fn parse_yaml(text: &str) -> Result<Mesh, ConfigErrors> {
    let mesh: Mesh = remora_proxy::config::parse_yaml_as(text)?;
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

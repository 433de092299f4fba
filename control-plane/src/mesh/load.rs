//! Reading the mesh file: YAML to [`Mesh`] with field-path errors, then the
//! checks that need the whole file (references, duplicates, regexes).

use std::path::Path;

use super::Mesh;
use remora_api::{ConfigErrors, MtlsMode};

/// Parses and validates a mesh file's text. An error names the field path,
/// e.g. `routes[0].rules[1].backendRefs[0].name: no service "reviews.default"`.
pub fn parse_yaml(text: &str) -> Result<Mesh, ConfigErrors> {
    parse_yaml_with(text, MtlsMode::Disabled)
}

/// [`parse_yaml`], with `default_mtls` where the file sets no `mtls`
/// (`strict` on a control plane that runs a CA).
pub fn parse_yaml_with(text: &str, default_mtls: MtlsMode) -> Result<Mesh, ConfigErrors> {
    let mut mesh: Mesh = remora_api::parse_yaml_as(text)?;
    mesh.mtls.get_or_insert(default_mtls);
    let errors = super::validate::check(&mesh);
    if errors.is_empty() {
        Ok(mesh)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Reads, parses and validates a mesh file.
pub fn load_file(path: &Path, default_mtls: MtlsMode) -> Result<Mesh, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors::one(
            "",
            format!("cannot read mesh file {}: {error}", path.display()),
        )
    })?;
    parse_yaml_with(&text, default_mtls)
}

//! YAML with field-path errors.

use serde::Deserialize;

use crate::ConfigErrors;

/// Parses YAML into any `T` with the same field-path errors (the control
/// plane's mesh file uses it too). Empty text is an empty map.
pub fn parse_yaml_as<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, ConfigErrors> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let mut path = String::new();
    serde_saphyr::with_deserializer_from_str(text, |de| {
        let mut track = serde_path_to_error::Track::new();
        let result = T::deserialize(serde_path_to_error::Deserializer::new(de, &mut track));
        if result.is_err() {
            path = track.path().to_string();
        }
        result
    })
    .map_err(|error| {
        let path = if path == "." { String::new() } else { path };
        ConfigErrors::one(path, error.without_snippet().to_string())
    })
}

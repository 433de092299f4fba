//! Request and response header edits: remove, then set (replace), then add
//! (append). Names and values are parsed once per snapshot. Headers that
//! frame the message (`content-length`, `transfer-encoding`, connection
//! management) cannot be edited, so an edit can never corrupt a stream.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{ConfigError, HeaderEditsConfig, HeaderValueConfig};

#[derive(Debug, Default)]
pub struct HeaderEdits {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
}

const PROTECTED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

impl HeaderEdits {
    pub fn compile(
        config: &HeaderEditsConfig,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> HeaderEdits {
        let remove = config
            .remove
            .iter()
            .enumerate()
            .filter_map(|(i, name)| editable_name(name, format!("{path}.remove[{i}]"), errors))
            .collect();
        let set = compile_pairs(&config.set, &format!("{path}.set"), errors);
        let add = compile_pairs(&config.add, &format!("{path}.add"), errors);
        HeaderEdits { remove, set, add }
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

fn editable_name(name: &str, at: String, errors: &mut Vec<ConfigError>) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(parsed) if PROTECTED.contains(&parsed.as_str()) => {
            errors.push(ConfigError::new(
                at,
                format!(
                    "{name:?} frames the message and is managed by the proxy; it cannot be edited"
                ),
            ));
            None
        }
        Ok(parsed) => Some(parsed),
        Err(_) => {
            errors.push(ConfigError::new(
                at,
                format!("{name:?} is not a valid header name"),
            ));
            None
        }
    }
}

fn compile_pairs(
    list: &[HeaderValueConfig],
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Box<[(HeaderName, HeaderValue)]> {
    let mut out = Vec::with_capacity(list.len());
    for (i, header) in list.iter().enumerate() {
        let name = editable_name(&header.name, format!("{path}[{i}].name"), errors);
        let value = match HeaderValue::from_str(&header.value) {
            Ok(value) => Some(value),
            Err(_) => {
                errors.push(ConfigError::new(
                    format!("{path}[{i}].value"),
                    format!(
                        "{:?} is not a valid header value (control characters are not allowed)",
                        header.value
                    ),
                ));
                None
            }
        };
        if let (Some(name), Some(value)) = (name, value) {
            out.push((name, value));
        }
    }
    out.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(name: &str, value: &str) -> HeaderValueConfig {
        HeaderValueConfig {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn edits_apply_remove_then_set_then_add() {
        let config = HeaderEditsConfig {
            remove: vec!["x-debug".into(), "x-env".into()],
            set: vec![kv("x-env", "prod"), kv("x-one", "1")],
            add: vec![kv("x-one", "2")],
        };
        let mut errors = Vec::new();
        let edits = HeaderEdits::compile(&config, "r", &mut errors);
        assert!(errors.is_empty());
        let mut headers = HeaderMap::new();
        headers.insert("x-debug", HeaderValue::from_static("1"));
        headers.insert("x-env", HeaderValue::from_static("dev"));
        headers.insert("x-one", HeaderValue::from_static("0"));
        edits.apply(&mut headers);
        assert!(headers.get("x-debug").is_none());
        assert_eq!(headers.get("x-env").unwrap(), "prod");
        let ones: Vec<_> = headers
            .get_all("x-one")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(ones, ["1", "2"]);
    }

    #[test]
    fn framing_headers_and_bad_values_are_refused_by_path() {
        let config = HeaderEditsConfig {
            remove: vec!["Content-Length".into()],
            set: vec![kv("x-ok", "bad\nvalue"), kv("bad name", "v")],
            add: vec![kv("transfer-encoding", "chunked")],
        };
        let mut errors = Vec::new();
        HeaderEdits::compile(&config, "r.request_headers", &mut errors);
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "r.request_headers.remove[0]: \"Content-Length\" frames the message and is managed by the proxy; it cannot be edited",
                "r.request_headers.set[0].value: \"bad\\nvalue\" is not a valid header value (control characters are not allowed)",
                "r.request_headers.set[1].name: \"bad name\" is not a valid header name",
                "r.request_headers.add[0].name: \"transfer-encoding\" frames the message and is managed by the proxy; it cannot be edited",
            ]
        );
    }
}

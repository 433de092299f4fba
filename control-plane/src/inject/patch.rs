//! RFC 6902 JSON Patch between two JSON documents: what the webhook answers
//! with, computed from the pod as it came and the pod as injected, so the
//! patch touches only what injection changed (every field the webhook does
//! not know, from any Kubernetes version, is left as it was).

use serde_json::{Map, Value, json};

/// The operations that turn `from` into `to`. Objects are compared key by
/// key, arrays of the same length element by element; an array whose
/// length changed is replaced whole.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    walk(from, to, &mut String::new(), &mut ops);
    ops
}

fn walk(from: &Value, to: &Value, path: &mut String, ops: &mut Vec<Value>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => objects(a, b, path, ops),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                walk(x, y, path, ops);
                path.truncate(len);
            }
        }
        _ if from == to => {}
        _ => ops.push(json!({"op": "replace", "path": path.as_str(), "value": to})),
    }
}

fn objects(
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    path: &mut String,
    ops: &mut Vec<Value>,
) {
    for (key, x) in a {
        let len = path.len();
        push_token(path, key);
        match b.get(key) {
            Some(y) => walk(x, y, path, ops),
            None => ops.push(json!({"op": "remove", "path": path.as_str()})),
        }
        path.truncate(len);
    }
    for (key, y) in b {
        if !a.contains_key(key) {
            let len = path.len();
            push_token(path, key);
            ops.push(json!({"op": "add", "path": path.as_str(), "value": y}));
            path.truncate(len);
        }
    }
}

/// A JSON Pointer reference token: `~` and `/` escaped (RFC 6901).
fn push_token(path: &mut String, key: &str) {
    path.push('/');
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

/// Applies `ops` (as [`diff`] writes them: add, remove, replace) to
/// `document`: what the API server does with the webhook's answer, for the
/// tests.
pub fn apply(document: &mut Value, ops: &[Value]) -> Result<(), String> {
    for op in ops {
        let path = op["path"].as_str().ok_or("an operation without a path")?;
        let (parent, last) = match path.rfind('/') {
            Some(i) => (&path[..i], unescape(&path[i + 1..])),
            None => return Err(format!("{path:?}: not a JSON pointer")),
        };
        let target = document
            .pointer_mut(parent)
            .ok_or_else(|| format!("{path}: no parent {parent:?}"))?;
        match (op["op"].as_str(), target) {
            (Some("add" | "replace"), Value::Object(map)) => {
                map.insert(last, op["value"].clone());
            }
            (Some("remove"), Value::Object(map)) => {
                map.remove(&last)
                    .ok_or_else(|| format!("{path}: nothing to remove"))?;
            }
            (Some(kind @ ("add" | "replace" | "remove")), Value::Array(items)) => {
                let index: usize = last.parse().map_err(|_| format!("{path}: not an index"))?;
                match kind {
                    "add" if index <= items.len() => items.insert(index, op["value"].clone()),
                    "replace" if index < items.len() => items[index] = op["value"].clone(),
                    "remove" if index < items.len() => {
                        items.remove(index);
                    }
                    _ => return Err(format!("{path}: index out of range")),
                }
            }
            (kind, _) => return Err(format!("{path}: cannot {kind:?} here")),
        }
    }
    Ok(())
}

/// What the API server stores for `pod` given the webhook's `response`
/// (an `AdmissionReview`'s `response`): `None` when it carries no patch.
pub fn patched(pod: &Value, response: &Value) -> Result<Option<Value>, String> {
    use base64::Engine;
    let Some(patch) = response["patch"].as_str() else {
        return Ok(None);
    };
    if response["patchType"] != "JSONPatch" {
        return Err(format!(
            "patchType {}: expected JSONPatch",
            response["patchType"]
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| format!("patch: not base64: {e}"))?;
    let ops: Vec<Value> = serde_json::from_slice(&bytes).map_err(|e| format!("patch: {e}"))?;
    let mut pod = pod.clone();
    apply(&mut pod, &ops)?;
    Ok(Some(pod))
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_applied_gives_the_target() {
        let from = json!({
            "metadata": {"name": "web", "annotations": {"a/b": "1"}},
            "spec": {"containers": [{"name": "app", "image": "x"}], "unknownField": {"kept": true}}
        });
        let to = json!({
            "metadata": {"name": "web", "annotations": {"a/b": "1", "remora.dev/status": "injected"}},
            "spec": {
                "containers": [{"name": "app", "image": "y"}],
                "initContainers": [{"name": "remora-init"}],
                "unknownField": {"kept": true}
            }
        });
        let ops = diff(&from, &to);
        assert!(ops.contains(&json!({"op": "add", "path": "/metadata/annotations/remora.dev~1status", "value": "injected"})), "{ops:?}");
        assert!(
            ops.contains(
                &json!({"op": "replace", "path": "/spec/containers/0/image", "value": "y"})
            ),
            "{ops:?}"
        );
        assert_eq!(ops.len(), 3, "only what changed: {ops:?}");
        let mut patched = from.clone();
        apply(&mut patched, &ops).unwrap();
        assert_eq!(patched, to);
        assert!(diff(&to, &to).is_empty());
    }

    #[test]
    fn arrays_of_another_length_are_replaced_and_keys_removed() {
        let from = json!({"a": [1, 2], "b": {"c~d": 1}});
        let to = json!({"a": [0, 1, 2], "b": {}});
        let ops = diff(&from, &to);
        assert_eq!(
            ops,
            vec![
                json!({"op": "replace", "path": "/a", "value": [0, 1, 2]}),
                json!({"op": "remove", "path": "/b/c~0d"}),
            ]
        );
        let mut patched = from.clone();
        apply(&mut patched, &ops).unwrap();
        assert_eq!(patched, to);
    }
}

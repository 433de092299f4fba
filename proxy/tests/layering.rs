//! The module map of `remora-proxy` reads bottom-up: every module uses only
//! modules below it in [`LAYERS`], so there is no cycle and a reader can
//! learn the crate from the bottom. This test parses every `crate::` path
//! in `proxy/src` (test code excepted: a `tests.rs` file, or what follows
//! `#[cfg(test)]`) and fails on a use that points up or sideways, naming
//! the file. docs/architecture.md shows the same map.

use std::collections::BTreeMap;
use std::path::Path;

/// Bottom first. A module may use the modules before it, never one after.
const LAYERS: &[&str] = &[
    // foundations: config types, randomness, locks, threads, sockets, metrics
    "config",
    "fuzz",
    "rand",
    "sync",
    "worker",
    "socket",
    "sniff",
    "telemetry",
    "identity",
    "tls",
    "trace",
    // policies that know no upstream: limits, faults, retry rules, bodies
    "ratelimit",
    "authz",
    "fault",
    "retry",
    "breaker",
    "adaptive",
    "body",
    "cache",
    // the upstream side, bottom-up
    "pool",
    "endpoint",
    "balance",
    "outlier",
    "health",
    "discovery",
    "cluster",
    // routing and the compiled listener
    "route",
    "listener",
    // the data paths
    "http",
    "tcp",
    "accept",
    // compiling, config sources, the running proxy and its surfaces
    "snapshot",
    "xds",
    "proxy",
    "admin",
    "reload",
    // `remora-proxy init`: the capture rules, on their own
    "capture",
];

#[test]
fn modules_use_only_modules_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut files = Vec::new();
    collect(&src, &mut files);
    let mut problems = Vec::new();
    let mut seen_modules = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = top_module(relative);
        if top == "lib" || top == "main" {
            continue;
        }
        seen_modules.push(top.clone());
        let Some(&own) = rank.get(top.as_str()) else {
            problems.push(format!(
                "{}: module `{top}` is not in LAYERS",
                relative.display()
            ));
            continue;
        };
        if relative.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for used in crate_uses(&production_code(&text)) {
            if used == top {
                continue;
            }
            match rank.get(used.as_str()) {
                Some(&other) if other < own => {}
                Some(_) => problems.push(format!(
                    "{}: `{top}` uses `crate::{used}`, which is above it (see LAYERS)",
                    relative.display()
                )),
                None => {}
            }
        }
    }
    for module in LAYERS {
        assert!(
            seen_modules.iter().any(|m| m == module),
            "LAYERS names `{module}`, which is not a module of proxy/src"
        );
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

/// The parser itself: braces, nesting and comments.
#[test]
fn crate_paths_are_found_in_use_trees_and_expressions() {
    let code = "use crate::{a::X, b, c::{d, e}};\nlet x = crate::f::g(); // crate::h\n";
    let mut found = crate_uses(&production_code(code));
    found.sort();
    assert_eq!(found, ["a", "b", "c", "f"]);
    assert_eq!(
        production_code("x\n#[cfg(test)]\nmod t { crate::z }"),
        "x\n"
    );
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

fn top_module(relative: &Path) -> String {
    let first = relative.components().next().unwrap();
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// The text before any `#[cfg(test)]`, without line comments.
fn production_code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The first segment of every `crate::` path, expanding `crate::{a, b::c}`.
fn crate_uses(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        push_first(&item, &mut found);
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || !matches!(ch, '{') {
                    item.push(ch);
                }
            }
            push_first(&item, &mut found);
        } else {
            push_first(rest, &mut found);
        }
    }
    found.sort();
    found.dedup();
    found
}

fn push_first(path: &str, found: &mut Vec<String>) {
    let name: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if !name.is_empty() && name != "self" {
        found.push(name);
    }
}

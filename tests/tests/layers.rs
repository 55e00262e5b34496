//! The runtime's layers, as ARCHITECTURE.md states them: which top-level module of
//! `runtime/src` may import which. A front (HTTP, MQTT, Operations API) never imports another
//! (the one exception: MQTT over WebSocket, from `http/websocket.rs` into MQTT's session entry
//! point), and nothing below the fronts imports a front. The check reads the source: every
//! `crate::<module>` a file names, in `use` lines and in paths.
//!
//! It also checks that no two files import each other in a loop: across the top-level modules
//! (which the layers already rule out) and among the files of one module (a module's `mod.rs`
//! is its parent, which its files may name).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may import. `main` and `server` wire everything.
const LAYERS: &[(&str, &[&str])] = &[
    ("app", &[]),
    ("auth", &["app"]),
    ("data", &["app"]),
    ("realtime", &["app", "data"]),
    ("wasm", &["app", "data", "realtime"]),
    ("worker", &["app", "auth", "data", "realtime", "wasm"]),
    ("net", &["app"]),
    ("replication", &["app", "auth"]),
    (
        "http",
        &["app", "auth", "data", "realtime", "wasm", "worker", "net"],
    ),
    (
        "mqtt",
        &["app", "auth", "data", "realtime", "wasm", "worker", "net"],
    ),
    (
        "ops",
        &["app", "auth", "data", "realtime", "wasm", "worker", "net"],
    ),
];

/// Imports across the layers that are allowed anyway: (file, module it names).
const EXCEPTIONS: &[(&str, &str)] = &[("http/websocket.rs", "mqtt")];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments (a doc comment may name a module it does not import).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers that follow `prefix` in `code` (`crate::` gives the top-level modules named).
fn named_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
        // `crate::{a, b}` names several.
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// `runtime/src`-relative path of each file, with the top-level modules it names.
fn crate_imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files
        .into_iter()
        .map(|f| {
            let rel = f
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&f).unwrap();
            (rel, named_after(&code(&text), "crate::"))
        })
        .collect()
}

/// The top-level module a file belongs to.
fn module_of(rel: &str) -> &str {
    match rel.split_once('/') {
        Some((dir, _)) => dir,
        None => rel.trim_end_matches(".rs"),
    }
}

/// The crossings of the layer rule in `imports`.
fn violations(imports: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let rule: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut bad = Vec::new();
    for (file, named) in imports {
        let module = module_of(file);
        if matches!(module, "main" | "server") {
            continue;
        }
        let Some(allowed) = rule.get(module) else {
            bad.push(format!(
                "{file}: module `{module}` is not in the layer table"
            ));
            continue;
        };
        for m in named {
            let excepted = EXCEPTIONS.contains(&(file.as_str(), m.as_str()));
            if m != module && !allowed.contains(&m.as_str()) && !excepted {
                bad.push(format!("{file} imports crate::{m}"));
            }
        }
    }
    bad
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let imports = crate_imports();
    assert!(
        imports.contains_key("app/mod.rs") && imports.contains_key("http/mod.rs"),
        "the runtime's sources were not found under {}",
        src().display()
    );
    let bad = violations(&imports);
    assert!(
        bad.is_empty(),
        "imports across the layers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_catches_a_front_in_the_kernel() {
    // What the test above would say if the kernel imported the HTTP front, or MQTT the
    // Operations API.
    let mut imports = crate_imports();
    imports
        .get_mut("app/records.rs")
        .unwrap()
        .insert("http".into());
    imports.get_mut("mqtt/mod.rs").unwrap().insert("ops".into());
    let bad = violations(&imports);
    assert!(bad.contains(&"app/records.rs imports crate::http".to_owned()));
    assert!(bad.contains(&"mqtt/mod.rs imports crate::ops".to_owned()));
    assert_eq!(
        named_after(
            &code("use crate::{http, mqtt::x}; // crate::ops"),
            "crate::"
        ),
        ["http", "mqtt"].into_iter().map(String::from).collect()
    );
}

/// A loop in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_cycles() {
    let imports = crate_imports();
    // Between top-level modules (the wiring in main and server aside).
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, named) in &imports {
        let module = module_of(file);
        if matches!(module, "main" | "server") {
            continue;
        }
        let edges = modules.entry(module.to_owned()).or_default();
        edges.extend(named.iter().filter(|m| *m != module).cloned());
    }
    assert_eq!(find_cycle(&modules), None, "modules that import each other");
    // Between the files of one module, through `super::<file>` and `crate::<module>::<file>`.
    let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let root = src();
    for file in imports.keys() {
        let Some((dir, name)) = file.split_once('/') else {
            continue;
        };
        if name == "mod.rs" {
            continue;
        }
        let text = code(&std::fs::read_to_string(root.join(file)).unwrap());
        let mut named = named_after(&text, "super::");
        named.extend(named_after(&text, &format!("crate::{dir}::")));
        let siblings = named
            .into_iter()
            .filter(|n| root.join(dir).join(format!("{n}.rs")).is_file())
            .map(|n| format!("{dir}/{n}.rs"))
            .filter(|n| n != file);
        files.entry(file.clone()).or_default().extend(siblings);
    }
    assert_eq!(find_cycle(&files), None, "files that import each other");
}

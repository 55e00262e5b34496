//! Components managed over the Operations API (super users only), as Harper manages them:
//! `add_component`, `set_component_file`, `get_component_file`, `get_components`,
//! `drop_component`, and `restart_service` to load what changed.
//!
//! A managed component is a directory of `<root>/components`; each is loaded at start like a
//! component named on the command line (one named on the command line wins over a managed one of
//! the same name). Files are written atomically and checked first: a `*.graphql` schema must
//! load and a `config.yaml` must be YAML, so a bad file is refused (400) rather than stopping
//! the next start. Harper's `add_component` fetches its application template from the
//! internet; here it writes the template's configuration (REST, and the tables of
//! `schema.graphql`) and a `schema.graphql` that declares nothing yet.

use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde_json::{Value as Json, json};
use tessera_storage::layout::write_atomically;
use tessera_storage::{Catalog, Value};

use super::{Operations, OpsError, bad, fail};
use crate::app::component::managed_dir as components_root;

/// Harper's rule for a project's name: letters, digits, `_` and `-`.
fn project_name(env: &Value) -> Result<String, OpsError> {
    match env.get("project") {
        Some(Value::String(p))
            if !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
        {
            Ok(p.clone())
        }
        Some(Value::String(_)) => Err(bad(
            "Project name can only contain alphanumeric, dash and underscores characters",
        )),
        _ => Err(bad("'project' is required")),
    }
}

/// A file's path inside a project: relative, without `..`.
fn file_path(env: &Value) -> Result<Option<PathBuf>, OpsError> {
    let Some(v) = env.get("file") else {
        return Ok(None);
    };
    let Value::String(f) = v else {
        return Err(bad("'file' must be a string"));
    };
    let p = PathBuf::from(f);
    if f.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad(format!(
            "'file' must be a path inside the project: {f:?}"
        )));
    }
    Ok(Some(p))
}

/// Checks a file's content as the next start will read it.
fn check(file: &Path, content: &[u8]) -> Result<(), String> {
    let name = file.to_string_lossy();
    if name.ends_with(".graphql") {
        let text = std::str::from_utf8(content).map_err(|_| format!("{name} is not UTF-8"))?;
        Catalog::default()
            .load_schema(&name, text)
            .map_err(|e| e.to_string())?;
    } else if name == "config.yaml" {
        serde_norway::from_slice::<serde_norway::Value>(content)
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// Writes a component's file (making its directories), atomically.
fn write_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_atomically(path, content, 0o644)
}

fn mtime(meta: &std::fs::Metadata) -> Json {
    let ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    json!(tessera_storage::value::format_date(ms as f64))
}

/// `get_components`: the tree of the managed components' files.
fn tree(dir: &Path, depth: usize) -> Json {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut entries = Vec::new();
    if let Ok(read) = std::fs::read_dir(dir) {
        let mut items: Vec<_> = read.filter_map(Result::ok).collect();
        items.sort_by_key(|e| e.file_name());
        for e in items {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') || n == "target" || n == "node_modules" {
                continue;
            }
            match e.metadata() {
                Ok(m) if m.is_dir() && depth < 16 => entries.push(tree(&e.path(), depth + 1)),
                Ok(m) => entries.push(json!({"name": n, "mtime": mtime(&m), "size": m.len()})),
                Err(_) => {}
            }
        }
    }
    json!({"name": name, "entries": entries})
}

/// The `config.yaml` of a component `add_component` makes: what Harper's application template
/// configures, less its JavaScript and static files.
const TEMPLATE_CONFIG: &str = "# Serves the exported tables over REST.\nrest: true\n\n# The tables of the component.\ngraphqlSchema:\n  files: 'schema.graphql'\n";

/// The `schema.graphql` of a component `add_component` makes.
const TEMPLATE_SCHEMA: &str = "# The component's tables, for example:\n# type Dog @table @export {\n#   id: ID @primaryKey\n#   name: String @indexed\n# }\n";

/// Runs one component operation (blocking: file work).
fn run(op: &str, root: &Path, env: &Value) -> Result<Json, OpsError> {
    let base = components_root(root);
    let io = |e: std::io::Error| fail(500, e.to_string());
    match op {
        "get_components" => Ok(tree(&base, 0)),
        "add_component" => {
            let project = project_name(env)?;
            let dir = base.join(&project);
            if dir.exists() {
                return Err(bad("Project already exists"));
            }
            write_file(&dir.join("config.yaml"), TEMPLATE_CONFIG.as_bytes()).map_err(io)?;
            write_file(&dir.join("schema.graphql"), TEMPLATE_SCHEMA.as_bytes()).map_err(io)?;
            Ok(json!({"message": format!("Successfully added project: {project}")}))
        }
        "set_component_file" => {
            let project = project_name(env)?;
            let file = file_path(env)?.ok_or_else(|| bad("'file' is required"))?;
            let content = match (env.get("payload"), env.get("encoding")) {
                (Some(Value::String(p)), Some(Value::String(e))) if e == "base64" => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(p)
                        .map_err(|e| bad(format!("payload is not base64: {e}")))?
                }
                (Some(Value::String(p)), _) => p.clone().into_bytes(),
                (None, _) => {
                    std::fs::create_dir_all(base.join(&project).join(&file)).map_err(io)?;
                    return Ok(
                        json!({"message": format!("Successfully set component: {}", file.display())}),
                    );
                }
                (Some(_), _) => return Err(bad("'payload' must be a string")),
            };
            check(&file, &content).map_err(bad)?;
            write_file(&base.join(&project).join(&file), &content).map_err(io)?;
            Ok(json!({"message": format!("Successfully set component: {}", file.display())}))
        }
        "get_component_file" => {
            let project = project_name(env)?;
            let file = file_path(env)?.ok_or_else(|| bad("'file' is required"))?;
            let path = base.join(&project).join(&file);
            let missing = || {
                bad(format!(
                    "Component file not found '{}'",
                    Path::new(&project).join(&file).display()
                ))
            };
            let meta = std::fs::metadata(&path).map_err(|_| missing())?;
            let content = std::fs::read(&path).map_err(|_| missing())?;
            Ok(
                json!({"message": String::from_utf8_lossy(&content), "size": meta.len(),
                      "mtime": mtime(&meta)}),
            )
        }
        _ => {
            let project = project_name(env)?;
            let rel = match file_path(env)? {
                Some(f) => Path::new(&project).join(f),
                None => PathBuf::from(&project),
            };
            let path = base.join(&rel);
            if path.is_dir() {
                std::fs::remove_dir_all(&path).map_err(io)?;
            } else if path.exists() {
                std::fs::remove_file(&path).map_err(io)?;
            }
            Ok(json!({"message": format!("Successfully dropped: {}", rel.display())}))
        }
    }
}

impl Operations {
    /// The component operations.
    pub(super) async fn components(&self, op: &str, env: &Value) -> Result<Json, OpsError> {
        if op == "restart_service" {
            let service = match env.get("service") {
                Some(Value::String(s)) => s.clone(),
                _ => return Err(bad("'service' is required")),
            };
            if !matches!(service.as_str(), "http_workers" | "http" | "harperdb") {
                return Err(bad("Invalid service"));
            }
            return self
                .instance("restart", env)
                .await
                .map(|_| json!({"message": format!("Restarting {service}")}));
        }
        let (op, root, env) = (op.to_owned(), self.app.settings.root.clone(), env.clone());
        glommio::executor()
            .spawn_blocking(move || run(&op, &root, &env))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Value {
        Value::Object(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect(),
        )
    }

    #[test]
    fn files_are_checked_kept_inside_and_listed() {
        let root = tempfile::tempdir().unwrap();
        let add = run("add_component", root.path(), &env(&[("project", "shop")])).unwrap();
        assert_eq!(add["message"], "Successfully added project: shop");
        assert!(run("add_component", root.path(), &env(&[("project", "shop")])).is_err());
        assert!(run("add_component", root.path(), &env(&[("project", "../x")])).is_err());
        let set = |file: &str, payload: &str| {
            run(
                "set_component_file",
                root.path(),
                &env(&[("project", "shop"), ("file", file), ("payload", payload)]),
            )
        };
        assert!(set("schema.graphql", "type T @table { id: ID @primaryKey }").is_ok());
        let refused = set("schema.graphql", "type T @table {").err().unwrap();
        assert_eq!(refused.status, 400);
        assert!(set("../../etc/passwd", "x").is_err());
        assert!(set("/etc/passwd", "x").is_err());
        assert!(set("config.yaml", "rest: [").is_err());
        let got = run(
            "get_component_file",
            root.path(),
            &env(&[("project", "shop"), ("file", "schema.graphql")]),
        )
        .unwrap();
        assert_eq!(got["message"], "type T @table { id: ID @primaryKey }");
        let listed = run("get_components", root.path(), &env(&[])).unwrap();
        assert_eq!(listed["entries"][0]["name"], "shop");
        let dropped = run("drop_component", root.path(), &env(&[("project", "shop")])).unwrap();
        assert_eq!(dropped["message"], "Successfully dropped: shop");
        assert!(!components_root(root.path()).join("shop").exists());
    }
}

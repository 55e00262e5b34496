//! Application components: a directory with `config.yaml` (Harper's keys: `rest`,
//! `graphqlSchema.files`, ...; Tessera's `wasmResource`) and the schema files it names.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use tessera_storage::Catalog;

use super::settings::read_yaml;
use super::sources::SourceConfig;

/// Keys of a component's `config.yaml` that this build reads.
const KNOWN: &[&str] = &[
    "rest",
    "graphqlSchema",
    "wasmResource",
    "graphql",
    "sources",
    "outbound",
];
/// Keys Harper knows whose features Tessera does not serve yet: warned about, not fatal.
const LATER: &[&str] = &[
    "jsResource",
    "static",
    "dataLoader",
    "loadEnv",
    "fastifyRoutes",
    "roles",
];

/// What the application's components declare.
pub struct Components {
    pub catalog: Catalog,
    /// The WebAssembly resource modules (`wasmResource`), built when named as crates.
    pub wasm: Vec<PathBuf>,
    /// Whether a component turns on the GraphQL endpoint (`graphql: true`).
    pub graphql: bool,
    /// Caching tables' sources (`sources`, see `app/sources.rs`).
    pub sources: Vec<SourceConfig>,
    /// Origins wasm resources may call (`outbound.allow`).
    pub outbound_allow: Vec<String>,
}

/// The directory of the components managed over the Operations API, under `root`.
pub fn managed_dir(root: &Path) -> PathBuf {
    root.join("components")
}

/// The components to load: those named on the command line, then each managed one (a directory
/// of [`managed_dir`]) that no component named on the command line has the name of.
pub fn with_managed(apps: &[PathBuf], root: &Path) -> Vec<PathBuf> {
    let mut all = apps.to_vec();
    let Ok(read) = std::fs::read_dir(managed_dir(root)) else {
        return all;
    };
    let mut managed: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    managed.sort();
    for dir in managed {
        let shadowed = apps.iter().any(|a| a.file_name() == dir.file_name());
        if shadowed {
            tracing::warn!(
                "managed component {} is also named on the command line; the command line's is loaded",
                dir.display()
            );
        } else {
            all.push(dir);
        }
    }
    all
}

/// A string-or-list-of-strings key of `config.yaml` (`graphqlSchema.files`).
fn strings(v: Option<&serde_norway::Value>, key: &str) -> anyhow::Result<Vec<String>> {
    match v {
        None => Ok(vec![]),
        Some(v) if v.is_string() => Ok(vec![v.as_str().unwrap_or_default().to_owned()]),
        Some(v) => v
            .as_sequence()
            .with_context(|| format!("{key} must be a string or a list of strings"))?
            .iter()
            .map(|p| {
                p.as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("{key} must hold strings"))
            })
            .collect(),
    }
}

/// The files `pattern` matches in `dir` (at least one).
fn matching(dir: &Path, pattern: &str, key: &str) -> anyhow::Result<Vec<PathBuf>> {
    let full = dir.join(pattern);
    let full = full.to_str().context("component path is not UTF-8")?;
    let files = glob::glob(full)
        .with_context(|| format!("bad {key} pattern {pattern:?}"))?
        .collect::<Result<Vec<_>, _>>()?;
    if files.is_empty() {
        bail!("{}: {key} {pattern:?} matches no file", dir.display());
    }
    Ok(files)
}

/// Builds a resource crate of a component for `wasm32-unknown-unknown` (installing the target
/// with rustup when it is missing) and returns the module cargo wrote. Cargo rebuilds only what
/// changed, so a start with an unchanged crate costs one up-to-date check.
pub fn build_crate(dir: &Path) -> anyhow::Result<PathBuf> {
    const TARGET: &str = "wasm32-unknown-unknown";
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!("wasmResource.crate {}: no Cargo.toml", dir.display());
    }
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == TARGET)
        })
        .unwrap_or(true);
    if !installed {
        tracing::info!("installing the {TARGET} target with rustup");
        let ok = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("cannot install the {TARGET} target: run `rustup target add {TARGET}`");
        }
    }
    tracing::info!("building wasm resources {}", dir.display());
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", TARGET])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo for {}", dir.display()))?;
    if !out.status.success() {
        bail!("building {} failed", dir.display());
    }
    let manifest = manifest.canonicalize()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path())
        })
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .collect::<Vec<_>>()
        })
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
        .with_context(|| {
            format!(
                "{}: cargo built no .wasm (the crate needs crate-type = [\"cdylib\"])",
                dir.display()
            )
        })
}

/// Loads the components into one catalog. Tables of a component without `rest: true` are kept
/// (they hold data) but not exported over REST.
pub fn load(apps: &[impl AsRef<Path>]) -> anyhow::Result<Components> {
    let mut catalog = Catalog::default();
    let mut wasm = Vec::new();
    let mut graphql = false;
    let mut sources = Vec::new();
    let mut outbound_allow = Vec::new();
    for app in apps {
        let dir = app.as_ref();
        if !dir.is_dir() {
            bail!("application component {} is not a directory", dir.display());
        }
        let config = read_yaml(&dir.join("config.yaml"))?;
        if let Some(map) = config.as_mapping() {
            for key in map.keys().filter_map(|k| k.as_str()) {
                if LATER.contains(&key) {
                    tracing::warn!(
                        "{}: config.yaml key {key:?} is not served by this build; ignored",
                        dir.display()
                    );
                } else if !KNOWN.contains(&key) {
                    bail!(
                        "{}: unknown config.yaml key {key:?}",
                        dir.join("config.yaml").display()
                    );
                }
            }
        }
        graphql |= config
            .get("graphql")
            .is_some_and(|v| v.as_bool().unwrap_or(v.is_mapping()));
        let rest = config
            .get("rest")
            .is_some_and(|v| v.as_bool().unwrap_or(v.is_mapping()));
        let patterns = strings(
            config.get("graphqlSchema").and_then(|g| g.get("files")),
            "graphqlSchema.files",
        )?;
        let before = catalog.tables.len();
        for pattern in patterns {
            for file in matching(dir, &pattern, "graphqlSchema.files")? {
                let source = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                catalog.load_schema(&file.display().to_string(), &source)?;
            }
        }
        let resources = config.get("wasmResource");
        for pattern in strings(resources.and_then(|r| r.get("files")), "wasmResource.files")? {
            wasm.extend(matching(dir, &pattern, "wasmResource.files")?);
        }
        for krate in strings(resources.and_then(|r| r.get("crate")), "wasmResource.crate")? {
            wasm.push(build_crate(&dir.join(krate))?);
        }
        let at = || dir.join("config.yaml").display().to_string();
        if let Some(declared) = config.get("sources") {
            let declared = declared
                .as_mapping()
                .with_context(|| format!("{}: sources must map table names", at()))?;
            for (name, source) in declared {
                let name = name.as_str().unwrap_or_default();
                let table = catalog.tables[before..]
                    .iter()
                    .find(|t| t.name == name)
                    .with_context(|| {
                        format!("{}: sources.{name}: no such table in this component", at())
                    })?;
                let config = SourceConfig::parse(&table.database, name, source).with_context(at)?;
                sources.push(config);
            }
        }
        outbound_allow.extend(strings(
            config.get("outbound").and_then(|o| o.get("allow")),
            "outbound.allow",
        )?);
        if !rest {
            for t in &mut catalog.tables[before..] {
                t.export = None;
            }
        }
    }
    Ok(Components {
        catalog,
        wasm,
        graphql,
        sources,
        outbound_allow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_component() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.yaml"),
            "rest: true\ngraphqlSchema:\n  files: '*.graphql'\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("schema.graphql"),
            "type Dog @table @export { id: Long @primaryKey }",
        )
        .unwrap();
        let c = load(&[dir.path()]).unwrap();
        assert!(c.catalog.exported("Dog").is_some());
        std::fs::write(
            dir.path().join("schema.graphql"),
            "type Dog @table @export { id: Long @primaryKey @nope }",
        )
        .unwrap();
        let e = load(&[dir.path()]).map(|_| ()).unwrap_err().to_string();
        assert!(
            e.contains("schema.graphql:1:") && e.contains("@nope"),
            "{e}"
        );
    }
}

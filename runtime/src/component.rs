//! Application components: a directory with `config.yaml` (Harper's keys: `rest`,
//! `graphqlSchema.files`, ...) and the schema files it names.

use std::path::Path;

use anyhow::{Context, bail};
use tessera_storage::Catalog;

use crate::config::read_yaml;

/// Keys of a component's `config.yaml` that this build reads.
const KNOWN: &[&str] = &["rest", "graphqlSchema"];
/// Keys Harper knows whose features Tessera does not serve yet: warned about, not fatal.
const LATER: &[&str] = &[
    "jsResource",
    "wasmResource",
    "static",
    "dataLoader",
    "loadEnv",
    "fastifyRoutes",
    "graphql",
    "roles",
];

/// Loads the components into one catalog. Tables of a component without `rest: true` are kept
/// (they hold data) but not exported over REST.
pub fn load(apps: &[impl AsRef<Path>]) -> anyhow::Result<Catalog> {
    let mut catalog = Catalog::default();
    for app in apps {
        let dir = app.as_ref();
        if !dir.is_dir() {
            bail!("application component {} is not a directory", dir.display());
        }
        let config = read_yaml(&dir.join("config.yaml"))?;
        if let Some(map) = config.as_mapping() {
            for key in map.keys().filter_map(|k| k.as_str()) {
                if LATER.contains(&key) {
                    eprintln!(
                        "warning: {}: config.yaml key {key:?} is not served by this build; ignored",
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
        let rest = config
            .get("rest")
            .is_some_and(|v| v.as_bool().unwrap_or(v.is_mapping()));
        let patterns: Vec<String> = match config.get("graphqlSchema").and_then(|g| g.get("files")) {
            None => vec![],
            Some(v) if v.is_string() => vec![v.as_str().unwrap_or_default().to_owned()],
            Some(v) => v
                .as_sequence()
                .context("graphqlSchema.files must be a string or a list of strings")?
                .iter()
                .map(|p| {
                    p.as_str()
                        .map(str::to_owned)
                        .context("graphqlSchema.files must hold strings")
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let before = catalog.tables.len();
        for pattern in patterns {
            let full = dir.join(&pattern);
            let full = full.to_str().context("component path is not UTF-8")?;
            let mut matched = false;
            for file in glob::glob(full)
                .with_context(|| format!("bad graphqlSchema pattern {pattern:?}"))?
            {
                let file = file?;
                matched = true;
                let source = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                catalog.load_schema(&file.display().to_string(), &source)?;
            }
            if !matched {
                bail!(
                    "{}: graphqlSchema.files {pattern:?} matches no file",
                    dir.display()
                );
            }
        }
        if !rest {
            for t in &mut catalog.tables[before..] {
                t.export = None;
            }
        }
    }
    Ok(catalog)
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
        assert!(c.exported("Dog").is_some());
        std::fs::write(
            dir.path().join("schema.graphql"),
            "type Dog @table @export { id: Long @primaryKey @nope }",
        )
        .unwrap();
        let e = load(&[dir.path()]).unwrap_err().to_string();
        assert!(
            e.contains("schema.graphql:1:") && e.contains("@nope"),
            "{e}"
        );
    }
}

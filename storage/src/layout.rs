//! The persisted layout of a root: the shard count fixed when the database was created, and the
//! stable numeric ids of tables and attributes that prefix every stored key.
//!
//! Kept in `<root>/data/layout.json`, replaced atomically (write, fsync, rename, fsync dir).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::schema::{Catalog, Table};

const FILE: &str = "layout.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TableLayout {
    id: u32,
    /// Attribute name -> id, for index keys.
    attributes: BTreeMap<String, u16>,
    /// Attributes whose index is complete.
    indexed: Vec<String>,
    /// The definition of a table made by `create_table` (none for a `schema.graphql` one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dynamic: Option<DynamicTable>,
}

/// What re-creates a dynamic table at start-up ([`Table::dynamic`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DynamicTable {
    database: String,
    table: String,
    primary_key: String,
    /// Its other attributes, in the order they appeared.
    attributes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayoutFile {
    format: u32,
    shard_count: usize,
    next_table_id: u32,
    tables: BTreeMap<String, TableLayout>,
    /// Databases made by `create_database` (they exist while empty).
    #[serde(default)]
    databases: BTreeSet<String>,
}

/// An index that a table declares but whose entries do not exist yet: it must be built from the
/// records before queries use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingIndex {
    pub table: String,
    pub table_id: u32,
    pub attribute: String,
    pub attribute_id: u16,
    /// The layout's name for the index ([`crate::schema::Attribute::index_key`]).
    pub key: String,
}

/// The layout of one root.
#[derive(Debug)]
pub struct Layout {
    path: PathBuf,
    file: LayoutFile,
}

/// Why the layout could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a Tessera layout: {source}")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
    #[error("too many attributes in table {0}")]
    TooManyAttributes(String),
}

impl Layout {
    /// Reads the layout under `data_dir`, or creates one with `shard_count` shards.
    pub fn open_or_create(data_dir: &Path, shard_count: usize) -> Result<Layout, LayoutError> {
        let path = data_dir.join(FILE);
        let io = |source| LayoutError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file =
                    serde_json::from_slice(&bytes).map_err(|source| LayoutError::Corrupt {
                        path: path.display().to_string(),
                        source,
                    })?;
                Ok(Layout { path, file })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(io)?;
                let layout = Layout {
                    path,
                    file: LayoutFile {
                        format: 1,
                        shard_count: shard_count.max(1),
                        next_table_id: 1,
                        tables: BTreeMap::new(),
                        databases: BTreeSet::new(),
                    },
                };
                layout.save()?;
                Ok(layout)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The number of shards, fixed when the root was created.
    pub fn shard_count(&self) -> usize {
        self.file.shard_count
    }

    /// Gives every table and attribute of `catalog` its persisted id (allocating new ones), and
    /// returns the indexes that must be built because the attribute became `@indexed` while the
    /// table already existed. Call [`Layout::mark_indexed`] once each is built.
    pub fn assign(&mut self, catalog: &mut Catalog) -> Result<Vec<MissingIndex>, LayoutError> {
        let mut missing = Vec::new();
        for table in &mut catalog.tables {
            missing.extend(self.number(table, false)?);
        }
        self.save()?;
        Ok(missing)
    }

    /// Gives `table` and its attributes their ids, allocating new ones. Returns the indexes
    /// that must be built: those of attributes newly indexed on a table that already existed,
    /// unless `complete` says that no record can hold a value for them yet.
    fn number(
        &mut self,
        table: &mut Table,
        complete: bool,
    ) -> Result<Vec<MissingIndex>, LayoutError> {
        let full = table.full_name();
        let is_new = !self.file.tables.contains_key(&full);
        let tl = match self.file.tables.entry(full.clone()) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let id = self.file.next_table_id;
                self.file.next_table_id += 1;
                e.insert(TableLayout {
                    id,
                    ..Default::default()
                })
            }
        };
        table.id = tl.id;
        for a in &mut table.attributes {
            let next = tl
                .attributes
                .values()
                .max()
                .map_or(Some(1), |m| m.checked_add(1));
            let id = match tl.attributes.get(&a.name) {
                Some(id) => *id,
                None => {
                    let id = next.ok_or_else(|| LayoutError::TooManyAttributes(full.clone()))?;
                    tl.attributes.insert(a.name.clone(), id);
                    id
                }
            };
            a.id = id;
        }
        let mut missing = Vec::new();
        let wanted: Vec<String> = table.indexed().map(|a| a.index_key()).collect();
        for a in table.indexed() {
            if !tl.indexed.contains(&a.index_key()) {
                if is_new || complete {
                    tl.indexed.push(a.index_key());
                } else {
                    missing.push(MissingIndex {
                        table: full.clone(),
                        table_id: tl.id,
                        attribute: a.name.clone(),
                        attribute_id: a.id,
                        key: a.index_key(),
                    });
                }
            }
        }
        // An index that is no longer declared is stale from now on: forget it, so that
        // declaring it again rebuilds it.
        tl.indexed.retain(|n| wanted.contains(n));
        if !table.schema_defined {
            let pk = table.primary_key().name.clone();
            tl.dynamic = Some(DynamicTable {
                database: table.database.clone(),
                table: table.name.clone(),
                attributes: table
                    .attributes
                    .iter()
                    .filter(|a| a.name != pk && !a.created_time && !a.updated_time)
                    .map(|a| a.name.clone())
                    .collect(),
                primary_key: pk,
            });
        }
        Ok(missing)
    }

    /// The tables made by `create_table`, with their ids.
    pub fn dynamic_tables(&self) -> Vec<Table> {
        let mut out = Vec::new();
        for tl in self.file.tables.values() {
            let Some(d) = &tl.dynamic else { continue };
            let mut t = Table::dynamic(&d.database, &d.table, &d.primary_key, &d.attributes);
            t.id = tl.id;
            for a in &mut t.attributes {
                a.id = tl.attributes.get(&a.name).copied().unwrap_or_default();
            }
            out.push(t);
        }
        out
    }

    /// Records a dynamic table, new or with attributes added or removed, and gives it and its
    /// attributes their ids. Its attributes' indexes count as complete: a new table has no
    /// records, and an attribute is added before any record holding it is written.
    pub fn save_dynamic(&mut self, table: &mut Table) -> Result<(), LayoutError> {
        self.file.databases.insert(table.database.clone());
        self.number(table, true)?;
        self.save()
    }

    /// Forgets a table: a table made again under its name gets a new id, so nothing left of
    /// its records can reappear.
    pub fn drop_table(&mut self, full_name: &str) -> Result<(), LayoutError> {
        self.file.tables.remove(full_name);
        self.save()
    }

    /// The databases made by `create_database` or `create_table`.
    pub fn databases(&self) -> &BTreeSet<String> {
        &self.file.databases
    }

    /// Records a database made by `create_database`.
    pub fn create_database(&mut self, name: &str) -> Result<(), LayoutError> {
        self.file.databases.insert(name.to_owned());
        self.save()
    }

    /// Forgets a database (its tables are dropped with [`Self::drop_table`]).
    pub fn drop_database(&mut self, name: &str) -> Result<(), LayoutError> {
        self.file.databases.remove(name);
        self.save()
    }

    /// Records that `index` has been built on every shard.
    pub fn mark_indexed(&mut self, index: &MissingIndex) -> Result<(), LayoutError> {
        if let Some(tl) = self.file.tables.get_mut(&index.table)
            && !tl.indexed.contains(&index.key)
        {
            tl.indexed.push(index.key.clone());
        }
        self.save()
    }

    fn save(&self) -> Result<(), LayoutError> {
        let bytes =
            serde_json::to_vec_pretty(&self.file).map_err(|source| LayoutError::Corrupt {
                path: self.path.display().to_string(),
                source,
            })?;
        write_atomically(&self.path, &bytes, 0o644).map_err(|source| LayoutError::Io {
            path: self.path.display().to_string(),
            source,
        })
    }
}

/// Replaces the file at `path` with `bytes` so that a crash leaves either the old or the new
/// content: write a temporary file (with Unix `mode`), fsync it, rename it over `path`, fsync the
/// directory.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_new_indexes_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::default();
        c.load_schema(
            "s",
            "type A @table { id: ID @primaryKey x: Int @indexed y: Int }",
        )
        .unwrap();
        let mut l = Layout::open_or_create(dir.path(), 3).unwrap();
        assert!(l.assign(&mut c).unwrap().is_empty());
        let (tid, yid) = (c.tables[0].id, c.tables[0].attribute("y").unwrap().id);

        let mut c2 = Catalog::default();
        c2.load_schema("s", "type B @table { id: ID @primaryKey } type A @table { id: ID @primaryKey y: Int @indexed x: Int @indexed }").unwrap();
        let mut l2 = Layout::open_or_create(dir.path(), 8).unwrap();
        assert_eq!(l2.shard_count(), 3);
        let missing = l2.assign(&mut c2).unwrap();
        let a = c2.tables.iter().find(|t| t.name == "A").unwrap();
        assert_eq!((a.id, a.attribute("y").unwrap().id), (tid, yid));
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].attribute, "y");
    }
}

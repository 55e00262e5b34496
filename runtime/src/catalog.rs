//! Every database and table the Operations API can name, shared by all cores: the application's
//! `schema.graphql` tables and the dynamic ones made by `create_table` (HARPER-OPS.md section 2).
//!
//! A dynamic table is persisted in the root's layout. Its attributes grow as records arrive:
//! before a write stores a property the table does not have, [`Catalog::add_attributes`] adds it
//! (indexed) and the write carries the new table. Schema changes are serialized by the layout's
//! lock and block on fsync, so callers run them off the executor.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tessera_storage::Table;
use tessera_storage::layout::{Layout, LayoutError};

/// The application's default database.
pub const DEFAULT_DATABASE: &str = "data";

/// Why a schema change was refused: its status and message (HARPER-OPS.md section 2).
#[derive(Debug)]
pub struct Refused(pub u16, pub String);

impl From<LayoutError> for Refused {
    fn from(e: LayoutError) -> Self {
        Refused(500, e.to_string())
    }
}

fn missing_table(database: &str, table: &str) -> Refused {
    Refused(404, format!("Table '{database}.{table}' does not exist"))
}

#[derive(Default)]
struct State {
    /// Databases that exist without tables (made by `create_database`), and `data`.
    databases: BTreeSet<String>,
    /// Every table by (database, name).
    tables: BTreeMap<(String, String), Arc<Table>>,
    /// The next auto-increment primary key of each dynamic table.
    counters: HashMap<u32, Arc<AtomicI64>>,
}

impl State {
    fn table(&self, database: &str, name: &str) -> Option<&Arc<Table>> {
        self.tables.get(&(database.to_owned(), name.to_owned()))
    }

    fn dynamic(&self, database: &str, name: &str) -> Result<&Arc<Table>, Refused> {
        let t = self
            .table(database, name)
            .ok_or_else(|| missing_table(database, name))?;
        if t.schema_defined {
            return Err(Refused(
                400,
                format!("Table '{database}.{name}' is defined by schema.graphql; change it there"),
            ));
        }
        Ok(t)
    }

    /// Forgets a dropped table and its key counter.
    fn forget(&mut self, table: &Table) {
        self.tables
            .remove(&(table.database.clone(), table.name.clone()));
        self.counters.remove(&table.id);
    }

    fn put(&mut self, table: Table) -> Arc<Table> {
        let t = Arc::new(table);
        self.tables
            .insert((t.database.clone(), t.name.clone()), t.clone());
        t
    }
}

/// The shared catalog.
pub struct Catalog {
    /// Held for the whole of a schema change: changes are serialized and persisted in order.
    layout: Mutex<Layout>,
    state: RwLock<State>,
}

impl Catalog {
    /// The catalog of `schema` tables and the layout's dynamic ones; `next_key` gives a dynamic
    /// table's next auto-increment key from its records.
    pub fn new(layout: Layout, schema: &[Arc<Table>], next_key: impl Fn(&Table) -> i64) -> Catalog {
        let mut state = State::default();
        state.databases.insert(DEFAULT_DATABASE.to_owned());
        state.databases.extend(layout.databases().iter().cloned());
        for t in schema {
            state
                .tables
                .insert((t.database.clone(), t.name.clone()), t.clone());
        }
        for t in layout.dynamic_tables() {
            let next = next_key(&t);
            state.counters.insert(t.id, Arc::new(AtomicI64::new(next)));
            state.put(t);
        }
        Catalog {
            layout: Mutex::new(layout),
            state: RwLock::new(state),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn layout(&self) -> std::sync::MutexGuard<'_, Layout> {
        self.layout.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The table `database.name`.
    pub fn table(&self, database: &str, name: &str) -> Option<Arc<Table>> {
        self.read().table(database, name).cloned()
    }

    /// The tables of `database` (or all), in (database, name) order.
    pub fn tables(&self, database: Option<&str>) -> Vec<Arc<Table>> {
        self.read()
            .tables
            .values()
            .filter(|t| database.is_none_or(|d| t.database == d))
            .cloned()
            .collect()
    }

    /// Every database: those with tables and the empty ones.
    pub fn databases(&self) -> BTreeSet<String> {
        let s = self.read();
        let mut all = s.databases.clone();
        all.extend(s.tables.keys().map(|(d, _)| d.clone()));
        all
    }

    /// The auto-increment counter of a dynamic table.
    pub fn counter(&self, table_id: u32) -> Option<Arc<AtomicI64>> {
        self.read().counters.get(&table_id).cloned()
    }

    /// `create_database`.
    pub fn create_database(&self, name: &str) -> Result<(), Refused> {
        let mut layout = self.layout();
        if self.databases().contains(name) {
            return Err(Refused(400, format!("database '{name}' already exists")));
        }
        layout.create_database(name)?;
        self.write().databases.insert(name.to_owned());
        Ok(())
    }

    /// `drop_database`: forgets the database and its tables, which it returns so that their
    /// records can be removed. A database with `schema.graphql` tables is refused.
    pub fn drop_database(&self, name: &str) -> Result<Vec<Arc<Table>>, Refused> {
        let mut layout = self.layout();
        if !self.databases().contains(name) {
            return Err(Refused(404, format!("database '{name}' does not exist")));
        }
        let tables = self.tables(Some(name));
        if let Some(t) = tables.iter().find(|t| t.schema_defined) {
            return Err(Refused(
                400,
                format!(
                    "database '{name}' holds table '{}' defined by schema.graphql; remove it there",
                    t.name
                ),
            ));
        }
        for t in &tables {
            layout.drop_table(&t.full_name())?;
        }
        layout.drop_database(name)?;
        let mut s = self.write();
        s.databases.remove(name);
        for t in &tables {
            s.forget(t);
        }
        Ok(tables)
    }

    /// `create_table`, in a database that is made when missing.
    pub fn create_table(
        &self,
        database: &str,
        name: &str,
        primary_key: &str,
        attributes: &[String],
    ) -> Result<Arc<Table>, Refused> {
        let mut layout = self.layout();
        if self.table(database, name).is_some() {
            return Err(Refused(
                400,
                format!("Table '{name}' already exists in '{database}'"),
            ));
        }
        let mut table = Table::dynamic(database, name, primary_key, attributes);
        layout.save_dynamic(&mut table)?;
        let mut s = self.write();
        s.databases.insert(database.to_owned());
        s.counters.insert(table.id, Arc::new(AtomicI64::new(1)));
        Ok(s.put(table))
    }

    /// `drop_table`: forgets the table, which it returns so that its records can be removed.
    pub fn drop_table(&self, database: &str, name: &str) -> Result<Arc<Table>, Refused> {
        let mut layout = self.layout();
        let table = self.read().dynamic(database, name)?.clone();
        layout.drop_table(&table.full_name())?;
        self.write().forget(&table);
        Ok(table)
    }

    /// Adds the attributes in `names` that the dynamic table `database.name` does not have yet
    /// (all indexed), and returns the table as it is now.
    pub fn add_attributes(
        &self,
        database: &str,
        name: &str,
        names: &[String],
    ) -> Result<Arc<Table>, Refused> {
        let mut layout = self.layout();
        let current = self.read().dynamic(database, name)?.clone();
        let new: Vec<&String> = names
            .iter()
            .filter(|n| current.attribute(n).is_none())
            .collect();
        if new.is_empty() {
            return Ok(current);
        }
        let mut table = (*current).clone();
        for n in new {
            table
                .attributes
                .push(tessera_storage::schema::Attribute::dynamic(n));
        }
        layout.save_dynamic(&mut table)?;
        Ok(self.write().put(table))
    }

    /// `create_attribute`.
    pub fn create_attribute(
        &self,
        database: &str,
        name: &str,
        attribute: &str,
    ) -> Result<(), Refused> {
        if self
            .table(database, name)
            .is_some_and(|t| t.attribute(attribute).is_some())
        {
            return Err(Refused(
                400,
                format!("attribute '{attribute}' already exists in {database}.{name}"),
            ));
        }
        self.add_attributes(database, name, &[attribute.to_owned()])
            .map(drop)
    }

    /// `drop_attribute` (never the primary key): returns the table as it was, and the dropped
    /// attribute's id, so that its values and index entries can be removed.
    pub fn drop_attribute(
        &self,
        database: &str,
        name: &str,
        attribute: &str,
    ) -> Result<(Arc<Table>, u16), Refused> {
        let mut layout = self.layout();
        let current = self.read().dynamic(database, name)?.clone();
        let Some(a) = current.attribute(attribute) else {
            return Err(Refused(
                404,
                format!("attribute '{attribute}' does not exist in {database}.{name}"),
            ));
        };
        if a.primary_key || a.created_time || a.updated_time {
            return Err(Refused(
                400,
                format!(
                    "attribute '{attribute}' is the primary key or a timestamp and cannot be dropped"
                ),
            ));
        }
        let id = a.id;
        let mut table = (*current).clone();
        table.attributes.retain(|a| a.name != attribute);
        layout.save_dynamic(&mut table)?;
        self.write().put(table);
        Ok((current, id))
    }
}

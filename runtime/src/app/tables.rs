//! The table registry, shared by all cores: every database and table there is, the application's
//! `schema.graphql` tables (exported ones by URL segment, every one by type name) and the dynamic
//! ones made by the Operations API's `create_table`, with each table's auto-increment counter.
//!
//! Schema tables never change while the process runs, so looking one up takes no lock; one can
//! only be dropped (`drop_table`, `drop_database`), which removes its records and hides it (its
//! exports answer as if it did not exist) until the next start declares it again, empty, as
//! Harper does. A dynamic table is persisted in the root's layout. Its attributes grow as records arrive: before a
//! write stores a property the table does not have, [`Tables::add_attributes`] adds it (indexed)
//! and the write carries the new table. Schema changes are serialized by the layout's lock and
//! block on fsync, so callers run them off the executor.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tessera_storage::layout::{Layout, LayoutError};
use tessera_storage::{Scalar, Table, Value};

use super::error::AppError;
use super::keys::next_key;

/// The application's default database.
pub const DEFAULT_DATABASE: &str = "data";

/// Why a schema change was refused: its status and message.
#[derive(Debug)]
pub struct SchemaError {
    pub status: u16,
    pub message: String,
}

impl SchemaError {
    fn new(status: u16, message: impl Into<String>) -> SchemaError {
        SchemaError {
            status,
            message: message.into(),
        }
    }
}

impl From<LayoutError> for SchemaError {
    fn from(e: LayoutError) -> Self {
        SchemaError::new(500, e.to_string())
    }
}

fn missing_table(database: &str, table: &str) -> SchemaError {
    SchemaError::new(404, format!("Table '{database}.{table}' does not exist"))
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

    fn dynamic(&self, database: &str, name: &str) -> Result<&Arc<Table>, SchemaError> {
        let t = self
            .table(database, name)
            .ok_or_else(|| missing_table(database, name))?;
        if t.schema_defined {
            return Err(SchemaError::new(
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

/// The schema the Operations API made on a node, as replication sends it.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Made {
    pub databases: Vec<String>,
    pub tables: Vec<MadeTable>,
}

/// A dynamic table of [`Made`]: its attributes other than the key and the timestamps.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MadeTable {
    pub database: String,
    pub name: String,
    pub primary_key: String,
    pub attributes: Vec<String>,
}

/// The registry.
pub struct Tables {
    /// Exported schema tables by URL segment.
    exports: HashMap<String, Arc<Table>>,
    /// Exported schema tables by table id (the topic of a change).
    exports_by_id: HashMap<u32, Arc<Table>>,
    /// Every schema table by its type name (relationship targets, expiry sweeps).
    types: HashMap<String, Arc<Table>>,
    /// The next auto-increment key of each schema table with a numeric key.
    counters: HashMap<u32, AtomicI64>,
    /// Whether each schema table has been dropped since the start (set once; read on every
    /// lookup of an export, so it is an atomic nobody else writes).
    dropped: HashMap<u32, AtomicBool>,
    /// Subscriptions for the whole of a schema change: changes are serialized and persisted in order.
    layout: Mutex<Layout>,
    /// Every table, dynamic ones included.
    state: RwLock<State>,
    /// Schema changes so far (replication sends the schema again when it moves).
    generation: AtomicU64,
}

impl Tables {
    /// The registry of `schema` tables and the layout's dynamic ones; `max_key(table id)` gives
    /// the largest numeric primary key stored in a table, for its auto-increment counter.
    pub fn new(
        layout: Layout,
        schema: &[Arc<Table>],
        max_key: impl Fn(u32) -> Option<f64>,
    ) -> Tables {
        let exports: HashMap<String, Arc<Table>> = schema
            .iter()
            .filter_map(|t| Some((t.export.clone()?, t.clone())))
            .collect();
        let exports_by_id = exports.values().map(|t| (t.id, t.clone())).collect();
        let types = schema
            .iter()
            .map(|t| (t.type_name.clone(), t.clone()))
            .collect();
        let counters = schema
            .iter()
            .filter(|t| t.key_type().is_numeric_key())
            .map(|t| (t.id, AtomicI64::new(next_key(max_key(t.id)))))
            .collect();
        let dropped = schema
            .iter()
            .map(|t| (t.id, AtomicBool::new(false)))
            .collect();
        let mut state = State::default();
        state.databases.insert(DEFAULT_DATABASE.to_owned());
        state.databases.extend(layout.databases().iter().cloned());
        for t in schema {
            state
                .tables
                .insert((t.database.clone(), t.name.clone()), t.clone());
        }
        for t in layout.dynamic_tables() {
            let next = next_key(max_key(t.id));
            state.counters.insert(t.id, Arc::new(AtomicI64::new(next)));
            state.put(t);
        }
        Tables {
            exports,
            exports_by_id,
            types,
            counters,
            dropped,
            layout: Mutex::new(layout),
            state: RwLock::new(state),
            generation: AtomicU64::new(0),
        }
    }

    /// The exported table at URL segment `name`.
    pub fn export(&self, name: &str) -> Option<&Arc<Table>> {
        self.exports
            .get(name)
            .filter(|t| t.rest && !self.is_dropped(t))
    }

    /// The table exported over MQTT under `name` (`@export(mqtt: false)` turns that off).
    pub fn mqtt_export(&self, name: &str) -> Option<&Arc<Table>> {
        self.exports
            .get(name)
            .filter(|t| t.mqtt && !self.is_dropped(t))
    }

    /// Whether `table`, a schema table, was dropped since the start.
    fn is_dropped(&self, table: &Table) -> bool {
        self.dropped
            .get(&table.id)
            .is_some_and(|d| d.load(Ordering::Relaxed))
    }

    /// The exported tables by URL segment.
    pub fn exports(&self) -> &HashMap<String, Arc<Table>> {
        &self.exports
    }

    /// The exported table with this id.
    pub fn export_by_id(&self, id: u32) -> Option<&Arc<Table>> {
        self.exports_by_id.get(&id).filter(|t| !self.is_dropped(t))
    }

    /// Every schema table by type name.
    pub fn types(&self) -> &HashMap<String, Arc<Table>> {
        &self.types
    }

    /// The exported table a topic (`Table/id`) addresses, and the id.
    pub fn topic<'t>(&self, topic: &'t str) -> Option<(&Arc<Table>, &'t str)> {
        let (name, id) = topic.split_once('/')?;
        Some((self.mqtt_export(name)?, id))
    }

    /// A new primary key for a record written without one: a UUID for string keys, the next
    /// integer for numeric ones.
    pub fn new_key(&self, table: &Table) -> Result<Value, AppError> {
        match table.key_type() {
            Scalar::String | Scalar::Id => Ok(Value::String(uuid::Uuid::new_v4().to_string())),
            _ => {
                let next = match self.counters.get(&table.id) {
                    Some(counter) => counter.fetch_add(1, Ordering::Relaxed),
                    None => self
                        .counter(table.id)
                        .ok_or_else(|| AppError::Internal("no key counter".into()))?
                        .fetch_add(1, Ordering::Relaxed),
                };
                if table.key_type() == Scalar::Int && next > i32::MAX as i64 {
                    return Err(AppError::BadRequest(
                        "Auto-incremented Int primary keys are exhausted".into(),
                    ));
                }
                Ok(Value::Int(next))
            }
        }
    }

    /// Notes a numeric primary key written with an explicit value, so that [`Self::new_key`]
    /// never hands it out again.
    pub fn saw_key(&self, table: &Table, pk: &Value) {
        let Value::Int(i) = pk else { return };
        let next = i.saturating_add(1);
        match self.counters.get(&table.id) {
            Some(counter) => counter.fetch_max(next, Ordering::Relaxed),
            None => match self.counter(table.id) {
                Some(counter) => counter.fetch_max(next, Ordering::Relaxed),
                None => return,
            },
        };
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, to change: every change is a schema change, counted in [`Self::generation`].
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Schema changes since the start: one that moves may have made a database, a table or
    /// an attribute.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// What the Operations API made here (databases, dynamic tables and their attributes), of
    /// the databases `wanted` selects, for another node to make the same with [`Self::adopt`].
    pub fn made(&self, wanted: impl Fn(&str) -> bool) -> Made {
        let s = self.read();
        let tables = s
            .tables
            .values()
            .filter(|t| !t.schema_defined && wanted(&t.database))
            .map(|t| MadeTable {
                database: t.database.clone(),
                name: t.name.clone(),
                primary_key: t.primary_key().name.clone(),
                attributes: t
                    .attributes
                    .iter()
                    .filter(|a| !(a.primary_key || a.created_time || a.updated_time))
                    .map(|a| a.name.clone())
                    .collect(),
            })
            .collect();
        let databases = s.databases.iter().filter(|d| wanted(d)).cloned().collect();
        Made { databases, tables }
    }

    /// Makes here what another node's [`Made`] holds and this node lacks: databases, tables and
    /// attributes (nothing is dropped: drops stay where they were made, as in Harper). Returns
    /// what it made, one line each.
    pub fn adopt(&self, made: &Made) -> Result<Vec<String>, SchemaError> {
        let mut done = Vec::new();
        let have = self.databases();
        for d in made.databases.iter().filter(|d| !have.contains(*d)) {
            self.create_database(d)?;
            done.push(format!("database {d}"));
        }
        for t in &made.tables {
            match self.table(&t.database, &t.name) {
                None => {
                    self.create_table(&t.database, &t.name, &t.primary_key, &t.attributes)?;
                    done.push(format!("table {}.{}", t.database, t.name));
                }
                Some(here) if !here.schema_defined => {
                    if t.attributes.iter().any(|a| here.attribute(a).is_none()) {
                        self.add_attributes(&t.database, &t.name, &t.attributes)?;
                        done.push(format!("attributes of {}.{}", t.database, t.name));
                    }
                }
                // Declared here by a schema file: that declaration stands.
                Some(_) => {}
            }
        }
        Ok(done)
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
    fn counter(&self, table_id: u32) -> Option<Arc<AtomicI64>> {
        self.read().counters.get(&table_id).cloned()
    }

    /// `create_database`.
    pub fn create_database(&self, name: &str) -> Result<(), SchemaError> {
        let mut layout = self.layout();
        if self.databases().contains(name) {
            return Err(SchemaError::new(
                400,
                format!("database '{name}' already exists"),
            ));
        }
        layout.create_database(name)?;
        self.write().databases.insert(name.to_owned());
        Ok(())
    }

    /// `drop_database`: forgets the database and its tables, which it returns so that their
    /// records can be removed (schema tables among them until the next start).
    pub fn drop_database(&self, name: &str) -> Result<Vec<Arc<Table>>, SchemaError> {
        let mut layout = self.layout();
        if !self.databases().contains(name) {
            return Err(SchemaError::new(
                404,
                format!("database '{name}' does not exist"),
            ));
        }
        let tables = self.tables(Some(name));
        for t in &tables {
            layout.drop_table(&t.full_name())?;
            self.mark_dropped(t);
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
    ) -> Result<Arc<Table>, SchemaError> {
        let mut layout = self.layout();
        if self.table(database, name).is_some() {
            return Err(SchemaError::new(
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
    /// A schema table is gone until the next start declares it again, with a new id (so that
    /// nothing of its records can reappear).
    pub fn drop_table(&self, database: &str, name: &str) -> Result<Arc<Table>, SchemaError> {
        let mut layout = self.layout();
        let table = self
            .table(database, name)
            .ok_or_else(|| missing_table(database, name))?;
        layout.drop_table(&table.full_name())?;
        self.mark_dropped(&table);
        self.write().forget(&table);
        Ok(table)
    }

    fn mark_dropped(&self, table: &Table) {
        if let Some(d) = self.dropped.get(&table.id) {
            d.store(true, Ordering::Relaxed);
        }
    }

    /// Adds the attributes in `names` that the dynamic table `database.name` does not have yet
    /// (all indexed), and returns the table as it is now.
    pub fn add_attributes(
        &self,
        database: &str,
        name: &str,
        names: &[String],
    ) -> Result<Arc<Table>, SchemaError> {
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
    ) -> Result<(), SchemaError> {
        if self
            .table(database, name)
            .is_some_and(|t| t.attribute(attribute).is_some())
        {
            return Err(SchemaError::new(
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
    ) -> Result<(Arc<Table>, u16), SchemaError> {
        let mut layout = self.layout();
        let current = self.read().dynamic(database, name)?.clone();
        let Some(a) = current.attribute(attribute) else {
            return Err(SchemaError::new(
                404,
                format!("attribute '{attribute}' does not exist in {database}.{name}"),
            ));
        };
        if a.primary_key || a.created_time || a.updated_time {
            return Err(SchemaError::new(
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

#[cfg(test)]
mod tests {
    use tessera_storage::Catalog;

    use super::*;

    /// A registry over a fresh layout with the schema tables `A` (Long key, exported) and `B`
    /// (Int key), and `max_key` as the largest stored key of each.
    fn registry(dir: &std::path::Path, max_key: Option<f64>) -> Tables {
        let mut c = Catalog::default();
        c.load_schema(
            "s",
            "type A @table @export { id: Long @primaryKey } type B @table { id: Int @primaryKey }",
        )
        .unwrap();
        let mut layout = Layout::open_or_create(dir, 1).unwrap();
        layout.assign(&mut c).unwrap();
        let schema: Vec<Arc<Table>> = c.tables.into_iter().map(Arc::new).collect();
        Tables::new(layout, &schema, |_| max_key)
    }

    #[test]
    fn keys_follow_the_largest_stored_and_every_explicit_one() {
        let dir = tempfile::tempdir().unwrap();
        let t = registry(dir.path(), Some(41.0));
        let a = t.export("A").unwrap().clone();
        assert_eq!(t.new_key(&a).unwrap(), Value::Int(42));
        assert_eq!(t.new_key(&a).unwrap(), Value::Int(43));
        t.saw_key(&a, &Value::Int(100));
        assert_eq!(t.new_key(&a).unwrap(), Value::Int(101));
        // A smaller explicit key does not move the counter back.
        t.saw_key(&a, &Value::Int(5));
        assert_eq!(t.new_key(&a).unwrap(), Value::Int(102));
        // Not exported, but known by its type name.
        assert!(t.export("B").is_none());
        let b = t.types().get("B").unwrap().clone();
        t.saw_key(&b, &Value::Int(i32::MAX as i64));
        assert!(matches!(t.new_key(&b), Err(AppError::BadRequest(_))));
        assert_eq!(t.topic("A/7").map(|(t, id)| (t.id, id)), Some((a.id, "7")));
        assert!(t.topic("B/7").is_none());
        assert_eq!(t.export_by_id(a.id).map(|t| t.id), Some(a.id));
    }

    #[test]
    fn dynamic_tables_are_made_grown_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let t = registry(dir.path(), None);
        let dog = t.create_table("zoo", "Dog", "id", &[]).unwrap();
        assert!(t.databases().contains("zoo"));
        assert_eq!(t.new_key(&dog).unwrap(), Value::Int(1));
        let again = t.create_table("zoo", "Dog", "id", &[]).unwrap_err();
        assert_eq!(again.status, 400);
        let grown = t
            .add_attributes("zoo", "Dog", &["name".to_owned(), "id".to_owned()])
            .unwrap();
        assert!(grown.attribute("name").is_some());
        assert_eq!(
            t.table("zoo", "Dog").unwrap().attributes.len(),
            grown.attributes.len()
        );
        assert_eq!(
            t.drop_attribute("zoo", "Dog", "id").unwrap_err().status,
            400
        );
        assert_eq!(
            t.drop_attribute("zoo", "Dog", "nope").unwrap_err().status,
            404
        );
        assert_eq!(t.drop_table("zoo", "Cat").unwrap_err().status, 404);
        let dropped = t.drop_table("zoo", "Dog").unwrap();
        assert_eq!(dropped.name, "Dog");
        assert!(t.table("zoo", "Dog").is_none());
        assert_eq!(t.tables(Some("data")).len(), 2);
    }

    #[test]
    fn a_dropped_schema_table_is_gone_until_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let t = registry(dir.path(), None);
        let a = t.export("A").unwrap().clone();
        assert!(t.export_by_id(a.id).is_some());
        t.drop_table("data", "A").unwrap();
        assert!(t.table("data", "A").is_none());
        assert!(t.export("A").is_none() && t.mqtt_export("A").is_none());
        assert!(t.export_by_id(a.id).is_none());
        // The database goes with its other schema table.
        assert_eq!(t.drop_database("data").unwrap().len(), 1);
        assert!(t.tables(None).is_empty());
        // The next start declares them again, under new ids.
        drop(t);
        let again = registry(dir.path(), None);
        let a2 = again.export("A").unwrap();
        assert_ne!(a2.id, a.id);
    }
}

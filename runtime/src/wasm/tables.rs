//! The `tables` import: a guest's reads and writes of records, through the request's
//! transaction.

use tessera_storage::shard::WriteKind;
use tessera_storage::validate::{WriteMode, check_record};
use tessera_storage::{Value, value};

use tessera_shards::Router;

use super::pool::on_core;
use super::state::{HostState, error};
use super::txn::Overlay;
use super::{tables_wit as tables, types};
use crate::app::keys::id_text;
use crate::app::permissions::Action;
use crate::app::records::retain_readable;
use crate::app::{AppError, output};
use crate::data::query::Joins;
use crate::data::{cache, query};

impl tables::Host for &mut HostState {
    async fn get(&mut self, table: String, id: Vec<u8>) -> Result<Option<Vec<u8>>, types::Error> {
        let table = self.table(&table)?;
        let limits = self.access(&table, Action::Read)?.cloned();
        let (pk, key) = HostState::key(&table, &id)?;
        // A committed record goes to the guest as stored, without decoding it (unless the
        // role may not read some of its attributes).
        let found = match self.txn.seen.get(&key) {
            Some(seen) => seen.as_ref().map(Value::to_msgpack),
            None => match (self.app()?.sources.of(table.id).cloned(), self.user.clone()) {
                // A caching table's record is read through its source, as the request's user.
                (Some(source), Some(user)) => {
                    let (app, table) = (self.app()?.clone(), table.clone());
                    let id = id_text(&pk);
                    let k = key.clone();
                    let read = on_core(move |router| async move {
                        let (stored, status) =
                            cache::read_through(&app, &router, &table, &source, &id, &k, &user)
                                .await?;
                        Ok::<_, AppError>((stored.map(|s| s.to_vec()), status))
                    });
                    let (stored, status) = read
                        .await
                        .map_err(|_| error(503, "the core is shutting down"))??;
                    if status == cache::CacheStatus::Loaded {
                        self.txn.loaded.insert(key);
                    }
                    stored
                        .map(|s| output::stored_record(&s).map(|r| r.body.to_vec()))
                        .transpose()?
                }
                _ => self.committed(&key)?,
            },
        };
        found
            .map(|body| HostState::readable(&table, limits.as_ref(), body))
            .transpose()
    }

    async fn put(
        &mut self,
        table: String,
        id: Vec<u8>,
        record: Vec<u8>,
    ) -> Result<(), types::Error> {
        let table = self.table(&table)?;
        let (pk, _) = HostState::key(&table, &id)?;
        let rec = HostState::object(&record)?;
        self.put_record(table, pk, rec, Action::Update)
    }

    async fn patch(
        &mut self,
        table: String,
        id: Vec<u8>,
        changes: Vec<u8>,
    ) -> Result<(), types::Error> {
        let table = self.table(&table)?;
        let (pk, key) = HostState::key(&table, &id)?;
        let mut changes = HostState::object(&changes)?;
        self.check_write(&table, Action::Update, &changes)?;
        changes.set(&table.primary_key().name, pk.clone());
        check_record(&table, &mut changes, WriteMode::Patch)
            .map_err(|e| error(400, e.to_string()))?;
        let mut now = self.current_or_new(&table, &key, pk)?;
        if let Value::Object(props) = &changes {
            for (k, v) in props {
                now.set(k, v.clone());
            }
        }
        self.stage(table, key, WriteKind::Patch(changes), Some(now));
        Ok(())
    }

    async fn add_to(
        &mut self,
        table: String,
        id: Vec<u8>,
        deltas: Vec<u8>,
    ) -> Result<(), types::Error> {
        let table = self.table(&table)?;
        let (pk, key) = HostState::key(&table, &id)?;
        let deltas = HostState::object(&deltas)?;
        self.check_write(&table, Action::Update, &deltas)?;
        let Value::Object(deltas) = deltas else {
            return Err(error(400, "addTo needs a map of numbers"));
        };
        if let Some((name, _)) = deltas.iter().find(|(_, v)| v.as_f64().is_none()) {
            return Err(error(400, format!("addTo: {name} is not a number")));
        }
        let mut now = self.current_or_new(&table, &key, pk)?;
        for (name, d) in &deltas {
            let sum = value::add_numbers(now.get(name), d);
            now.set(name, sum);
        }
        self.stage(table, key, WriteKind::Add(deltas), Some(now));
        Ok(())
    }

    async fn create(&mut self, table: String, record: Vec<u8>) -> Result<Vec<u8>, types::Error> {
        let table = self.table(&table)?;
        let rec = HostState::object(&record)?;
        let pk = match rec.get(&table.primary_key().name) {
            Some(v) if *v != Value::Null => v.clone(),
            _ => self.app()?.tables.new_key(&table)?,
        };
        let id = pk.to_msgpack();
        self.put_record(table, pk, rec, Action::Insert)?;
        Ok(id)
    }

    async fn delete(&mut self, table: String, id: Vec<u8>) -> Result<bool, types::Error> {
        let table = self.table(&table)?;
        self.access(&table, Action::Delete)?;
        let (_, key) = HostState::key(&table, &id)?;
        let existed = self.current(&key)?.is_some();
        self.stage(table, key, WriteKind::Delete, None);
        Ok(existed)
    }

    async fn was_loaded_from_source(
        &mut self,
        table: String,
        id: Vec<u8>,
    ) -> Result<bool, types::Error> {
        let table = self.table(&table)?;
        let (_, key) = HostState::key(&table, &id)?;
        Ok(self.txn.loaded.contains(&key))
    }

    async fn invalidate(&mut self, table: String, id: Vec<u8>) -> Result<(), types::Error> {
        let table = self.table(&table)?;
        self.access(&table, Action::Delete)?;
        let source = self.app()?.sources.of(table.id).cloned().ok_or_else(|| {
            error(
                400,
                format!("{} is not a caching table: it has no source", table.name),
            )
        })?;
        let (_, key) = HostState::key(&table, &id)?;
        source.forget_absent(&key);
        self.stage(table, key, WriteKind::Delete, None);
        Ok(())
    }

    async fn search(&mut self, table: String, query: Vec<u8>) -> Result<Vec<u8>, types::Error> {
        let table = self.table(&table)?;
        let limits = self.access(&table, Action::Read)?.cloned();
        let q = value::from_msgpack(&query).map_err(|e| error(400, format!("bad query: {e}")))?;
        let select: Option<Vec<String>> = match q.get("select") {
            Some(Value::Array(names)) => Some(
                names
                    .iter()
                    .map(|n| match n {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(error(400, "select must list property names")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            _ => None,
        };
        let mut parsed = crate::data::conditions::conditions_query(&q, false)?;
        let overlay = Overlay::new(&self.txn, &table, &mut parsed)?;
        let plan = query::plan(&table, "", parsed, Joins::default())?;
        let found = on_core(move |router: Router| async move {
            let rows = query::collect(&router, &plan).await?;
            rows.iter()
                .map(|row| {
                    let full = output::body_value(output::stored_record(&row.stored)?.body)?;
                    Ok((row.key.to_vec(), full))
                })
                .collect::<Result<Vec<_>, AppError>>()
        });
        let found = found
            .await
            .map_err(|_| error(503, "the core is shutting down"))??;
        let records = match overlay {
            Some(o) => o.apply(found),
            None => found,
        };
        let out = records
            .into_iter()
            .map(|(_, mut full)| {
                if let Some(perm) = &limits {
                    retain_readable(&table, perm, &mut full);
                }
                match &select {
                    None => full,
                    Some(names) => output::pick(&full, names),
                }
            })
            .collect();
        Ok(Value::Array(out).to_msgpack())
    }
}

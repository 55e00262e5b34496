//! `read_audit_log` and `delete_audit_logs_before` (super users): a table's recent changes as
//! Harper shows them, one transaction per operation, from each shard's audit log
//! (`tessera_storage::audit`), and their removal up to a time.
//!
//! A transaction is what one operation wrote: its `operation`, `user_name`, `timestamp` (ms,
//! when it started), `hash_values` and `records` (the records as stored, in the operation's
//! order; a delete has none). A change written without an origin (a REST or MQTT write, a wasm
//! resource's, an eviction) is a transaction of its own, named by what it did (`upsert` or
//! `delete`) without a user.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value as Json, json};
use tessera_storage::audit::Audited;
use tessera_storage::key;
use tessera_storage::shard::{Event, record_key};
use tessera_storage::{Table, Value};

use super::{Operations, OpsError, bad, database_of, fail};
use crate::app::AppError;
use crate::app::output;
use crate::app::permissions::User;

/// One operation's changes, as `read_audit_log` lists it.
struct Transaction {
    operation: &'static str,
    user: Option<Box<str>>,
    /// Microseconds since the epoch.
    at: u64,
    /// Each change's place in its operation, primary key and record (`None`: deleted).
    writes: Vec<(u32, Value, Option<Value>)>,
}

impl Transaction {
    /// The transaction `change` belongs to, without its writes: its operation's, or its own
    /// when it has no origin.
    fn of(change: &Audited) -> Transaction {
        match &change.origin {
            Some((o, _)) => Transaction {
                operation: o.operation.as_str(),
                user: Some(o.user.clone()),
                at: o.at,
                writes: Vec::new(),
            },
            None => Transaction {
                operation: match change.change.event {
                    Event::Delete => "delete",
                    _ => "upsert",
                },
                user: None,
                at: change.change.version,
                writes: Vec::new(),
            },
        }
    }

    fn to_json(&self) -> Json {
        let mut t = serde_json::Map::new();
        t.insert("operation".into(), json!(self.operation));
        if let Some(user) = &self.user {
            t.insert("user_name".into(), json!(user));
        }
        t.insert("timestamp".into(), json!(self.at as f64 / 1000.0));
        let keys = self.writes.iter().map(|(_, pk, _)| output::json_value(pk));
        t.insert("hash_values".into(), Json::Array(keys.collect()));
        let records: Vec<Json> = self
            .writes
            .iter()
            .filter_map(|(_, _, r)| r.as_ref().map(output::json_value))
            .collect();
        if !records.is_empty() {
            t.insert("records".into(), Json::Array(records));
        }
        Json::Object(t)
    }
}

impl Operations {
    /// `read_audit_log` and `delete_audit_logs_before`.
    pub(super) async fn audit(
        &self,
        op: &str,
        env: &Value,
        user: &Arc<User>,
    ) -> Result<Json, OpsError> {
        let table = self.audited_table(env)?;
        match op {
            "read_audit_log" => self.read_audit_log(&table, env).await,
            _ => self.delete_audit_logs_before(table, env, user),
        }
    }

    /// The table an audit operation names, which must be given, as must its database.
    fn audited_table(&self, env: &Value) -> Result<Arc<Table>, OpsError> {
        let Some(Value::String(name)) = env.get("table") else {
            return Err(bad("table parameter is required"));
        };
        let database = database_of(env);
        self.app.tables.table(database, name).ok_or_else(|| {
            if self.app.tables.databases().contains(database) {
                fail(404, format!("Table '{database}.{name}' does not exist"))
            } else {
                fail(404, format!("database '{database}' does not exist"))
            }
        })
    }

    async fn read_audit_log(&self, table: &Arc<Table>, env: &Value) -> Result<Json, OpsError> {
        let values = match env.get("search_values") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(v)) => v.clone(),
            Some(_) => return Err(bad("'search_values' must be an array")),
        };
        let search = match env.get("search_type") {
            None | Some(Value::Null) => "timestamp",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(bad("'search_type' must be a string")),
        };
        if !matches!(search, "timestamp" | "username" | "hash_value") {
            return Err(bad(format!("Invalid searchType '{search}'")));
        }
        let changes = self.audited(table).await?;
        Ok(match search {
            "hash_value" => by_record(table, changes, &values)?,
            "username" => {
                let all = transactions(changes)?;
                let mut out: BTreeMap<&str, Vec<Json>> = BTreeMap::new();
                for t in &all {
                    let Some(user) = t.user.as_deref() else {
                        continue;
                    };
                    if values
                        .iter()
                        .any(|v| matches!(v, Value::String(u) if u == user))
                    {
                        out.entry(user).or_default().push(t.to_json());
                    }
                }
                json!(out)
            }
            _ => {
                let ms = |i: usize| match values.get(i) {
                    Some(Value::Int(n)) => Some(*n as f64),
                    Some(Value::Float(f)) => Some(*f),
                    Some(Value::String(s)) => s.parse().ok(),
                    _ => None,
                };
                let (from, to) = (ms(0).unwrap_or(0.0), ms(1).unwrap_or(f64::INFINITY));
                let limit = match env.get("limit") {
                    Some(Value::Int(n)) if *n > 0 => *n as usize,
                    _ => usize::MAX,
                };
                Json::Array(
                    transactions(changes)?
                        .iter()
                        .filter(|t| (from..=to).contains(&(t.at as f64 / 1000.0)))
                        .take(limit)
                        .map(Transaction::to_json)
                        .collect(),
                )
            }
        })
    }

    /// Every change of `table` the shards' audit logs hold.
    async fn audited(&self, table: &Table) -> Result<Vec<Audited>, OpsError> {
        let id = table.id;
        let mut all = Vec::new();
        for shard in self
            .router
            .on_all_shards(move |s| s.audit_of(id))
            .await
            .map_err(AppError::from)?
        {
            all.extend(shard.map_err(AppError::from)?);
        }
        Ok(all)
    }

    /// Starts the job that removes `table`'s audit entries older than `timestamp` (ms).
    fn delete_audit_logs_before(
        &self,
        table: Arc<Table>,
        env: &Value,
        user: &User,
    ) -> Result<Json, OpsError> {
        let before = match env.get("timestamp") {
            Some(Value::Int(n)) => Some(*n as f64),
            Some(Value::Float(f)) => Some(*f),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            None => return Err(bad("timestamp parameter is required")),
            _ => None,
        }
        .filter(|t| t.is_finite() && *t >= 0.0)
        .ok_or_else(|| bad("Invalid Timestamp"))?;
        let id = self.jobs.start("delete_audit_logs_before", &user.username);
        let (ops, job) = (self.clone(), id.clone());
        glommio::spawn_local(async move {
            let micros = (before * 1000.0) as u64;
            let table_id = table.id;
            let outcome = match ops
                .router
                .on_all_shards(move |s| s.forget_audit_before(table_id, micros))
                .await
            {
                Ok(runs) => runs
                    .into_iter()
                    .try_fold(0, |n, r| r.map(|d| n + d))
                    .map(|n| {
                        format!("Successfully completed job: {job} ({n} audit entries deleted)")
                    })
                    .map_err(|e| Json::String(e.to_string())),
                Err(e) => Err(Json::String(e.to_string())),
            };
            ops.jobs.finish(&job, outcome);
        })
        .detach();
        Ok(json!({"message": format!("Starting job with id {id}"), "job_id": id}))
    }
}

/// The primary key and record of an audited change.
fn write_of(change: &Audited) -> Result<(Value, Option<Value>), OpsError> {
    let pk = key::decode(change.change.key.get(4..).unwrap_or_default())
        .map(|(v, _)| v)
        .map_err(|e| AppError::Internal(format!("audit log key: {e}")))?;
    let record = match &change.change.event {
        Event::Put(stored) => Some(output::body_value(output::stored_record(stored)?.body)?),
        _ => None,
    };
    Ok((pk, record))
}

/// The changes grouped into transactions, oldest first.
fn transactions(changes: Vec<Audited>) -> Result<Vec<Transaction>, OpsError> {
    // By time; a change without an origin is a transaction of its own.
    let mut by_time: BTreeMap<(u64, usize), Transaction> = BTreeMap::new();
    for (n, c) in changes.into_iter().enumerate() {
        if matches!(c.change.event, Event::Message { .. }) {
            continue;
        }
        let (pk, record) = write_of(&c)?;
        let (slot, index) = match &c.origin {
            Some((o, index)) => ((o.at, 0), *index),
            None => ((c.change.version, n + 1), 0),
        };
        by_time
            .entry(slot)
            .or_insert_with(|| Transaction::of(&c))
            .writes
            .push((index, pk, record));
    }
    let mut out: Vec<Transaction> = by_time.into_values().collect();
    for t in &mut out {
        t.writes.sort_by_key(|(i, ..)| *i);
    }
    Ok(out)
}

/// `search_type: hash_value`: each record's changes, oldest first, by primary key.
fn by_record(table: &Table, changes: Vec<Audited>, ids: &[Value]) -> Result<Json, OpsError> {
    let mut out = serde_json::Map::new();
    for id in ids {
        let Ok(key) = record_key(table.id, id) else {
            continue;
        };
        let mut mine: Vec<&Audited> = changes
            .iter()
            .filter(|c| c.change.key == key && !matches!(c.change.event, Event::Message { .. }))
            .collect();
        mine.sort_by_key(|c| c.change.version);
        let mut list = Vec::with_capacity(mine.len());
        for c in mine {
            let (pk, record) = write_of(c)?;
            let mut t = Transaction::of(c);
            t.writes.push((0, pk, record));
            list.push(t.to_json());
        }
        let name = match id {
            Value::String(s) => s.clone(),
            other => other.to_json(),
        };
        out.insert(name, Json::Array(list));
    }
    Ok(Json::Object(out))
}

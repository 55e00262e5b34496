//! The Operations API (`../shared/HARPER-OPS.md`): `POST /` with `{"operation": ...}` on the
//! operations port, answered in JSON, errors as `{"error": "..."}`.
//!
//! Served so far: the NoSQL data operations on the application's tables (`insert`, `update`,
//! `upsert`, `delete`, `search_by_id`). A batch of records is one transaction: it commits on
//! every shard it touches or on none ([`tessera_shards::Router::transact`]), and its reads see one
//! consistent cut of the shards.

use std::sync::Arc;

use tessera_protocol::http::{Method, Request};
use tessera_storage::record::RecordRef;
use tessera_storage::shard::{WriteKind, WriteOp, record_key};
use tessera_storage::validate::{WriteMode, check_record};
use tessera_storage::{Table, Value, value};

use crate::error::RestError;
use crate::rest::{Core, Reply};
use tessera_protocol::MediaType;

/// Most records one operation may carry.
const MAX_RECORDS: usize = 100_000;

/// An operation's failure: its status and the message of `{"error": ...}`.
struct OpsError(u16, String);

impl From<RestError> for OpsError {
    fn from(e: RestError) -> Self {
        let message = match &e {
            RestError::Unauthorized => "Must login".to_owned(),
            e => e.to_string(),
        };
        OpsError(e.status(), message)
    }
}

fn bad(message: impl Into<String>) -> OpsError {
    OpsError(400, message.into())
}

/// The data operations, each a function of the request body.
#[derive(Clone, Copy, PartialEq)]
enum Write {
    Insert,
    Update,
    Upsert,
}

impl Core {
    /// Handles one request on the operations port.
    pub(crate) async fn handle_ops(
        &self,
        req: &Request<'_>,
        body: &mut [u8],
        from_loopback: bool,
        reply: &mut Reply<'_>,
    ) {
        let result = self.operation(req, body, from_loopback, reply).await;
        if let Err(OpsError(status, message)) = result {
            let mut out = Vec::with_capacity(message.len() + 16);
            Value::Object(vec![("error".to_owned(), Value::String(message))]).write_json(&mut out);
            let extra: &[(&str, &[u8])] = if status == 401 {
                &[("WWW-Authenticate", b"Basic")]
            } else {
                &[]
            };
            reply.send(status, Some(MediaType::Json), extra, &out);
        }
    }

    async fn operation(
        &self,
        req: &Request<'_>,
        body: &mut [u8],
        from_loopback: bool,
        reply: &mut Reply<'_>,
    ) -> Result<(), OpsError> {
        if req.method == Method::Get && req.target == "/" {
            reply.send(
                200,
                None,
                &[("Content-Type", b"text/html")],
                b"<!doctype html><title>Tessera</title><p>Tessera is running.</p>",
            );
            return Ok(());
        }
        if req.method != Method::Post {
            return Err(OpsError(405, "Operations are POSTed to /".into()));
        }
        self.authenticate(req, from_loopback).await?;
        let envelope = {
            let mut buffers = simd_json::Buffers::default();
            crate::body::json(body, &mut buffers).map_err(|e| bad(e.to_string()))?
        };
        let Some(Value::String(op)) = envelope.get("operation") else {
            return Err(bad("Request body must include an 'operation' property."));
        };
        let out = match op.as_str() {
            "insert" => self.write(&envelope, Write::Insert).await?,
            "update" => self.write(&envelope, Write::Update).await?,
            "upsert" => self.write(&envelope, Write::Upsert).await?,
            "delete" => self.delete(&envelope).await?,
            "search_by_id" => self.search_by_id(&envelope).await?,
            other => return Err(bad(format!("Operation '{other}' not found"))),
        };
        let mut buf = Vec::with_capacity(256);
        out.write_json(&mut buf);
        reply.send(200, Some(MediaType::Json), &[], &buf);
        Ok(())
    }

    /// The table an operation names (`database` or its old name `schema`, default `data`).
    fn op_table(&self, env: &Value) -> Result<Arc<Table>, OpsError> {
        let Some(Value::String(name)) = env.get("table") else {
            return Err(bad("'table' is required"));
        };
        let database = match env.get("database").or_else(|| env.get("schema")) {
            Some(Value::String(d)) => d.as_str(),
            _ => "data",
        };
        self.shared
            .types
            .values()
            .find(|t| t.name == *name && t.database == database)
            .cloned()
            .ok_or_else(|| bad(format!("Table '{database}.{name}' does not exist")))
    }

    async fn write(&self, env: &Value, kind: Write) -> Result<Value, OpsError> {
        let table = self.op_table(env)?;
        let records = match env.get("records") {
            None => return Err(bad("'records' is required")),
            Some(Value::Array(r)) => r,
            Some(_) => return Err(bad("'records' must be an array")),
        };
        if records.len() > MAX_RECORDS {
            return Err(bad(format!("at most {MAX_RECORDS} records per operation")));
        }
        let pk_name = table.primary_key().name.clone();
        let mut ops = Vec::with_capacity(records.len());
        let mut keys = Vec::with_capacity(records.len());
        for (i, rec) in records.iter().enumerate() {
            let mut rec = rec.clone();
            if !matches!(rec, Value::Object(_)) {
                return Err(bad(format!("record {i} is not an object")));
            }
            let pk = match rec.get(&pk_name) {
                Some(v) if *v != Value::Null => v.clone(),
                _ if kind == Write::Update => {
                    return Err(bad(
                        "a valid hash attribute must be provided with update record, check log for more info",
                    ));
                }
                _ => self.new_key(&table)?,
            };
            rec.set(&pk_name, pk.clone());
            let mode = match kind {
                Write::Insert => WriteMode::Replace,
                Write::Update | Write::Upsert => WriteMode::Patch,
            };
            check_record(&table, &mut rec, mode).map_err(|e| bad(e.to_string()))?;
            let key =
                record_key(table.id, &pk).map_err(|e| bad(format!("Invalid primary key: {e}")))?;
            ops.push(WriteOp {
                table: table.clone(),
                key,
                kind: match kind {
                    Write::Insert => WriteKind::Insert(rec),
                    Write::Update => WriteKind::Update(rec),
                    Write::Upsert => WriteKind::Patch(rec),
                },
            });
            keys.push(pk);
        }
        let n = ops.len();
        let outcomes = self.router.transact(ops).await.map_err(RestError::from)?;
        let (mut done, mut skipped) = (Vec::new(), Vec::new());
        for (pk, o) in keys.into_iter().zip(outcomes) {
            let applied = match kind {
                Write::Insert => !o.existed,
                Write::Update => o.existed,
                Write::Upsert => true,
            };
            if applied {
                done.push(pk);
            } else {
                skipped.push(pk);
            }
        }
        let s = |k: &str, v: Value| (k.to_owned(), v);
        let count = done.len();
        Ok(Value::Object(match kind {
            Write::Insert => vec![
                s(
                    "message",
                    Value::String(format!("inserted {count} of {n} records")),
                ),
                s("inserted_hashes", Value::Array(done)),
                s("skipped_hashes", Value::Array(skipped)),
            ],
            Write::Update => vec![
                s(
                    "message",
                    Value::String(format!("updated {count} of {n} records")),
                ),
                s("update_hashes", Value::Array(done)),
                s("skipped_hashes", Value::Array(skipped)),
            ],
            Write::Upsert => vec![
                s(
                    "message",
                    Value::String(format!("upserted {count} of {n} records")),
                ),
                s("upserted_hashes", Value::Array(done)),
            ],
        }))
    }

    /// The ids of a `delete` or `search_by_id` (`ids`, old name `hash_values`).
    fn op_ids(env: &Value) -> Result<Vec<Value>, OpsError> {
        match env.get("ids").or_else(|| env.get("hash_values")) {
            Some(Value::Array(ids)) if ids.len() <= MAX_RECORDS => Ok(ids.clone()),
            Some(Value::Array(_)) => Err(bad(format!("at most {MAX_RECORDS} ids per operation"))),
            Some(_) => Err(bad("'ids' must be an array")),
            None => Err(bad("'ids' is required")),
        }
    }

    async fn delete(&self, env: &Value) -> Result<Value, OpsError> {
        let table = self.op_table(env)?;
        let ids = Self::op_ids(env)?;
        let mut ops = Vec::with_capacity(ids.len());
        for id in &ids {
            let key = record_key(table.id, id).map_err(|e| bad(format!("Invalid id: {e}")))?;
            ops.push(WriteOp {
                table: table.clone(),
                key,
                kind: WriteKind::Delete,
            });
        }
        self.router.transact(ops).await.map_err(RestError::from)?;
        let n = ids.len();
        let message = if n == 1 {
            "1 of 1 record successfully deleted".to_owned()
        } else {
            format!("{n} of {n} records successfully deleted")
        };
        Ok(Value::Object(vec![
            ("message".to_owned(), Value::String(message)),
            ("deleted_hashes".to_owned(), Value::Array(ids)),
            ("skipped_hashes".to_owned(), Value::Array(Vec::new())),
        ]))
    }

    async fn search_by_id(&self, env: &Value) -> Result<Value, OpsError> {
        let table = self.op_table(env)?;
        let ids = Self::op_ids(env)?;
        let attrs: Option<Vec<String>> = match env.get("get_attributes") {
            Some(Value::Array(a)) => {
                let names: Vec<String> = a
                    .iter()
                    .filter_map(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                (!names.iter().any(|n| n == "*")).then_some(names)
            }
            _ => return Err(bad("'get_attributes' is required")),
        };
        // One consistent cut of every shard for the whole batch.
        let views = self.router.views().await;
        let now_ms = tessera_storage::shard::now_micros() / 1000;
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            let Ok(key) = record_key(table.id, id) else {
                continue;
            };
            let Some(view) = views.get(self.router.shard_of(&key)) else {
                continue;
            };
            let Some(stored) = view.get(&key).map_err(RestError::from)? else {
                continue;
            };
            let rec = RecordRef::parse(&stored)
                .ok_or_else(|| RestError::Internal("a stored record is corrupt".into()))?;
            if rec.is_expired(now_ms) {
                continue;
            }
            let full =
                value::from_msgpack(rec.body).map_err(|e| RestError::Internal(e.to_string()))?;
            out.push(match &attrs {
                None => full,
                Some(names) => Value::Object(
                    names
                        .iter()
                        .map(|n| (n.clone(), full.get(n).cloned().unwrap_or(Value::Null)))
                        .collect(),
                ),
            });
        }
        Ok(Value::Array(out))
    }
}

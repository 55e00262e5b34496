//! The record write path every front shares: a body decoded into a record object, the role's
//! attribute permissions checked, the record validated against its table and committed on its
//! shard; and a stored record cut down to what a role may read.

use std::cell::RefCell;
use std::sync::Arc;
use tessera_shards::Router;
use tessera_storage::shard::{WriteKind, WriteOp, record_key};
use tessera_storage::validate::{WriteMode, check_record};
use tessera_storage::{Table, Value};

use super::App;
use super::body;
use super::error::AppError;
use super::keys::set_primary_key;
use super::permissions::{Action, TablePermission};

/// Validates a record for `table` with `pk` as its primary key (replacing any in the body) and
/// commits it. Returns the primary key as stored.
pub async fn write_record(
    app: &App,
    router: &Router,
    table: &Arc<Table>,
    mut rec: Value,
    pk: Value,
    mode: WriteMode,
) -> Result<Value, AppError> {
    let pk_name = &table.primary_key().name;
    set_primary_key(&mut rec, pk_name, pk);
    check_record(table, &mut rec, mode).map_err(|e| AppError::BadRequest(e.to_string()))?;
    let pk = rec.get(pk_name).cloned().unwrap_or(Value::Null);
    let key = record_key(table.id, &pk)
        .map_err(|e| AppError::BadRequest(format!("Invalid primary key: {e}")))?;
    app.tables.saw_key(table, &pk);
    let kind = match mode {
        WriteMode::Patch => WriteKind::Patch(rec),
        WriteMode::Replace => WriteKind::Put(rec),
    };
    router
        .write(WriteOp {
            table: table.clone(),
            key,
            kind,
        })
        .await?;
    Ok(pk)
}

/// The body of a write: a record object in any accepted content type.
pub fn decode_record(
    content_type: Option<&str>,
    body: &mut [u8],
    buffers: &RefCell<simd_json::Buffers>,
) -> Result<Value, AppError> {
    let rec = body::decode(content_type, body, &mut buffers.borrow_mut())?;
    match rec {
        Value::Object(_) => Ok(rec),
        other => Err(AppError::BadRequest(format!(
            "The request body must be an object, not {}",
            other.kind()
        ))),
    }
}

/// A stored record body (MessagePack) without the attributes `perm` does not let its role read.
pub fn readable_only(
    table: &Table,
    perm: &TablePermission,
    body: &[u8],
) -> Result<Vec<u8>, AppError> {
    let mut v = tessera_storage::value::from_msgpack(body)
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let pk = &table.primary_key().name;
    if let Value::Object(props) = &mut v {
        props.retain(|(k, _)| perm.reads_attribute(k, k == pk));
    }
    Ok(v.to_msgpack())
}

/// Refuses (403) a record with a property `perm` does not let its role write with `action`
/// (Harper's REST ignores attribute permissions on writes; Tessera does not let a role write
/// what it may not read).
pub fn check_writable(
    table: &Table,
    perm: Option<&TablePermission>,
    rec: &Value,
    action: Action,
) -> Result<(), AppError> {
    let (Some(perm), Value::Object(props)) = (perm, rec) else {
        return Ok(());
    };
    let pk = &table.primary_key().name;
    for (k, _) in props {
        // The key named by the URL is not a write of the key attribute.
        if k != pk && !perm.writes_attribute(k, action) {
            return Err(AppError::Forbidden);
        }
    }
    Ok(())
}

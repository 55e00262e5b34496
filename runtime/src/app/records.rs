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
    rec: Value,
    pk: Value,
    mode: WriteMode,
) -> Result<Value, AppError> {
    let kind = |rec| match mode {
        WriteMode::Patch => WriteKind::Patch(rec),
        WriteMode::Replace => WriteKind::Put(rec),
    };
    write_as(app, router, table, rec, pk, mode, kind).await
}

/// [`write_record`] of a record a caching table's source gave, expiring when it said
/// (`expires_at`, ms) or after the table's expiration.
pub async fn write_loaded(
    app: &App,
    router: &Router,
    table: &Arc<Table>,
    rec: Value,
    pk: Value,
    expires_at: Option<u64>,
) -> Result<Value, AppError> {
    let kind = |record| WriteKind::Loaded { record, expires_at };
    write_as(app, router, table, rec, pk, WriteMode::Replace, kind).await
}

async fn write_as(
    app: &App,
    router: &Router,
    table: &Arc<Table>,
    mut rec: Value,
    pk: Value,
    mode: WriteMode,
    kind: impl FnOnce(Value) -> WriteKind,
) -> Result<Value, AppError> {
    let pk_name = &table.primary_key().name;
    set_primary_key(&mut rec, pk_name, pk);
    check_record(table, &mut rec, mode).map_err(|e| AppError::BadRequest(e.to_string()))?;
    let pk = rec.get(pk_name).cloned().unwrap_or(Value::Null);
    let key = record_key(table.id, &pk)
        .map_err(|e| AppError::BadRequest(format!("Invalid primary key: {e}")))?;
    app.tables.saw_key(table, &pk);
    let kind = kind(rec);
    router
        .write(WriteOp {
            table: table.clone(),
            key,
            kind,
            from: None,
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
    Ok(readable_value(table, perm, body)?.to_msgpack())
}

/// [`readable_only`], decoded.
pub fn readable_value(
    table: &Table,
    perm: &TablePermission,
    body: &[u8],
) -> Result<Value, AppError> {
    let mut v = tessera_storage::value::from_msgpack(body)
        .map_err(|e| AppError::Internal(e.to_string()))?;
    retain_readable(table, perm, &mut v);
    Ok(v)
}

/// Takes out of a decoded record the attributes `perm` does not let its role read.
pub fn retain_readable(table: &Table, perm: &TablePermission, rec: &mut Value) {
    let pk = &table.primary_key().name;
    if let Value::Object(props) = rec {
        props.retain(|(k, _)| perm.reads_attribute(k, k == pk));
    }
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
        if k != pk && !perm.writes_attribute(k, action, false) {
            return Err(AppError::Forbidden);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::app::permissions::AttributePermission;

    fn dogs() -> Table {
        crate::app::table_of("type Dog @table { id: Long @primaryKey name: String price: Int }")
    }

    /// A role that reads and updates `name` only (and the key, which is always readable).
    fn name_only() -> TablePermission {
        let attribute = |read, update| AttributePermission {
            read,
            insert: false,
            update,
        };
        TablePermission {
            read: true,
            insert: true,
            update: true,
            delete: false,
            attributes: HashMap::from([
                ("name".to_owned(), attribute(true, true)),
                ("price".to_owned(), attribute(false, false)),
            ]),
        }
    }

    fn record(props: &[(&str, Value)]) -> Value {
        Value::Object(
            props
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn a_role_writes_only_the_attributes_it_may() {
        let t = dogs();
        let p = name_only();
        let ok = record(&[("id", Value::Int(1)), ("name", Value::String("Rex".into()))]);
        assert!(check_writable(&t, Some(&p), &ok, Action::Update).is_ok());
        let price = record(&[("price", Value::Int(3))]);
        assert!(matches!(
            check_writable(&t, Some(&p), &price, Action::Update),
            Err(AppError::Forbidden)
        ));
        // `name` may be updated but not inserted.
        assert!(check_writable(&t, Some(&p), &ok, Action::Insert).is_err());
        // Without attribute limits everything is writable.
        assert!(check_writable(&t, None, &price, Action::Insert).is_ok());
    }

    #[test]
    fn a_role_reads_only_the_attributes_it_may() {
        let t = dogs();
        let stored = record(&[
            ("id", Value::Int(1)),
            ("name", Value::String("Rex".into())),
            ("price", Value::Int(3)),
        ])
        .to_msgpack();
        let shown = readable_only(&t, &name_only(), &stored).unwrap();
        assert_eq!(
            tessera_storage::value::from_msgpack(&shown).unwrap(),
            record(&[("id", Value::Int(1)), ("name", Value::String("Rex".into()))])
        );
    }

    #[test]
    fn a_write_body_must_be_an_object() {
        let buffers = RefCell::new(simd_json::Buffers::default());
        let mut body = br#"{"name":"Rex"}"#.to_vec();
        assert!(decode_record(Some("application/json"), &mut body, &buffers).is_ok());
        let mut body = b"[1,2]".to_vec();
        let e = decode_record(Some("application/json"), &mut body, &buffers).unwrap_err();
        assert!(e.to_string().contains("must be an object"), "{e}");
        let mut body = b"{".to_vec();
        assert!(matches!(
            decode_record(Some("application/json"), &mut body, &buffers),
            Err(AppError::BadRequest(_))
        ));
    }
}

//! Relationships (docs/rest.md): conditions through `@relationship` attributes and nested
//! selections of related records.
//!
//! A relationship joins a local attribute of its table with a remote attribute of the target
//! table: `from: fk` joins `fk` with the target's primary key (many-to-one, or many-to-many when
//! `fk` holds an array), `to: fk` joins this table's primary key with the target's `fk`
//! (one-to-many), and `from:` + `to:` joins the two foreign keys. A condition `brand.name=Acme` is
//! answered by running `name=Acme` on the target first and turning the join values it finds into
//! an `In` condition on the local attribute (an inner join). A selected relationship is fetched
//! per row with left-join semantics.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::LocalBoxFuture;
use tessera_protocol::query::{Condition, Field, Filter, Select};
use tessera_shards::Router;
use tessera_storage::query::{CmpOp, Pred};
use tessera_storage::schema::FieldType;
use tessera_storage::shard::{now_micros, record_key};
use tessera_storage::{Table, Value, key, value};

use super::query::{self, Joins};
use crate::app::AppError;
use crate::app::output::{self, body_value, live_value, stored_record};

/// What relationship work needs: the shards and every table by type name.
pub struct Ctx<'a> {
    pub router: &'a Router,
    pub types: &'a HashMap<String, Arc<Table>>,
}

/// How one `@relationship` attribute joins its table to the target.
pub struct Link {
    pub target: Arc<Table>,
    /// The attribute of this table that holds the join value(s).
    pub local: String,
    /// The attribute of the target it is compared with.
    pub remote: String,
    /// Whether `remote` is the target's primary key (related records are read by key).
    pub remote_is_key: bool,
    /// Whether the attribute is a list (`[Product]`): the result is an array.
    pub many: bool,
}

/// The link of `table.name`, if that attribute is a relationship to a known table.
pub fn link(ctx: &Ctx<'_>, table: &Table, name: &str) -> Option<Link> {
    let attr = table.attribute(name)?;
    let rel = attr.relationship.as_ref()?;
    let (many, type_name) = match &attr.ty {
        FieldType::Named(n) => (false, n),
        FieldType::List(inner) => match inner.as_ref() {
            FieldType::Named(n) => (true, n),
            _ => return None,
        },
        FieldType::Scalar(_) => return None,
    };
    let target = ctx.types.get(type_name)?.clone();
    Some(Link {
        local: rel
            .from
            .clone()
            .unwrap_or_else(|| table.primary_key().name.clone()),
        remote: rel
            .to
            .clone()
            .unwrap_or_else(|| target.primary_key().name.clone()),
        remote_is_key: rel.to.is_none(),
        many,
        target,
    })
}

/// Runs the related side of every condition through a relationship in `filter`.
pub fn joins<'a>(
    ctx: &'a Ctx<'a>,
    table: &'a Table,
    filter: Option<&'a Filter>,
) -> LocalBoxFuture<'a, Result<Joins, AppError>> {
    Box::pin(async move {
        let mut out = Joins::default();
        let mut paths = Vec::new();
        collect_paths(filter, &mut paths);
        for c in paths {
            let name = &c.path[0];
            let Some(link) = link(ctx, table, name) else {
                return Err(AppError::NotFound(format!(
                    "{} is not a defined attribute",
                    c.path.join(".")
                )));
            };
            let sub = Filter::Cond(Condition {
                path: c.path[1..].to_vec(),
                chained: None,
                ..c.clone()
            });
            let sub_joins = joins(ctx, &link.target, Some(&sub)).await?;
            let pred = query::resolve(&link.target, sub, &sub_joins)?;
            let values = join_values(ctx, &link, pred.clone()).await?;
            if link.many {
                let narrowed = match out.narrowing.remove(name) {
                    Some(prev) => Pred::And(vec![prev, pred]),
                    None => pred,
                };
                out.narrowing.insert(name.clone(), narrowed);
            }
            out.values.insert(c.at, (link.local.clone(), values));
        }
        Ok(out)
    })
}

/// The conditions of a filter whose path goes through a relationship.
fn collect_paths<'f>(filter: Option<&'f Filter>, out: &mut Vec<&'f Condition>) {
    match filter {
        Some(Filter::And(items) | Filter::Or(items)) => {
            items.iter().for_each(|f| collect_paths(Some(f), out));
        }
        Some(Filter::Cond(c)) if c.path.len() > 1 => out.push(c),
        _ => {}
    }
}

/// The remote join values of the target's records that satisfy `pred`.
async fn join_values(ctx: &Ctx<'_>, link: &Link, pred: Pred) -> Result<Vec<Value>, AppError> {
    let mut rows = query::matching(ctx.router, &link.target, Some(pred));
    let mut values = Vec::new();
    while let Some(row) = rows.next().await? {
        if link.remote_is_key {
            let (pk, _) = key::decode(row.key.get(4..).unwrap_or_default())
                .map_err(|e| AppError::Internal(e.to_string()))?;
            values.push(pk);
            continue;
        }
        let rec = stored_record(&row.stored)?;
        let found = value::extract_fields(rec.body, &[link.remote.as_str()])
            .map_err(|e| AppError::Internal(e.to_string()))?;
        match found.into_iter().next().flatten() {
            Some(Value::Array(items)) => values.extend(items),
            Some(v) => values.push(v),
            None => {}
        }
    }
    Ok(values)
}

/// One row shaped by `select`, with related records fetched for relationship fields.
pub async fn project(
    ctx: &Ctx<'_>,
    table: &Table,
    body: &[u8],
    select: &Select,
    narrowing: &HashMap<String, Pred>,
) -> Result<Value, AppError> {
    let rec = body_value(body)?;
    let mut values = Vec::with_capacity(select.fields().len());
    for f in select.fields() {
        values.push(field(ctx, table, &rec, f, narrowing.get(&f.name)).await?);
    }
    Ok(output::shape(select, values))
}

/// The value of one selected field of a decoded record (`None`: omitted).
fn field<'a>(
    ctx: &'a Ctx<'a>,
    table: &'a Table,
    rec: &'a Value,
    f: &'a Field,
    narrow: Option<&'a Pred>,
) -> LocalBoxFuture<'a, Result<Option<Value>, AppError>> {
    Box::pin(async move {
        if let Some(e) = table.attribute(&f.name).and_then(|a| a.expr.as_ref()) {
            return Ok(Some(e.eval(&|n| rec.get(n))));
        }
        let Some(link) = link(ctx, table, &f.name) else {
            let v = rec.get(&f.name).cloned();
            return Ok(match (&f.nested, v) {
                (Some(fields), Some(obj @ Value::Object(_))) => Some(pick(&obj, fields)),
                (_, v) => v,
            });
        };
        let local = rec.get(&link.local);
        let related = match local {
            None | Some(Value::Null) => return Ok(None),
            Some(v) if link.remote_is_key => by_key(ctx, &link, v, narrow).await?,
            Some(v) => by_query(ctx, &link, v, narrow).await?,
        };
        let mut shaped = Vec::with_capacity(related.len());
        for r in related {
            shaped.push(match (r, &f.nested) {
                (Some(r), Some(fields)) => Some(shape(ctx, &link.target, &r, fields).await?),
                (r, _) => r,
            });
        }
        Ok(if link.many {
            Some(Value::Array(
                shaped
                    .into_iter()
                    .map(|v| v.unwrap_or(Value::Null))
                    .collect(),
            ))
        } else {
            shaped.into_iter().next().flatten()
        })
    })
}

/// A related record reduced to the nested selection (which may reach further relationships).
async fn shape(
    ctx: &Ctx<'_>,
    table: &Table,
    rec: &Value,
    fields: &[Field],
) -> Result<Value, AppError> {
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        if let Some(v) = field(ctx, table, rec, f, None).await? {
            out.push((f.name.clone(), v));
        }
    }
    Ok(Value::Object(out))
}

/// The named properties of an object (nested selection of a plain object property).
fn pick(obj: &Value, fields: &[Field]) -> Value {
    Value::Object(
        fields
            .iter()
            .filter_map(|f| Some((f.name.clone(), obj.get(&f.name)?.clone())))
            .collect(),
    )
}

/// Related records read by primary key, in the order of the local value(s): a dangling id gives
/// `None` (a `null` element of a to-many result). Records failing `narrow` are left out.
async fn by_key(
    ctx: &Ctx<'_>,
    link: &Link,
    local: &Value,
    narrow: Option<&Pred>,
) -> Result<Vec<Option<Value>>, AppError> {
    let ids: &[Value] = match local {
        Value::Array(items) => items,
        one => std::slice::from_ref(one),
    };
    let now_ms = now_micros() / 1000;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Ok(k) = record_key(link.target.id, id) else {
            out.push(None);
            continue;
        };
        let stored = ctx.router.get(&k)?;
        let rec = match &stored {
            Some(bytes) => live_value(bytes, now_ms)?,
            None => None,
        };
        match (rec, narrow) {
            // Narrowed: only related records that exist and match.
            (None, Some(_)) => {}
            (Some(r), Some(p)) if !p.eval(&|name: &str| r.get(name)) => {}
            (r, _) => out.push(r),
        }
    }
    Ok(out)
}

/// Related records found by querying the target's remote attribute for the local value(s).
async fn by_query(
    ctx: &Ctx<'_>,
    link: &Link,
    local: &Value,
    narrow: Option<&Pred>,
) -> Result<Vec<Option<Value>>, AppError> {
    let values = match local {
        Value::Array(items) => items.clone(),
        one => vec![one.clone()],
    };
    let join =
        tessera_storage::query::Cmp::new(link.remote.clone(), CmpOp::In, Value::Array(values));
    let pred = match narrow {
        Some(p) => Pred::And(vec![Pred::Cmp(join), p.clone()]),
        None => Pred::Cmp(join),
    };
    let mut rows = query::matching(ctx.router, &link.target, Some(pred));
    let mut out = Vec::new();
    while let Some(row) = rows.next().await? {
        out.push(Some(body_value(stored_record(&row.stored)?.body)?));
    }
    Ok(out)
}

//! The NoSQL data operations: `insert`, `update`, `upsert`, `delete`, `search_by_id`,
//! `search_by_value` and `search_by_conditions`.

use std::sync::Arc;

use serde_json::json;
use tessera_protocol::query::{Filter, Limit, Op, Operand, Query, SortKey};
use tessera_storage::audit::{Operation, Origin, Provenance};
use tessera_storage::query::sort_key;
use tessera_storage::shard::{WriteKind, WriteOp, record_key};
use tessera_storage::validate::{WriteMode, check_record};
use tessera_storage::{Table, Value};

use super::schema::check_name;
use super::{MAX_RECORDS, Operations, OpsError, bad, database_of, fail, forbidden, take_property};
use crate::app::AppError;
use crate::app::output::{self, pick};
use crate::app::permissions::{Action, TablePermission, User};
use crate::app::records::retain_readable;
use crate::data::conditions::{condition, conditions_query, operand, wildcard};
use crate::data::query;
use crate::data::query::Joins;

/// The data operations, each a function of the request body.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Write {
    Insert,
    Update,
    Upsert,
}

impl Write {
    /// The table permissions a write needs.
    pub(super) fn actions(self) -> &'static [Action] {
        match self {
            Write::Insert => &[Action::Insert],
            Write::Update => &[Action::Update],
            Write::Upsert => &[Action::Insert, Action::Update],
        }
    }

    /// The operation the audit log records it as.
    fn operation(self) -> Operation {
        match self {
            Write::Insert => Operation::Insert,
            Write::Update => Operation::Update,
            Write::Upsert => Operation::Upsert,
        }
    }
}

/// Harper's refusal of a write to an internal timestamp attribute.
const TIMESTAMP_WRITE: &str = "Internal timestamp attributes - '__createdtime_' and '__updatedtime__' - cannot be inserted to or updated by HDB users.";

/// Checks the attributes an operation names against the role's attribute permissions on
/// `table`, as Harper does: an attribute the role does not know at all is reported missing
/// (`invalid_schema_items`), one it knows but may not use for one of `needed` is reported with
/// the permissions it lacks (`unauthorized_access`); both are a 403.
pub(super) fn check_attributes<'n>(
    table: &Table,
    restricted: Option<&TablePermission>,
    names: impl IntoIterator<Item = &'n String>,
    needed: &[Action],
) -> Result<(), OpsError> {
    let Some(p) = restricted else { return Ok(()) };
    let pk = &table.primary_key().name;
    let mut seen = std::collections::HashSet::new();
    let (mut invalid, mut refused) = (Vec::new(), Vec::new());
    for n in names {
        if !seen.insert(n.as_str()) {
            continue;
        }
        let a = p.attribute(n, n == pk).unwrap_or_default();
        if !a.visible() {
            invalid.push(format!(
                "Attribute '{n}' does not exist on '{}'",
                table.full_name()
            ));
            continue;
        }
        if matches!(n.as_str(), "__createdtime__" | "__updatedtime__")
            && needed.iter().any(|a| *a != Action::Read)
        {
            return Err(fail(403, TIMESTAMP_WRITE));
        }
        let missing: Vec<&str> = needed
            .iter()
            .filter(|x| !a.allows(**x))
            .map(|x| x.name())
            .collect();
        if !missing.is_empty() {
            refused.push(json!({"attribute_name": n, "required_permissions": missing}));
        }
    }
    if invalid.is_empty() && refused.is_empty() {
        return Ok(());
    }
    let unauthorized = if refused.is_empty() {
        json!([])
    } else {
        json!([{"schema": table.database, "table": table.name,
                "required_table_permissions": [], "required_attribute_permissions": refused}])
    };
    Err(forbidden(unauthorized, json!(invalid)))
}

/// Refuses (403) any of `names` the role may not read.
pub(super) fn check_readable<'n>(
    table: &Table,
    restricted: Option<&TablePermission>,
    names: impl IntoIterator<Item = &'n String>,
) -> Result<(), OpsError> {
    check_attributes(table, restricted, names, &[Action::Read])
}

/// An order [`Operations::search_in_order`] gives the records it finds.
struct Order<'a> {
    by: &'a str,
    descending: bool,
    window: Option<Limit>,
}

/// Checks the name of an attribute a record brings to a dynamic table, with Harper's words.
fn new_attribute_name(name: &str) -> Result<(), OpsError> {
    if name.contains(['/', '`']) {
        return Err(bad(
            "Attribute names cannot include backticks or forward slashes",
        ));
    }
    if name.len() > 250 {
        return Err(bad(format!(
            "transaction aborted due to attribute name {name} being too long. Attribute names cannot be longer than 250 bytes."
        )));
    }
    check_name("attribute", name)
}

/// The attributes a condition tree names.
fn filter_attributes(f: &Filter, out: &mut Vec<String>) {
    match f {
        Filter::And(parts) | Filter::Or(parts) => {
            for p in parts {
                filter_attributes(p, out);
            }
        }
        Filter::Cond(c) => out.extend(c.path.first().cloned()),
    }
}

/// `get_attributes`: `None` for every attribute (`["*"]`), else the names asked for.
/// The attributes a search returns (`get_attributes`; `None`: all, `*`). `search_by_id` must
/// name them; `search_by_value` and `search_by_conditions` return all when they do not, as in
/// Harper.
fn get_attributes(env: &Value, required: bool) -> Result<Option<Vec<String>>, OpsError> {
    let a = match env.get("get_attributes") {
        Some(Value::Array(a)) => a,
        None if !required => return Ok(None),
        None => return Err(bad("'get_attributes' is required")),
        Some(_) => return Err(bad("'get_attributes' must be an array")),
    };
    let mut names = Vec::with_capacity(a.len());
    for v in a {
        match v {
            Value::String(s) if s == "*" => return Ok(None),
            Value::String(s) => names.push(s.clone()),
            _ => return Err(bad("'get_attributes' must be an array of attribute names")),
        }
    }
    Ok(Some(names))
}

/// A stored record as an object with `attrs`, absent ones as null; for `None` (`*`), the whole
/// record with every declared attribute it lacks as null.
fn project(
    table: &Table,
    body: &[u8],
    attrs: &Option<Vec<String>>,
    restricted: Option<&TablePermission>,
) -> Result<Value, OpsError> {
    Ok(shape(table, output::body_value(body)?, attrs, restricted))
}

/// [`project`] of a record already decoded.
fn shape(
    table: &Table,
    mut full: Value,
    attrs: &Option<Vec<String>>,
    restricted: Option<&TablePermission>,
) -> Value {
    match attrs {
        None => {
            for a in &table.attributes {
                if a.expr.is_none() && a.relationship.is_none() && full.get(&a.name).is_none() {
                    full.set(&a.name, Value::Null);
                }
            }
            // Attributes the role may not read are left out.
            if let Some(p) = restricted {
                retain_readable(table, p, &mut full);
            }
            full
        }
        Some(names) => {
            // An attribute computed from the record's own (`@computed(from:)`) is computed.
            output::with_computed(table, &mut full);
            pick(&full, names)
        }
    }
}

impl Operations {
    /// The table an operation names (`database` or its old name `schema`, default `data`),
    /// once `user`'s role allows every one of `actions` on it. A table the role has no
    /// permissions on is reported as missing, like one that does not exist.
    pub(super) fn op_table<'u>(
        &self,
        env: &Value,
        user: &'u User,
        actions: &[Action],
    ) -> Result<(Arc<Table>, Option<&'u TablePermission>), OpsError> {
        let Some(Value::String(name)) = env.get("table") else {
            return Err(bad("'table' is required"));
        };
        self.table_for(database_of(env), name, user, actions)
    }

    /// [`Self::op_table`] of a table named by its database and name.
    pub(super) fn table_for<'u>(
        &self,
        database: &str,
        name: &str,
        user: &'u User,
        actions: &[Action],
    ) -> Result<(Arc<Table>, Option<&'u TablePermission>), OpsError> {
        let table = self.app.tables.table(database, name);
        // A table the role may do nothing with is one it does not know (Harper's `describe`).
        let perm = user
            .permission
            .table(database, name)
            .filter(|p| p.visible());
        let (Some(table), Some(perm)) = (table.clone(), perm) else {
            let missing = if table.is_some() || self.app.tables.databases().contains(database) {
                format!("Table '{database}.{name}' does not exist")
            } else {
                format!("database '{database}' does not exist")
            };
            // Only a super user learns that a table is missing: anyone else is refused the
            // same way whether it exists or not. A missing table is 404 to a read, 400 to a
            // write, as in Harper.
            return Err(if !user.super_user {
                forbidden(json!([]), json!([missing]))
            } else if actions == [Action::Read] {
                fail(404, missing)
            } else {
                bad(missing)
            });
        };
        let refused: Vec<&str> = actions
            .iter()
            .filter(|a| !perm.allows(**a))
            .map(|a| a.name())
            .collect();
        if !refused.is_empty() {
            return Err(forbidden(
                json!([{"schema": database, "table": name,
                        "required_table_permissions": refused,
                        "required_attribute_permissions": []}]),
                json!([]),
            ));
        }
        Ok((table, user.permission.attribute_limits(database, name)))
    }

    pub(super) async fn write(
        &self,
        env: &mut Value,
        kind: Write,
        user: &User,
    ) -> Result<Value, OpsError> {
        let actions = kind.actions();
        let (table, restricted) = self.op_table(env, user, actions)?;
        // The records are moved out of the envelope, not copied.
        let records = match take_property(env, "records") {
            None => return Err(bad("'records' is required")),
            Some(Value::Array(r)) => r,
            Some(_) => return Err(bad("'records' must be an array")),
        };
        self.write_records(table, restricted, records, kind, &user.username)
            .await
    }

    /// Writes `records` to `table` as one transaction, as `kind` says, and reports what it did;
    /// the audit log says user `by` did it.
    pub(super) async fn write_records(
        &self,
        table: Arc<Table>,
        restricted: Option<&TablePermission>,
        records: Vec<Value>,
        kind: Write,
        by: &str,
    ) -> Result<Value, OpsError> {
        let actions = kind.actions();
        if records.len() > MAX_RECORDS {
            return Err(bad(format!("at most {MAX_RECORDS} records per operation")));
        }
        let pk_name = table.primary_key().name.clone();
        // Every attribute the records write, in the order they first appear.
        let written = records.iter().filter_map(|r| match r {
            Value::Object(props) => Some(props.iter().map(|(k, _)| k)),
            _ => None,
        });
        check_attributes(&table, restricted, written.flatten(), actions)?;
        let mut ops = Vec::with_capacity(records.len());
        let mut keys = Vec::with_capacity(records.len());
        let origin = Origin::new(kind.operation(), by);
        for (i, mut rec) in records.into_iter().enumerate() {
            if !matches!(rec, Value::Object(_)) {
                return Err(bad(format!("record {i} is not an object")));
            }
            if let Some(Value::String(k)) = rec.get(&pk_name)
                && (k == "null" || k == "undefined")
            {
                return Err(bad(format!(
                    "Invalid hash value: '{k}' is not a valid hash attribute value, check log for more info"
                )));
            }
            let pk = match rec.get(&pk_name) {
                Some(v) if *v != Value::Null && *v != Value::String(String::new()) => v.clone(),
                _ if kind == Write::Update => {
                    return Err(bad(
                        "a valid hash attribute must be provided with update record, check log for more info",
                    ));
                }
                _ => self.app.tables.new_key(&table)?,
            };
            rec.set(&pk_name, pk.clone());
            let mode = match kind {
                Write::Insert => WriteMode::Replace,
                Write::Update | Write::Upsert => WriteMode::Patch,
            };
            check_record(&table, &mut rec, mode).map_err(|e| bad(e.to_string()))?;
            let key =
                record_key(table.id, &pk).map_err(|e| bad(format!("Invalid primary key: {e}")))?;
            self.app.tables.saw_key(&table, &pk);
            ops.push(WriteOp {
                table: table.clone(),
                key,
                kind: match kind {
                    Write::Insert => WriteKind::Insert(rec),
                    Write::Update => WriteKind::Update(rec),
                    Write::Upsert => WriteKind::Patch(rec),
                },
                from: Some(Provenance {
                    origin: origin.clone(),
                    index: i as u32,
                }),
            });
            keys.push(pk);
        }
        // Only a write that passed every check adds attributes to a dynamic table.
        if !table.schema_defined {
            let grown = self.with_attributes_of(table.clone(), &ops).await?;
            if !Arc::ptr_eq(&grown, &table) {
                for op in &mut ops {
                    op.table = grown.clone();
                }
            }
        }
        let n = ops.len();
        let outcomes = self.router.transact(ops).await.map_err(AppError::from)?;
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

    /// A dynamic table with an attribute for every top-level property the records of `ops`
    /// write (added, indexed, before any record holding it is written).
    pub(super) async fn with_attributes_of(
        &self,
        table: Arc<Table>,
        ops: &[WriteOp],
    ) -> Result<Arc<Table>, OpsError> {
        let mut new: Vec<String> = Vec::new();
        for op in ops {
            if let WriteKind::Insert(Value::Object(props))
            | WriteKind::Update(Value::Object(props))
            | WriteKind::Patch(Value::Object(props)) = &op.kind
            {
                for (k, _) in props {
                    if table.attribute(k).is_none() && !new.contains(k) {
                        new_attribute_name(k)?;
                        new.push(k.clone());
                    }
                }
            }
        }
        if new.is_empty() {
            return Ok(table);
        }
        self.in_registry(move |c| c.add_attributes(&table.database, &table.name, &new))
            .await
    }

    /// The ids of a `delete` or `search_by_id` (`ids`, old name `hash_values`).
    pub(super) fn op_ids(env: &Value) -> Result<Vec<Value>, OpsError> {
        // Harper's older name is answered in its own words.
        let key = if env.get("ids").is_none() && env.get("hash_values").is_some() {
            "hash_values"
        } else {
            "ids"
        };
        match env.get(key) {
            Some(Value::Array(ids)) if ids.len() <= MAX_RECORDS => Ok(ids.clone()),
            Some(Value::Array(_)) => Err(bad(format!("at most {MAX_RECORDS} ids per operation"))),
            Some(_) => Err(bad(format!("'{key}' must be an array"))),
            None => Err(bad("'ids' is required")),
        }
    }

    pub(super) async fn delete(&self, env: &Value, user: &User) -> Result<Value, OpsError> {
        let (table, _) = self.op_table(env, user, &[Action::Delete])?;
        self.delete_ids(&table, Self::op_ids(env)?, &user.username)
            .await
    }

    /// Deletes the records of `ids` as one transaction (ids that do not exist count as deleted);
    /// the audit log says user `by` did it.
    pub(super) async fn delete_ids(
        &self,
        table: &Arc<Table>,
        ids: Vec<Value>,
        by: &str,
    ) -> Result<Value, OpsError> {
        let mut ops = Vec::with_capacity(ids.len());
        let origin = Origin::new(Operation::Delete, by);
        for (i, id) in ids.iter().enumerate() {
            let key = record_key(table.id, id).map_err(|e| bad(format!("Invalid id: {e}")))?;
            ops.push(WriteOp {
                table: table.clone(),
                key,
                kind: WriteKind::Delete,
                from: Some(Provenance {
                    origin: origin.clone(),
                    index: i as u32,
                }),
            });
        }
        self.router.transact(ops).await.map_err(AppError::from)?;
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

    pub(super) async fn search_by_id(&self, env: &Value, user: &User) -> Result<Value, OpsError> {
        let (table, restricted) = self.op_table(env, user, &[Action::Read])?;
        let ids = Self::op_ids(env)?;
        let attrs = get_attributes(env, true)?;
        check_readable(&table, restricted, attrs.iter().flatten())?;
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
            let Some(stored) = view.get(&key).map_err(AppError::from)? else {
                continue;
            };
            let rec = output::stored_record(&stored)?;
            if rec.is_expired(now_ms) {
                continue;
            }
            out.push(project(&table, rec.body, &attrs, restricted)?);
        }
        Ok(Value::Array(out))
    }

    /// `search_by_value`: one attribute equal to a value, or matching `*` wildcards in a string.
    pub(super) async fn search_by_value(
        &self,
        env: &Value,
        user: &User,
    ) -> Result<Value, OpsError> {
        let (table, restricted) = self.op_table(env, user, &[Action::Read])?;
        let attrs = get_attributes(env, false)?;
        let Some(Value::String(attr)) =
            env.get("search_attribute").or_else(|| env.get("attribute"))
        else {
            return Err(bad("'search_attribute' is required"));
        };
        // Every attribute it names, searched and returned, is checked at once.
        check_readable(
            &table,
            restricted,
            std::iter::once(attr).chain(attrs.iter().flatten()),
        )?;
        let filter = match env.get("search_value").or_else(|| env.get("value")) {
            None | Some(Value::Null) => return Err(bad("'search_value' is required")),
            Some(Value::String(v)) if v == "*" => None,
            Some(Value::String(v)) => {
                let (op, inner) = wildcard(v, '*');
                Some(condition(attr, op, Operand::Text(inner.to_owned())))
            }
            Some(v) => Some(condition(attr, Op::Eq, operand(v))),
        };
        if table.attribute(attr).is_none() {
            return Err(fail(404, format!("unknown attribute '{attr}'")));
        }
        // In the order of the searched attribute (`reverse`: descending), `offset` and `limit`
        // applied to it.
        let count = |key: &str| match env.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Int(n)) if *n >= 0 => Ok(Some(*n as usize)),
            Some(_) => Err(bad(format!("'{key}' must be a non-negative integer"))),
        };
        let start = count("offset")?.unwrap_or(0);
        let limit = count("limit")?;
        let window = (start > 0 || limit.is_some()).then(|| Limit {
            start,
            end: limit.map_or(usize::MAX, |n| start.saturating_add(n)),
        });
        let key = SortKey {
            path: vec![attr.clone()],
            descending: matches!(env.get("reverse"), Some(Value::Bool(true))),
        };
        if !query::is_indexed(&table, attr) {
            // No index to walk in order: the matching records are ordered here.
            let parsed = Query {
                filter,
                select: None,
                limit: None,
                sort: Vec::new(),
            };
            let order = Order {
                by: attr,
                descending: key.descending,
                window,
            };
            return self
                .search_in_order(&table, parsed, order, &attrs, restricted)
                .await;
        }
        let parsed = Query {
            filter,
            select: None,
            limit: window,
            sort: vec![key],
        };
        self.search(&table, parsed, &attrs, restricted).await
    }

    /// `search_by_conditions`: conditions and nested groups, sort, limit and offset.
    pub(super) async fn search_by_conditions(
        &self,
        env: &Value,
        user: &User,
    ) -> Result<Value, OpsError> {
        let (table, restricted) = self.op_table(env, user, &[Action::Read])?;
        let attrs = get_attributes(env, false)?;
        let parsed = conditions_query(env, true)?;
        let mut named = Vec::new();
        if let Some(f) = &parsed.filter {
            filter_attributes(f, &mut named);
        }
        named.extend(parsed.sort.iter().filter_map(|k| k.path.first().cloned()));
        check_readable(
            &table,
            restricted,
            attrs.iter().flatten().chain(named.iter()),
        )?;
        // Without a sort or a limit, in the order of the first condition's attribute (then the
        // key), as Harper walks that condition's index.
        let first = named.first().cloned();
        if parsed.sort.is_empty()
            && parsed.limit.is_none()
            && let Some(first) = first
        {
            let order = Order {
                by: &first,
                descending: false,
                window: None,
            };
            return self
                .search_in_order(&table, parsed, order, &attrs, restricted)
                .await;
        }
        self.search(&table, parsed, &attrs, restricted).await
    }

    /// [`Self::search`] for an order no index gives: the matching records are ordered by
    /// `order.by` (then the key) here, then windowed and projected.
    async fn search_in_order(
        &self,
        table: &Arc<Table>,
        parsed: Query,
        order: Order<'_>,
        attrs: &Option<Vec<String>>,
        restricted: Option<&TablePermission>,
    ) -> Result<Value, OpsError> {
        let Value::Array(mut rows) = self.search(table, parsed, &None, None).await? else {
            return Ok(Value::Array(Vec::new()));
        };
        let pk = &table.primary_key().name;
        rows.sort_by_cached_key(|r| (sort_key(r.get(order.by)), sort_key(r.get(pk))));
        if order.descending {
            rows.reverse();
        }
        let Limit { start, end } = order.window.unwrap_or(Limit {
            start: 0,
            end: usize::MAX,
        });
        Ok(Value::Array(
            rows.into_iter()
                .take(end)
                .skip(start)
                .map(|r| shape(table, r, attrs, restricted))
                .collect(),
        ))
    }

    /// Plans `parsed` like a REST query and returns the matching records, projected.
    pub(super) async fn search(
        &self,
        table: &Arc<Table>,
        parsed: Query,
        attrs: &Option<Vec<String>>,
        restricted: Option<&TablePermission>,
    ) -> Result<Value, OpsError> {
        let plan = query::plan(table, "", parsed, Joins::default())?;
        let rows = query::collect(&self.router, &plan).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let rec = output::stored_record(&row.stored)?;
            out.push(project(table, rec.body, attrs, restricted)?);
        }
        Ok(Value::Array(out))
    }
}

impl Operations {
    /// `delete_records_before` (Harper's older name: `delete_files_before`): starts a job that
    /// deletes the records of a table created before `date`, by the table's created-time
    /// attribute (`__createdtime__` of a dynamic table, `@createdTime` of a schema one), in
    /// transactions of [`DELETE_BATCH`] records.
    pub(super) async fn delete_before(
        &self,
        op: &str,
        env: &Value,
        user: &Arc<User>,
    ) -> Result<serde_json::Value, OpsError> {
        let (table, _) = self.op_table(env, user, &[Action::Delete])?;
        let date = match env.get("date") {
            Some(Value::String(s)) => tessera_storage::value::parse_date(s),
            Some(Value::Int(ms)) => Some(*ms as f64),
            _ => None,
        }
        .ok_or_else(|| bad("Invalid date, must be in ISO-8601 format (YYYY-MM-DD)."))?;
        let created = table.created_time().map(str::to_owned).ok_or_else(|| {
            bad(format!(
                "Table '{}' has no created-time attribute to delete by",
                table.full_name()
            ))
        })?;
        let id = self.jobs.start(op, &user.username);
        let (ops, job, by) = (self.clone(), id.clone(), user.username.clone());
        glommio::spawn_local(async move {
            let outcome = ops.run_delete_before(&table, &created, date, &by).await;
            ops.jobs.finish(&job, outcome.map_err(|e| e.body));
        })
        .detach();
        Ok(json!({"message": format!("Starting job with id {id}"), "job_id": id}))
    }

    async fn run_delete_before(
        &self,
        table: &Arc<Table>,
        created: &str,
        before: f64,
        by: &str,
    ) -> Result<String, OpsError> {
        let pk = table.primary_key().name.clone();
        let filter = condition(created, Op::Lt, Operand::Number(before));
        let plan = query::plan(
            table,
            "",
            Query {
                filter: Some(filter),
                select: None,
                limit: None,
                sort: Vec::new(),
            },
            Joins::default(),
        )?;
        let rows = query::collect(&self.router, &plan).await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            let rec = output::stored_record(&row.stored)?;
            if let Some(id) = output::body_value(rec.body)?.get(&pk) {
                ids.push(id.clone());
            }
        }
        let n = ids.len();
        for batch in ids.chunks(DELETE_BATCH) {
            self.delete_ids(table, batch.to_vec(), by).await?;
        }
        Ok(format!("{n} records successfully deleted"))
    }
}

/// Records one transaction of `delete_records_before` deletes.
const DELETE_BATCH: usize = 1_000;

//! The Operations API (`../shared/HARPER-OPS.md`): `POST /` with `{"operation": ...}` on the
//! operations port, answered in JSON, errors as `{"error": "..."}`.
//!
//! Served: the schema operations (`create_database`, `create_table`, `create_attribute` and
//! their drops, on the shared [`Catalog`]), the `describe_*` operations, the NoSQL data operations
//! (`insert`, `update`, `upsert`, `delete`, `search_by_id`, `search_by_value`,
//! `search_by_conditions`), `sql` ([`sql`]), users, roles and tokens. Searches are planned onto
//! the same indexes and shard walks as REST queries. A batch of records is one transaction: it commits on
//! every shard it touches or on none ([`tessera_shards::Router::transact`]), and its reads see one
//! consistent cut of the shards.

use std::sync::Arc;

use tessera_protocol::http::{Method, Request};
use tessera_protocol::query::{Condition, Filter, Limit, Op, Operand, Query, SortKey};
use tessera_storage::record::RecordRef;
use tessera_storage::shard::{WriteKind, WriteOp, record_key};
use tessera_storage::validate::{WriteMode, check_record};
use tessera_storage::{Table, Value};

use serde_json::{Value as Json, json};

use crate::auth::{User, bearer};
use crate::catalog::{Catalog, Refused};
use crate::error::RestError;
use crate::output;
use crate::query;
use crate::related::Joins;
use crate::rest::{Core, Reply};
use crate::roles::{Action, TablePermission};
use crate::tokens::{Kind, TokenError};
use tessera_protocol::MediaType;

mod sql;

/// Most records one operation may carry.
const MAX_RECORDS: usize = 100_000;

/// An operation's failure: its status and JSON body (`{"error": ...}`, a few with more keys).
struct OpsError(u16, Json);

impl From<RestError> for OpsError {
    fn from(e: RestError) -> Self {
        let message = match &e {
            RestError::Unauthorized => "Must login".to_owned(),
            e => e.to_string(),
        };
        fail(e.status(), message)
    }
}

fn fail(status: u16, message: impl Into<String>) -> OpsError {
    OpsError(status, json!({ "error": message.into() }))
}

fn bad(message: impl Into<String>) -> OpsError {
    fail(400, message)
}

/// HARPER-OPS.md section 7's refusal of an operation the role does not allow.
fn forbidden(unauthorized: Json, invalid: Json) -> OpsError {
    OpsError(
        403,
        json!({"error": "This operation is not authorized due to role restrictions and/or invalid database items",
               "unauthorized_access": unauthorized, "invalid_schema_items": invalid}),
    )
}

/// What an operation returns: a record-shaped value, or JSON built here.
enum Out {
    Value(Value),
    Json(Json),
}

impl From<Value> for Out {
    fn from(v: Value) -> Self {
        Out::Value(v)
    }
}

/// The data operations, each a function of the request body.
#[derive(Clone, Copy, PartialEq)]
enum Write {
    Insert,
    Update,
    Upsert,
}

impl Write {
    /// The table permissions a write needs.
    fn actions(self) -> &'static [Action] {
        match self {
            Write::Insert => &[Action::Insert],
            Write::Update => &[Action::Update],
            Write::Upsert => &[Action::Insert, Action::Update],
        }
    }
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
        if let Err(OpsError(status, body)) = result {
            let out = serde_json::to_vec(&body).unwrap_or_default();
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
            return Err(fail(405, "Operations are POSTed to /"));
        }
        let anonymous =
            req.authorization.is_none() && !(self.shared.settings.authorize_local && from_loopback);
        let mut envelope = {
            let mut buffers = simd_json::Buffers::default();
            match crate::body::json(body, &mut buffers) {
                Ok(v) => v,
                Err(_) if anonymous => return Err(fail(401, "Must login")),
                Err(e) => return Err(bad(e.to_string())),
            }
        };
        let op = match envelope.get("operation") {
            Some(Value::String(op)) => Some(op.as_str()),
            _ => None,
        };
        // Token operations authenticate in their own ways.
        let tokens = match op {
            Some("create_authentication_tokens") => {
                Some(self.create_tokens(req, &envelope, from_loopback).await?)
            }
            Some("refresh_operation_token") => {
                Some(self.refresh_token(req, &envelope, from_loopback).await?)
            }
            _ => None,
        };
        if let Some(out) = tokens {
            let buf = serde_json::to_vec(&out).unwrap_or_default();
            reply.send(200, Some(MediaType::Json), &[], &buf);
            return Ok(());
        }
        let user = self.ops_user(req, from_loopback).await?;
        let Some(op) = op else {
            return Err(bad("Request body must include an 'operation' property."));
        };
        if let Some(internal) = super_user_only(op) {
            if !user.super_user {
                return Err(forbidden(
                    json!([format!(
                        "Operation '{internal}' is restricted to 'super_user' roles"
                    )]),
                    json!([]),
                ));
            }
            let out = if is_schema_change(op) {
                self.change_schema(op, &envelope).await?
            } else {
                self.administer(op, &envelope).await?
            };
            let buf = serde_json::to_vec(&out).unwrap_or_default();
            reply.send(200, Some(MediaType::Json), &[], &buf);
            return Ok(());
        }
        let out: Out = match op {
            "insert" => self
                .write(&mut envelope, Write::Insert, &user)
                .await?
                .into(),
            "update" => self
                .write(&mut envelope, Write::Update, &user)
                .await?
                .into(),
            "upsert" => self
                .write(&mut envelope, Write::Upsert, &user)
                .await?
                .into(),
            "delete" => self.delete(&envelope, &user).await?.into(),
            "sql" => self.sql(&envelope, &user).await?.into(),
            "search_by_id" => self.search_by_id(&envelope, &user).await?.into(),
            "search_by_value" => self.search_by_value(&envelope, &user).await?.into(),
            "search_by_conditions" => self.search_by_conditions(&envelope, &user).await?.into(),
            "user_info" => Out::Json(self.auth.users().user_info(&user.username)),
            "describe_table" => {
                let (table, _) = self
                    .op_table(&envelope, &user, &[Action::Read])
                    .map_err(|OpsError(s, b)| OpsError(if s == 400 { 404 } else { s }, b))?;
                self.describe(&table).await?.into()
            }
            "describe_database" => {
                let database = database_of(&envelope);
                let tables = self.tables_of(Some(database), &user);
                let visible = !tables.is_empty()
                    || (user.super_user && self.shared.catalog.databases().contains(database));
                if !visible {
                    return Err(fail(404, format!("database '{database}' does not exist")));
                }
                self.describe_all(tables).await?.into()
            }
            "describe_all" => {
                let mut by_db: Vec<(String, Value)> = Vec::new();
                if user.super_user {
                    // Empty databases too.
                    for db in self.shared.catalog.databases() {
                        by_db.push((db, Value::Object(Vec::new())));
                    }
                }
                for table in self.tables_of(None, &user) {
                    let d = self.describe(&table).await?;
                    match by_db.iter_mut().find(|(db, _)| *db == table.database) {
                        Some((_, Value::Object(o))) => o.push((table.name.clone(), d)),
                        _ => by_db.push((
                            table.database.clone(),
                            Value::Object(vec![(table.name.clone(), d)]),
                        )),
                    }
                }
                Value::Object(by_db).into()
            }
            other => return Err(bad(format!("Operation '{other}' not found"))),
        };
        let mut buf = Vec::with_capacity(256);
        match out {
            Out::Value(v) => v.write_json(&mut buf),
            Out::Json(j) => buf = serde_json::to_vec(&j).unwrap_or_default(),
        }
        reply.send(200, Some(MediaType::Json), &[], &buf);
        Ok(())
    }

    /// The user an operation runs as: 401 with HARPER-OPS.md's message when there is none.
    async fn ops_user(
        &self,
        req: &Request<'_>,
        from_loopback: bool,
    ) -> Result<Arc<User>, OpsError> {
        self.user(req, from_loopback)
            .await
            .map_err(|d| fail(401, d.message()))
    }

    /// `create_authentication_tokens`: for `username`/`password` in the body (no other
    /// credentials needed), or for the caller.
    async fn create_tokens(
        &self,
        req: &Request<'_>,
        env: &Value,
        from_loopback: bool,
    ) -> Result<Json, OpsError> {
        let user = match (env.get("username"), env.get("password")) {
            (Some(Value::String(u)), Some(Value::String(p))) => {
                let (users, u, p) = (self.auth.users().clone(), u.clone(), p.clone());
                glommio::executor()
                    .spawn_blocking(move || users.verify(&u, &p))
                    .await
                    .map(Arc::new)
                    .ok_or_else(|| fail(401, "invalid credentials"))?
            }
            _ => self.ops_user(req, from_loopback).await?,
        };
        let tokens = self.auth.tokens();
        let ttl = match env.get("expires_in") {
            Some(Value::Int(n)) if *n > 0 => *n as u64,
            _ => tokens.operation_ttl,
        };
        Ok(json!({
            "operation_token": tokens.issue(&user.username, user.super_user, Kind::Operation, ttl),
            "refresh_token": tokens.issue(&user.username, user.super_user, Kind::Refresh, tokens.refresh_ttl),
        }))
    }

    /// `refresh_operation_token`: a new operation token for the user of a refresh token (the
    /// Bearer credential, or `refresh_token` in the body of an authenticated request).
    async fn refresh_token(
        &self,
        req: &Request<'_>,
        env: &Value,
        from_loopback: bool,
    ) -> Result<Json, OpsError> {
        let tokens = self.auth.tokens();
        let refreshing = match env.get("refresh_token") {
            Some(Value::String(t)) => {
                self.ops_user(req, from_loopback).await?;
                t.clone()
            }
            _ => {
                let Some(token) = req.authorization.and_then(bearer) else {
                    self.ops_user(req, from_loopback).await?;
                    return Err(bad("'refresh_token' is required"));
                };
                if tokens.verify(token, Kind::Operation).is_ok() {
                    return Err(bad("'refresh_token' is required"));
                }
                token.to_owned()
            }
        };
        let username = tokens
            .verify(&refreshing, Kind::Refresh)
            .map_err(|e| match e {
                TokenError::Expired => fail(401, "token expired"),
                TokenError::Invalid => fail(401, "invalid token"),
            })?;
        let user = self
            .auth
            .users()
            .active_user(&username)
            .ok_or_else(|| fail(401, "invalid token"))?;
        Ok(json!({
            "operation_token": tokens.issue(&user.username, user.super_user, Kind::Operation, tokens.operation_ttl),
        }))
    }

    /// The tables of `database` (or all) that `user` may see, in name order.
    fn tables_of(&self, database: Option<&str>, user: &User) -> Vec<Arc<Table>> {
        let mut tables = self.shared.catalog.tables(database);
        tables.retain(|t| user.permission.table(&t.database, &t.name).is_some());
        tables
    }

    /// `describe_table` of one table: its attributes and how many records it holds now.
    async fn describe(&self, table: &Arc<Table>) -> Result<Value, OpsError> {
        let mut rows = query::matching(&self.router, table, None);
        let now_ms = tessera_storage::shard::now_micros() / 1000;
        let mut count = 0u64;
        while let Some(row) = rows.next().await? {
            if RecordRef::parse(&row.stored).is_some_and(|r| !r.is_expired(now_ms)) {
                count += 1;
            }
        }
        Ok(table.describe_operation(count))
    }

    /// `{"<table>": describe_table, ...}`.
    async fn describe_all(&self, tables: Vec<Arc<Table>>) -> Result<Value, OpsError> {
        let mut out = Vec::with_capacity(tables.len());
        for t in tables {
            out.push((t.name.clone(), self.describe(&t).await?));
        }
        Ok(Value::Object(out))
    }

    /// The table an operation names (`database` or its old name `schema`, default `data`),
    /// once `user`'s role allows every one of `actions` on it. A table the role has no
    /// permissions on is reported as missing, like one that does not exist.
    fn op_table<'u>(
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
    fn table_for<'u>(
        &self,
        database: &str,
        name: &str,
        user: &'u User,
        actions: &[Action],
    ) -> Result<(Arc<Table>, Option<&'u TablePermission>), OpsError> {
        let missing = format!("Table '{database}.{name}' does not exist");
        let table = self
            .shared
            .catalog
            .table(database, name)
            .ok_or_else(|| bad(missing.clone()))?;
        let Some(perm) = user.permission.table(database, name) else {
            return Err(forbidden(json!([]), json!([missing])));
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

    /// The user and role operations (super users only).
    async fn administer(&self, op: &str, env: &Value) -> Result<Json, OpsError> {
        let users = self.auth.users().clone();
        let text = |name: &str| match env.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let permission: Option<Json> = env.get("permission").map(crate::output::json_value);
        let tables: Vec<(String, String)> = self
            .shared
            .catalog
            .tables(None)
            .iter()
            .map(|t| (t.database.clone(), t.name.clone()))
            .collect();
        let exists = move |d: &str, t: &str| tables.iter().any(|(a, b)| a == d && b == t);
        let op = op.to_owned();
        let (role, id, username, password) =
            (text("role"), text("id"), text("username"), text("password"));
        let active = match env.get("active") {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        };
        // File writes (fsync) and password hashing stay off the executor.
        let result = glommio::executor()
            .spawn_blocking(move || match op.as_str() {
                "list_roles" => Ok(users.list_roles()),
                "list_users" => Ok(users.list_users()),
                "add_role" => match role {
                    Some(r) => users.add_role(&r, permission.as_ref(), exists),
                    None => Err((400, json!({"error": "Role name can't be blank"}))),
                },
                "alter_role" => match id {
                    Some(i) => users.alter_role(&i, permission.as_ref(), exists),
                    None => Err((400, json!({"error": "Id can't be blank"}))),
                },
                "drop_role" => match id {
                    Some(i) => users.drop_role(&i),
                    None => Err((400, json!({"error": "Id can't be blank"}))),
                },
                "add_user" => match (username, role) {
                    (Some(u), Some(r)) => {
                        users.add_user(&u, password.as_deref(), &r, active.unwrap_or(true))
                    }
                    (None, _) => Err((400, json!({"error": "Username can't be blank"}))),
                    (_, None) => Err((400, json!({"error": "Role can't be blank"}))),
                },
                "alter_user" => match username {
                    Some(u) => users.alter_user(&u, password.as_deref(), role.as_deref(), active),
                    None => Err((400, json!({"error": "Username can't be blank"}))),
                },
                "drop_user" => match username {
                    Some(u) => users.drop_user(&u),
                    None => Err((400, json!({"error": "Username can't be blank"}))),
                },
                other => Err((
                    400,
                    json!({"error": format!("Operation '{other}' not found")}),
                )),
            })
            .await;
        result.map_err(|(status, body)| OpsError(status, body))
    }

    async fn write(&self, env: &mut Value, kind: Write, user: &User) -> Result<Value, OpsError> {
        let actions = kind.actions();
        let (table, restricted) = self.op_table(env, user, actions)?;
        // The records are moved out of the envelope, not copied.
        let records = match take_property(env, "records") {
            None => return Err(bad("'records' is required")),
            Some(Value::Array(r)) => r,
            Some(_) => return Err(bad("'records' must be an array")),
        };
        self.write_records(table, restricted, records, kind).await
    }

    /// Writes `records` to `table` as one transaction, as `kind` says, and reports what it did.
    async fn write_records(
        &self,
        table: Arc<Table>,
        restricted: Option<&TablePermission>,
        records: Vec<Value>,
        kind: Write,
    ) -> Result<Value, OpsError> {
        let actions = kind.actions();
        if records.len() > MAX_RECORDS {
            return Err(bad(format!("at most {MAX_RECORDS} records per operation")));
        }
        let pk_name = table.primary_key().name.clone();
        let mut ops = Vec::with_capacity(records.len());
        let mut keys = Vec::with_capacity(records.len());
        for (i, mut rec) in records.into_iter().enumerate() {
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
                _ => self.shared.new_key(&table)?,
            };
            if let (Some(p), Value::Object(props)) = (&restricted, &rec) {
                let mut refused: Vec<Json> = Vec::new();
                for (k, _) in props {
                    let missing: Vec<&str> = actions
                        .iter()
                        .filter(|a| !p.writes_attribute(k, **a))
                        .map(|a| a.name())
                        .collect();
                    if !missing.is_empty() {
                        refused.push(json!({"attribute_name": k, "required_permissions": missing}));
                    }
                }
                if !refused.is_empty() {
                    return Err(forbidden(
                        json!([{"schema": table.database, "table": table.name,
                                "required_table_permissions": [],
                                "required_attribute_permissions": refused}]),
                        json!([]),
                    ));
                }
            }
            rec.set(&pk_name, pk.clone());
            let mode = match kind {
                Write::Insert => WriteMode::Replace,
                Write::Update | Write::Upsert => WriteMode::Patch,
            };
            check_record(&table, &mut rec, mode).map_err(|e| bad(e.to_string()))?;
            let key =
                record_key(table.id, &pk).map_err(|e| bad(format!("Invalid primary key: {e}")))?;
            self.shared.saw_key(&table, &pk);
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

    /// A dynamic table with an attribute for every top-level property the records of `ops`
    /// write (added, indexed, before any record holding it is written).
    async fn with_attributes_of(
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
                        check_name("attribute", k)?;
                        new.push(k.clone());
                    }
                }
            }
        }
        if new.is_empty() {
            return Ok(table);
        }
        self.in_catalog(move |c| c.add_attributes(&table.database, &table.name, &new))
            .await
    }

    /// Runs a schema change off the executor (it waits for the layout's lock and fsync).
    async fn in_catalog<R: Send + 'static>(
        &self,
        change: impl FnOnce(&Catalog) -> Result<R, Refused> + Send + 'static,
    ) -> Result<R, OpsError> {
        let shared = self.shared.clone();
        glommio::executor()
            .spawn_blocking(move || change(&shared.catalog))
            .await
            .map_err(|Refused(status, message)| fail(status, message))
    }

    /// The schema operations (super users only): `create_database`, `drop_database`,
    /// `create_table`, `drop_table`, `create_attribute` and `drop_attribute`. Dropping removes
    /// the records (or the attribute's values) from every shard before it answers.
    async fn change_schema(&self, op: &str, env: &Value) -> Result<Json, OpsError> {
        let database = database_of(env).to_owned();
        let name = |key: &str| -> Result<String, OpsError> {
            match env.get(key) {
                Some(Value::String(s)) => {
                    check_name(key, s)?;
                    Ok(s.clone())
                }
                Some(_) => Err(bad(format!("'{key}' must be a string"))),
                None => Err(bad(format!("'{key}' is required"))),
            }
        };
        check_name("database", &database)?;
        if database == "system" {
            return Err(bad("database 'system' is reserved"));
        }
        let (message, dropped) = match op {
            "create_database" => {
                let db = database.clone();
                self.in_catalog(move |c| c.create_database(&db).map(|_| Dropped::None))
                    .await?;
                (
                    format!("database '{database}' successfully created"),
                    Dropped::None,
                )
            }
            "drop_database" => {
                let db = database.clone();
                let dropped = self
                    .in_catalog(move |c| c.drop_database(&db).map(Dropped::Tables))
                    .await?;
                (format!("successfully deleted '{database}'"), dropped)
            }
            "create_table" => {
                let table = name("table")?;
                let pk = name("primary_key").or_else(|e| match env.get("hash_attribute") {
                    Some(_) => name("hash_attribute"),
                    None => Err(e),
                })?;
                let attributes = match env.get("attributes") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(list)) => list
                        .iter()
                        .map(|a| match a {
                            Value::String(s) => Some(s.clone()),
                            a => match a.get("name").or_else(|| a.get("attribute")) {
                                Some(Value::String(s)) => Some(s.clone()),
                                _ => None,
                            },
                        })
                        .collect::<Option<Vec<String>>>()
                        .ok_or_else(|| bad("'attributes' must list attribute names"))?,
                    Some(_) => return Err(bad("'attributes' must be an array")),
                };
                for a in &attributes {
                    check_name("attribute", a)?;
                }
                let (db, t) = (database.clone(), table.clone());
                self.in_catalog(move |c| {
                    c.create_table(&db, &t, &pk, &attributes)
                        .map(|_| Dropped::None)
                })
                .await?;
                (
                    format!("table '{database}.{table}' successfully created."),
                    Dropped::None,
                )
            }
            "drop_table" => {
                let table = name("table")?;
                let (db, t) = (database.clone(), table.clone());
                let dropped = self
                    .in_catalog(move |c| c.drop_table(&db, &t).map(|t| Dropped::Tables(vec![t])))
                    .await?;
                (
                    format!("successfully deleted table '{database}.{table}'"),
                    dropped,
                )
            }
            "create_attribute" => {
                let (table, attribute) = (name("table")?, name("attribute")?);
                let (db, t, a) = (database.clone(), table.clone(), attribute.clone());
                self.in_catalog(move |c| c.create_attribute(&db, &t, &a).map(|_| Dropped::None))
                    .await?;
                (
                    format!("attribute '{database}.{table}.{attribute}' successfully created."),
                    Dropped::None,
                )
            }
            "drop_attribute" => {
                let (table, attribute) = (name("table")?, name("attribute")?);
                let (db, t, a) = (database.clone(), table.clone(), attribute.clone());
                let dropped = self
                    .in_catalog(move |c| {
                        c.drop_attribute(&db, &t, &a)
                            .map(|(table, id)| Dropped::Attribute(table, a, id))
                    })
                    .await?;
                (
                    format!("successfully deleted attribute '{attribute}'"),
                    dropped,
                )
            }
            other => return Err(bad(format!("Operation '{other}' not found"))),
        };
        // The catalog no longer names what was dropped; now its data goes.
        match dropped {
            Dropped::None => {}
            Dropped::Tables(tables) => {
                // No write can reach a table the catalog has forgotten, so its records are
                // removed off the executor, shard by shard.
                let shards = self.router.shard_set().clone();
                glommio::executor()
                    .spawn_blocking(move || {
                        for t in &tables {
                            for i in 0..shards.count() {
                                if let Some(store) = shards.store(i) {
                                    store.drop_table(t.id)?;
                                }
                            }
                        }
                        Ok::<_, tessera_storage::shard::StoreError>(())
                    })
                    .await
                    .map_err(RestError::from)?;
            }
            Dropped::Attribute(table, attribute, id) => {
                // On each shard's own core, so that a single-shard write still in flight with
                // the old table is applied wholly before or after the rewrite.
                let runs = self
                    .router
                    .on_all_shards(move |s| s.drop_attribute(&table, &attribute, id))
                    .await
                    .map_err(RestError::from)?;
                for r in runs {
                    r.map_err(RestError::from)?;
                }
            }
        }
        Ok(json!({ "message": message }))
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

    async fn delete(&self, env: &Value, user: &User) -> Result<Value, OpsError> {
        let (table, _) = self.op_table(env, user, &[Action::Delete])?;
        self.delete_ids(&table, Self::op_ids(env)?).await
    }

    /// Deletes the records of `ids` as one transaction (ids that do not exist count as deleted).
    async fn delete_ids(&self, table: &Arc<Table>, ids: Vec<Value>) -> Result<Value, OpsError> {
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

    async fn search_by_id(&self, env: &Value, user: &User) -> Result<Value, OpsError> {
        let (table, restricted) = self.op_table(env, user, &[Action::Read])?;
        let ids = Self::op_ids(env)?;
        let attrs = get_attributes(env)?;
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
            let Some(stored) = view.get(&key).map_err(RestError::from)? else {
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
    async fn search_by_value(&self, env: &Value, user: &User) -> Result<Value, OpsError> {
        let (table, restricted) = self.op_table(env, user, &[Action::Read])?;
        let attrs = get_attributes(env)?;
        check_readable(&table, restricted, attrs.iter().flatten())?;
        let Some(Value::String(attr)) =
            env.get("search_attribute").or_else(|| env.get("attribute"))
        else {
            return Err(bad("'search_attribute' is required"));
        };
        check_readable(&table, restricted, [attr])?;
        let filter = match env.get("search_value").or_else(|| env.get("value")) {
            None | Some(Value::Null) => return Err(bad("'search_value' is required")),
            Some(Value::String(v)) if v == "*" => None,
            Some(Value::String(v)) => {
                let (op, inner) = wildcard(v, '*');
                Some(condition(attr, op, Operand::Text(inner.to_owned())))
            }
            Some(v) => Some(condition(attr, Op::Eq, operand(v))),
        };
        // `*` alone still names an attribute that must exist.
        if filter.is_none() && table.attribute(attr).is_none() {
            return Err(fail(404, format!("unknown attribute '{attr}'")));
        }
        let parsed = Query {
            filter,
            select: None,
            limit: None,
            sort: Vec::new(),
        };
        self.search(&table, parsed, &attrs, restricted).await
    }

    /// `search_by_conditions`: conditions and nested groups, sort, limit and offset.
    async fn search_by_conditions(&self, env: &Value, user: &User) -> Result<Value, OpsError> {
        let (table, restricted) = self.op_table(env, user, &[Action::Read])?;
        let attrs = get_attributes(env)?;
        check_readable(&table, restricted, attrs.iter().flatten())?;
        let parsed = conditions_query(env, true)?;
        let mut named = Vec::new();
        if let Some(f) = &parsed.filter {
            filter_attributes(f, &mut named);
        }
        named.extend(parsed.sort.iter().filter_map(|k| k.path.first().cloned()));
        check_readable(&table, restricted, &named)?;
        self.search(&table, parsed, &attrs, restricted).await
    }

    /// Plans `parsed` like a REST query and returns the matching records, projected.
    async fn search(
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

/// A Query object's `conditions` (with `operator`), `sort`, `limit` and `offset`: the body of
/// `search_by_conditions` and the Resource API's `search`, where the conditions may be left out
/// unless `required`.
fn conditions_query(env: &Value, required: bool) -> Result<Query, OpsError> {
    let filter = match env.get("conditions") {
        None | Some(Value::Null) if required => return Err(bad("'conditions' is required")),
        None | Some(Value::Null) => None,
        Some(Value::Array(c)) if c.is_empty() && required => {
            return Err(bad("'conditions' must contain at least 1 items"));
        }
        Some(Value::Array(c)) if c.is_empty() => None,
        Some(Value::Array(c)) => Some(group(c, env.get("operator"))?),
        Some(_) => return Err(bad("'conditions' must be an array")),
    };
    let sort = match env.get("sort") {
        None | Some(Value::Null) => Vec::new(),
        Some(s) => {
            let Some(Value::String(attr)) = s.get("attribute") else {
                return Err(bad("'sort' must name an 'attribute'"));
            };
            vec![SortKey {
                path: vec![attr.clone()],
                descending: matches!(s.get("descending"), Some(Value::Bool(true))),
            }]
        }
    };
    let count = |name: &str| match env.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Int(n)) if *n >= 0 => Ok(Some(*n as usize)),
        Some(_) => Err(bad(format!("'{name}' must be a non-negative integer"))),
    };
    let (limit, offset) = (count("limit")?, count("offset")?);
    let start = offset.unwrap_or(0);
    let limit = (limit.is_some() || start > 0).then(|| Limit {
        start,
        end: limit.map_or(usize::MAX, |l| start.saturating_add(l)),
    });
    Ok(Query {
        filter,
        select: None,
        limit,
        sort,
    })
}

/// [`conditions_query`] for the wasm host's `search`: every failure is a 400.
pub(crate) fn resource_query(query: &Value) -> Result<Query, RestError> {
    conditions_query(query, false).map_err(|OpsError(_, body)| {
        RestError::BadRequest(body["error"].as_str().unwrap_or("bad query").to_owned())
    })
}

/// What a schema change dropped, whose data must then be removed from the shards.
enum Dropped {
    None,
    Tables(Vec<Arc<Table>>),
    /// The table as it was, the attribute and its id.
    Attribute(Arc<Table>, String, u16),
}

/// Whether `op` changes databases, tables or attributes.
fn is_schema_change(op: &str) -> bool {
    matches!(
        op,
        "create_database"
            | "drop_database"
            | "create_table"
            | "drop_table"
            | "create_attribute"
            | "drop_attribute"
    )
}

/// Refuses a database, table or attribute name that could not be told apart in the layout, in
/// SQL's `database.table` or in a URL: empty, too long, or with `.`, `/` or control characters.
fn check_name(what: &str, name: &str) -> Result<(), OpsError> {
    if name.is_empty()
        || name.len() > 250
        || name.chars().any(|c| c == '.' || c == '/' || c.is_control())
    {
        return Err(bad(format!(
            "'{what}' must be 1 to 250 characters without '.', '/' or control characters: {name:?}"
        )));
    }
    Ok(())
}

/// The internal name of an operation only super users may run (HARPER-OPS.md section 7).
fn super_user_only(op: &str) -> Option<&'static str> {
    Some(match op {
        "create_database" => "createSchema",
        "drop_database" => "dropSchema",
        "create_table" => "createTable",
        "drop_table" => "dropTable",
        "create_attribute" => "createAttribute",
        "drop_attribute" => "dropAttribute",
        "add_role" => "addRole",
        "alter_role" => "alterRole",
        "drop_role" => "dropRole",
        "list_roles" => "listRoles",
        "add_user" => "addUser",
        "alter_user" => "alterUser",
        "drop_user" => "dropUser",
        "list_users" => "listUsersExternal",
        _ => return None,
    })
}

/// Moves property `name` out of an object (leaving null in its place).
fn take_property(v: &mut Value, name: &str) -> Option<Value> {
    match v {
        Value::Object(props) => props
            .iter_mut()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::mem::replace(v, Value::Null)),
        _ => None,
    }
}

/// The database an operation names (`database` or its old name `schema`), `data` by default.
fn database_of(env: &Value) -> &str {
    match env.get("database").or_else(|| env.get("schema")) {
        Some(Value::String(d)) => d.as_str(),
        _ => crate::catalog::DEFAULT_DATABASE,
    }
}

/// Refuses (403, reported as missing) any of `names` the role may not read.
fn check_readable<'n>(
    table: &Table,
    restricted: Option<&TablePermission>,
    names: impl IntoIterator<Item = &'n String>,
) -> Result<(), OpsError> {
    let Some(p) = restricted else { return Ok(()) };
    let pk = &table.primary_key().name;
    let hidden: Vec<String> = names
        .into_iter()
        .filter(|n| !p.reads_attribute(n, *n == pk))
        .map(|n| format!("Attribute '{n}' does not exist on '{}'", table.full_name()))
        .collect();
    if hidden.is_empty() {
        Ok(())
    } else {
        Err(forbidden(json!([]), json!(hidden)))
    }
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
fn get_attributes(env: &Value) -> Result<Option<Vec<String>>, OpsError> {
    let Some(Value::Array(a)) = env.get("get_attributes") else {
        return Err(bad("'get_attributes' is required"));
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
    let mut full = output::body_value(body)?;
    let pk = &table.primary_key().name;
    Ok(match attrs {
        None => {
            for a in &table.attributes {
                if a.expr.is_none() && a.relationship.is_none() && full.get(&a.name).is_none() {
                    full.set(&a.name, Value::Null);
                }
            }
            // Attributes the role may not read are left out.
            if let (Some(p), Value::Object(props)) = (restricted, &mut full) {
                props.retain(|(k, _)| p.reads_attribute(k, k == pk));
            }
            full
        }
        Some(names) => pick(&full, names),
    })
}

/// The properties `names` of a record, in that order, absent ones as null.
pub(crate) fn pick(full: &Value, names: &[String]) -> Value {
    Value::Object(
        names
            .iter()
            .map(|n| (n.clone(), full.get(n).cloned().unwrap_or(Value::Null)))
            .collect(),
    )
}

/// The comparison a pattern with `wild` at its start and/or end asks for (`B*` starts with
/// `B`, `*o` ends with `o`, `*uk*` contains `uk`), and the text between.
fn wildcard(pattern: &str, wild: char) -> (Op, &str) {
    let lead = pattern.starts_with(wild);
    let trail = pattern.len() > 1 && pattern.ends_with(wild);
    let inner = &pattern[usize::from(lead)..pattern.len() - usize::from(trail)];
    let op = match (lead, trail) {
        (true, true) => Op::Contains,
        (false, true) => Op::StartsWith,
        (true, false) => Op::EndsWith,
        (false, false) => Op::Eq,
    };
    (op, inner)
}

fn condition(attr: &str, op: Op, value: Operand) -> Filter {
    Filter::Cond(Condition {
        path: vec![attr.to_owned()],
        op,
        value,
        at: 0,
        chained: None,
    })
}

/// A JSON operand as the query planner's: strings convert to the attribute's type.
fn operand(v: &Value) -> Operand {
    match v {
        Value::Null => Operand::Null,
        Value::Bool(b) => Operand::Bool(*b),
        Value::Int(i) => Operand::Number(*i as f64),
        Value::Float(f) => Operand::Number(*f),
        Value::String(s) => Operand::Text(s.clone()),
        other => Operand::String(other.to_json()),
    }
}

/// A group of conditions joined by `operator` (`and` when absent).
fn group(items: &[Value], operator: Option<&Value>) -> Result<Filter, OpsError> {
    let or = match operator {
        None | Some(Value::Null) => false,
        Some(Value::String(o)) if o.eq_ignore_ascii_case("and") => false,
        Some(Value::String(o)) if o.eq_ignore_ascii_case("or") => true,
        Some(o) => return Err(bad(format!("Unknown operator {}", o.to_json()))),
    };
    let parts = items
        .iter()
        .map(one_condition)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if or {
        Filter::Or(parts)
    } else {
        Filter::And(parts)
    })
}

/// One `{"search_attribute","search_type","search_value"}` (or a nested group).
fn one_condition(c: &Value) -> Result<Filter, OpsError> {
    if let Some(Value::Array(nested)) = c.get("conditions") {
        if nested.is_empty() {
            return Err(bad("'conditions' must contain at least 1 items"));
        }
        return group(nested, c.get("operator"));
    }
    let Some(Value::String(attr)) = c.get("search_attribute").or_else(|| c.get("attribute")) else {
        return Err(bad("a condition needs 'search_attribute'"));
    };
    let Some(Value::String(kind)) = c.get("search_type").or_else(|| c.get("comparator")) else {
        return Err(bad("a condition needs 'search_type'"));
    };
    let value = c
        .get("search_value")
        .or_else(|| c.get("value"))
        .unwrap_or(&Value::Null);
    let op = match kind.as_str() {
        "equals" => Op::Eq,
        // Null values never match a comparison, not even `not_equal` (HARPER-OPS.md section 3).
        "not_equal" => {
            return Ok(Filter::And(vec![
                condition(attr, Op::Ne, operand(value)),
                condition(attr, Op::Ne, Operand::Null),
            ]));
        }
        "contains" => Op::Contains,
        "starts_with" => Op::StartsWith,
        "ends_with" => Op::EndsWith,
        "greater_than" => Op::Gt,
        "greater_than_equal" => Op::Ge,
        "less_than" => Op::Lt,
        "less_than_equal" => Op::Le,
        "between" => {
            let Value::Array(bounds) = value else {
                return Err(bad("'between' needs [low, high]"));
            };
            let [lo, hi] = bounds.as_slice() else {
                return Err(bad("'between' needs [low, high]"));
            };
            return Ok(Filter::And(vec![
                condition(attr, Op::Ge, operand(lo)),
                condition(attr, Op::Le, operand(hi)),
            ]));
        }
        other => return Err(bad(format!("Unknown query comparator \"{other}\""))),
    };
    Ok(condition(attr, op, operand(value)))
}

//! The Operations API: `POST /` with `{"operation": ...}` on the operations port, answered in
//! JSON, errors as `{"error": "..."}` (see docs/operations.md).
//!
//! Served: the schema operations (`create_database`, `create_table`, `create_attribute` and
//! their drops, on the table registry), the `describe_*` operations (`schema.rs`), the NoSQL data
//! operations (`insert`, `update`, `upsert`, `delete`, `search_by_id`, `search_by_value`,
//! `search_by_conditions`; `data.rs`), `sql` (`sql.rs`), users, roles and tokens (`users.rs`).
//! Searches are planned onto the same indexes and shard walks as REST queries. A batch of
//! records is one transaction: it commits on every shard it touches or on none
//! ([`tessera_shards::Router::transact`]), and its reads see one consistent cut of the shards.

mod data;
mod schema;
mod sql;
mod users;

use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Value as Json, json};
use tessera_protocol::MediaType;
use tessera_protocol::http::{Method, Request};
use tessera_storage::Value;

use crate::app::AppError;
use crate::app::permissions::User;
use crate::net::http::Handler;
use crate::net::reply::Reply;
use crate::worker::Worker;
use data::Write;
use schema::is_schema_change;

/// Most records one operation may carry.
const MAX_RECORDS: usize = 100_000;

/// An operation's failure: its status and JSON body (`{"error": ...}`, a few with more keys).
struct OpsError {
    status: u16,
    body: Json,
}

impl From<AppError> for OpsError {
    fn from(e: AppError) -> Self {
        if let AppError::Internal(message) = &e {
            eprintln!("error: {message}");
        }
        let message = match &e {
            AppError::Unauthorized => "Must login".to_owned(),
            e => e.to_string(),
        };
        fail(e.status(), message)
    }
}

fn fail(status: u16, message: impl Into<String>) -> OpsError {
    OpsError {
        status,
        body: json!({ "error": message.into() }),
    }
}

fn bad(message: impl Into<String>) -> OpsError {
    fail(400, message)
}

/// Harper's refusal of an operation the role does not allow.
fn forbidden(unauthorized: Json, invalid: Json) -> OpsError {
    OpsError {
        status: 403,
        body: json!({"error": "This operation is not authorized due to role restrictions and/or invalid database items",
               "unauthorized_access": unauthorized, "invalid_schema_items": invalid}),
    }
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

/// The Operations API on one core.
pub struct Operations {
    worker: Rc<Worker>,
}

impl Operations {
    pub fn new(worker: Rc<Worker>) -> Operations {
        Operations { worker }
    }
}

impl Deref for Operations {
    type Target = Worker;
    fn deref(&self) -> &Worker {
        &self.worker
    }
}

impl Handler for Operations {
    fn max_body(&self) -> usize {
        self.app.settings.max_body
    }

    async fn handle(
        &self,
        req: &Request<'_>,
        body: &mut [u8],
        from_loopback: bool,
        reply: &mut Reply<'_>,
    ) {
        let result = self.operation(req, body, from_loopback, reply).await;
        if let Err(OpsError { status, body }) = result {
            let out = serde_json::to_vec(&body).unwrap_or_default();
            let extra: &[(&str, &[u8])] = if status == 401 {
                &[("WWW-Authenticate", b"Basic")]
            } else {
                &[]
            };
            reply.send(status, Some(MediaType::Json), extra, &out);
        }
    }
}

/// Sends a JSON answer.
fn send_json(reply: &mut Reply<'_>, out: &Json) {
    let buf = serde_json::to_vec(out).unwrap_or_default();
    reply.send(200, Some(MediaType::Json), &[], &buf);
}

impl Operations {
    /// The user an operation runs as: 401 with Harper's message when there is none.
    async fn ops_user(
        &self,
        req: &Request<'_>,
        from_loopback: bool,
    ) -> Result<Arc<User>, OpsError> {
        self.user(req.authorization, from_loopback)
            .await
            .map_err(|d| fail(401, d.message()))
    }

    /// Authenticates and runs one operation.
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
            req.authorization.is_none() && !(self.app.settings.authorize_local && from_loopback);
        let mut envelope = {
            let mut buffers = simd_json::Buffers::default();
            match crate::app::body::json(body, &mut buffers) {
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
            send_json(reply, &out);
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
            send_json(reply, &out);
            return Ok(());
        }
        let op = op.to_owned();
        let out = self.run(&op, &mut envelope, &user).await?;
        let mut buf = Vec::with_capacity(256);
        match out {
            Out::Value(v) => v.write_json(&mut buf),
            Out::Json(j) => buf = serde_json::to_vec(&j).unwrap_or_default(),
        }
        reply.send(200, Some(MediaType::Json), &[], &buf);
        Ok(())
    }

    /// Runs a data operation (or `describe_*`, `user_info`) as `user`.
    async fn run(&self, op: &str, envelope: &mut Value, user: &User) -> Result<Out, OpsError> {
        Ok(match op {
            "insert" => self.write(envelope, Write::Insert, user).await?.into(),
            "update" => self.write(envelope, Write::Update, user).await?.into(),
            "upsert" => self.write(envelope, Write::Upsert, user).await?.into(),
            "delete" => self.delete(envelope, user).await?.into(),
            "sql" => self.sql(envelope, user).await?.into(),
            "search_by_id" => self.search_by_id(envelope, user).await?.into(),
            "search_by_value" => self.search_by_value(envelope, user).await?.into(),
            "search_by_conditions" => self.search_by_conditions(envelope, user).await?.into(),
            "user_info" => Out::Json(self.auth.users().user_info(&user.username)),
            "describe_table" | "describe_database" | "describe_all" => {
                self.describe_op(op, envelope, user).await?.into()
            }
            other => return Err(bad(format!("Operation '{other}' not found"))),
        })
    }
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

/// The database an operation names (`database` or its old name `schema`), `data` by default.
fn database_of(env: &Value) -> &str {
    match env.get("database").or_else(|| env.get("schema")) {
        Some(Value::String(d)) => d.as_str(),
        _ => crate::app::tables::DEFAULT_DATABASE,
    }
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

//! The Operations API: `POST /` with `{"operation": ...}` on the operations port, answered in
//! JSON, errors as `{"error": "..."}` (see docs/operations.md).
//!
//! Served: the schema operations (`create_database`, `create_table`, `create_attribute` and
//! their drops, on the table registry), the `describe_*` operations (`schema.rs`), the NoSQL data
//! operations (`insert`, `update`, `upsert`, `delete`, `search_by_id`, `search_by_value`,
//! `search_by_conditions`; `data.rs`), `sql` (`sql.rs`), users, roles and tokens (`users.rs`),
//! `read_audit_log` and `delete_audit_logs_before` (`audit.rs`), `export_local` (`export.rs`).
//! Searches are planned onto the same indexes and shard walks as REST queries. A batch of
//! records is one transaction: it commits on every shard it touches or on none
//! ([`tessera_shards::Router::transact`]), and its reads see one consistent cut of the shards.

mod audit;
mod components;
mod csv;
mod data;
mod export;
mod jobs;
mod schema;
mod sql;
mod system;
mod system_tables;
mod users;

use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Value as Json, json};
use tessera_protocol::MediaType;
use tessera_protocol::http::{Method, Request};
use tessera_storage::Value;

use crate::app::AppError;
use crate::app::Peer;
use crate::app::permissions::User;
use crate::net::http::Handler;
use crate::net::reply::Reply;
use crate::worker::Worker;
use data::Write;
pub use jobs::Jobs;
use schema::is_schema_change;

/// Most records one operation may carry.
const MAX_RECORDS: usize = 100_000;

/// An operation's failure: its status and JSON body (`{"error": ...}`, a few with more keys).
#[derive(Debug)]
struct OpsError {
    status: u16,
    body: Json,
}

impl From<AppError> for OpsError {
    fn from(e: AppError) -> Self {
        if let AppError::Internal(message) = &e {
            tracing::error!("{message}");
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
#[derive(Clone)]
pub struct Operations {
    worker: Rc<Worker>,
    /// The process's jobs, shared by every core.
    jobs: Arc<Jobs>,
}

impl Operations {
    pub fn new(worker: Rc<Worker>, jobs: Arc<Jobs>) -> Operations {
        Operations { worker, jobs }
    }
}

impl Deref for Operations {
    type Target = Worker;
    fn deref(&self) -> &Worker {
        &self.worker
    }
}

impl Handler for Operations {
    async fn handle(&self, req: &Request<'_>, body: &mut [u8], peer: &Peer, reply: &mut Reply<'_>) {
        match self.answer(req, body, peer).await {
            Ok(Answer::Page(page)) => {
                reply.send(200, None, &[("Content-Type", b"text/html")], page);
            }
            Ok(Answer::Json(out)) => reply.send(200, Some(MediaType::Json), &[], &out),
            Err(OpsError { status, body }) => {
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
}

/// A successful operation's answer.
#[derive(Debug)]
enum Answer {
    /// `GET /`: a page saying the server runs.
    Page(&'static [u8]),
    /// A JSON body.
    Json(Vec<u8>),
}

impl Answer {
    fn json(out: &Json) -> Answer {
        Answer::Json(serde_json::to_vec(out).unwrap_or_default())
    }
}

impl Operations {
    /// The user an operation runs as: 401 with Harper's message when there is none.
    async fn ops_user(&self, req: &Request<'_>, peer: &Peer) -> Result<Arc<User>, OpsError> {
        self.user(req.authorization, peer)
            .await
            .map_err(|d| fail(401, d.message()))
    }

    /// Authenticates and runs one operation.
    async fn answer(
        &self,
        req: &Request<'_>,
        body: &mut [u8],
        peer: &Peer,
    ) -> Result<Answer, OpsError> {
        if req.method == Method::Get && req.target == "/" {
            return Ok(Answer::Page(
                b"<!doctype html><title>Tessera</title><p>Tessera is running.</p>",
            ));
        }
        if req.method != Method::Post {
            return Err(fail(405, "Operations are POSTed to /"));
        }
        let anonymous =
            req.authorization.is_none() && !peer.vouched(self.app.settings.authorize_local);
        let mut envelope = {
            let mut buffers = simd_json::Buffers::default();
            match crate::app::body::json(body, &mut buffers) {
                Ok(v) => v,
                Err(_) if anonymous => return Err(fail(401, "Must login")),
                Err(e) => return Err(bad(e.to_string())),
            }
        };
        // Moved out (not copied), so that the envelope may be changed below.
        let op = match take_property(&mut envelope, "operation") {
            Some(Value::String(op)) => Some(op),
            _ => None,
        };
        let op = op.as_deref();
        // Token operations authenticate in their own ways.
        let tokens = match op {
            Some("create_authentication_tokens") => {
                Some(self.create_tokens(req, &envelope, peer).await?)
            }
            Some("refresh_operation_token") => {
                Some(self.refresh_token(req, &envelope, peer).await?)
            }
            _ => None,
        };
        if let Some(out) = tokens {
            return Ok(Answer::json(&out));
        }
        let user = self.ops_user(req, peer).await?;
        let Some(op) = op.map(current_name) else {
            return Err(bad("Request body must include an 'operation' property."));
        };
        if is_schema_change(op) {
            check_names(&envelope)?;
        } else {
            names_as_text(&mut envelope);
        }
        // Nobody changes the system database's tables, whatever their role.
        if is_schema_change(op) && database_of(&envelope) == system_tables::SYSTEM {
            return Err(fail(403, system_tables::UNTOUCHABLE));
        }
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
            } else if matches!(
                op,
                "get_configuration"
                    | "set_configuration"
                    | "system_information"
                    | "restart"
                    | "read_log"
                    | "cluster_status"
                    | "cluster_get_routes"
                    | "cluster_set_routes"
                    | "cluster_delete_routes"
                    | "add_node"
                    | "remove_node"
            ) {
                self.instance(op, &envelope).await?
            } else if matches!(
                op,
                "add_component"
                    | "set_component_file"
                    | "get_component_file"
                    | "get_components"
                    | "drop_component"
                    | "restart_service"
            ) {
                self.components(op, &envelope).await?
            } else if matches!(op, "read_audit_log" | "delete_audit_logs_before") {
                self.audit(op, &envelope, &user).await?
            } else if op == "export_local" {
                self.export_local(&envelope, &user).await?
            } else {
                self.administer(op, &envelope).await?
            };
            return Ok(Answer::json(&out));
        }
        let op = op.to_owned();
        if matches!(
            op.as_str(),
            "csv_data_load" | "csv_file_load" | "csv_url_load"
        ) {
            return Ok(Answer::json(&self.csv_load(&op, &envelope, user).await?));
        }
        if matches!(op.as_str(), "delete_records_before" | "delete_files_before") {
            return Ok(Answer::json(
                &self.delete_before(&op, &envelope, &user).await?,
            ));
        }
        let out = self.run(&op, &mut envelope, &user).await?;
        let mut buf = Vec::with_capacity(256);
        match out {
            Out::Value(v) => v.write_json(&mut buf),
            Out::Json(j) => buf = serde_json::to_vec(&j).unwrap_or_default(),
        }
        Ok(Answer::Json(buf))
    }

    /// Runs a data operation (or `describe_*`, `user_info`) as `user`.
    async fn run(&self, op: &str, envelope: &mut Value, user: &User) -> Result<Out, OpsError> {
        let data_op = matches!(
            op,
            "insert"
                | "update"
                | "upsert"
                | "delete"
                | "search_by_id"
                | "search_by_value"
                | "search_by_conditions"
        );
        if data_op
            && database_of(envelope) == system_tables::SYSTEM
            && let Some(answer) = self.system_data(op, envelope, user).await
        {
            return Ok(answer?.into());
        }
        // Harper's `replicatedConfirmation`: answered once that many other nodes applied it.
        let confirm = match envelope.get("replicatedConfirmation") {
            None | Some(Value::Null) => 0,
            Some(Value::Int(n)) if *n >= 0 => *n as usize,
            Some(_) => return Err(bad("'replicatedConfirmation' must be a whole number")),
        };
        let confirmed = |out: Value| async move {
            self.app.cluster.confirm(confirm).await?;
            Ok::<_, OpsError>(Out::Value(out))
        };
        Ok(match op {
            "insert" => confirmed(self.write(envelope, Write::Insert, user).await?).await?,
            "update" => confirmed(self.write(envelope, Write::Update, user).await?).await?,
            "upsert" => confirmed(self.write(envelope, Write::Upsert, user).await?).await?,
            "delete" => confirmed(self.delete(envelope, user).await?).await?,
            "sql" => self.sql(envelope, user).await?.into(),
            "search_by_id" => self.search_by_id(envelope, user).await?.into(),
            "search_by_value" => self.search_by_value(envelope, user).await?.into(),
            "search_by_conditions" => self.search_by_conditions(envelope, user).await?.into(),
            "user_info" => Out::Json(self.auth.users().user_info(&user.username)),
            "get_job" => match envelope.get("id") {
                Some(Value::String(id)) => Out::Json(self.jobs.get(id)),
                _ => return Err(bad("'id' is required")),
            },
            "search_jobs_by_start_date" => Out::Json(self.jobs_started_between(envelope)?),
            "describe_table" | "describe_database" | "describe_all" => {
                self.describe_op(op, envelope, user).await?.into()
            }
            other => return Err(bad(format!("Operation '{other}' not found"))),
        })
    }
}

impl Operations {
    /// `search_jobs_by_start_date`: the jobs started from `from_date` to `to_date` (dates).
    fn jobs_started_between(&self, env: &Value) -> Result<Json, OpsError> {
        let date = |key: &str| match env.get(key) {
            Some(Value::String(s)) => tessera_storage::value::parse_date(s)
                .ok_or_else(|| bad(format!("'{key}' must be a valid date"))),
            Some(Value::Date(ms)) => Ok(*ms),
            _ => Err(bad(format!("'{key}' is required"))),
        };
        Ok(self
            .jobs
            .started_between(date("from_date")?, date("to_date")?))
    }
}

/// The internal name of an operation only super users may run (docs/operations.md).
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
        "get_configuration" => "getConfiguration",
        "set_configuration" => "setConfiguration",
        "system_information" => "systemInformation",
        "restart" => "restart",
        "add_component" => "addComponent",
        "set_component_file" => "setComponentFile",
        "get_component_file" => "getComponentFile",
        "get_components" => "getComponents",
        "drop_component" => "dropComponent",
        "restart_service" => "restartService",
        "read_audit_log" => "readAuditLog",
        "delete_audit_logs_before" => "deleteAuditLogsBefore",
        "export_local" => "exportLocal",
        "read_log" => "readLog",
        "cluster_status" => "clusterStatus",
        "cluster_get_routes" => "clusterGetRoutes",
        "cluster_set_routes" => "clusterSetRoutes",
        "cluster_delete_routes" => "clusterDeleteRoutes",
        "add_node" => "addNode",
        "remove_node" => "removeNode",
        _ => return None,
    })
}

/// The current name of an operation Harper still takes under its older name, where a database
/// was a "schema" and a primary key a "hash": the two names run the same operation.
fn current_name(op: &str) -> &str {
    match op {
        "create_schema" => "create_database",
        "drop_schema" => "drop_database",
        "describe_schema" => "describe_database",
        "search_by_hash" => "search_by_id",
        other => other,
    }
}

/// Refuses a database (`database`, or `schema`) or table named by something else than a string,
/// in Harper's words.
fn check_names(env: &Value) -> Result<(), OpsError> {
    let not_text = |k: &str| env.get(k).is_some_and(|v| !matches!(v, Value::String(_)));
    let mut wrong = Vec::new();
    if not_text("database") || not_text("schema") {
        wrong.push("'schema' must be a string");
    }
    if not_text("table") {
        wrong.push("'table' must be a string");
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(bad(wrong.join(". ")))
    }
}

/// A database or table a data operation names by a number names it by the number's text, as
/// in Harper (`schema: 123, table: 4` is `123.4`).
fn names_as_text(env: &mut Value) {
    let Value::Object(props) = env else { return };
    for (k, v) in props.iter_mut() {
        if matches!(k.as_str(), "database" | "schema" | "table") {
            match v {
                Value::Int(i) => *v = Value::String(i.to_string()),
                Value::Float(f) => *v = Value::String(f.to_string()),
                _ => {}
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use base64::Engine;
    use serde_json::{Value as Json, json};
    use tessera_protocol::http::parse_request;

    use super::*;
    use crate::worker::testing::{ADMIN, with_worker};

    const SCHEMA: &str = "type Dog @table @export { id: Long @primaryKey name: String }";

    fn basic(user: &str, password: &str) -> String {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {token}")
    }

    /// The answer to one request to the Operations API: its status and body.
    async fn ask(
        ops: &Operations,
        method: &str,
        authorization: Option<&str>,
        body: &str,
    ) -> (u16, Json) {
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} / HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let req = parse_request(head.as_bytes()).expect("a request head");
        let mut body = body.as_bytes().to_vec();
        match ops.answer(&req, &mut body, &Peer::default()).await {
            Ok(Answer::Json(out)) => (200, serde_json::from_slice(&out).expect("JSON")),
            Ok(Answer::Page(page)) => (200, Json::String(String::from_utf8_lossy(page).into())),
            Err(OpsError { status, body }) => (status, body),
        }
    }

    #[test]
    fn envelopes_and_their_errors() {
        with_worker(SCHEMA, |worker| async move {
            let ops = Operations::new(worker, Default::default());
            let admin = basic(ADMIN.0, ADMIN.1);
            let admin = Some(admin.as_str());
            let (status, page) = ask(&ops, "GET", None, "").await;
            assert_eq!(status, 200);
            assert!(page.as_str().unwrap().contains("Tessera is running"));
            let (status, body) = ask(&ops, "PUT", admin, "{}").await;
            assert_eq!(
                (status, &body["error"]),
                (405, &json!("Operations are POSTed to /"))
            );
            // An anonymous body that is not JSON is a 401, an authenticated one a 400.
            assert_eq!(ask(&ops, "POST", None, "{").await.0, 401);
            assert_eq!(ask(&ops, "POST", admin, "{").await.0, 400);
            let (status, body) = ask(&ops, "POST", None, r#"{"operation":"describe_all"}"#).await;
            assert_eq!((status, &body["error"]), (401, &json!("Must login")));
            let wrong = basic(ADMIN.0, "wrong");
            let (status, body) = ask(&ops, "POST", Some(&wrong), r#"{"operation":"x"}"#).await;
            assert_eq!((status, &body["error"]), (401, &json!("Login failed")));
            let (status, body) = ask(&ops, "POST", admin, r#"{"records":[]}"#).await;
            assert_eq!(
                (status, &body["error"]),
                (
                    400,
                    &json!("Request body must include an 'operation' property.")
                )
            );
            let (status, body) = ask(&ops, "POST", admin, r#"{"operation":"nope"}"#).await;
            assert_eq!(
                (status, &body["error"]),
                (400, &json!("Operation 'nope' not found"))
            );
            let missing = r#"{"operation":"describe_table","table":"Cat"}"#;
            assert_eq!(ask(&ops, "POST", admin, missing).await.0, 404);
        });
    }

    #[test]
    fn data_operations_round_trip() {
        with_worker(SCHEMA, |worker| async move {
            let ops = Operations::new(worker, Default::default());
            let admin = basic(ADMIN.0, ADMIN.1);
            let admin = Some(admin.as_str());
            let insert = r#"{"operation":"insert","table":"Dog","records":[{"id":1,"name":"Rex"},{"id":2,"name":"Ada"}]}"#;
            let (status, body) = ask(&ops, "POST", admin, insert).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["inserted_hashes"], json!([1, 2]));
            // Inserting an existing key skips it.
            let again = r#"{"operation":"insert","table":"Dog","records":[{"id":1,"name":"Max"}]}"#;
            let (_, body) = ask(&ops, "POST", admin, again).await;
            assert_eq!(body["skipped_hashes"], json!([1]));
            let search = r#"{"operation":"search_by_id","table":"Dog","ids":[2,1],"get_attributes":["name"]}"#;
            let (status, body) = ask(&ops, "POST", admin, search).await;
            assert_eq!(status, 200);
            assert_eq!(body, json!([{"name":"Ada"},{"name":"Rex"}]));
        });
    }

    #[test]
    fn older_operation_names_run_the_same_operations() {
        with_worker(SCHEMA, |worker| async move {
            let ops = Operations::new(worker, Default::default());
            let admin = basic(ADMIN.0, ADMIN.1);
            let admin = Some(admin.as_str());
            let create = r#"{"operation":"create_schema","schema":"zoo"}"#;
            let (status, body) = ask(&ops, "POST", admin, create).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                body["message"],
                json!("database 'zoo' successfully created")
            );
            let table = r#"{"operation":"create_table","schema":"zoo","table":"Cat","hash_attribute":"id"}"#;
            assert_eq!(ask(&ops, "POST", admin, table).await.0, 200);
            let describe = r#"{"operation":"describe_schema","schema":"zoo"}"#;
            let (status, body) = ask(&ops, "POST", admin, describe).await;
            assert_eq!(status, 200);
            assert_eq!(body["Cat"]["hash_attribute"], json!("id"), "{body}");
            let insert = r#"{"operation":"insert","schema":"zoo","table":"Cat","records":[{"id":1,"name":"Tom"}]}"#;
            assert_eq!(ask(&ops, "POST", admin, insert).await.0, 200);
            let search = r#"{"operation":"search_by_hash","schema":"zoo","table":"Cat","hash_values":[1],"get_attributes":["name"]}"#;
            assert_eq!(
                ask(&ops, "POST", admin, search).await,
                (200, json!([{"name":"Tom"}]))
            );
            let drop = r#"{"operation":"drop_schema","schema":"zoo"}"#;
            let (status, body) = ask(&ops, "POST", admin, drop).await;
            assert_eq!(
                (status, &body["message"]),
                (200, &json!("successfully deleted 'zoo'"))
            );
            assert_eq!(ask(&ops, "POST", admin, describe).await.0, 404);
        });
    }

    #[test]
    fn a_role_without_the_permission_is_refused_with_harpers_shape() {
        with_worker(SCHEMA, |worker| async move {
            let ops = Operations::new(worker, Default::default());
            let admin = basic(ADMIN.0, ADMIN.1);
            let admin = Some(admin.as_str());
            let role = r#"{"operation":"add_role","role":"reader","permission":{"data":{"tables":{"Dog":{"read":true,"insert":false,"update":false,"delete":false,"attribute_permissions":[]}}}}}"#;
            assert_eq!(ask(&ops, "POST", admin, role).await.0, 200);
            let user =
                r#"{"operation":"add_user","username":"ann","password":"pw","role":"reader"}"#;
            assert_eq!(ask(&ops, "POST", admin, user).await.0, 200);
            let ann = basic("ann", "pw");
            let create = r#"{"operation":"create_table","table":"Cat","primary_key":"id"}"#;
            let (status, body) = ask(&ops, "POST", Some(&ann), create).await;
            assert_eq!(status, 403);
            assert!(body["unauthorized_access"].is_array(), "{body}");
            let insert = r#"{"operation":"insert","table":"Dog","records":[{"id":3}]}"#;
            assert_eq!(ask(&ops, "POST", Some(&ann), insert).await.0, 403);
            let read = r#"{"operation":"search_by_id","table":"Dog","ids":[3]}"#;
            assert_eq!(ask(&ops, "POST", Some(&ann), read).await, (200, json!([])));
        });
    }
}

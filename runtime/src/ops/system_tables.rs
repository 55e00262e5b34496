//! Harper's `system` database as the Operations API shows it. Its tables are Tessera's own
//! registries seen as tables, for super users: `hdb_user` and `hdb_role` (the users and roles of
//! `<root>/data/users.json`; a user's `password` is its hash), `hdb_job` (the jobs), `hdb_info`
//! and `hdb_certificate` (described, empty), and `hdb_nodes`, a table like any other (created at
//! start) for the nodes of a cluster.
//!
//! Super users may read them, update users and roles through them (`update` of `hdb_user` by
//! `username`, of `hdb_role` by `id`, checked as `alter_user`/`alter_role` check), and write
//! `hdb_nodes`; nothing else writes them, and no other role reaches them: reads and inserts are
//! refused as a table without the permission, updates and deletes with Harper's words.

use std::sync::Arc;

use serde_json::{Value as Json, json};
use tessera_protocol::query::Op;
use tessera_storage::Value;

use super::{Operations, OpsError, bad, fail, forbidden};
use crate::app::output::{from_json, pick};
use crate::app::permissions::User;
use crate::auth::users::Refusal;
use crate::data::conditions::wildcard;

/// The database.
pub(super) const SYSTEM: &str = "system";

/// The one system table that holds records of its own.
pub(super) const NODES: &str = "hdb_nodes";

/// Harper's refusal of a change to the system database.
pub(super) const UNTOUCHABLE: &str = "The 'system' database, tables and records are used internally by HarperDB and cannot be updated or removed.";

/// The tables Tessera answers for from its registries: name, primary key, attributes.
const VIRTUAL: [(&str, &str, &[&str]); 5] = [
    (
        "hdb_user",
        "username",
        &[
            "username",
            "password",
            "role",
            "active",
            "__createdtime__",
            "__updatedtime__",
        ],
    ),
    (
        "hdb_role",
        "id",
        &[
            "id",
            "role",
            "permission",
            "__createdtime__",
            "__updatedtime__",
        ],
    ),
    (
        "hdb_job",
        "id",
        &[
            "id",
            "type",
            "user",
            "status",
            "message",
            "created_datetime",
            "start_datetime",
            "end_datetime",
        ],
    ),
    (
        "hdb_info",
        "info_id",
        &["info_id", "data_version_num", "hdb_version_num"],
    ),
    (
        "hdb_certificate",
        "name",
        &[
            "name",
            "uses",
            "certificate",
            "is_authority",
            "private_key_name",
            "details",
        ],
    ),
];

/// The description of a virtual system table, in `describe_table`'s shape.
fn describe_virtual(name: &str, pk: &str, attributes: &[&str], count: usize) -> Json {
    let attrs: Vec<Json> = attributes
        .iter()
        .map(|a| {
            if *a == pk {
                json!({"attribute": a, "is_primary_key": true})
            } else {
                json!({"attribute": a})
            }
        })
        .collect();
    json!({"schema": SYSTEM, "name": name, "hash_attribute": pk, "audit": false,
           "schema_defined": true, "attributes": attrs, "sources": [], "record_count": count})
}

fn refusal(r: Refusal) -> OpsError {
    OpsError {
        status: r.status,
        body: r.body,
    }
}

/// Whether `value` matches a `search_by_value` value (`*` wildcards at either end).
fn matches(value: Option<&Value>, wanted: &Value) -> bool {
    match (value, wanted) {
        (_, Value::String(w)) if w == "*" => true,
        (Some(Value::String(v)), Value::String(w)) => match wildcard(w, '*') {
            (Op::Contains, inner) => v.contains(inner),
            (Op::StartsWith, inner) => v.starts_with(inner),
            (Op::EndsWith, inner) => v.ends_with(inner),
            (_, inner) => v == inner,
        },
        (Some(v), w) => v == w,
        (None, _) => false,
    }
}

impl Operations {
    /// The records of a virtual system table.
    fn system_records(&self, table: &str) -> Vec<Value> {
        let users = self.auth.users();
        let records = match table {
            "hdb_user" => users.user_records(),
            "hdb_role" => users.role_records(),
            "hdb_job" => match self.jobs.started_between(0.0, f64::MAX) {
                Json::Array(jobs) => jobs,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        records.iter().map(from_json).collect()
    }

    /// `describe_database` of the system database, or `describe_table` of one of its tables.
    pub(super) async fn describe_system(
        &self,
        table: Option<&str>,
        user: &User,
    ) -> Result<Value, OpsError> {
        let mut out = Vec::new();
        for (name, pk, attributes) in VIRTUAL {
            let count = self.system_records(name).len();
            out.push((
                name.to_owned(),
                from_json(&describe_virtual(name, pk, attributes, count)),
            ));
        }
        if let Some(nodes) = self.app.tables.table(SYSTEM, NODES) {
            out.push((NODES.to_owned(), self.describe(&nodes, user).await?));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        match table {
            None => Ok(Value::Object(out)),
            Some(t) => out
                .into_iter()
                .find(|(n, _)| n == t)
                .map(|(_, d)| d)
                .ok_or_else(|| fail(404, format!("Table '{SYSTEM}.{t}' does not exist"))),
        }
    }

    /// A data operation on the system database: refused to other roles; for super users,
    /// answered here on the virtual tables (`None`: `hdb_nodes`, served as any table).
    pub(super) async fn system_data(
        &self,
        op: &str,
        env: &Value,
        user: &User,
    ) -> Option<Result<Value, OpsError>> {
        let table = match env.get("table") {
            Some(Value::String(t)) => t.clone(),
            _ => return None,
        };
        let reads = matches!(
            op,
            "search_by_id" | "search_by_value" | "search_by_conditions"
        );
        if !user.super_user {
            if reads || op == "insert" {
                let needed = if reads { "read" } else { "insert" };
                return Some(Err(forbidden(
                    json!([{"schema": SYSTEM, "table": table,
                            "required_table_permissions": [needed],
                            "required_attribute_permissions": []}]),
                    json!([]),
                )));
            }
            return Some(Err(fail(403, UNTOUCHABLE)));
        }
        if table == NODES {
            return None;
        }
        let Some((_, pk, _)) = VIRTUAL.iter().find(|(n, _, _)| *n == table) else {
            return Some(Err(fail(
                404,
                format!("Table '{SYSTEM}.{table}' does not exist"),
            )));
        };
        Some(match op {
            "search_by_id" | "search_by_value" => self.search_system(op, &table, pk, env),
            "update" if matches!(table.as_str(), "hdb_user" | "hdb_role") => {
                self.update_system(&table, env).await
            }
            "insert" | "upsert" => Err(forbidden(
                json!([{"schema": SYSTEM, "table": table, "required_table_permissions": ["insert"],
                        "required_attribute_permissions": []}]),
                json!([]),
            )),
            "search_by_conditions" => Err(bad(format!(
                "search_by_conditions is not served on '{SYSTEM}.{table}': use search_by_value"
            ))),
            _ => Err(fail(403, UNTOUCHABLE)),
        })
    }

    fn search_system(
        &self,
        op: &str,
        table: &str,
        pk: &str,
        env: &Value,
    ) -> Result<Value, OpsError> {
        let records = self.system_records(table);
        let keep: Vec<Value> = if op == "search_by_id" {
            let Some(Value::Array(ids)) = env.get("ids").or_else(|| env.get("hash_values")) else {
                return Err(bad("'ids' must be an array"));
            };
            records
                .into_iter()
                .filter(|r| r.get(pk).is_some_and(|v| ids.contains(v)))
                .collect()
        } else {
            let Some(Value::String(attr)) =
                env.get("search_attribute").or_else(|| env.get("attribute"))
            else {
                return Err(bad("'search_attribute' is required"));
            };
            let Some(wanted) = env.get("search_value").or_else(|| env.get("value")) else {
                return Err(bad("'search_value' is required"));
            };
            records
                .into_iter()
                .filter(|r| matches(r.get(attr), wanted))
                .collect()
        };
        let names: Option<Vec<String>> = match env.get("get_attributes") {
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
        Ok(Value::Array(match names {
            None => keep,
            Some(n) => keep.iter().map(|r| pick(r, &n)).collect(),
        }))
    }

    async fn update_system(&self, table: &str, env: &Value) -> Result<Value, OpsError> {
        let Some(Value::Array(records)) = env.get("records") else {
            return Err(bad("'records' must be an array"));
        };
        let records: Vec<serde_json::Map<String, Json>> = records
            .iter()
            .map(|r| match crate::app::output::json_value(r) {
                Json::Object(m) => Ok(m),
                _ => Err(bad("every record must be an object")),
            })
            .collect::<Result<_, _>>()?;
        let known = self.known_tables();
        let users = Arc::clone(self.auth.users());
        let roles = table == "hdb_role";
        let n = records.len();
        let (done, skipped) = glommio::executor()
            .spawn_blocking(move || users.update_records(roles, &records, &known))
            .await
            .map_err(refusal)?;
        Ok(from_json(&json!({
            "message": format!("updated {} of {n} records", done.len()),
            "update_hashes": done,
            "skipped_hashes": skipped,
        })))
    }
}

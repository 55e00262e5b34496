//! Users, roles and tokens: `add_user`, `alter_role`, ..., `create_authentication_tokens` and
//! `refresh_operation_token`.

use std::sync::Arc;

use serde_json::{Value as Json, json};
use tessera_protocol::http::Request;
use tessera_storage::Value;

use super::{Operations, OpsError, bad, fail};
use crate::app::Peer;
use crate::app::permissions::KnownTables;
use crate::auth::bearer;
use crate::auth::tokens::{Kind, TokenError};
use crate::auth::users::{Refusal, refuse};

impl Operations {
    /// `create_authentication_tokens`: for `username`/`password` in the body (no other
    /// credentials needed), or for the caller.
    pub(super) async fn create_tokens(
        &self,
        req: &Request<'_>,
        env: &Value,
        peer: &Peer,
    ) -> Result<Json, OpsError> {
        let empty = |k: &str| matches!(env.get(k), Some(Value::String(s)) if s.is_empty());
        let blank: Vec<String> = ["username", "password"]
            .iter()
            .filter(|k| empty(k))
            .map(|k| format!("'{k}' is not allowed to be empty"))
            .collect();
        // Both empty is no sign-in at all, unless loopback requests are trusted (then Harper
        // answers its validation message).
        let trusted = self.app.settings.authorize_local && peer.loopback;
        if blank.len() == 2 && !trusted {
            return Err(fail(401, "Must login"));
        }
        if !blank.is_empty() {
            return Err(bad(blank.join(". ")));
        }
        let user = match (env.get("username"), env.get("password")) {
            (Some(Value::String(u)), Some(Value::String(p))) => {
                let (users, u, p) = (self.auth.users().clone(), u.clone(), p.clone());
                glommio::executor()
                    .spawn_blocking(move || users.verify(&u, &p))
                    .await
                    .map(Arc::new)
                    .ok_or_else(|| fail(401, "invalid credentials"))?
            }
            // A username without a password is a failed sign-in, not a missing one.
            (Some(_), _) | (_, Some(_)) => return Err(fail(401, "invalid credentials")),
            _ => self.ops_user(req, peer).await?,
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
    pub(super) async fn refresh_token(
        &self,
        req: &Request<'_>,
        env: &Value,
        peer: &Peer,
    ) -> Result<Json, OpsError> {
        let tokens = self.auth.tokens();
        let refreshing = match env.get("refresh_token") {
            Some(Value::String(t)) => {
                self.ops_user(req, peer).await?;
                t.clone()
            }
            _ => {
                let Some(token) = req.authorization.and_then(bearer) else {
                    self.ops_user(req, peer).await?;
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

    /// The databases and tables a role's permissions may name, with their attributes.
    pub(super) fn known_tables(&self) -> KnownTables {
        let mut known = KnownTables::default();
        for db in self.app.tables.databases() {
            known.0.entry(db).or_default();
        }
        for t in self.app.tables.tables(None) {
            let attributes = t.attributes.iter().map(|a| a.name.clone()).collect();
            known
                .0
                .entry(t.database.clone())
                .or_default()
                .insert(t.name.clone(), attributes);
        }
        known
    }

    /// The user and role operations (super users only).
    pub(super) async fn administer(&self, op: &str, env: &Value) -> Result<Json, OpsError> {
        let users = self.auth.users().clone();
        let text = |name: &str| match env.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let permission: Option<Json> = env.get("permission").map(crate::app::output::json_value);
        let known = self.known_tables();
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
                    Some(r) => users.add_role(&r, permission.as_ref(), &known),
                    None => Err(refuse(400, "Role name can't be blank")),
                },
                "alter_role" => match id {
                    Some(i) => users.alter_role(&i, role.as_deref(), permission.as_ref(), &known),
                    None => Err(refuse(400, "Id can't be blank")),
                },
                "drop_role" => match id {
                    Some(i) => users.drop_role(&i),
                    None => Err(refuse(400, "Id can't be blank")),
                },
                "add_user" => match (username, role) {
                    (Some(u), Some(r)) => {
                        users.add_user(&u, password.as_deref(), &r, active.unwrap_or(true))
                    }
                    (None, _) => Err(refuse(400, "Username can't be blank")),
                    (_, None) => Err(refuse(400, "Role can't be blank")),
                },
                "alter_user" => match username {
                    Some(u) => users.alter_user(&u, password.as_deref(), role.as_deref(), active),
                    None => Err(refuse(400, "Username can't be blank")),
                },
                "drop_user" => match username {
                    Some(u) => users.drop_user(&u),
                    None => Err(refuse(400, "Username can't be blank")),
                },
                other => Err(refuse(400, format!("Operation '{other}' not found"))),
            })
            .await;
        result.map_err(|Refusal { status, body }| OpsError { status, body })
    }
}

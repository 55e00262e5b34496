//! The user and role store: `<root>/data/users.json` (mode 0600, replaced atomically) with
//! argon2id password hashes. The super user is created on first start from
//! `TESSERA_ADMIN_USERNAME`/`TESSERA_ADMIN_PASSWORD` (or Harper's
//! `HDB_ADMIN_USERNAME`/`HDB_ADMIN_PASSWORD`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tessera_storage::layout::write_atomically;

use crate::app::permissions::{self, KnownTables, Permission, SUPER_USER, User};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredUser {
    username: String,
    /// PHC string of an argon2id hash.
    password: String,
    role: String,
    active: bool,
    #[serde(default)]
    created: f64,
    #[serde(default)]
    updated: f64,
    /// Other properties written to its `system.hdb_user` record.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    extra: serde_json::Map<String, Json>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredRole {
    /// The role's id, which users name.
    name: String,
    /// Its name as shown (`alter_role` may change it; the id stays): the id when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    /// The `permission` object as it was sent.
    permission: Json,
    created: f64,
    updated: f64,
    /// `permission` parsed, once (on load and on every change), for every login to share.
    #[serde(skip)]
    parsed: Arc<Permission>,
    /// Other properties written to its `system.hdb_role` record.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    extra: serde_json::Map<String, Json>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersFile {
    users: Vec<StoredUser>,
    #[serde(default)]
    roles: Vec<StoredRole>,
    /// Users dropped, so that another node's older copy of one does not bring it back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dropped_users: Vec<Dropped>,
    /// Roles dropped, likewise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dropped_roles: Vec<Dropped>,
}

/// A user or role dropped, and when (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Dropped {
    name: String,
    at: f64,
}

/// A user or role as [`merge_named`] sees it: its name, when it last changed, and something
/// to order two different changes made at the same time.
trait Named {
    fn name(&self) -> &str;
    fn updated(&self) -> f64;
    fn tie(&self) -> String;
}

impl Named for StoredUser {
    fn name(&self) -> &str {
        &self.username
    }
    fn updated(&self) -> f64 {
        self.updated
    }
    fn tie(&self) -> String {
        format!("{}{}{}", self.password, self.role, self.active)
    }
}

impl Named for StoredRole {
    fn name(&self) -> &str {
        &self.name
    }
    fn updated(&self) -> f64 {
        self.updated
    }
    fn tie(&self) -> String {
        format!("{:?}{}", self.label, self.permission)
    }
}

/// Notes that `name` was dropped `at`.
fn note_drop(dropped: &mut Vec<Dropped>, name: &str, at: f64) {
    dropped.retain(|d| d.name != name);
    dropped.push(Dropped {
        name: name.to_owned(),
        at,
    });
}

/// Takes into `mine` another node's users (or roles) and drops, the later change of each
/// name winning. Returns whether `mine` changed.
fn merge_named<T: Named>(
    mine: &mut Vec<T>,
    my_drops: &mut Vec<Dropped>,
    theirs: Vec<T>,
    their_drops: Vec<Dropped>,
) -> bool {
    let mut changed = false;
    for d in their_drops {
        if my_drops.iter().any(|m| m.name == d.name && m.at >= d.at) {
            continue;
        }
        mine.retain(|m| m.name() != d.name || m.updated() >= d.at);
        note_drop(my_drops, &d.name, d.at);
        changed = true;
    }
    for t in theirs {
        if my_drops
            .iter()
            .any(|d| d.name == t.name() && d.at >= t.updated())
        {
            continue;
        }
        match mine.iter_mut().find(|m| m.name() == t.name()) {
            Some(m) if (t.updated(), t.tie()) > (m.updated(), m.tie()) => {
                *m = t;
                changed = true;
            }
            Some(_) => {}
            None => {
                mine.push(t);
                changed = true;
            }
        }
    }
    changed
}

/// An operation on users or roles that failed: its status and JSON body.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub body: Json,
}

/// A refusal with `{"error": message}`.
pub fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        body: json!({ "error": message.into() }),
    }
}

fn now_ms() -> f64 {
    tessera_storage::shard::now_micros() as f64 / 1000.0
}

fn hash_password(password: &str) -> Result<String, Refusal> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| refuse(500, format!("hashing the password: {e}")))
}

/// The users and roles of the server, durable in `<root>/data/users.json` (mode 0600, replaced
/// atomically on every change). Shared by every core; changes take effect on the next request
/// (the [`Authenticator`]s see the generation move).
#[derive(Debug)]
pub struct Users {
    path: PathBuf,
    file: RwLock<UsersFile>,
    generation: AtomicU64,
}

impl Users {
    /// Opens `<data_dir>/users.json` (empty if it does not exist yet).
    pub fn open(data_dir: &Path) -> anyhow::Result<Users> {
        let path = data_dir.join("users.json");
        let mut file: UsersFile = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is corrupt", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => UsersFile::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        for role in &mut file.roles {
            // Stored roles were validated when added; tables dropped since are simply absent.
            role.parsed = Arc::new(permissions::parse(Some(&role.permission)));
        }
        Ok(Users {
            path,
            file: RwLock::new(file),
            generation: AtomicU64::new(0),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, UsersFile> {
        self.file.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the users file with `f`, saves it, and moves the generation on success.
    /// Blocking (file write and fsync): call it off the executor.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut UsersFile) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let mut file = self.file.write().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut file)?;
        let bytes = serde_json::to_vec_pretty(&*file).map_err(|e| refuse(500, e.to_string()))?;
        write_atomically(&self.path, &bytes, 0o600)
            .map_err(|e| refuse(500, format!("writing {}: {e}", self.path.display())))?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(out)
    }

    /// Every user (with its password hash) and role, and what was dropped, for another node
    /// to [`Self::merge`].
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.read()).unwrap_or_default()
    }

    /// Takes in another node's [`Self::snapshot`]: each user and role changed there later
    /// than here, and each drop made there after the last change here. Saved only when
    /// something changed, which it returns. Blocking (file write and fsync).
    pub fn merge(&self, snapshot: &[u8]) -> anyhow::Result<bool> {
        let theirs: UsersFile =
            serde_json::from_slice(snapshot).context("users from another node")?;
        let mut file = self.file.write().unwrap_or_else(|e| e.into_inner());
        let f = &mut *file;
        let roles = merge_named(
            &mut f.roles,
            &mut f.dropped_roles,
            theirs.roles,
            theirs.dropped_roles,
        );
        let users = merge_named(
            &mut f.users,
            &mut f.dropped_users,
            theirs.users,
            theirs.dropped_users,
        );
        if !(roles || users) {
            return Ok(false);
        }
        for role in &mut f.roles {
            role.parsed = Arc::new(permissions::parse(Some(&role.permission)));
        }
        let bytes = serde_json::to_vec_pretty(f)?;
        write_atomically(&self.path, &bytes, 0o600)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }

    /// Changes so far: cached credentials of an older generation are checked again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.read().users.is_empty()
    }

    /// Adds a super user unless a user of that name exists. Returns whether it was added.
    pub fn ensure_super_user(&self, username: &str, password: &str) -> anyhow::Result<bool> {
        if self.read().users.iter().any(|u| u.username == username) {
            return Ok(false);
        }
        let hash = hash_password(password).map_err(|r| anyhow::anyhow!("{}", r.body))?;
        self.change(|f| {
            let now = now_ms();
            f.users.push(StoredUser {
                username: username.to_owned(),
                password: hash,
                role: SUPER_USER.to_owned(),
                active: true,
                created: now,
                updated: now,
                extra: serde_json::Map::new(),
            });
            Ok(())
        })
        .map_err(|r| anyhow::anyhow!("{}", r.body))?;
        Ok(true)
    }

    /// The permissions of role `name`.
    fn permission_of(file: &UsersFile, name: &str) -> Option<Arc<Permission>> {
        if name == SUPER_USER {
            return Some(Arc::new(Permission::super_user()));
        }
        Some(file.roles.iter().find(|r| r.name == name)?.parsed.clone())
    }

    fn user_of(file: &UsersFile, u: &StoredUser) -> User {
        let permission = Self::permission_of(file, &u.role).unwrap_or_default();
        User {
            username: u.username.clone(),
            super_user: permission.super_user,
            role: u.role.clone(),
            permission,
        }
    }

    /// Checks a password (slow by design: run it off the executor). Inactive users fail.
    pub fn verify(&self, username: &str, password: &str) -> Option<User> {
        let file = self.read();
        let u = file
            .users
            .iter()
            .find(|u| u.username == username && u.active)?;
        let hash = PasswordHash::new(&u.password).ok()?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .ok()?;
        Some(Self::user_of(&file, u))
    }

    /// Whether `username` exists, is deactivated and `password` is its password (so that
    /// "inactive" is only ever said to someone who knows the password). Slow: off the executor.
    pub fn is_inactive(&self, username: &str, password: &str) -> bool {
        let file = self.read();
        let Some(u) = file
            .users
            .iter()
            .find(|u| u.username == username && !u.active)
        else {
            return false;
        };
        PasswordHash::new(&u.password).is_ok_and(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
    }

    /// An active user by name (for tokens, whose signature stands for the password).
    pub fn active_user(&self, username: &str) -> Option<User> {
        let file = self.read();
        let u = file
            .users
            .iter()
            .find(|u| u.username == username && u.active)?;
        Some(Self::user_of(&file, u))
    }

    fn role_json(r: &StoredRole) -> Json {
        json!({"role": r.label.as_deref().unwrap_or(&r.name), "permission": r.permission, "id": r.name,
               "__createdtime__": r.created, "__updatedtime__": r.updated})
    }

    fn super_role_json() -> Json {
        json!({"role": SUPER_USER, "permission": {"super_user": true}, "id": SUPER_USER})
    }

    /// `add_role`. `known` holds the tables the permission may name.
    pub fn add_role(
        &self,
        name: &str,
        permission: Option<&Json>,
        known: &KnownTables,
    ) -> Result<Json, Refusal> {
        let (permission, parsed) = validated(permission, known)?;
        self.change(|f| {
            if name == SUPER_USER || f.roles.iter().any(|r| r.name == name) {
                return Err(refuse(
                    409,
                    format!("A role with name '{name}' already exists"),
                ));
            }
            let now = now_ms();
            let role = StoredRole {
                name: name.to_owned(),
                label: None,
                extra: serde_json::Map::new(),
                permission,
                created: now,
                updated: now,
                parsed,
            };
            let out = Self::role_json(&role);
            f.roles.push(role);
            Ok(out)
        })
    }

    /// `alter_role`: a new permission for role `id`.
    /// `alter_role`: new permissions for role `id`, and a new name to show (`label`) if given.
    pub fn alter_role(
        &self,
        id: &str,
        label: Option<&str>,
        permission: Option<&Json>,
        known: &KnownTables,
    ) -> Result<Json, Refusal> {
        let (permission, parsed) = validated(permission, known)?;
        self.change(|f| {
            let Some(role) = f.roles.iter_mut().find(|r| r.name == id) else {
                return Err(refuse(400, "Invalid role id"));
            };
            if let Some(l) = label.filter(|l| *l != id) {
                role.label = Some(l.to_owned());
            }
            role.permission = permission;
            role.parsed = parsed;
            role.updated = now_ms();
            Ok(Self::role_json(role))
        })
    }

    /// `drop_role`.
    pub fn drop_role(&self, id: &str) -> Result<Json, Refusal> {
        self.change(|f| {
            let Some(at) = f.roles.iter().position(|r| r.name == id) else {
                return Err(refuse(404, "Role not found"));
            };
            if f.users.iter().any(|u| u.role == id) {
                return Err(refuse(
                    409,
                    format!("Cannot drop role {id} as it has active user(s) tied to this role"),
                ));
            }
            f.roles.remove(at);
            note_drop(&mut f.dropped_roles, id, now_ms());
            Ok(json!({ "message": format!("{id} successfully deleted") }))
        })
    }

    /// `list_roles`.
    pub fn list_roles(&self) -> Json {
        let file = self.read();
        let mut out = vec![Self::super_role_json()];
        out.extend(file.roles.iter().map(Self::role_json));
        Json::Array(out)
    }

    fn user_json(file: &UsersFile, u: &StoredUser) -> Json {
        let role = if u.role == SUPER_USER {
            Self::super_role_json()
        } else {
            file.roles
                .iter()
                .find(|r| r.name == u.role)
                .map_or(Json::Null, Self::role_json)
        };
        json!({"username": u.username, "active": u.active, "role": role,
               "__createdtime__": u.created, "__updatedtime__": u.updated})
    }

    /// `add_user`. Blocking (hashes the password).
    pub fn add_user(
        &self,
        username: &str,
        password: Option<&str>,
        role: &str,
        active: bool,
    ) -> Result<Json, Refusal> {
        let Some(password) = password.filter(|p| !p.is_empty()) else {
            return Err(refuse(400, "Password can't be blank"));
        };
        if self.read().users.iter().any(|u| u.username == username) {
            return Err(refuse(409, format!("User {username} already exists")));
        }
        let hash = hash_password(password)?;
        self.change(|f| {
            if f.users.iter().any(|u| u.username == username) {
                return Err(refuse(409, format!("User {username} already exists")));
            }
            if !is_role_name(role) {
                return Err(refuse(400, "Role is invalid"));
            }
            if role != SUPER_USER && !f.roles.iter().any(|r| r.name == role) {
                return Err(refuse(404, format!("{role} role not found")));
            }
            let now = now_ms();
            f.users.push(StoredUser {
                username: username.to_owned(),
                password: hash,
                role: role.to_owned(),
                active,
                created: now,
                updated: now,
                extra: serde_json::Map::new(),
            });
            Ok(json!({ "message": format!("{username} successfully added") }))
        })
    }

    /// `alter_user`: any of a new password, role and active flag. Blocking (hashing).
    pub fn alter_user(
        &self,
        username: &str,
        password: Option<&str>,
        role: Option<&str>,
        active: Option<bool>,
    ) -> Result<Json, Refusal> {
        if role == Some("") {
            return Err(refuse(400, "If role is specified, it cannot be empty."));
        }
        let hash = password.map(hash_password).transpose()?;
        self.change(|f| {
            if let Some(r) = role
                && r != SUPER_USER
                && !f.roles.iter().any(|x| x.name == r)
            {
                return Err(refuse(
                    404,
                    format!("Update failed.  Requested '{r}' role not found."),
                ));
            }
            let Some(u) = f.users.iter_mut().find(|u| u.username == username) else {
                return Ok(json!({"message": "updated 0 of 1 records", "txn_time": 0,
                                 "update_hashes": [], "skipped_hashes": [username]}));
            };
            if let Some(h) = hash {
                u.password = h;
            }
            if let Some(r) = role {
                u.role = r.to_owned();
            }
            if let Some(a) = active {
                u.active = a;
            }
            u.updated = now_ms();
            Ok(json!({"message": "updated 1 of 1 records", "txn_time": 0,
                      "update_hashes": [username], "skipped_hashes": []}))
        })
    }

    /// `drop_user`.
    pub fn drop_user(&self, username: &str) -> Result<Json, Refusal> {
        self.change(|f| {
            let Some(at) = f.users.iter().position(|u| u.username == username) else {
                return Err(refuse(404, format!("User {username} does not exist")));
            };
            f.users.remove(at);
            note_drop(&mut f.dropped_users, username, now_ms());
            Ok(json!({ "message": format!("{username} successfully deleted") }))
        })
    }

    /// `list_users` (never a password).
    pub fn list_users(&self) -> Json {
        let file = self.read();
        Json::Array(
            file.users
                .iter()
                .map(|u| Self::user_json(&file, u))
                .collect(),
        )
    }

    /// `user_info` of `username`.
    pub fn user_info(&self, username: &str) -> Json {
        let file = self.read();
        match file.users.iter().find(|u| u.username == username) {
            Some(u) => Self::user_json(&file, u),
            None => json!({"username": username, "role": Self::super_role_json()}),
        }
    }
}

/// The records of Harper's `system.hdb_user` and `system.hdb_role` tables, which are this
/// registry seen as tables (for super users; a user's `password` is its hash).
impl Users {
    /// Every `system.hdb_user` record.
    pub fn user_records(&self) -> Vec<Json> {
        let file = self.read();
        file.users
            .iter()
            .map(|u| {
                let mut r = u.extra.clone();
                r.insert("username".into(), json!(u.username));
                r.insert("password".into(), json!(u.password));
                r.insert("role".into(), json!(u.role));
                r.insert("active".into(), json!(u.active));
                r.insert("__createdtime__".into(), json!(u.created));
                r.insert("__updatedtime__".into(), json!(u.updated));
                Json::Object(r)
            })
            .collect()
    }

    /// Every `system.hdb_role` record.
    pub fn role_records(&self) -> Vec<Json> {
        let file = self.read();
        file.roles
            .iter()
            .map(|role| {
                let mut r = role.extra.clone();
                if let Json::Object(base) = Self::role_json(role) {
                    r.extend(base);
                }
                Json::Object(r)
            })
            .collect()
    }

    /// An `update` of `system.hdb_user` records (by `username`) or `system.hdb_role` records (by
    /// `id`): the properties the registry keeps are checked and applied (a password is hashed, a
    /// role must exist, a permission must validate), any other is kept on the record. Returns
    /// the keys updated and those skipped (no such record).
    pub fn update_records(
        &self,
        roles: bool,
        records: &[serde_json::Map<String, Json>],
        known: &KnownTables,
    ) -> Result<(Vec<Json>, Vec<Json>), Refusal> {
        let key = if roles { "id" } else { "username" };
        // Hash and validate outside the lock.
        let mut prepared = Vec::with_capacity(records.len());
        for r in records {
            let Some(Json::String(id)) = r.get(key) else {
                return Err(refuse(400, format!("'{key}' is required on every record")));
            };
            let password = match r.get("password") {
                Some(Json::String(p)) if !roles => Some(hash_password(p)?),
                _ => None,
            };
            let permission = match r.get("permission") {
                Some(p) if roles => Some(validated(Some(p), known)?),
                _ => None,
            };
            prepared.push((id.clone(), r, password, permission));
        }
        self.change(|f| {
            let (mut done, mut skipped) = (Vec::new(), Vec::new());
            let now = now_ms();
            for (id, r, password, permission) in prepared {
                let found = if roles {
                    f.roles.iter_mut().find(|x| x.name == id).map(|role| {
                        for (k, v) in r {
                            match (k.as_str(), v) {
                                (
                                    "id" | "permission" | "__createdtime__" | "__updatedtime__",
                                    _,
                                ) => {}
                                ("role", Json::String(l)) => role.label = Some(l.clone()),
                                _ => {
                                    role.extra.insert(k.clone(), v.clone());
                                }
                            }
                        }
                        if let Some((p, parsed)) = permission {
                            role.permission = p;
                            role.parsed = parsed;
                        }
                        role.updated = now;
                    })
                } else {
                    let role_ok =
                        |name: &str| name == SUPER_USER || f.roles.iter().any(|x| x.name == name);
                    if let Some(Json::String(role)) = r.get("role")
                        && !role_ok(role)
                    {
                        return Err(refuse(
                            404,
                            format!("Update failed.  Requested '{role}' role not found."),
                        ));
                    }
                    f.users.iter_mut().find(|u| u.username == id).map(|u| {
                        for (k, v) in r {
                            match (k.as_str(), v) {
                                (
                                    "username" | "password" | "__createdtime__" | "__updatedtime__",
                                    _,
                                ) => {}
                                ("role", Json::String(role)) => u.role = role.clone(),
                                ("active", Json::Bool(a)) => u.active = *a,
                                _ => {
                                    u.extra.insert(k.clone(), v.clone());
                                }
                            }
                        }
                        if let Some(h) = password {
                            u.password = h;
                        }
                        u.updated = now;
                    })
                };
                match found {
                    Some(()) => done.push(json!(id)),
                    None => skipped.push(json!(id)),
                }
            }
            Ok((done, skipped))
        })
    }
}

/// Harper's rule for a role's name: letters, digits, `_` and `-`.
fn is_role_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A `permission` object as sent and parsed, or its refusal.
fn validated(
    permission: Option<&Json>,
    known: &KnownTables,
) -> Result<(Json, Arc<Permission>), Refusal> {
    let errors = permissions::validate(permission, known);
    if !errors.is_empty() {
        return Err(permission_refusal(errors));
    }
    let parsed = permissions::parse(permission);
    Ok((permission.cloned().unwrap_or(Json::Null), Arc::new(parsed)))
}

/// A refused `permission` object, in the shape Harper answers with.
fn permission_refusal(e: permissions::PermissionErrors) -> Refusal {
    let schema: serde_json::Map<String, Json> =
        e.schema.into_iter().map(|(k, v)| (k, json!(v))).collect();
    Refusal {
        status: 400,
        body: json!({"error": "Errors in the role permissions JSON provided",
               "main_permissions": e.main, "schema_permissions": schema}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two nodes' users merged either way end the same: the later change of each name wins,
    /// a drop removes only what changed before it, and an older copy does not bring a dropped
    /// user back.
    #[test]
    fn merged_users_keep_the_later_change_and_drops_stay_dropped() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (
            Users::open(da.path()).unwrap(),
            Users::open(db.path()).unwrap(),
        );
        a.add_user("ann", Some("one"), SUPER_USER, true).unwrap();
        a.add_user("bob", Some("two"), SUPER_USER, true).unwrap();
        assert!(b.merge(&a.snapshot()).unwrap());
        assert!(
            !b.merge(&a.snapshot()).unwrap(),
            "nothing new: not saved again"
        );
        assert!(b.verify("ann", "one").is_some());
        let old_a = a.snapshot();
        b.alter_user("ann", Some("three"), None, None).unwrap();
        b.drop_user("bob").unwrap();
        // A's older copy changes nothing on B; B's newer one wins on A.
        assert!(!b.merge(&old_a).unwrap());
        assert!(a.merge(&b.snapshot()).unwrap());
        for users in [&a, &b] {
            assert!(users.verify("ann", "three").is_some());
            assert!(users.verify("ann", "one").is_none());
            assert!(users.verify("bob", "two").is_none());
        }
        // Kept over a restart.
        let b = Users::open(db.path()).unwrap();
        assert!(!b.merge(&old_a).unwrap());
        assert!(b.verify("bob", "two").is_none());
        assert!(b.merge(b"not json").is_err());
    }

    #[test]
    fn hashes_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::open(dir.path()).unwrap();
        assert!(users.ensure_super_user("admin", "s3cret").unwrap());
        assert!(!users.ensure_super_user("admin", "other").unwrap());
        let stored = std::fs::read_to_string(dir.path().join("users.json")).unwrap();
        assert!(!stored.contains("s3cret") && stored.contains("$argon2id$"));
        let users = Users::open(dir.path()).unwrap();
        assert_eq!(
            users.verify("admin", "s3cret").map(|u| u.super_user),
            Some(true)
        );
        assert!(users.verify("admin", "wrong").is_none());
        assert!(users.verify("nobody", "s3cret").is_none());
    }
}

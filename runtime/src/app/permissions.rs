//! Users and role permissions: who makes a request, and what a role may do per database, table
//! and attribute. Parsed from the `permission` object of `add_role`/`alter_role`; table
//! permissions are checked on every request by REST, the Operations API, MQTT, WebSocket and SSE,
//! attribute permissions by REST and the Operations API (see docs/operations.md).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use serde_json::Value as Json;

/// An action on a table's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Insert,
    Update,
    Delete,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Insert => "insert",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// One attribute's permissions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttributePermission {
    pub read: bool,
    pub insert: bool,
    pub update: bool,
}

/// One table's permissions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TablePermission {
    pub read: bool,
    pub insert: bool,
    pub update: bool,
    pub delete: bool,
    /// When not empty, attributes not listed have no access at all.
    pub attributes: HashMap<String, AttributePermission>,
}

impl TablePermission {
    pub fn allows(&self, action: Action) -> bool {
        match action {
            Action::Read => self.read,
            Action::Insert => self.insert,
            Action::Update => self.update,
            Action::Delete => self.delete,
        }
    }

    /// The role's permissions on `attribute` when it has attribute permissions on this table
    /// (`None`: the table's apply), as Harper works them out: an attribute it lists has what it
    /// lists, the primary key (`primary_key`) when not listed has each permission that any listed
    /// attribute has, and any other attribute has none.
    pub fn attribute(&self, attribute: &str, primary_key: bool) -> Option<AttributePermission> {
        if self.attributes.is_empty() {
            return None;
        }
        Some(match self.attributes.get(attribute) {
            Some(a) => a.clone(),
            None if primary_key => AttributePermission {
                read: self.attributes.values().any(|a| a.read),
                insert: self.attributes.values().any(|a| a.insert),
                update: self.attributes.values().any(|a| a.update),
            },
            None => AttributePermission::default(),
        })
    }

    /// Whether the role may see `attribute` (`primary_key`: the table's key).
    pub fn reads_attribute(&self, attribute: &str, primary_key: bool) -> bool {
        self.attribute(attribute, primary_key)
            .map_or(self.read, |a| a.read)
    }

    /// Whether the role may write `attribute` with `action` (insert or update).
    pub fn writes_attribute(&self, attribute: &str, action: Action, primary_key: bool) -> bool {
        self.attribute(attribute, primary_key)
            .map_or(self.allows(action), |a| a.allows(action))
    }
}

impl AttributePermission {
    /// Whether it allows `action` (never delete: records are deleted whole).
    pub fn allows(&self, action: Action) -> bool {
        match action {
            Action::Read => self.read,
            Action::Insert => self.insert,
            Action::Update => self.update,
            Action::Delete => false,
        }
    }

    /// Whether the role knows the attribute at all (Harper's `describe`).
    pub fn visible(&self) -> bool {
        self.read || self.insert || self.update
    }
}

/// What a role may do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Permission {
    pub super_user: bool,
    /// By database, then table.
    pub tables: HashMap<String, HashMap<String, TablePermission>>,
}

/// Everything on a table: what a super user has on every one.
static FULL: LazyLock<TablePermission> = LazyLock::new(|| TablePermission {
    read: true,
    insert: true,
    update: true,
    delete: true,
    attributes: HashMap::new(),
});

impl Permission {
    /// Everything.
    pub fn super_user() -> Permission {
        Permission {
            super_user: true,
            tables: HashMap::new(),
        }
    }

    /// The role's permissions on `database.table`, or `None` when the role has none there (the
    /// table is invisible to it). A super user's are everything.
    pub fn table(&self, database: &str, table: &str) -> Option<&TablePermission> {
        if self.super_user {
            return Some(&FULL);
        }
        self.tables.get(database)?.get(table)
    }

    /// Whether the role may `action` on `database.table` at all.
    pub fn allows(&self, database: &str, table: &str, action: Action) -> bool {
        self.table(database, table)
            .is_some_and(|t| t.allows(action))
    }

    /// The role's permissions on `database.table` when they limit its attributes (the role
    /// sees and writes only those it lists), else `None`.
    pub fn attribute_limits(&self, database: &str, table: &str) -> Option<&TablePermission> {
        self.table(database, table)
            .filter(|t| !t.attributes.is_empty())
    }
}

/// Why a `permission` object was refused: the `main_permissions` and
/// `schema_permissions` lists.
#[derive(Debug, Default, PartialEq)]
pub struct PermissionErrors {
    pub main: Vec<String>,
    /// By `database_table`.
    pub schema: Vec<(String, Vec<String>)>,
}

impl PermissionErrors {
    pub fn is_empty(&self) -> bool {
        self.main.is_empty() && self.schema.is_empty()
    }
}

fn flag(v: &Json, name: &str) -> bool {
    v.get(name).and_then(Json::as_bool).unwrap_or(false)
}

/// Parses and validates a role's `permission` object. `table_exists(database, table)` says whether
/// a table it names exists.
pub fn parse(
    permission: Option<&Json>,
    table_exists: impl Fn(&str, &str) -> bool,
) -> Result<Permission, PermissionErrors> {
    let mut errors = PermissionErrors::default();
    let Some(Json::Object(p)) = permission else {
        errors.main.push("Permission can't be blank".into());
        return Err(errors);
    };
    let mut out = Permission {
        super_user: p.get("super_user").and_then(Json::as_bool).unwrap_or(false),
        tables: HashMap::new(),
    };
    for (database, spec) in p {
        if database == "super_user" || database == "cluster_user" || database == "structure_user" {
            continue;
        }
        let Some(Json::Object(tables)) = spec.get("tables") else {
            continue;
        };
        for (table, t) in tables {
            if !table_exists(database, table) {
                errors
                    .main
                    .push(format!("Table '{database}.{table}' does not exist"));
                continue;
            }
            let mut perm = TablePermission {
                read: flag(t, "read"),
                insert: flag(t, "insert"),
                update: flag(t, "update"),
                delete: flag(t, "delete"),
                attributes: HashMap::new(),
            };
            let mut conflicts = Vec::new();
            if let Some(Json::Array(attrs)) = t.get("attribute_permissions") {
                for a in attrs {
                    let Some(name) = a.get("attribute_name").and_then(Json::as_str) else {
                        continue;
                    };
                    let ap = AttributePermission {
                        read: flag(a, "read"),
                        insert: flag(a, "insert"),
                        update: flag(a, "update"),
                    };
                    if (ap.read && !perm.read)
                        || (ap.insert && !perm.insert)
                        || (ap.update && !perm.update)
                    {
                        conflicts.push(format!(
                            "You have a conflict with TABLE permissions for '{database}.{table}' being false and ATTRIBUTE permissions being true"
                        ));
                    }
                    perm.attributes.insert(name.to_owned(), ap);
                }
            }
            conflicts.dedup();
            if !conflicts.is_empty() {
                errors
                    .schema
                    .push((format!("{database}_{table}"), conflicts));
            }
            out.tables
                .entry(database.clone())
                .or_default()
                .insert(table.clone(), perm);
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// An authenticated user and what its role allows.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub username: String,
    pub super_user: bool,
    pub role: String,
    pub permission: Arc<Permission>,
}

impl User {
    /// The user trusted without credentials (`authorizeLocal` on loopback).
    pub fn local() -> User {
        User {
            username: "localhost".into(),
            super_user: true,
            role: SUPER_USER.into(),
            permission: Arc::new(Permission::super_user()),
        }
    }
}

/// The built-in role of super users.
pub const SUPER_USER: &str = "super_user";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_validates() {
        let exists = |d: &str, t: &str| d == "data" && t == "Item";
        let p = parse(
            Some(
                &json!({"super_user": false, "data": {"tables": {"Item": {"read": true,
                "attribute_permissions": [{"attribute_name": "price", "read": false}]}}}}),
            ),
            exists,
        )
        .unwrap();
        let t = p.table("data", "Item").unwrap();
        assert!(t.read && !t.insert);
        assert!(!t.reads_attribute("price", false));
        assert!(!t.reads_attribute("name", false));
        assert!(!t.reads_attribute("id", true));
        assert!(p.table("data", "Other").is_none());
        assert!(Permission::super_user().allows("x", "y", Action::Delete));

        let e = parse(None, exists).unwrap_err();
        assert_eq!(e.main, vec!["Permission can't be blank"]);
        let e = parse(
            Some(&json!({"data": {"tables": {"Nope": {"read": true}}}})),
            exists,
        )
        .unwrap_err();
        assert_eq!(e.main, vec!["Table 'data.Nope' does not exist"]);
        let e = parse(
            Some(&json!({"data": {"tables": {"Item": {"read": false,
                "attribute_permissions": [{"attribute_name": "price", "read": true}]}}}})),
            exists,
        )
        .unwrap_err();
        assert_eq!(e.schema[0].0, "data_Item");
    }
}

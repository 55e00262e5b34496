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

    /// Whether the role knows the table at all (Harper's `describe`: any permission on it).
    pub fn visible(&self) -> bool {
        self.read || self.insert || self.update || self.delete
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

/// The tables a role's permissions may name: by database, then table, its attribute names.
#[derive(Debug, Default)]
pub struct KnownTables(pub HashMap<String, HashMap<String, Vec<String>>>);

/// The role types whose value is a flag.
const ROLE_TYPES: [&str; 2] = ["super_user", "cluster_user"];
const TABLE_KEYS: [&str; 5] = [
    "read",
    "insert",
    "update",
    "delete",
    "attribute_permissions",
];
const ATTRIBUTE_KEYS: [&str; 5] = ["attribute_name", "read", "insert", "update", "delete"];

/// Checks a role's `permission` object as Harper does, against the tables that exist.
pub fn validate(permission: Option<&Json>, known: &KnownTables) -> PermissionErrors {
    let mut errors = PermissionErrors::default();
    let Some(Json::Object(p)) = permission else {
        errors.main.push("Permission can't be blank".into());
        return errors;
    };
    if p.get("super_user") == Some(&Json::Bool(true)) && p.len() > 1 {
        errors
            .main
            .push("Roles with 'super_user' set to true cannot have other permissions set.".into());
    }
    for (name, spec) in p {
        if ROLE_TYPES.contains(&name.as_str()) {
            if !spec.is_boolean() {
                errors
                    .main
                    .push(format!("Value for '{name}' permission must be a boolean"));
            }
            continue;
        }
        if name == "structure_user" {
            match spec {
                Json::Bool(_) => {}
                Json::Array(dbs) => {
                    for db in dbs {
                        let db = db.as_str().unwrap_or_default();
                        if !known.0.contains_key(db) {
                            errors.main.push(format!("database '{db}' does not exist"));
                        }
                    }
                }
                _ => errors.main.push(format!(
                    "Value for '{name}' permission must be a boolean or Array"
                )),
            }
            continue;
        }
        let Some(tables) = known.0.get(name) else {
            errors
                .main
                .push(format!("database '{name}' does not exist"));
            continue;
        };
        let Some(Json::Object(asked)) = spec.get("tables") else {
            continue;
        };
        for (table, t) in asked {
            let Some(attributes) = tables.get(table) else {
                errors
                    .main
                    .push(format!("Table '{name}.{table}' does not exist"));
                continue;
            };
            let found = validate_table(name, table, t, attributes);
            if !found.is_empty() {
                errors.schema.push((format!("{name}_{table}"), found));
            }
        }
    }
    errors
}

/// Harper's checks of one table's permissions.
fn validate_table(database: &str, table: &str, t: &Json, attributes: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let Json::Object(keys) = t else {
        return vec!["Table permissions must be an object".to_owned()];
    };
    for k in keys.keys().filter(|k| !TABLE_KEYS.contains(&k.as_str())) {
        found.push(format!("Invalid table permission key value '{k}'"));
    }
    for perm in ["read", "insert", "update", "delete"] {
        match t.get(perm) {
            None => found.push(format!("Missing table {} permission", perm.to_uppercase())),
            Some(v) if !v.is_boolean() => found.push(format!(
                "Table {} permission must be a boolean",
                perm.to_uppercase()
            )),
            _ => {}
        }
    }
    let attrs = match t.get("attribute_permissions") {
        None => {
            found.push("Missing 'attribute_permissions' array".to_owned());
            return found;
        }
        Some(Json::Null) => return found,
        Some(Json::Array(a)) => a,
        Some(_) => {
            found.push("Value for 'attribute_permissions' must be an array".to_owned());
            return found;
        }
    };
    let mut any = [false; 3];
    for a in attrs {
        if let Json::Object(keys) = a {
            for k in keys
                .keys()
                .filter(|k| !ATTRIBUTE_KEYS.contains(&k.as_str()))
            {
                found.push(format!("Invalid attribute permission key value '{k}'"));
            }
        }
        let Some(attr) = a.get("attribute_name").and_then(Json::as_str) else {
            found.push(
                "Permission object in 'attribute_permission' missing an 'attribute_name'"
                    .to_owned(),
            );
            continue;
        };
        if !attributes.iter().any(|n| n == attr) {
            found.push(format!(
                "Invalid attribute '{attr}' in 'attribute_permissions'"
            ));
            continue;
        }
        for (i, perm) in ["read", "insert", "update"].iter().enumerate() {
            match a.get(perm) {
                None => found.push(format!(
                    "{} attribute permission missing for '{attr}'",
                    perm.to_uppercase()
                )),
                Some(Json::Bool(b)) => any[i] |= *b,
                Some(_) => found.push(format!(
                    "{} attribute permission for '{attr}' must be a boolean",
                    perm.to_uppercase()
                )),
            }
        }
    }
    let off = |perm: &str| t.get(perm) == Some(&Json::Bool(false));
    if (off("read") && any[0]) || (off("insert") && any[1]) || (off("update") && any[2]) {
        found.push(format!(
            "You have a conflict with TABLE permissions for '{database}.{table}' being false and ATTRIBUTE permissions being true"
        ));
    }
    found
}

/// Parses a role's `permission` object (checked with [`validate`] when it is given): what the
/// role may do. Values that are not `true` grant nothing.
pub fn parse(permission: Option<&Json>) -> Permission {
    let mut out = Permission::default();
    let Some(Json::Object(p)) = permission else {
        return out;
    };
    out.super_user = p.get("super_user").and_then(Json::as_bool).unwrap_or(false);
    for (database, spec) in p {
        let Some(Json::Object(tables)) = spec.get("tables") else {
            continue;
        };
        for (table, t) in tables {
            let mut perm = TablePermission {
                read: flag(t, "read"),
                insert: flag(t, "insert"),
                update: flag(t, "update"),
                delete: flag(t, "delete"),
                attributes: HashMap::new(),
            };
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
                    perm.attributes.insert(name.to_owned(), ap);
                }
            }
            out.tables
                .entry(database.clone())
                .or_default()
                .insert(table.clone(), perm);
        }
    }
    out
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
    fn parses_and_validates_as_harper_does() {
        let known = KnownTables(HashMap::from([(
            "data".to_owned(),
            HashMap::from([(
                "Item".to_owned(),
                vec!["id".to_owned(), "price".to_owned(), "name".to_owned()],
            )]),
        )]));
        let role = json!({"super_user": false, "data": {"tables": {"Item": {"read": true,
            "insert": false, "update": false, "delete": false,
            "attribute_permissions": [{"attribute_name": "price", "read": false,
                "insert": false, "update": false}]}}}});
        assert!(validate(Some(&role), &known).is_empty());
        let p = parse(Some(&role));
        let t = p.table("data", "Item").unwrap();
        assert!(t.read && !t.insert);
        assert!(!t.reads_attribute("price", false));
        assert!(!t.reads_attribute("name", false));
        assert!(!t.reads_attribute("id", true));
        assert!(p.table("data", "Other").is_none());
        assert!(Permission::super_user().allows("x", "y", Action::Delete));

        assert_eq!(
            validate(None, &known).main,
            vec!["Permission can't be blank"]
        );
        let e = validate(
            Some(&json!({"nodb": {"tables": {}}, "data": {"tables": {"Nope": {}}}})),
            &known,
        );
        // In the permission object's order, which depends on serde_json's map features.
        let mut main = e.main.clone();
        main.sort();
        assert_eq!(
            main,
            vec![
                "Table 'data.Nope' does not exist",
                "database 'nodb' does not exist"
            ]
        );
        let e = validate(
            Some(
                &json!({"data": {"tables": {"Item": {"read": "yes", "insert": true,
                "update": false, "delete": false, "color": 1,
                "attribute_permissions": [{"attribute_name": "price", "read": true, "insert": 1,
                    "update": true}, {"attribute_name": "ghost", "read": true, "insert": true,
                    "update": true}, {"read": true}]}}}}),
            ),
            &known,
        );
        assert_eq!(e.schema[0].0, "data_Item");
        assert_eq!(
            e.schema[0].1,
            vec![
                "Invalid table permission key value 'color'",
                "Table READ permission must be a boolean",
                "INSERT attribute permission for 'price' must be a boolean",
                "Invalid attribute 'ghost' in 'attribute_permissions'",
                "Permission object in 'attribute_permission' missing an 'attribute_name'",
                "You have a conflict with TABLE permissions for 'data.Item' being false and ATTRIBUTE permissions being true",
            ]
        );
        let e = validate(Some(&json!({"super_user": true, "data": {}})), &known);
        assert_eq!(
            e.main,
            vec!["Roles with 'super_user' set to true cannot have other permissions set."]
        );
    }
}

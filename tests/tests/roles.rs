//! Users, roles and their permissions through the real binary (docs/operations.md): the
//! Operations API's user and role operations, and the same table permissions enforced on REST,
//! the Operations API, MQTT, WebSocket and SSE.

use std::time::Duration;

use serde_json::json;
use tessera_protocol::mqtt::{Packet, QoS, Version};
use tessera_tests::mqtt::MqttClient;
use tessera_tests::{Client, Server};

const SCHEMA: &str = "type Dog @table @export { id: Int @primaryKey name: String }\n\
                      type Cat @table @export { id: Int @primaryKey name: String }";

fn as_user(s: &Server, user: &str, password: &str) -> Client {
    s.client().as_user(user, password)
}

fn ops_as(s: &Server, user: &str, password: &str) -> Client {
    s.ops().as_user(user, password)
}

#[test]
fn roles_and_users_are_administered_and_enforced() {
    let (s, _app, _root) = Server::with_schema(SCHEMA);
    let mut admin = s.ops();
    assert_eq!(
        admin
            .operation(&json!({"operation": "insert", "table": "Dog",
        "records": [{"id": 1, "name": "Penny"}]}))
            .0,
        200
    );

    // Roles: add, duplicate, validation.
    let reader = json!({"super_user": false, "data": {"tables": {"Dog": {"read": true,
        "insert": false, "update": false, "delete": false, "attribute_permissions": []}}}});
    let (st, role) =
        admin.operation(&json!({"operation": "add_role", "role": "reader", "permission": reader}));
    assert_eq!(st, 200, "{role}");
    assert_eq!(
        (role["role"].as_str(), role["id"].as_str()),
        (Some("reader"), Some("reader"))
    );
    assert_eq!(role["permission"], reader);
    let (st, body) =
        admin.operation(&json!({"operation": "add_role", "role": "reader", "permission": reader}));
    assert_eq!(
        (st, body["error"].as_str()),
        (409, Some("A role with name 'reader' already exists"))
    );
    let (st, body) = admin.operation(&json!({"operation": "add_role", "role": "x"}));
    assert_eq!(
        (st, body["main_permissions"].clone()),
        (400, json!(["Permission can't be blank"]))
    );
    let (st, body) = admin.operation(&json!({"operation": "add_role", "role": "x",
        "permission": {"data": {"tables": {"Nope": {"read": true}}}}}));
    assert_eq!(
        (st, body["main_permissions"].clone()),
        (400, json!(["Table 'data.Nope' does not exist"]))
    );
    let (st, body) = admin.operation(&json!({"operation": "add_role", "role": "x",
        "permission": {"data": {"tables": {"Dog": {"read": false, "insert": false,
            "update": false, "delete": false, "attribute_permissions": [
                {"attribute_name": "name", "read": true, "insert": false, "update": false}]}}}}}));
    assert_eq!(st, 400);
    assert!(
        body["schema_permissions"]["data_Dog"][0]
            .as_str()
            .unwrap()
            .contains("conflict"),
        "{body}"
    );

    // Users: add, duplicate, unknown role, blank password; the list never shows a password.
    let (st, body) = admin.operation(&json!({"operation": "add_user", "username": "rita",
        "password": "pw1", "role": "reader", "active": true}));
    assert_eq!(
        (st, body["message"].as_str()),
        (200, Some("rita successfully added"))
    );
    let (st, _) = admin.operation(
        &json!({"operation": "add_user", "username": "rita", "password": "x", "role": "reader"}),
    );
    assert_eq!(st, 409);
    let (st, body) = admin.operation(
        &json!({"operation": "add_user", "username": "bob", "password": "x", "role": "nosuch"}),
    );
    assert_eq!(
        (st, body["error"].as_str()),
        (404, Some("nosuch role not found"))
    );
    let (st, body) =
        admin.operation(&json!({"operation": "add_user", "username": "bob", "role": "reader"}));
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("Password can't be blank"))
    );
    let (_, users) = admin.operation(&json!({"operation": "list_users"}));
    let text = users.to_string();
    assert!(
        text.contains("\"rita\"") && !text.contains("pw1") && !text.contains("argon2"),
        "{text}"
    );
    let (_, roles) = admin.operation(&json!({"operation": "list_roles"}));
    assert!(
        roles
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["role"] == "reader")
    );

    // REST: read allowed, writes and other tables 403, bad password 401.
    let mut rita = as_user(&s, "rita", "pw1");
    assert_eq!(rita.get("/Dog/1").status, 200);
    assert_eq!(rita.get("/Dog/").status, 200);
    let r = rita.put_json("/Dog/1", r#"{"name":"Nope"}"#);
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!("AccessViolation: Unauthorized access to resource")
    );
    assert_eq!(rita.delete("/Dog/1").status, 403);
    assert_eq!(rita.get("/Cat/").status, 403);
    assert_eq!(as_user(&s, "rita", "wrong").get("/Dog/1").status, 401);
    assert_eq!(s.client().get("/Dog/1").json()["name"], "Penny");

    // Operations API as rita.
    let mut rops = ops_as(&s, "rita", "pw1");
    let (st, body) = rops.operation(
        &json!({"operation": "search_by_id", "table": "Dog", "ids": [1], "get_attributes": ["*"]}),
    );
    assert_eq!((st, body[0]["name"].as_str()), (200, Some("Penny")));
    // Without `database` the write is checked all the same (Harper's DEVIATION done right).
    for op in [
        json!({"operation": "insert", "table": "Dog", "records": [{"id": 2}]}),
        json!({"operation": "insert", "database": "data", "table": "Dog", "records": [{"id": 2}]}),
        json!({"operation": "delete", "table": "Dog", "ids": [1]}),
    ] {
        let (st, body) = rops.operation(&op);
        assert_eq!(st, 403, "{op} -> {body}");
        assert_eq!(body["unauthorized_access"][0]["table"], "Dog", "{body}");
    }
    let (st, body) = rops.operation(
        &json!({"operation": "search_by_id", "table": "Cat", "ids": [1], "get_attributes": ["*"]}),
    );
    assert_eq!(
        (st, body["invalid_schema_items"].clone()),
        (403, json!(["Table 'data.Cat' does not exist"]))
    );
    let (st, body) = rops.operation(
        &json!({"operation": "add_role", "role": "y", "permission": {"super_user": true}}),
    );
    assert_eq!(st, 403);
    assert_eq!(
        body["unauthorized_access"],
        json!(["Operation 'addRole' is restricted to 'super_user' roles"])
    );
    let (st, info) = rops.operation(&json!({"operation": "user_info"}));
    assert_eq!(
        (st, info["username"].as_str(), info["role"]["role"].as_str()),
        (200, Some("rita"), Some("reader"))
    );
    let (_, all) = rops.operation(&json!({"operation": "describe_all"}));
    assert!(
        all["data"].get("Cat").is_none() && all["data"].get("Dog").is_some(),
        "{all}"
    );
    assert_eq!(s.client().get("/Dog/2").status, 404);

    // MQTT: CONNECT as rita; SUBSCRIBE to a readable table only; PUBLISH refused.
    let (mut m, ack) =
        MqttClient::connect(s.mqtt_port, Version::V5, "rita-1", Some(("rita", "pw1")));
    assert_eq!(ack.unwrap().code, 0);
    assert_eq!(
        m.subscribe(&[("Dog/1", QoS::AtLeastOnce), ("Cat/#", QoS::AtLeastOnce)]),
        vec![1, 0x87]
    );
    assert!(matches!(
        m.recv(Duration::from_secs(5)),
        Some(Packet::Publish(_))
    ));
    assert_eq!(
        m.publish("Dog/1", br#"{"name":"Mqtt"}"#, QoS::AtLeastOnce, true),
        Some(0x87)
    );
    assert_eq!(s.client().get("/Dog/1").json()["name"], "Penny");

    // Changes take effect on the next request: a new role grant, a password, deactivation.
    let writer = json!({"data": {"tables": {"Dog": {"read": true, "insert": true, "update": true,
        "delete": false, "attribute_permissions": []}}}});
    let (st, body) =
        admin.operation(&json!({"operation": "alter_role", "id": "reader", "permission": writer}));
    assert_eq!(st, 200, "{body}");
    assert_eq!(rita.put_json("/Dog/1", r#"{"name":"Rita's"}"#).status, 204);
    let (st, body) = admin.operation(&json!({"operation": "drop_role", "id": "reader"}));
    assert_eq!(
        (st, body["error"].as_str()),
        (
            409,
            Some("Cannot drop role reader as it has active user(s) tied to this role")
        )
    );
    let (st, body) =
        admin.operation(&json!({"operation": "alter_user", "username": "rita", "password": "pw2"}));
    assert_eq!((st, body["update_hashes"].clone()), (200, json!(["rita"])));
    assert_eq!(as_user(&s, "rita", "pw1").get("/Dog/1").status, 401);
    assert_eq!(as_user(&s, "rita", "pw2").get("/Dog/1").status, 200);
    let (st, _) =
        admin.operation(&json!({"operation": "alter_user", "username": "rita", "active": false}));
    assert_eq!(st, 200);
    // Refused as inactive, in the Operations API's words, on REST too.
    let refused = as_user(&s, "rita", "pw2").get("/Dog/1");
    assert_eq!(
        (refused.status, refused.json()),
        (
            401,
            json!({"error": "Cannot complete request: User is inactive"})
        )
    );
    let (st, body) = ops_as(&s, "rita", "pw2").operation(&json!({"operation": "user_info"}));
    assert_eq!(
        (st, body["error"].as_str()),
        (401, Some("Cannot complete request: User is inactive"))
    );
    let (st, body) = ops_as(&s, "rita", "wrong").operation(&json!({"operation": "user_info"}));
    assert_eq!((st, body["error"].as_str()), (401, Some("Login failed")));
    let (st, body) = admin.operation(&json!({"operation": "drop_user", "username": "rita"}));
    assert_eq!(
        (st, body["message"].as_str()),
        (200, Some("rita successfully deleted"))
    );
    let (st, body) = admin.operation(&json!({"operation": "drop_user", "username": "rita"}));
    assert_eq!(
        (st, body["error"].as_str()),
        (404, Some("User rita does not exist"))
    );
    let (st, body) = admin.operation(&json!({"operation": "drop_role", "id": "reader"}));
    assert_eq!(
        (st, body["message"].as_str()),
        (200, Some("reader successfully deleted"))
    );
}

#[test]
fn users_and_roles_survive_a_restart() {
    let app = tessera_tests::App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let start = tessera_tests::Start::new(app.dir.path(), root.path());
    let s = start.start();
    let mut admin = s.ops();
    let perm = json!({"data": {"tables": {"Dog": {"read": true, "insert": false, "update": false,
        "delete": false, "attribute_permissions": []}}}});
    assert_eq!(
        admin
            .operation(&json!({"operation": "add_role", "role": "r", "permission": perm}))
            .0,
        200
    );
    assert_eq!(
        admin
            .operation(
                &json!({"operation": "add_user", "username": "u", "password": "p", "role": "r"})
            )
            .0,
        200
    );
    assert_eq!(s.terminate(), Some(0));
    let s = start.start();
    assert_eq!(as_user(&s, "u", "p").get("/Dog/").status, 200);
    assert_eq!(as_user(&s, "u", "p").get("/Cat/").status, 403);
    let stored = std::fs::read_to_string(root.path().join("data/users.json")).unwrap();
    assert!(!stored.contains("\"p\""), "a password is stored in clear");
}

#[test]
fn attribute_permissions_hide_and_protect_attributes() {
    let schema =
        "type Item @table @export { id: Int @primaryKey name: String secret: String count: Int }";
    let (s, _app, _root) = Server::with_schema(schema);
    let mut admin = s.ops();
    let (st, _) = admin.operation(&json!({"operation": "insert", "table": "Item",
        "records": [{"id": 1, "name": "one", "secret": "s1", "count": 5}]}));
    assert_eq!(st, 200);
    let perm = json!({"data": {"tables": {"Item": {"read": true, "insert": true, "update": true, "delete": false,
        "attribute_permissions": [
            {"attribute_name": "name", "read": true, "insert": true, "update": true},
            {"attribute_name": "secret", "read": false, "insert": false, "update": false}]}}}});
    assert_eq!(
        admin
            .operation(&json!({"operation": "add_role", "role": "limited", "permission": perm}))
            .0,
        200
    );
    assert_eq!(admin.operation(&json!({"operation": "add_user", "username": "lim", "password": "pw", "role": "limited"})).0, 200);

    // REST: unreadable and unlisted attributes are left out; the key stays.
    let mut c = as_user(&s, "lim", "pw");
    assert_eq!(c.get("/Item/1").json(), json!({"id": 1, "name": "one"}));
    assert_eq!(c.get("/Item/").json(), json!([{"id": 1, "name": "one"}]));
    // REST writes of a forbidden attribute are refused (Harper stores them: DEVIATION).
    assert_eq!(
        c.put_json("/Item/1", r#"{"name":"x","secret":"y"}"#).status,
        403
    );
    assert_eq!(c.patch_json("/Item/1", r#"{"count":7}"#).status, 403);
    assert_eq!(c.patch_json("/Item/1", r#"{"name":"two"}"#).status, 204);
    let full = s.client().get("/Item/1").json();
    assert_eq!(
        full,
        json!({"id": 1, "name": "two", "secret": "s1", "count": 5})
    );

    // Operations API: the same rules.
    let mut o = ops_as(&s, "lim", "pw");
    let (st, body) = o.operation(
        &json!({"operation": "search_by_id", "table": "Item", "ids": [1], "get_attributes": ["*"]}),
    );
    assert_eq!((st, body), (200, json!([{"id": 1, "name": "two"}])));
    let (st, body) = o.operation(&json!({"operation": "search_by_id", "table": "Item", "ids": [1], "get_attributes": ["secret"]}));
    assert_eq!(
        (st, body["invalid_schema_items"].clone()),
        (
            403,
            json!(["Attribute 'secret' does not exist on 'data.Item'"])
        )
    );
    let (st, _) = o.operation(&json!({"operation": "search_by_value", "table": "Item",
        "search_attribute": "secret", "search_value": "s1", "get_attributes": ["id"]}));
    assert_eq!(st, 403);
    let (st, body) = o.operation(&json!({"operation": "insert", "table": "Item", "records": [{"id": 2, "name": "n", "secret": "x"}]}));
    assert_eq!(st, 403, "{body}");
    // As Harper reports it: an attribute the role knows nothing of is missing, one it may read
    // but not write lacks that permission; the key, unlisted, has what any listed attribute has.
    assert_eq!(body["unauthorized_access"], json!([]), "{body}");
    assert_eq!(
        body["invalid_schema_items"],
        json!(["Attribute 'secret' does not exist on 'data.Item'"])
    );
    let perm = json!({"data": {"tables": {"Item": {"read": true, "insert": true, "update": true, "delete": false,
        "attribute_permissions": [
            {"attribute_name": "name", "read": true, "insert": false, "update": true}]}}}});
    let (st, body) =
        admin.operation(&json!({"operation": "alter_role", "id": "limited", "permission": perm}));
    assert_eq!(st, 200, "{body}");
    let (st, body) = o.operation(
        &json!({"operation": "insert", "table": "Item", "records": [{"id": 3, "name": "n"}]}),
    );
    assert_eq!(st, 403, "{body}");
    let refused: Vec<&str> = body["unauthorized_access"][0]["required_attribute_permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attribute_name"].as_str().unwrap())
        .collect();
    assert_eq!(refused, vec!["id", "name"]);
    let (st, body) = o.operation(
        &json!({"operation": "update", "table": "Item", "records": [{"id": 1, "name": "three"}]}),
    );
    assert_eq!(
        (st, &body["message"]),
        (200, &json!("updated 1 of 1 records")),
        "{body}"
    );
    assert_eq!(s.client().get("/Item/2").status, 404);
}

#[test]
fn a_role_describes_only_what_it_may_see() {
    let schema = "type Item @table @export { id: Int @primaryKey name: String secret: String }
type Other @table(database: \"elsewhere\") @export { id: Int @primaryKey }";
    let (s, _app, _root) = Server::with_schema(schema);
    let mut admin = s.ops();
    let (st, _) = admin.operation(&json!({"operation": "insert", "table": "Item",
        "records": [{"id": 1, "name": "one", "secret": "s"}]}));
    assert_eq!(st, 200);
    let perm = json!({"data": {"tables": {"Item": {"read": true, "insert": false, "update": false,
        "delete": false, "attribute_permissions": [
            {"attribute_name": "name", "read": true, "insert": false, "update": false}]}}},
        "elsewhere": {"tables": {"Other": {"read": false, "insert": false, "update": false,
            "delete": false, "attribute_permissions": []}}}});
    let (st, body) =
        admin.operation(&json!({"operation": "add_role", "role": "peek", "permission": perm}));
    assert_eq!(st, 200, "{body}");
    let (st, _) = admin.operation(&json!({"operation": "add_user", "username": "peek",
        "password": "pw-peek", "role": "peek", "active": true}));
    assert_eq!(st, 200);
    let mut o = ops_as(&s, "peek", "pw-peek");

    // Only the table it has a permission on, with the attributes it may use.
    let (st, all) = o.operation(&json!({"operation": "describe_all"}));
    assert_eq!(st, 200, "{all}");
    assert_eq!(
        all.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["data"],
        "{all}"
    );
    let item = &all["data"]["Item"];
    let names: Vec<&str> = item["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attribute"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["id", "name"], "{item}");
    assert_eq!(item["record_count"], 1);
    assert!(
        item["last_updated_record"].as_f64().unwrap() > 1.7e12,
        "{item}"
    );
    // A database or table it may not see is missing to it; the system database is refused.
    for (op, missing) in [
        (
            json!({"operation": "describe_database", "database": "elsewhere"}),
            "database 'elsewhere' does not exist",
        ),
        (
            json!({"operation": "describe_table", "database": "elsewhere", "table": "Other"}),
            "Table 'elsewhere.Other' does not exist",
        ),
    ] {
        let (st, body) = o.operation(&op);
        assert_eq!(
            (st, body["invalid_schema_items"].clone()),
            (403, json!([missing])),
            "{op}"
        );
    }
    let (st, body) = o.operation(
        &json!({"operation": "describe_table", "database": "system", "table": "hdb_user"}),
    );
    assert_eq!(st, 403);
    assert_eq!(
        body["unauthorized_access"],
        json!(["Your role does not have permission to view database metadata for 'system'"])
    );
    // A role's shown name may change; its id stays.
    let (st, body) = admin.operation(&json!({"operation": "alter_role", "id": "peek",
        "role": "peeker", "permission": perm}));
    assert_eq!(
        (st, body["role"].as_str(), body["id"].as_str()),
        (200, Some("peeker"), Some("peek"))
    );
    let (_, roles) = admin.operation(&json!({"operation": "list_roles"}));
    assert!(
        roles
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["role"] == "peeker"),
        "{roles}"
    );
    // A super user sees both, and a missing database as 404.
    let (_, all) = admin.operation(&json!({"operation": "describe_all"}));
    assert!(all["elsewhere"]["Other"].is_object(), "{all}");
    let (st, _) =
        admin.operation(&json!({"operation": "describe_database", "database": "nowhere"}));
    assert_eq!(st, 404);
}

#[test]
fn the_system_database_is_the_registries_for_super_users_only() {
    let (s, _app, _root) = Server::with_schema(SCHEMA);
    let mut admin = s.ops();
    let (st, _) = admin.operation(&json!({"operation": "add_role", "role": "plain",
        "permission": {"super_user": false}}));
    assert_eq!(st, 200);
    let (st, _) = admin.operation(&json!({"operation": "add_user", "username": "pat",
        "password": "pw-pat", "role": "plain", "active": true}));
    assert_eq!(st, 200);

    // Super users read users and roles as records (a password as its hash).
    let (st, rows) = admin.operation(&json!({"operation": "search_by_value", "schema": "system",
        "table": "hdb_user", "search_attribute": "username", "search_value": "pat",
        "get_attributes": ["*"]}));
    assert_eq!(st, 200, "{rows}");
    assert_eq!(rows[0]["role"], "plain");
    assert!(
        rows[0]["password"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id$"),
        "{rows}"
    );
    let (_, d) = admin.operation(&json!({"operation": "describe_schema", "schema": "system"}));
    assert_eq!(d["hdb_user"]["hash_attribute"], "username", "{d}");
    assert_eq!(d["hdb_role"]["record_count"], 1, "{d}");
    // ... update them through the tables, checked as alter_user checks ...
    let (st, body) = admin.operation(&json!({"operation": "update", "schema": "system",
        "table": "hdb_user", "records": [{"username": "pat", "active": false, "note": "away"}]}));
    assert_eq!(
        (st, body["message"].as_str()),
        (200, Some("updated 1 of 1 records")),
        "{body}"
    );
    let (st, _) = admin.operation(&json!({"operation": "update", "schema": "system",
        "table": "hdb_user", "records": [{"username": "pat", "role": "nope"}]}));
    assert_eq!(st, 404);
    assert_eq!(
        s.ops()
            .as_user("pat", "pw-pat")
            .operation(&json!({"operation": "user_info"}))
            .0,
        401
    );
    // ... write hdb_nodes, and change nothing else.
    let (st, body) = admin.operation(&json!({"operation": "insert", "database": "system",
        "table": "hdb_nodes", "records": [{"name": "n1", "url": "ws://n1"}]}));
    assert_eq!(
        (st, body["inserted_hashes"].clone()),
        (200, json!(["n1"])),
        "{body}"
    );
    let untouchable = "The 'system' database, tables and records are used internally by HarperDB and cannot be updated or removed.";
    for op in [
        json!({"operation": "drop_table", "database": "system", "table": "hdb_nodes"}),
        json!({"operation": "delete", "database": "system", "table": "hdb_user", "ids": ["pat"]}),
        json!({"operation": "sql", "sql": "DELETE FROM system.hdb_user WHERE username = 'pat'"}),
    ] {
        let (st, body) = admin.operation(&op);
        assert_eq!(
            (st, body["error"].as_str()),
            (403, Some(untouchable)),
            "{op}"
        );
    }
    let (st, _) = admin.operation(&json!({"operation": "insert", "database": "system",
        "table": "hdb_certificate", "records": [{"name": "c"}]}));
    assert_eq!(st, 403);
    // describe_all leaves it out.
    let (_, all) = admin.operation(&json!({"operation": "describe_all"}));
    assert!(all.get("system").is_none(), "{all}");

    // Another role reaches none of it.
    let (st, _) = admin.operation(&json!({"operation": "update", "schema": "system",
        "table": "hdb_user", "records": [{"username": "pat", "active": true}]}));
    assert_eq!(st, 200);
    let mut pat = s.ops().as_user("pat", "pw-pat");
    let (st, body) = pat.operation(&json!({"operation": "search_by_value", "schema": "system",
        "table": "hdb_user", "search_attribute": "username", "search_value": "*",
        "get_attributes": ["*"]}));
    assert_eq!(st, 403);
    assert_eq!(
        body["unauthorized_access"][0]["required_table_permissions"],
        json!(["read"])
    );
    let (st, body) = pat.operation(&json!({"operation": "update", "schema": "system",
        "table": "hdb_role", "records": [{"id": "plain", "super_user": true}]}));
    assert_eq!((st, body["error"].as_str()), (403, Some(untouchable)));
    let (st, body) = pat.operation(&json!({"operation": "drop_table", "schema": "system",
        "table": "hdb_user"}));
    assert_eq!((st, body["error"].as_str()), (403, Some(untouchable)));
}

//! The instance operations through the real binary: `get_configuration`, `set_configuration`
//! (written to `<root>/tessera.yaml`, in effect from the next start), `system_information` and
//! `read_log`, for super users only.

use serde_json::json;
use tessera_tests::{App, Start};

#[test]
fn configuration_is_read_set_and_used_at_the_next_start() {
    let app = App::new("type Dog @table @export { id: Int @primaryKey }");
    let root = tempfile::tempdir().unwrap();
    let start = Start::new(app.dir.path(), root.path());
    let s = start.start();
    let mut c = s.ops();
    let (st, config) = c.operation(&json!({"operation": "get_configuration"}));
    assert_eq!(st, 200, "{config}");
    assert_eq!(config["operationsApi"]["network"]["port"], s.ops_port);
    assert_eq!(config["http"]["port"], s.port);
    assert_eq!(config["threads"]["count"], 2);
    assert_eq!(config["logging"]["level"], "info");

    let (st, body) = c.operation(&json!({"operation": "set_configuration",
        "logging_rotation_maxSize": "12M", "http_maxRequestBodySize": 2048}));
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body["message"],
        "Configuration successfully set. You must restart HarperDB for new config settings to take effect."
    );
    let (st, body) =
        c.operation(&json!({"operation": "set_configuration", "http_cors": "spinach"}));
    assert_eq!(
        (st, body["error"].as_str()),
        (
            400,
            Some("HarperDB config file validation error: 'http.cors' must be a boolean")
        )
    );
    let (_, config) = c.operation(&json!({"operation": "get_configuration"}));
    assert_eq!(config["logging"]["rotation"]["maxSize"], "12M");

    // Not for other roles.
    let (st, _) = c.operation(&json!({"operation": "add_role", "role": "plain",
        "permission": {"super_user": false}}));
    assert_eq!(st, 200);
    let (st, _) = c.operation(&json!({"operation": "add_user", "role": "plain",
        "username": "plain", "password": "pw-plain", "active": true}));
    assert_eq!(st, 200);
    let mut plain = s.ops().as_user("plain", "pw-plain");
    for (op, internal) in [
        ("get_configuration", "getConfiguration"),
        ("set_configuration", "setConfiguration"),
        ("system_information", "systemInformation"),
    ] {
        let (st, body) = plain.operation(&json!({"operation": op}));
        assert_eq!(st, 403, "{body}");
        assert_eq!(
            body["unauthorized_access"],
            json!([format!(
                "Operation '{internal}' is restricted to 'super_user' roles"
            )])
        );
    }

    // The written body limit is the server's after a restart.
    assert_eq!(s.terminate(), Some(0));
    let s = start.start();
    let mut c = s.ops();
    let (_, config) = c.operation(&json!({"operation": "get_configuration"}));
    assert_eq!(config["http"]["maxRequestBodySize"], 2048);
    let big = format!("{{\"id\": 1, \"pad\": \"{}\"}}", "x".repeat(4096));
    assert_eq!(s.client().put_json("/Dog/1", &big).status, 413);
}

#[test]
fn system_information_in_parts() {
    let app = App::new("type Dog @table @export { id: Int @primaryKey }");
    let root = tempfile::tempdir().unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    let mut c = s.ops();
    let (st, all) = c.operation(&json!({"operation": "system_information"}));
    assert_eq!(st, 200, "{all}");
    for part in [
        "system",
        "time",
        "cpu",
        "memory",
        "disk",
        "network",
        "harperdb_processes",
        "table_size",
    ] {
        assert!(!all[part].is_null(), "{part} missing: {all}");
    }
    assert!(all["memory"]["total"].as_u64().unwrap() > 0);
    assert_eq!(all["harperdb_processes"]["core"][0]["pid"], s.pid());
    let (_, some) =
        c.operation(&json!({"operation": "system_information", "attributes": ["time", "memory"]}));
    let keys: Vec<&String> = some.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 2, "{some}");
    assert!(some["time"]["current"].as_i64().unwrap() > 0);
}

#[test]
fn restart_comes_back_in_place_with_the_new_configuration() {
    let app = App::new("type Dog @table @export { id: Int @primaryKey }");
    let root = tempfile::tempdir().unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    let mut c = s.ops();
    assert_eq!(s.client().put_json("/Dog/1", r#"{"id": 1}"#).status, 204);
    let (st, _) =
        c.operation(&json!({"operation": "set_configuration", "http_maxRequestBodySize": 1024}));
    assert_eq!(st, 200);
    let (st, body) = c.operation(&json!({"operation": "restart"}));
    assert_eq!(st, 200, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("Restarting")),
        "{body}"
    );
    // The same process and ports, back within seconds, with its data and the new setting.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let config = loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(std::time::Instant::now() < deadline, "{}", s.output());
        if !s.output().contains("restarting") {
            continue;
        }
        let Ok(mut c) = std::panic::catch_unwind(|| s.ops()) else {
            continue;
        };
        let Ok((200, config)) = std::panic::catch_unwind(move || {
            c.operation(&json!({"operation": "get_configuration"}))
        }) else {
            continue;
        };
        break config;
    };
    assert_eq!(config["http"]["maxRequestBodySize"], 1024);
    assert_eq!(config["http"]["port"], s.port);
    assert_eq!(s.client().get("/Dog/1").status, 200);
    let big = format!("{{\"id\": 2, \"pad\": \"{}\"}}", "x".repeat(2048));
    assert_eq!(s.client().put_json("/Dog/2", &big).status, 413);
}

/// Waits for a server restarting in place for the `starts`th time (counting its first start)
/// to answer its Operations API again.
fn back(s: &tessera_tests::Server, starts: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(std::time::Instant::now() < deadline, "{}", s.output());
        if s.output().matches("Operations API listening").count() < starts {
            continue;
        }
        let ok = std::panic::catch_unwind(|| {
            s.ops().operation(&json!({"operation": "get_components"})).0 == 200
        });
        if matches!(ok, Ok(true)) {
            return;
        }
    }
}

#[test]
fn a_component_deployed_over_the_operations_api_is_served_after_a_restart() {
    let app = App::new("type Dog @table @export { id: Int @primaryKey }");
    let root = tempfile::tempdir().unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    let mut c = s.ops();
    let (st, body) = c.operation(&json!({"operation": "add_component", "project": "shop"}));
    assert_eq!(
        (st, body["message"].as_str()),
        (200, Some("Successfully added project: shop"))
    );
    // As made, it loads (its schema declares nothing yet).
    let (_, made) = c.operation(
        &json!({"operation": "get_component_file", "project": "shop",
        "file": "config.yaml"}),
    );
    assert!(
        made["message"].as_str().unwrap().contains("graphqlSchema"),
        "{made}"
    );
    c.operation(&json!({"operation": "restart_service", "service": "http_workers"}));
    back(&s, 2);
    let mut c = s.ops();
    // Its schema is the template's: the tables written there are served.
    let (st, body) = c.operation(&json!({"operation": "set_component_file", "project": "shop",
        "file": "schema.graphql", "payload": "type Toy @table @export { id: ID @primaryKey name: String }"}));
    assert_eq!(st, 200, "{body}");
    // A schema that would not load is refused, and the one in place stays; so is one the
    // GraphQL parser itself fails on (found by fuzzing), and the server goes on.
    let (st, body) = c.operation(&json!({"operation": "set_component_file", "project": "shop",
        "file": "schema.graphql", "payload": "type Toy @table @export { id: ID @primaryKey x: Nope }"}));
    assert_eq!(st, 400, "{body}");
    let hostile = include_str!("../../storage/fuzz/regressions/schema-block-string-nel.graphql");
    let (st, body) = c.operation(
        &json!({"operation": "set_component_file", "project": "shop",
        "file": "schema.graphql", "payload": hostile}),
    );
    assert_eq!(st, 400, "{body}");
    let (_, listed) = c.operation(&json!({"operation": "get_components"}));
    assert_eq!(listed["entries"][0]["name"], "shop", "{listed}");
    let (st, body) =
        c.operation(&json!({"operation": "restart_service", "service": "http_workers"}));
    assert_eq!(
        (st, body["message"].as_str()),
        (200, Some("Restarting http_workers"))
    );
    back(&s, 3);
    assert_eq!(
        s.client().put_json("/Toy/a", r#"{"name":"ball"}"#).status,
        204
    );
    assert_eq!(s.client().get("/Toy/a").json()["name"], "ball");
    // Only super users manage components.
    let mut c = s.ops();
    let (st, _) = c.operation(&json!({"operation": "add_role", "role": "plain",
        "permission": {"super_user": false}}));
    assert_eq!(st, 200);
    let (st, _) = c.operation(&json!({"operation": "add_user", "role": "plain",
        "username": "plain", "password": "pw-plain", "active": true}));
    assert_eq!(st, 200);
    let (st, _) = s.ops().as_user("plain", "pw-plain").operation(
        &json!({"operation": "set_component_file", "project": "shop", "file": "x", "payload": "y"}),
    );
    assert_eq!(st, 403);
    let (st, body) = s
        .ops()
        .operation(&json!({"operation": "drop_component", "project": "shop"}));
    assert_eq!(
        (st, body["message"].as_str()),
        (200, Some("Successfully dropped: shop"))
    );
}

#[test]
fn the_log_is_a_file_of_json_lines_that_read_log_filters() {
    let app = App::new("type Dog @table @export { id: Int @primaryKey }");
    let root = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("tessera.yaml"),
        format!(
            "logging:\n  root: {}\n  stdStreams: false\n",
            logs.path().display()
        ),
    )
    .unwrap();
    let start = Start::new(app.dir.path(), root.path());
    let s = start.start();
    let mut c = s.ops();
    // A user with a password: secrets are never logged.
    let (st, _) = c.operation(&json!({"operation": "add_role", "role": "plain",
        "permission": {"super_user": false}}));
    assert_eq!(st, 200);
    let (st, _) = c.operation(&json!({"operation": "add_user", "role": "plain",
        "username": "pat", "password": "hunter2-secret", "active": true}));
    assert_eq!(st, 200);
    let (st, all) = c.operation(&json!({"operation": "read_log"}));
    assert_eq!(st, 200, "{all}");
    let events = all.as_array().unwrap();
    let opened = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .unwrap()
                .starts_with("opened 2 shards")
        })
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(opened["level"], "info");
    assert!(
        opened["timestamp"].as_str().unwrap().ends_with('Z'),
        "{opened}"
    );
    // With stdStreams off, standard error has none of it.
    assert!(!s.output().contains("opened 2 shards"), "{}", s.output());
    // Filters: by level, by page and newest first.
    let (_, none) = c.operation(&json!({"operation": "read_log", "level": "error"}));
    assert_eq!(none, json!([]));
    let (_, last) = c.operation(&json!({"operation": "read_log", "order": "desc", "limit": 1}));
    assert_eq!(last.as_array().unwrap().len(), 1);
    assert_eq!(last[0], *events.last().unwrap());
    let (_, later) = c.operation(&json!({"operation": "read_log", "from": "2999-01-01"}));
    assert_eq!(later, json!([]));
    let (st, _) = c.operation(&json!({"operation": "read_log", "order": "sideways"}));
    assert_eq!(st, 400);
    let (st, _) = s
        .ops()
        .as_user("pat", "hunter2-secret")
        .operation(&json!({"operation": "read_log"}));
    assert_eq!(st, 403);
    s.terminate();
    let file = std::fs::read_to_string(logs.path().join("tessera.log")).unwrap();
    assert!(
        file.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
    assert!(file.contains("shutdown complete"), "{file}");
    assert!(!file.contains("hunter2"), "{file}");
}

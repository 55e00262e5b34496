//! Databases, tables and attributes made through the Operations API (docs/operations.md),
//! through the real binary: their messages and errors, attributes that appear and are indexed as
//! records arrive, `__createdtime__`/`__updatedtime__`, drops that take the data with them, and a
//! catalog that survives a restart.

use serde_json::{Value, json};
use tessera_tests::{App, Start};

const SCHEMA: &str = "type Dog @table @export { id: Int @primaryKey name: String @indexed }";

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

/// The attribute names `describe_table` lists, in order.
fn attribute_names(c: &mut tessera_tests::Client, database: &str, table: &str) -> Vec<String> {
    let (_, d) =
        c.operation(&json!({"operation": "describe_table", "database": database, "table": table}));
    d["attributes"]
        .as_array()
        .unwrap_or_else(|| panic!("no attributes: {d}"))
        .iter()
        .map(|a| a["attribute"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn tables_made_by_operations_grow_their_attributes_and_survive_a_restart() {
    let app = App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let start = Start::new(app.dir.path(), root.path());
    let s = start.start();
    let mut c = s.ops();

    let (st, body) = c.operation(&json!({"operation": "create_database", "database": "dev"}));
    assert_eq!(
        (st, message(&body)),
        (200, "database 'dev' successfully created")
    );
    let (st, body) = c.operation(&json!({"operation": "create_database", "database": "dev"}));
    assert_eq!(
        (st, &body),
        (400, &json!({"error": "database 'dev' already exists"}))
    );
    // Without a name: `data`, which always exists.
    let (st, body) = c.operation(&json!({"operation": "create_database"}));
    assert_eq!(
        (st, &body),
        (400, &json!({"error": "database 'data' already exists"}))
    );

    let create = json!({"operation": "create_table", "database": "dev", "table": "dog", "primary_key": "id"});
    let (st, body) = c.operation(&create);
    assert_eq!(
        (st, message(&body)),
        (200, "table 'dev.dog' successfully created.")
    );
    let (st, body) = c.operation(&create);
    assert_eq!(
        (st, &body),
        (
            400,
            &json!({"error": "Table 'dog' already exists in 'dev'"})
        )
    );
    let (st, body) =
        c.operation(&json!({"operation": "create_table", "database": "dev", "table": "cat"}));
    assert_eq!(
        (st, &body),
        (400, &json!({"error": "'primary_key' is required"}))
    );
    // In a missing database, create_table makes it.
    let (st, _) = c.operation(&json!({"operation": "create_table", "database": "zoo", "table": "owl", "primary_key": "k"}));
    assert_eq!(st, 200);

    // Records bring their attributes; keys left out are auto-incremented and reported.
    let (st, body) = c.operation(
        &json!({"operation": "insert", "database": "dev", "table": "dog",
        "records": [{"id": 1, "name": "Penny", "age": 5}, {"name": "Harper", "age": 2}]}),
    );
    assert_eq!(
        (st, &body),
        (
            200,
            &json!({"message": "inserted 2 of 2 records", "inserted_hashes": [1, 2], "skipped_hashes": []})
        )
    );
    let (_, d) =
        c.operation(&json!({"operation": "describe_table", "database": "dev", "table": "dog"}));
    assert_eq!(d["schema_defined"], false);
    assert_eq!(d["hash_attribute"], "id");
    assert_eq!(d["record_count"], 2);
    assert_eq!(
        d["attributes"],
        json!([{"attribute": "id", "is_primary_key": true},
               {"attribute": "__createdtime__", "indexed": true},
               {"attribute": "__updatedtime__", "indexed": true},
               {"attribute": "name", "indexed": true},
               {"attribute": "age", "indexed": true}])
    );

    // The new attributes are indexed at once: searches by them work.
    let (st, found) = c.operation(
        &json!({"operation": "search_by_value", "database": "dev", "table": "dog",
        "search_attribute": "name", "search_value": "Pen*", "get_attributes": ["id", "name"]}),
    );
    assert_eq!((st, &found), (200, &json!([{"id": 1, "name": "Penny"}])));
    let (_, found) = c.operation(
        &json!({"operation": "search_by_conditions", "database": "dev", "table": "dog",
        "conditions": [{"search_attribute": "age", "search_type": "less_than", "search_value": 3}],
        "get_attributes": ["id"]}),
    );
    assert_eq!(found, json!([{"id": 2}]));

    // Timestamps: equal on insert; an update moves only __updatedtime__.
    let get = json!({"operation": "search_by_id", "database": "dev", "table": "dog", "ids": [1], "get_attributes": ["*"]});
    let (_, before) = c.operation(&get);
    let (created, updated) = (&before[0]["__createdtime__"], &before[0]["__updatedtime__"]);
    assert!(created.as_f64().unwrap() > 1.7e12, "{before}");
    assert_eq!(created, updated);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let (st, _) = c.operation(
        &json!({"operation": "update", "database": "dev", "table": "dog",
        "records": [{"id": 1, "color": "red", "__createdtime__": 1}]}),
    );
    assert_eq!(st, 200);
    let (_, after) = c.operation(&get);
    assert_eq!(&after[0]["__createdtime__"], created, "{after}");
    assert!(
        after[0]["__updatedtime__"].as_f64() > updated.as_f64(),
        "{after}"
    );
    assert_eq!(after[0]["color"], "red");

    // SQL writes grow the table too, and see the timestamps.
    let (st, _) = c.operation(
        &json!({"operation": "sql", "sql": "INSERT INTO dev.dog (id, size) VALUES (10, 'big')"}),
    );
    assert_eq!(st, 200);
    let (_, rows) = c
        .operation(&json!({"operation": "sql", "sql": "SELECT * FROM dev.dog WHERE size = 'big'"}));
    assert_eq!(rows[0]["id"], 10, "{rows}");
    assert!(rows[0]["__createdtime__"].is_number(), "{rows}");
    c.operation(&json!({"operation": "sql", "sql": "DELETE FROM dev.dog WHERE id = 10"}));

    let attr = |op: &str, a: &str| json!({"operation": op, "database": "dev", "table": "dog", "attribute": a});
    let (st, body) = c.operation(&attr("create_attribute", "weight"));
    assert_eq!(
        (st, message(&body)),
        (200, "attribute 'dev.dog.weight' successfully created.")
    );
    let (st, body) = c.operation(&attr("create_attribute", "weight"));
    assert_eq!(
        (st, &body),
        (
            400,
            &json!({"error": "attribute 'weight' already exists in dev.dog"})
        )
    );
    // The primary key is never dropped (a DEVIATION of Harper, which accepts it).
    let (st, _) = c.operation(&attr("drop_attribute", "id"));
    assert_eq!(st, 400);
    let (st, body) = c.operation(&attr("drop_attribute", "color"));
    assert_eq!(
        (st, message(&body)),
        (200, "successfully deleted attribute 'color'")
    );
    let (_, after) = c.operation(&get);
    assert!(after[0].get("color").is_none(), "{after}");
    let (st, _) = c.operation(
        &json!({"operation": "search_by_value", "database": "dev", "table": "dog",
        "search_attribute": "color", "search_value": "red", "get_attributes": ["id"]}),
    );
    assert_eq!(st, 404);

    // A schema table and a dynamic one are described the same way, side by side.
    let (_, all) = c.operation(&json!({"operation": "describe_all"}));
    assert_eq!(all["data"]["Dog"]["schema_defined"], true);
    assert_eq!(all["dev"]["dog"]["schema_defined"], false);
    assert_eq!(all["zoo"]["owl"]["hash_attribute"], "k");
    // Dynamic tables are not REST resources.
    assert_eq!(s.client().get("/dog/1").status, 404);

    // After a restart: the same tables, attributes, records and key counter.
    drop(c);
    s.terminate();
    let s = start.start();
    let mut c = s.ops();
    assert_eq!(
        attribute_names(&mut c, "dev", "dog"),
        [
            "id",
            "__createdtime__",
            "__updatedtime__",
            "name",
            "age",
            "size",
            "weight"
        ]
    );
    let (_, found) = c.operation(
        &json!({"operation": "search_by_value", "database": "dev", "table": "dog",
        "search_attribute": "name", "search_value": "Harper", "get_attributes": ["id", "age"]}),
    );
    assert_eq!(found, json!([{"id": 2, "age": 2}]));
    let (_, body) = c.operation(&json!({"operation": "upsert", "database": "dev", "table": "dog", "records": [{"name": "Nova"}]}));
    assert_eq!(body["upserted_hashes"], json!([3]));

    // Dropping a table takes its records: made again, it is empty.
    let (st, body) =
        c.operation(&json!({"operation": "drop_table", "database": "dev", "table": "dog"}));
    assert_eq!(
        (st, message(&body)),
        (200, "successfully deleted table 'dev.dog'")
    );
    let (st, body) =
        c.operation(&json!({"operation": "drop_table", "database": "dev", "table": "dog"}));
    assert_eq!(
        (st, &body),
        (404, &json!({"error": "Table 'dev.dog' does not exist"}))
    );
    let (st, body) = c.operation(
        &json!({"operation": "insert", "database": "dev", "table": "dog", "records": [{"id": 1}]}),
    );
    assert_eq!(
        (st, &body),
        (400, &json!({"error": "Table 'dev.dog' does not exist"}))
    );
    c.operation(&create);
    let (_, found) = c.operation(
        &json!({"operation": "search_by_value", "database": "dev", "table": "dog",
        "search_attribute": "id", "search_value": "*", "get_attributes": ["*"]}),
    );
    assert_eq!(found, json!([]));

    let (st, body) = c.operation(&json!({"operation": "drop_database", "database": "zoo"}));
    assert_eq!((st, message(&body)), (200, "successfully deleted 'zoo'"));
    let (st, body) = c.operation(&json!({"operation": "describe_database", "database": "zoo"}));
    assert_eq!(
        (st, &body),
        (404, &json!({"error": "database 'zoo' does not exist"}))
    );
    // Names that could not be told apart in the layout or in SQL.
    let (st, _) =
        c.operation(&json!({"operation": "create_table", "table": "a.b", "primary_key": "id"}));
    assert_eq!(st, 400);
}

/// As on Harper, a table the application's schema.graphql declares can be dropped: its records
/// go and it is gone from the catalog, REST and MQTT until the next start declares it again,
/// empty.
#[test]
fn a_table_the_schema_declares_is_dropped_until_the_next_start() {
    let app = App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let start = Start::new(app.dir.path(), root.path());
    let s = start.start();
    let mut c = s.ops();
    let mut http = s.client();
    assert_eq!(
        http.put_json("/Dog/1", r#"{"id":1,"name":"Rex"}"#).status,
        204
    );
    let (st, body) = c.operation(&json!({"operation": "drop_table", "table": "Dog"}));
    assert_eq!(
        (st, message(&body)),
        (200, "successfully deleted table 'data.Dog'")
    );
    assert_eq!(http.get("/Dog/1").status, 404);
    let (_, all) = c.operation(&json!({"operation": "describe_all"}));
    assert!(
        all.get("data").is_none_or(|d| d.get("Dog").is_none()),
        "{all}"
    );
    let (st, _) = c.operation(&json!({"operation": "drop_database", "database": "data"}));
    assert_eq!(st, 200);
    s.terminate();

    let s = start.start();
    let mut http = s.client();
    assert_eq!(http.get("/Dog/1").status, 404);
    assert_eq!(
        http.put_json("/Dog/2", r#"{"id":2,"name":"Ida"}"#).status,
        204
    );
    assert_eq!(http.get("/Dog/").json(), json!([{"id": 2, "name": "Ida"}]));
}

#[test]
fn schema_operations_are_for_super_users_and_roles_reach_dynamic_tables() {
    let app = App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    let mut admin = s.ops();
    admin.operation(&json!({"operation": "create_table", "database": "dev", "table": "dog", "primary_key": "id"}));
    admin.operation(
        &json!({"operation": "insert", "database": "dev", "table": "dog",
        "records": [{"id": 1, "name": "Penny", "secret": "x"}]}),
    );
    let perm = json!({"dev": {"tables": {"dog": {"read": true, "insert": false, "update": false, "delete": false,
        "attribute_permissions": [{"attribute_name": "name", "read": true, "insert": false, "update": false},
                                  {"attribute_name": "secret", "read": false, "insert": false, "update": false}]}}}});
    let (st, body) =
        admin.operation(&json!({"operation": "add_role", "role": "reader", "permission": perm}));
    assert_eq!(st, 200, "{body}");
    admin.operation(
        &json!({"operation": "add_user", "username": "rita", "password": "pw", "role": "reader"}),
    );
    let mut rita = s.ops().as_user("rita", "pw");

    let (st, body) =
        rita.operation(&json!({"operation": "create_table", "table": "x", "primary_key": "id"}));
    assert_eq!(st, 403);
    assert_eq!(
        body["unauthorized_access"],
        json!(["Operation 'createTable' is restricted to 'super_user' roles"])
    );
    let (st, body) = rita.operation(&json!({"operation": "drop_database", "database": "dev"}));
    assert_eq!(
        (st, &body["unauthorized_access"]),
        (
            403,
            &json!(["Operation 'dropSchema' is restricted to 'super_user' roles"])
        )
    );

    // Reads as the role allows, without the hidden attribute; writes refused.
    let (st, found) = rita.operation(
        &json!({"operation": "search_by_id", "database": "dev", "table": "dog",
        "ids": [1], "get_attributes": ["*"]}),
    );
    assert_eq!(st, 200, "{found}");
    assert_eq!(found[0]["name"], "Penny");
    assert!(found[0].get("secret").is_none(), "{found}");
    let (st, _) = rita.operation(
        &json!({"operation": "insert", "database": "dev", "table": "dog", "records": [{"id": 2}]}),
    );
    assert_eq!(st, 403);
    // A refused write adds no attribute: a writer of `name` only tries a new property.
    let perm = json!({"dev": {"tables": {"dog": {"read": true, "insert": true, "update": true, "delete": false,
        "attribute_permissions": [{"attribute_name": "id", "read": true, "insert": true, "update": true},
                                  {"attribute_name": "name", "read": true, "insert": true, "update": true}]}}}});
    admin.operation(&json!({"operation": "add_role", "role": "writer", "permission": perm}));
    admin.operation(
        &json!({"operation": "add_user", "username": "walt", "password": "pw", "role": "writer"}),
    );
    let mut walt = s.ops().as_user("walt", "pw");
    let (st, body) = walt.operation(
        &json!({"operation": "insert", "database": "dev", "table": "dog",
        "records": [{"id": 5, "name": "Rex", "sneaky": 1}]}),
    );
    assert_eq!(st, 403, "{body}");
    let (st, _) = walt.operation(
        &json!({"operation": "insert", "database": "dev", "table": "dog",
        "records": [{"id": 6, "name": "Ok"}]}),
    );
    assert_eq!(st, 200);
    assert_eq!(
        attribute_names(&mut admin, "dev", "dog"),
        ["id", "__createdtime__", "__updatedtime__", "name", "secret"]
    );

    // The table still exists only in dev.
    let (_, all) = rita.operation(&json!({"operation": "describe_all"}));
    assert!(all.get("data").is_none(), "{all}");
    assert_eq!(all["dev"]["dog"]["name"], "dog");
}

//! `read_audit_log` and `delete_audit_logs_before` through the real binary
//! (docs/operations.md): one transaction per operation with its user, time, keys and records
//! in the operation's order, searches by time, user and record, removal up to a time as a job,
//! super users only, and a log that outlives a `kill -9`.

use serde_json::{Value, json};
use tessera_tests::{Client, Start};

fn read(c: &mut Client, extra: Value) -> Value {
    let mut op = json!({"operation": "read_audit_log", "database": "zoo", "table": "pet"});
    for (k, v) in extra.as_object().unwrap() {
        op[k] = v.clone();
    }
    let (st, body) = c.operation(&op);
    assert_eq!(st, 200, "{body}");
    body
}

/// Each transaction's operation and keys, in order.
fn summary(log: &Value) -> Vec<(String, Value)> {
    log.as_array()
        .unwrap_or_else(|| panic!("not a list: {log}"))
        .iter()
        .map(|t| {
            (
                t["operation"].as_str().unwrap().to_owned(),
                t["hash_values"].clone(),
            )
        })
        .collect()
}

#[test]
fn the_audit_log_lists_each_operation_with_its_user_and_records() {
    let app = tessera_tests::App::new("type Unused @table { id: ID @primaryKey }");
    let root = tempfile::tempdir().unwrap();
    let start = Start::new(app.dir.path(), root.path());
    let s = start.start();
    let mut admin = s.ops();
    let op = |c: &mut Client, v: Value| {
        let (st, body) = c.operation(&v);
        assert_eq!(st, 200, "{v}: {body}");
        body
    };
    op(
        &mut admin,
        json!({"operation": "create_table", "database": "zoo", "table": "pet", "primary_key": "id"}),
    );
    let records = |r: Value| json!({"database": "zoo", "table": "pet", "records": r});
    let with = |name: &str, mut v: Value| {
        v["operation"] = json!(name);
        v
    };
    op(
        &mut admin,
        with(
            "insert",
            records(json!([{"id": 1, "name": "Penny"}, {"id": 2, "name": "Kato", "age": 6}])),
        ),
    );
    op(
        &mut admin,
        with("update", records(json!([{"id": 1, "age": 8}]))),
    );
    // A time (whole ms) between the update and the delete.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let between = tessera_storage::shard::now_micros() / 1000;
    std::thread::sleep(std::time::Duration::from_millis(5));
    op(
        &mut admin,
        json!({"operation": "delete", "database": "zoo", "table": "pet", "ids": [2, 1]}),
    );
    // A user of another role writes too.
    op(
        &mut admin,
        json!({"operation": "add_role", "role": "keeper", "permission": {"super_user": false,
            "zoo": {"tables": {"pet": {"read": true, "insert": true, "update": true,
            "delete": true, "attribute_permissions": []}}}}}),
    );
    op(
        &mut admin,
        json!({"operation": "add_user", "username": "kim", "password": "pw", "role": "keeper",
            "active": true}),
    );
    let mut kim = s.ops().as_user("kim", "pw");
    op(
        &mut kim,
        with(
            "upsert",
            records(json!([{"id": "b", "name": "Rosco"}, {"id": 4, "name": "Griff"}, {"id": 3}])),
        ),
    );

    // Everything, oldest first: one transaction per operation, records in its order.
    let all = read(&mut admin, json!({}));
    assert_eq!(
        summary(&all),
        vec![
            ("insert".to_owned(), json!([1, 2])),
            ("update".to_owned(), json!([1])),
            ("delete".to_owned(), json!([2, 1])),
            ("upsert".to_owned(), json!(["b", 4, 3])),
        ],
        "{all}"
    );
    assert_eq!(all[0]["user_name"], "admin");
    assert_eq!(all[3]["user_name"], "kim");
    assert_eq!(all[0]["records"][1]["age"], 6);
    // An update's record is the record as it was stored after it.
    assert_eq!(all[1]["records"][0]["name"], "Penny");
    assert_eq!(all[1]["records"][0]["age"], 8);
    assert!(all[1]["records"][0]["__updatedtime__"].is_number());
    assert!(all[2].get("records").is_none(), "{}", all[2]);
    let times: Vec<f64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timestamp"].as_f64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");

    // By time: from `between` on.
    let later = read(
        &mut admin,
        json!({"search_type": "timestamp", "search_values": [between]}),
    );
    assert_eq!(summary(&later).len(), 2, "{later}");
    let (_, limited) = admin.operation(
        &json!({"operation": "read_audit_log", "database": "zoo", "table": "pet",
            "limit": 1}),
    );
    assert_eq!(summary(&limited).len(), 1);
    // By user, and by record.
    let by_user = read(
        &mut admin,
        json!({"search_type": "username", "search_values": ["kim", "nobody"]}),
    );
    assert_eq!(by_user.as_object().unwrap().len(), 1, "{by_user}");
    assert_eq!(summary(&by_user["kim"]).len(), 1);
    let by_record = read(
        &mut admin,
        json!({"search_type": "hash_value", "search_values": [1, "b", 99]}),
    );
    assert_eq!(
        summary(&by_record["1"]),
        vec![
            ("insert".to_owned(), json!([1])),
            ("update".to_owned(), json!([1])),
            ("delete".to_owned(), json!([1])),
        ]
    );
    assert_eq!(by_record["b"][0]["records"][0]["name"], "Rosco");
    assert_eq!(by_record["99"], json!([]));

    // Refusals.
    let (st, _) = kim.operation(&json!({"operation": "read_audit_log", "database": "zoo",
        "table": "pet"}));
    assert_eq!(st, 403);
    let (st, body) = admin.operation(&json!({"operation": "read_audit_log", "database": "zoo",
        "table": "nope"}));
    assert_eq!(
        (st, &body),
        (404, &json!({"error": "Table 'zoo.nope' does not exist"}))
    );
    let (st, _) = admin.operation(&json!({"operation": "read_audit_log", "database": "zoo",
        "table": "pet", "search_type": "color"}));
    assert_eq!(st, 400);
    let (st, _) = admin.operation(&json!({"operation": "delete_audit_logs_before",
        "database": "zoo", "table": "pet", "timestamp": "soon"}));
    assert_eq!(st, 400);

    // The log is on disk: it outlives a kill -9.
    s.kill9();
    let s = start.start();
    let mut admin = s.ops();
    let again = read(&mut admin, json!({}));
    assert_eq!(summary(&again).len(), 4, "{again}");

    // Removed up to a time, as a job; what came after stays.
    let job = admin.run_job(
        json!({"operation": "delete_audit_logs_before", "database": "zoo",
        "table": "pet", "timestamp": between.to_string()}),
    );
    assert_eq!(job["status"], "COMPLETE", "{job}");
    assert!(
        job["message"]
            .as_str()
            .unwrap()
            .starts_with("Successfully completed job: "),
        "{job}"
    );
    let left = read(&mut admin, json!({}));
    assert_eq!(
        summary(&left),
        vec![
            ("delete".to_owned(), json!([2, 1])),
            ("upsert".to_owned(), json!(["b", 4, 3])),
        ]
    );
}

//! The Operations API's data operations through the real binary (docs/operations.md):
//! envelopes, status codes, response shapes, and batches that commit as one transaction across
//! shards.

use serde_json::json;
use tessera_tests::Server;

const SCHEMA: &str =
    "type Dog @table @export { id: Int @primaryKey name: String! @indexed age: Int }";

#[test]
fn data_operations_and_their_envelopes() {
    let (s, _app, _root) = Server::with_schema(SCHEMA);
    let mut c = s.ops();

    let (st, body) = c.operation(&json!({"operation": "insert", "table": "Dog",
        "records": [{"id": 1, "name": "Penny"}, {"id": 2, "name": "Harper", "age": 3}]}));
    assert_eq!(
        (st, &body),
        (
            200,
            &json!({"message": "inserted 2 of 2 records",
        "inserted_hashes": [1, 2], "skipped_hashes": []})
        )
    );
    // insert never overwrites.
    let (_, body) = c.operation(
        &json!({"operation": "insert", "database": "data", "table": "Dog",
        "records": [{"id": 1, "name": "Other"}, {"id": 3, "name": "Rex"}]}),
    );
    assert_eq!(
        body,
        json!({"message": "inserted 1 of 2 records",
        "inserted_hashes": [3], "skipped_hashes": [1]})
    );
    // update merges, never creates.
    let (_, body) = c.operation(&json!({"operation": "update", "table": "Dog",
        "records": [{"id": 1, "age": 9}, {"id": 99, "age": 1}]}));
    assert_eq!(
        body,
        json!({"message": "updated 1 of 2 records",
        "update_hashes": [1], "skipped_hashes": [99]})
    );
    let (st, body) =
        c.operation(&json!({"operation": "update", "table": "Dog", "records": [{"age": 1}]}));
    assert_eq!(st, 400, "{body}");
    // upsert merges or creates.
    let (_, body) = c.operation(&json!({"operation": "upsert", "table": "Dog",
        "records": [{"id": 2, "age": 4}, {"id": 4, "name": "Nova"}]}));
    assert_eq!(
        body,
        json!({"message": "upserted 2 of 2 records", "upserted_hashes": [2, 4]})
    );

    let (st, body) = c.operation(&json!({"operation": "search_by_id", "table": "Dog",
        "ids": [1, 2, 99], "get_attributes": ["id", "name", "age"]}));
    assert_eq!(st, 200);
    assert_eq!(
        body,
        json!([{"id": 1, "name": "Penny", "age": 9}, {"id": 2, "name": "Harper", "age": 4}])
    );
    // The REST view of the same data.
    let r = s.client().get("/Dog/1");
    assert_eq!(r.json()["age"], 9);

    let (_, body) = c.operation(&json!({"operation": "delete", "table": "Dog", "ids": [3, 4]}));
    assert_eq!(
        body,
        json!({"message": "2 of 2 records successfully deleted",
        "deleted_hashes": [3, 4], "skipped_hashes": []})
    );
    let (_, body) = c.operation(&json!({"operation": "search_by_id", "table": "Dog",
        "ids": [3, 4], "get_attributes": ["*"]}));
    assert_eq!(body, json!([]));

    // Errors: shapes and statuses.
    let cases = [
        (
            json!({"operation": "nope"}),
            400,
            "Operation 'nope' not found",
        ),
        (
            json!({"table": "Dog"}),
            400,
            "Request body must include an 'operation' property.",
        ),
        (
            json!({"operation": "insert", "table": "Dog"}),
            400,
            "'records' is required",
        ),
        (
            json!({"operation": "insert", "table": "Dog", "records": 5}),
            400,
            "'records' must be an array",
        ),
        (
            json!({"operation": "insert", "records": []}),
            400,
            "'table' is required",
        ),
        (
            json!({"operation": "search_by_id", "table": "Dog", "ids": [1]}),
            400,
            "'get_attributes' is required",
        ),
        (
            json!({"operation": "create_table", "database": 1123, "table": 1, "primary_key": "id"}),
            400,
            "'schema' must be a string. 'table' must be a string",
        ),
        (
            json!({"operation": "create_authentication_tokens", "username": "", "password": "pw"}),
            400,
            "'username' is not allowed to be empty",
        ),
        (
            json!({"operation": "create_authentication_tokens", "username": "", "password": ""}),
            401,
            "Must login",
        ),
        (
            json!({"operation": "create_authentication_tokens", "username": "admin"}),
            401,
            "invalid credentials",
        ),
    ];
    for (op, status, message) in cases {
        let (st, body) = c.operation(&op);
        assert_eq!(
            (st, body["error"].as_str()),
            (status, Some(message)),
            "{op}"
        );
    }
    let (st, body) = c.operation(&json!({"operation": "insert", "table": "Cat", "records": []}));
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("Table 'data.Cat' does not exist"))
    );
    let r = c.post_json("/", "{\"operation\": ");
    assert_eq!(r.status, 400);
    // A bad record fails the whole batch: nothing of it is stored.
    let (st, body) = c.operation(&json!({"operation": "upsert", "table": "Dog",
        "records": [{"id": 10, "name": "Ok"}, {"id": 11, "name": 5}]}));
    assert_eq!(st, 400, "{body}");
    let (_, body) = c.operation(&json!({"operation": "search_by_id", "table": "Dog",
        "ids": [10, 11], "get_attributes": ["*"]}));
    assert_eq!(body, json!([]));
    // No credentials: 401.
    let mut anon = s.ops().anonymous();
    let (st, body) = anon.operation(&json!({"operation": "search_by_id", "table": "Dog",
        "ids": [1], "get_attributes": ["*"]}));
    assert_eq!((st, body["error"].as_str()), (401, Some("Must login")));
}

#[test]
fn a_batch_commits_on_every_shard_or_none() {
    let (s, _app, _root) = Server::with_schema(SCHEMA);
    let mut c = s.ops();
    // 200 records land on every shard; one transaction.
    let records: Vec<_> = (0..200)
        .map(|i| json!({"id": i, "name": format!("d{i}")}))
        .collect();
    let (st, body) =
        c.operation(&json!({"operation": "insert", "table": "Dog", "records": records}));
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["message"], "inserted 200 of 200 records");
    // Concurrent batches over the same records from several clients: every batch is whole, so
    // each record ends with the age of the same (last) batch.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let mut c = s.ops();
            std::thread::spawn(move || {
                for round in 0..10 {
                    let age = t * 100 + round;
                    let records: Vec<_> = (0..200).map(|i| json!({"id": i, "age": age})).collect();
                    let (st, body) = c.operation(
                        &json!({"operation": "upsert", "table": "Dog", "records": records}),
                    );
                    assert_eq!(st, 200, "{body}");
                }
            })
        })
        .collect();
    // Meanwhile readers see each batch whole: all 200 ages equal, on every read.
    let mut reader = s.client();
    let mut reads = 0;
    while threads.iter().any(|t| !t.is_finished()) {
        let r = reader.get("/Dog/?select(age)");
        assert_eq!(r.status, 200);
        let ages: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(ages.len(), 200);
        assert!(
            ages.iter().all(|a| *a == ages[0]),
            "a reader saw a partial batch: {ages:?}"
        );
        reads += 1;
    }
    for t in threads {
        t.join().unwrap();
    }
    assert!(reads > 0);
    let r = reader.get("/Dog/?select(age)");
    let ages: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
    assert!(ages.iter().all(|a| *a == ages[0]));
}

#[test]
fn searches_by_value_and_conditions() {
    let schema = "type Dog @table @export { id: Int @primaryKey name: String @indexed \
                  breed: String age: Int @indexed }";
    let (s, _app, _root) = Server::with_schema(schema);
    let mut c = s.ops();
    let dogs = json!([
        {"id": 1, "name": "Penny", "breed": "Husky", "age": 5},
        {"id": 2, "name": "Harper", "breed": "Poodle", "age": 3},
        {"id": 3, "name": "Buddy", "breed": "Husky", "age": 8},
        {"id": 4, "name": "Bella", "breed": "Beagle"},
        {"id": 5, "name": "Rocky", "breed": "Husky", "age": 1}
    ]);
    let (st, _) = c.operation(&json!({"operation": "insert", "table": "Dog", "records": dogs}));
    assert_eq!(st, 200);
    let ids = |v: &serde_json::Value| {
        let mut ids: Vec<i64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        ids.sort_unstable();
        ids
    };
    let by_value = |c: &mut tessera_tests::Client, attr: &str, value: serde_json::Value| {
        let (st, body) = c.operation(&json!({"operation": "search_by_value", "table": "Dog",
            "search_attribute": attr, "search_value": value, "get_attributes": ["id"]}));
        assert_eq!(st, 200, "{body}");
        ids(&body)
    };
    assert_eq!(by_value(&mut c, "name", json!("B*")), vec![3, 4]);
    assert_eq!(by_value(&mut c, "name", json!("*y")), vec![1, 3, 5]);
    assert_eq!(by_value(&mut c, "name", json!("*ar*")), vec![2]);
    assert_eq!(by_value(&mut c, "name", json!("*")), vec![1, 2, 3, 4, 5]);
    assert_eq!(by_value(&mut c, "age", json!(3)), vec![2]);
    // Not indexed: a scan; and the primary key.
    assert_eq!(by_value(&mut c, "breed", json!("Husky")), vec![1, 3, 5]);
    assert_eq!(by_value(&mut c, "id", json!(4)), vec![4]);
    // Aliases, and "*" in get_attributes: every attribute, absent ones as null.
    let (_, body) = c.operation(&json!({"operation": "search_by_value", "table": "Dog",
        "attribute": "id", "value": 4, "get_attributes": ["*"]}));
    assert_eq!(
        body,
        json!([{"id": 4, "name": "Bella", "breed": "Beagle", "age": null}])
    );
    // Without get_attributes, as Harper: every attribute (search_by_id must name them).
    for search in [
        json!({"operation": "search_by_value", "table": "Dog", "attribute": "id", "value": 4}),
        json!({"operation": "search_by_conditions", "table": "Dog",
            "conditions": [{"attribute": "id", "comparator": "equals", "value": 4}]}),
    ] {
        let (_, found) = c.operation(&search);
        assert_eq!(
            found,
            json!([{"id": 4, "name": "Bella", "breed": "Beagle", "age": null}])
        );
    }
    let (st, body) = c.operation(&json!({"operation": "search_by_value", "table": "Dog",
        "search_attribute": "nosuch", "search_value": 1, "get_attributes": ["id"]}));
    assert_eq!(
        (st, body),
        (404, json!({"error": "unknown attribute 'nosuch'"}))
    );
    let (st, _) = c.operation(&json!({"operation": "search_by_value", "table": "Dog",
        "search_attribute": "name", "search_value": null, "get_attributes": ["id"]}));
    assert_eq!(st, 400);

    let by_conditions = |c: &mut tessera_tests::Client, extra: serde_json::Value| {
        let mut op = json!({"operation": "search_by_conditions", "table": "Dog", "get_attributes": ["id", "age"]});
        for (k, v) in extra.as_object().unwrap() {
            op[k] = v.clone();
        }
        let (st, body) = c.operation(&op);
        assert_eq!(st, 200, "{body}");
        body
    };
    let cond = |a: &str, t: &str, v: serde_json::Value| json!({"search_attribute": a, "search_type": t, "search_value": v});
    let body = by_conditions(
        &mut c,
        json!({"conditions": [cond("breed", "equals", json!("Husky")), cond("age", "greater_than", json!(2))]}),
    );
    assert_eq!(ids(&body), vec![1, 3]);
    let body = by_conditions(
        &mut c,
        json!({"operator": "or", "conditions": [cond("name", "starts_with", json!("Ha")), cond("age", "less_than_equal", json!(1))]}),
    );
    assert_eq!(ids(&body), vec![2, 5]);
    let body = by_conditions(
        &mut c,
        json!({"conditions": [cond("age", "between", json!([3, 5]))]}),
    );
    assert_eq!(ids(&body), vec![1, 2]);
    let body = by_conditions(
        &mut c,
        json!({"conditions": [cond("name", "contains", json!("ock")), cond("name", "ends_with", json!("y"))]}),
    );
    assert_eq!(ids(&body), vec![5]);
    // not_equal leaves out records without the value.
    let body = by_conditions(
        &mut c,
        json!({"conditions": [cond("age", "not_equal", json!(3))]}),
    );
    assert_eq!(ids(&body), vec![1, 3, 5]);
    // Nested groups with aliases.
    let body = by_conditions(
        &mut c,
        json!({"conditions": [
            {"attribute": "breed", "comparator": "equals", "value": "Husky"},
            {"operator": "or", "conditions": [cond("age", "equals", json!(1)), cond("age", "equals", json!(8))]}
        ]}),
    );
    assert_eq!(ids(&body), vec![3, 5]);
    // Sort, limit and offset.
    let body = by_conditions(
        &mut c,
        json!({"conditions": [cond("age", "greater_than", json!(0))],
        "sort": {"attribute": "age", "descending": true}, "limit": 2, "offset": 1}),
    );
    assert_eq!(body, json!([{"id": 1, "age": 5}, {"id": 2, "age": 3}]));
    // Errors.
    let (st, body) = c.operation(&json!({"operation": "search_by_conditions", "table": "Dog",
        "get_attributes": ["id"], "conditions": [cond("age", "bogus", json!(1))]}));
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("Unknown query comparator \"bogus\""))
    );
    let (st, body) = c.operation(&json!({"operation": "search_by_conditions", "table": "Dog",
        "get_attributes": ["id"], "conditions": []}));
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("'conditions' must contain at least 1 items"))
    );
    let (st, _) = c.operation(&json!({"operation": "search_by_conditions", "table": "Dog",
        "get_attributes": ["id"]}));
    assert_eq!(st, 400);
}

#[test]
fn describe_operations() {
    let schema = "type Dog @table @export { id: Int @primaryKey name: String @indexed tags: [String] }\n\
                  type Toy @table(database: \"play\", expiration: 60) { id: ID @primaryKey }";
    let (s, _app, _root) = Server::with_schema(schema);
    let mut c = s.ops();
    let (st, _) = c.operation(&json!({"operation": "insert", "table": "Dog",
        "records": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]}));
    assert_eq!(st, 200);
    let (st, d) = c.operation(&json!({"operation": "describe_table", "table": "Dog"}));
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["schema"], "data");
    assert_eq!(d["name"], "Dog");
    assert_eq!(d["hash_attribute"], "id");
    assert_eq!(d["schema_defined"], true);
    assert_eq!(d["record_count"], 3);
    assert_eq!(
        d["attributes"],
        json!([
            {"attribute": "id", "is_primary_key": true, "type": "Int"},
            {"attribute": "name", "type": "String", "indexed": {}},
            {"attribute": "tags", "type": "array"}
        ])
    );
    let (_, d) =
        c.operation(&json!({"operation": "describe_table", "database": "play", "table": "Toy"}));
    assert_eq!(
        (d["record_count"].clone(), d["expiration"].clone()),
        (json!(0), json!("60s"))
    );
    let (_, d) = c.operation(&json!({"operation": "describe_database", "database": "play"}));
    assert_eq!(
        d.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["Toy"]
    );
    let (_, d) = c.operation(&json!({"operation": "describe_all"}));
    assert_eq!(d["data"]["Dog"]["record_count"], 3);
    assert_eq!(d["play"]["Toy"]["name"], "Toy");
    let (st, d) = c.operation(&json!({"operation": "describe_table", "table": "Nope"}));
    assert_eq!(
        (st, d["error"].as_str()),
        (404, Some("Table 'data.Nope' does not exist"))
    );
    let (st, d) = c.operation(&json!({"operation": "describe_database", "database": "nope"}));
    assert_eq!(
        (st, d["error"].as_str()),
        (404, Some("database 'nope' does not exist"))
    );
}

#[test]
fn search_by_value_pages_in_the_searched_attributes_order() {
    let (s, _app, _root) = Server::with_schema(SCHEMA);
    let mut c = s.ops();
    let records: Vec<serde_json::Value> = (1..=30)
        .map(|i| json!({"id": i, "name": format!("dog{:02}", 31 - i), "age": i % 4}))
        .collect();
    let (st, _) = c.operation(&json!({"operation": "insert", "table": "Dog", "records": records}));
    assert_eq!(st, 200);
    let ids = |body: &serde_json::Value| -> Vec<i64> {
        body.as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    };
    let (_, body) = c.operation(&json!({"operation": "search_by_value", "table": "Dog",
        "search_attribute": "id", "search_value": "*", "get_attributes": ["id"], "limit": 3}));
    assert_eq!(ids(&body), [1, 2, 3]);
    let (_, body) = c.operation(&json!({"operation": "search_by_value", "table": "Dog",
        "search_attribute": "id", "search_value": "*", "get_attributes": ["id"],
        "reverse": true, "offset": 2, "limit": 3}));
    assert_eq!(ids(&body), [28, 27, 26]);
    // Ordered by the searched attribute, not the key.
    let (_, body) = c.operation(&json!({"operation": "search_by_value", "table": "Dog",
        "search_attribute": "name", "search_value": "dog0*", "get_attributes": ["id"], "offset": 7}));
    assert_eq!(ids(&body), [23, 22]);
    // search_by_conditions without a sort: in the order of the first condition's attribute.
    let (_, body) = c.operation(&json!({"operation": "search_by_conditions", "table": "Dog",
        "get_attributes": ["id"], "conditions": [
            {"search_attribute": "age", "search_type": "between", "search_value": [1, 2]},
            {"search_attribute": "id", "search_type": "less_than", "search_value": 9}]}));
    assert_eq!(ids(&body), [1, 5, 2, 6]);
    // A data operation may name its database and table by numbers.
    let (st, _) = c.operation(
        &json!({"operation": "create_table", "database": "123", "table": "4",
        "primary_key": "id"}),
    );
    assert_eq!(st, 200);
    let (st, body) = c.operation(&json!({"operation": "insert", "schema": 123, "table": 4,
        "records": [{"id": 1, "name": "Hot Dawg"}]}));
    assert_eq!(
        (st, body["message"].as_str()),
        (200, Some("inserted 1 of 1 records")),
        "{body}"
    );
    // The older names are answered in their own words.
    let (st, body) = c.operation(&json!({"operation": "search_by_hash", "table": "Dog",
        "hash_values": 4, "get_attributes": ["id"]}));
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("'hash_values' must be an array"))
    );
    let (st, body) = c.operation(&json!({"operation": "search_by_id", "table": "Dog",
        "ids": [4], "get_attributes": "id"}));
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("'get_attributes' must be an array"))
    );
    let (st, body) = c.operation(&json!({"operation": "update", "table": "Dog",
        "records": [{"id": "", "age": 1}]}));
    assert_eq!(st, 400, "{body}");
    let (st, body) = c.operation(&json!({"operation": "upsert", "table": "Dog",
        "records": [{"id": "null", "age": 1}]}));
    assert_eq!(
        (st, body["error"].as_str()),
        (
            400,
            Some(
                "Invalid hash value: 'null' is not a valid hash attribute value, check log for more info"
            )
        )
    );
}

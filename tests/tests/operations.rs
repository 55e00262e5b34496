//! The Operations API's data operations through the real binary (HARPER-OPS.md sections 1 and 3):
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

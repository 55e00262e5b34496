//! WebAssembly resources through the real binary: the test guests of `tests/guests` (built for
//! wasm32 by the test itself) and the shop example, every capability of the SDK and every way a
//! hostile guest can fail.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use tessera_protocol::mqtt::{QoS, Version};
use tessera_tests::mqtt::MqttClient;
use tessera_tests::{ADMIN, App, Server, Start};

const SCHEMA: &str = tessera_tests::GUEST_SCHEMA;

fn start(app: &App, root: &Path) -> Server {
    start_with_budget(app, root, 1500)
}

fn start_with_budget(app: &App, root: &Path, ms: u64) -> Server {
    std::fs::write(
        root.join("tessera.yaml"),
        format!("wasm:\n  timeout: {ms}\n"),
    )
    .unwrap();
    // Each test's root compiles the guests' module afresh (cranelift, in the debug build) while
    // the other tests do the same: on a busy 2-core machine that can take over a minute.
    let mut start = Start::new(app.dir.path(), root);
    start.timeout = Duration::from_secs(240);
    start.start()
}

fn put(s: &Server, path: &str, body: serde_json::Value) -> u16 {
    s.client().put_json(path, &body.to_string()).status
}

/// Widgets named "w" with these ids and prices.
fn widgets(s: &Server, prices: &[(i64, i64)]) {
    for (id, price) in prices {
        let path = format!("/Widget/{id}");
        assert_eq!(put(s, &path, json!({"name":"w","price":price})), 204);
    }
}

fn stocks(s: &Server) -> (i64, i64) {
    let a = s.client().get("/Widget/1").json();
    let b = s.client().get("/Widget/2").json();
    (
        a["stock"].as_i64().unwrap_or(-999),
        b["stock"].as_i64().unwrap_or(-999),
    )
}

#[test]
fn a_resource_extending_a_table_overrides_some_verbs_and_defaults_the_rest() {
    let app = App::with_wasm(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let s = start(&app, root.path());
    // put: validated by the guest.
    let r = s
        .client()
        .put_json("/Widget/1", r#"{"name":"bolt","price":-1}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("price must not be negative"),
        "{}",
        r.text()
    );
    let r = s
        .client()
        .put_json("/Widget/1", r#"{"name":" ","price":1}"#);
    assert_eq!(r.status, 422, "{}", r.text());
    let r = s
        .client()
        .put_json("/Widget/1", r#"{"name":"bolt","price":8,"stock":5}"#);
    assert_eq!(r.status, 204, "{}", r.text());
    // get: the stored record plus a computed field.
    let r = s.client().get("/Widget/1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"id":1,"name":"bolt","price":8,"priceWithTax":10,"stock":5})
    );
    assert_eq!(s.client().get("/Widget/77").status, 404);
    // Not overridden: the table's own search, patch, post and delete (and MessagePack).
    assert_eq!(
        put(&s, "/Widget/2", json!({"name":"nut","price":20,"stock":1})),
        204
    );
    let r = s.client().get("/Widget/?price=lt=10");
    assert_eq!(
        r.json(),
        json!([{"id":1,"name":"bolt","price":8,"stock":5}])
    );
    let r = s.client().patch_json("/Widget/2", r#"{"stock":3}"#);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(stocks(&s), (5, 3));
    let r = s
        .client()
        .post_json("/Widget/", r#"{"name":"cog","price":1}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json();
    assert_eq!(s.client().delete(&format!("/Widget/{id}")).status, 200);
    assert_eq!(s.client().get(&format!("/Widget/{id}")).status, 404);
    // The role's table permissions still apply to a resource extending the table.
    let (st, _) = s.ops().operation(&json!({"operation":"add_role","role":"reader",
        "permission":{"data":{"tables":{"Widget":{"read":true,"insert":false,"update":false,"delete":false,"attribute_permissions":[]}}}}}));
    assert_eq!(st, 200);
    let (st, _) = s
        .ops()
        .operation(&json!({"operation":"add_user","role":"reader",
        "username":"rita","password":"pw-rita-1","active":true}));
    assert_eq!(st, 200);
    let mut rita = s.client().as_user("rita", "pw-rita-1");
    let r = rita.get("/Widget/1");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = rita.put_json("/Widget/1", r#"{"name":"bolt","price":1}"#);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(stocks(&s), (5, 3));
    // The guest acts for the request's user: its table calls are allowed what the role
    // allows. Rita may not update widgets, so a transfer she asks for writes nothing.
    let r = rita.post_json("/Transfer/", r#"{"from":1,"to":2,"amount":1}"#);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("may not update data.Widget"),
        "{}",
        r.text()
    );
    assert_eq!(stocks(&s), (5, 3));
    // A role that may not read price: the guest's get does not see it either.
    let (st, _) = s.ops().operation(&json!({"operation":"add_role","role":"clerk",
        "permission":{"data":{"tables":{"Widget":{"read":true,"insert":false,"update":false,"delete":false,
        "attribute_permissions":[{"attribute_name":"price","read":false,"insert":false,"update":false},
            {"attribute_name":"name","read":true,"insert":false,"update":false},
            {"attribute_name":"stock","read":true,"insert":false,"update":false}]}}}}}));
    assert_eq!(st, 200);
    let (st, _) = s
        .ops()
        .operation(&json!({"operation":"add_user","role":"clerk",
        "username":"cleo","password":"pw-cleo-1","active":true}));
    assert_eq!(st, 200);
    let r = s.client().as_user("cleo", "pw-cleo-1").get("/Widget/1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"id":1,"name":"bolt","priceWithTax":0,"stock":5})
    );
}

#[test]
fn a_standalone_action_commits_all_its_writes_or_none() {
    let app = App::with_wasm(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let s = start(&app, root.path());
    assert_eq!(
        put(&s, "/Widget/1", json!({"name":"a","price":1,"stock":10})),
        204
    );
    assert_eq!(
        put(&s, "/Widget/2", json!({"name":"b","price":2,"stock":0})),
        204
    );
    // A subscriber to the log sees the message the action publishes after it commits.
    let (mut sub, ack) = MqttClient::connect(s.mqtt_port, Version::V5, "watcher", Some(ADMIN));
    assert!(ack.is_some());
    sub.subscribe(&[("Log/#", QoS::AtMostOnce)]);

    let r = s
        .client()
        .post_json("/Transfer/", r#"{"from":1,"to":2,"amount":4}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    let log_id = r.json();
    assert_eq!(stocks(&s), (6, 4));
    let log = s.client().get(&format!("/Log/{log_id}")).json();
    assert_eq!(
        (log["from"].clone(), log["amount"].clone()),
        (json!(1), json!(4))
    );
    // The new log record's own event comes first, then the message.
    let published: Vec<_> = (0..2)
        .filter_map(|_| sub.next_publish(Duration::from_secs(10)))
        .map(|p| (p.topic, String::from_utf8_lossy(&p.payload).into_owned()))
        .collect();
    assert!(
        published.contains(&(format!("Log/{log_id}"), "\"transferred\"".to_owned())),
        "{published:?}"
    );

    // Refused after its writes (its own read sees the negative stock): nothing is kept.
    let r = s
        .client()
        .post_json("/Transfer/", r#"{"from":1,"to":2,"amount":7}"#);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("not enough stock"), "{}", r.text());
    // An error with a status, and a panic, after every write: nothing is kept either.
    let r = s.client().post_json(
        "/Transfer/",
        r#"{"from":1,"to":2,"amount":1,"then":"error"}"#,
    );
    assert_eq!(r.status, 418, "{}", r.text());
    let r = s.client().post_json(
        "/Transfer/",
        r#"{"from":1,"to":2,"amount":1,"then":"panic"}"#,
    );
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(stocks(&s), (6, 4));
    let logs = s.client().get("/Log/").json();
    assert_eq!(logs.as_array().map(Vec::len), Some(1), "{logs}");
    // Bad input is a 400 from the SDK, and methods it does not override are 405.
    let r = s.client().post_json("/Transfer/", r#"{"from":"x"}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(s.client().get("/Transfer/1").status, 405);
    assert!(s.output().contains("Transfer"), "the panic is logged");
}

#[test]
fn mqtt_publishes_to_a_resources_topic_reach_its_publish_and_put() {
    let app = App::with_wasm(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let s = start(&app, root.path());
    assert_eq!(
        put(&s, "/Widget/1", json!({"name":"bolt","price":8,"stock":5})),
        204
    );
    let (mut sub, ack) = MqttClient::connect(s.mqtt_port, Version::V5, "watcher", Some(ADMIN));
    assert!(ack.is_some());
    sub.subscribe(&[("Widget/1", QoS::AtMostOnce)]);
    let retained = sub
        .next_publish(Duration::from_secs(10))
        .expect("the record");
    assert!(retained.retain);
    let (mut publ, ack) = MqttClient::connect(s.mqtt_port, Version::V5, "writer", Some(ADMIN));
    assert!(ack.is_some());

    // A message goes to the guest's publish: it adds to the stock and tells the subscribers.
    let code = publ.publish("Widget/1", br#"{"restock":4}"#, QoS::AtLeastOnce, false);
    assert_eq!(code, Some(0));
    assert_eq!(stocks(&s).0, 9);
    let mut seen = Vec::new();
    while let Some(p) = sub.next_publish(Duration::from_secs(5)) {
        seen.push(String::from_utf8_lossy(&p.payload).into_owned());
        if seen.iter().any(|m| m.contains("restocked")) {
            break;
        }
    }
    assert!(
        seen.iter().any(|m| m == r#"{"restocked":4}"#),
        "the guest's message: {seen:?}"
    );
    // The guest refuses a bad message with its status, as a v5 reason code; nothing changes.
    let code = publ.publish("Widget/1", br#"{"restock":-2}"#, QoS::AtLeastOnce, false);
    assert_eq!(
        code,
        Some(0x99),
        "400 from the guest: payload format invalid"
    );
    let code = publ.publish(
        "Widget/1",
        br#"{"restock":"many"}"#,
        QoS::AtLeastOnce,
        false,
    );
    assert_eq!(code, Some(0x99), "a wrong type is a 400 from the SDK");
    assert_eq!(stocks(&s).0, 9);
    // A retained publish is a put through the guest's validation.
    let code = publ.publish(
        "Widget/1",
        br#"{"name":"bolt","price":-3}"#,
        QoS::AtLeastOnce,
        true,
    );
    assert_eq!(code, Some(0x99));
    let code = publ.publish(
        "Widget/1",
        br#"{"name":"bolt","price":3}"#,
        QoS::AtLeastOnce,
        true,
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        s.client().get("/Widget/1").json(),
        json!({"id":1,"name":"bolt","price":3,"priceWithTax":3.75})
    );
    // An empty retained publish is a delete, which the guest leaves to the table.
    let code = publ.publish("Widget/1", b"", QoS::AtLeastOnce, true);
    assert_eq!(code, Some(0));
    assert_eq!(s.client().get("/Widget/1").status, 404);
    // A standalone resource that does not take messages: the topic is not one.
    let code = publ.publish("Transfer/1", b"{}", QoS::AtLeastOnce, false);
    assert_eq!(code, Some(0x90));
}

#[test]
fn the_guest_edits_records_and_its_reads_and_searches_see_its_own_writes() {
    let app = App::with_wasm(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let s = start(&app, root.path());
    widgets(&s, &[(1, 1), (2, 2), (3, 3)]);
    // Fails after everything: nothing is kept, though the guest saw all of it.
    let r = s
        .client()
        .post_json("/Edit/", r#"{"id":10,"drop":3,"then":"error"}"#);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(s.client().get("/Widget/10").status, 404);
    assert_eq!(s.client().get("/Widget/3").status, 200);

    let r = s.client().post_json("/Edit/", r#"{"id":10,"drop":3}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.json();
    // put, then patch, then set: the request's own reads see the last of them; its delete too.
    assert_eq!(
        out["edited"],
        json!({"id":10,"name":"edited","price":2.5,"stock":1})
    );
    assert_eq!(out["dropped_existed"], json!(true));
    assert_eq!(out["dropped_now"], json!(null));
    // Its search: the new record joins, the deleted one leaves, sorted dearest first.
    assert_eq!(
        out["dear"],
        json!([
            {"id":10,"name":"edited","price":2.5},
            {"id":2,"name":"w","price":2}
        ])
    );
    // And all of it committed.
    assert_eq!(
        s.client().get("/Widget/10").json(),
        json!({"id":10,"name":"edited","price":2.5,"priceWithTax":3.125,"stock":1})
    );
    assert_eq!(s.client().get("/Widget/3").status, 404);
    let r = s.client().get("/Widget/?price=ge=2&sort(-price)");
    assert_eq!(r.json().as_array().map(Vec::len), Some(2), "{}", r.text());
}

#[test]
fn the_guest_sees_the_target_user_and_headers_and_shapes_the_response() {
    let app = App::with_wasm(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let s = start(&app, root.path());
    widgets(&s, &[(1, 3), (2, 30), (3, 5)]);
    let r = s.client().request(
        "GET",
        "/Echo/a%20b?tag=x%20y&other=1",
        &[("X-Agent", "probe/1")],
        None,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("X-Echo"), Some("yes"));
    let body = r.json();
    assert_eq!(body["id"], "a b");
    assert_eq!(body["is_collection"], false);
    assert_eq!(body["tag"], "x y");
    assert_eq!(body["user"], ADMIN.0);
    assert_eq!(body["agent"], "probe/1");
    // The guest's search: price < 10, highest first, two properties.
    assert_eq!(
        body["cheap"],
        json!([{"id":3,"price":5},{"id":1,"price":3}])
    );
    let r = s.client().get("/Echo/?tag=t");
    assert_eq!(r.json()["is_collection"], true);
    let r = s.client().post_json("/Echo/", r#"{"n":1}"#);
    assert_eq!(r.json()["body"], json!({"n":1}));
    // MessagePack when asked for.
    let r = s.client().request(
        "GET",
        "/Echo/m",
        &[("Accept", "application/x-msgpack")],
        None,
    );
    assert_eq!(tessera_tests::from_msgpack(&r.body)["id"], "m");
    // A body sent as it is, with its own content type.
    let r = s.client().delete("/Echo/z");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    assert_eq!(r.header("X-Deleted"), Some("1"));
    assert_eq!(r.text(), "gone");
    // Anonymous requests are refused before any guest runs.
    let mut anon = s.client().anonymous();
    assert_eq!(anon.get("/Echo/a").status, 401);
}

#[test]
fn a_hostile_guest_fails_its_own_request_and_nothing_else() {
    let app = App::with_wasm(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    // A budget far longer than the few requests below take, even unoptimised on a busy machine.
    let s = start_with_budget(&app, root.path(), 10_000);
    assert_eq!(
        put(&s, "/Widget/1", json!({"name":"a","price":1,"stock":1})),
        204
    );
    // A runaway guest: other requests are served while it runs; it ends with a 500.
    let (done_tx, done_rx) = mpsc::channel();
    let port = s.port;
    let runaway = std::thread::spawn(move || {
        let mut c = tessera_tests::Client::connect(port);
        let r = c.get("/Hostile/loop");
        done_tx.send(()).unwrap();
        r
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(put(&s, "/Plain/1", json!({"name":"p","price":1})), 204);
    for _ in 0..5 {
        assert_eq!(s.client().get("/Widget/1").status, 200);
        // Kept and fresh instances alike.
        let kept = s.client().get("/Pass/1");
        assert_eq!(kept.json(), json!({"id":1,"name":"p","price":1}));
        assert_eq!(s.client().get("/Fresh/1").json(), kept.json());
    }
    assert!(
        done_rx.try_recv().is_err(),
        "the runaway request ended before the others were served"
    );
    let r = runaway.join().unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    for how in ["panic", "oob", "bomb"] {
        let r = s.client().get(&format!("/Hostile/{how}"));
        assert_eq!(r.status, 500, "{how}: {}", r.text());
        assert_eq!(s.client().get("/Widget/1").status, 200, "after {how}");
    }
    let out = s.output();
    assert!(out.contains("time budget"), "{out}");
    assert!(
        out.matches("wasm resource Hostile").count() >= 4,
        "each failure is logged naming the resource: {out}"
    );
    assert_eq!(s.client().get("/Hostile/nothing").status, 400);
}

#[test]
fn an_instance_used_for_a_request_holds_nothing_of_it_for_the_next() {
    let app = App::with_wasm(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let s = start(&app, root.path());
    // One connection: one core, whose instances wait for its next request.
    let mut c = s.client();
    for round in 0..10 {
        let secret = format!("tessera-secret-{round}-{}", std::process::id());
        let reversed: String = secret.chars().rev().collect();
        for resource in ["Keeper", "Residue"] {
            // The secret in the middle of a 16 KiB body: on a page of the block the host wrote
            // the body into that the guest's allocator (which writes at a block's ends) does not.
            let pad = "x".repeat(8 << 10);
            let body = json!({ "a": pad, "secret": secret, "z": pad }).to_string();
            assert_eq!(c.post_json(&format!("/{resource}/"), &body).status, 204);
            let r = c.get(&format!("/{resource}/{reversed}"));
            assert_eq!(r.status, 200, "{}", r.text());
            let r = r.json();
            // The POST grew memory by 2 MiB (32 pages): a used instance keeps the pages.
            assert!(
                r["pages"].as_u64().unwrap() > 32,
                "{resource}: a used instance {r}"
            );
            if resource == "Keeper" {
                // Kept as it is: the scan finds the secret where it was left.
                assert_eq!(r["kept"], secret.as_str(), "{r}");
                assert!(r["copies"].as_u64().unwrap() >= 2, "{r}");
            } else {
                // Rewound: not a byte of it, wherever the guest or the host had put it.
                assert_eq!(r["kept"], "", "{r}");
                assert_eq!(r["copies"], 0, "{resource}: {r}");
            }
        }
    }
}

#[test]
fn modules_are_compiled_once_and_bad_ones_stop_the_start_naming_the_file() {
    let app = App::with_wasm(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let s = start(&app, root.path());
    assert_eq!(s.client().get("/Pass/1").status, 404);
    drop(s);
    let cache = root.path().join("wasm-cache");
    let cached: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
    assert_eq!(cached.len(), 1, "one compiled artifact");
    let stamp = cached[0].metadata().unwrap().modified().unwrap();
    let s = start(&app, root.path());
    assert_eq!(s.client().get("/Pass/1").status, 404);
    drop(s);
    let again = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .collect::<Vec<_>>();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].metadata().unwrap().modified().unwrap(),
        stamp,
        "a restart reuses the compiled artifact"
    );

    for (name, bytes) in [
        ("garbage.wasm", b"not wasm at all".to_vec()),
        // A valid core module that is not built with the SDK (no world, no exports).
        ("empty.wasm", b"\0asm\x01\0\0\0".to_vec()),
    ] {
        let bad = App::new(SCHEMA);
        std::fs::write(bad.dir.path().join(name), bytes).unwrap();
        std::fs::write(
            bad.dir.path().join("config.yaml"),
            "rest: true\ngraphqlSchema:\n  files: 'schema.graphql'\nwasmResource:\n  files: '*.wasm'\n",
        )
        .unwrap();
        let root = tempfile::tempdir().unwrap();
        let (code, out) = Start::new(bad.dir.path(), root.path()).fail();
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(name), "the error names the file: {out}");
    }
}

#[test]
fn attributes_a_resource_computes_are_seen_by_every_reader_and_indexed() {
    let app = App::with_wasm(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let s = start(&app, root.path());
    for (id, price, rate) in [
        (1, 100.0, 0.25),
        (2, 20.0, 0.5),
        (3, 13.0, 0.0),
        (4, -5.0, 0.0),
    ] {
        let path = format!("/Priced/{id}");
        assert_eq!(put(&s, &path, json!({"price":price,"taxRate":rate})), 204);
    }
    let r = s.client().get("/Priced/1?select(id,total,band)");
    assert_eq!(
        r.json(),
        json!({"id":1,"total":125,"band":"high"}),
        "{}",
        r.text()
    );
    // Conditions read it too (no index yet: a filter).
    let r = s.client().get("/Priced/?total=gt=100&select(id,total)");
    assert_eq!(r.json(), json!([{"id":1,"total":125}]), "{}", r.text());
    // A guest that panics or fails computing gives null; the server keeps serving.
    for id in [3, 4] {
        let r = s.client().get(&format!("/Priced/{id}?select(id,total)"));
        assert_eq!(r.json(), json!({"id":id,"total":null}), "{}", r.text());
    }
    let r = s.client().get("/Priced/2?select(total,band)");
    assert_eq!(r.json(), json!({"total":30,"band":"low"}), "{}", r.text());
    // The Operations API and SQL.
    let (st, body) = s.ops().operation(&json!({"operation":"search_by_conditions",
        "database":"data","table":"Priced","get_attributes":["id","total"],
        "conditions":[{"search_attribute":"total","search_type":"greater_than","search_value":100}]}));
    assert_eq!((st, body), (200, json!([{"id":1,"total":125}])));
    let (st, body) = s.ops().operation(&json!({"operation":"sql",
        "sql":"SELECT id, band FROM data.Priced WHERE total < 100"}));
    assert_eq!((st, body), (200, json!([{"id":2,"band":"low"}])));
    drop(s);

    // Declared @indexed since: the index is built at start with the guest's code, and kept
    // with each write.
    let indexed = SCHEMA.replace("total: Float @computed", "total: Float @computed @indexed");
    std::fs::write(app.dir.path().join("schema.graphql"), indexed).unwrap();
    let s = start(&app, root.path());
    let r = s.client().get("/Priced/?total=30&select(id)");
    assert_eq!(r.json(), json!([2]), "{}", r.text());
    assert_eq!(put(&s, "/Priced/2", json!({"price":40,"taxRate":0.5})), 204);
    assert_eq!(s.client().get("/Priced/?total=30").json(), json!([]));
    let r = s.client().get("/Priced/?total=60&select(id,total)");
    assert_eq!(r.json(), json!([{"id":2,"total":60}]), "{}", r.text());
    drop(s);

    // Code claiming an attribute the schema stores stops the start, naming it.
    let stored = SCHEMA.replace("band: String @computed", "band: String");
    std::fs::write(app.dir.path().join("schema.graphql"), stored).unwrap();
    let (code, out) = Start::new(app.dir.path(), root.path()).fail();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("computes Priced.band"), "{out}");
}

#[test]
fn the_shop_example_checks_out_in_one_transaction() {
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let root = tempfile::tempdir().unwrap();
    // `tessera build` builds the example's crate (`wasmResource.crate`), in the tests' own
    // target directory, and compiles it into the root's cache.
    let target_dir = tessera_tests::wasm_target_dir().display().to_string();
    let built = std::process::Command::new(tessera_tests::binary())
        .arg("build")
        .arg(&shop)
        .arg("--root")
        .arg(root.path())
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success(),
        "{listed}{}",
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(listed.contains("/Checkout/ (standalone)"), "{listed}");
    assert!(listed.contains("/Product/ (extends Product)"), "{listed}");
    let artifact = || {
        let cached: Vec<_> = std::fs::read_dir(root.path().join("wasm-cache"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(cached.len(), 1, "one compiled artifact");
        cached[0].metadata().unwrap().modified().unwrap()
    };
    let stamp = artifact();
    // The server finds the crate up to date and the module compiled.
    let mut start = Start::new(&shop, root.path());
    start.env.push(("CARGO_TARGET_DIR".into(), target_dir));
    start.timeout = Duration::from_secs(600);
    let s = start.start();
    assert_eq!(artifact(), stamp, "run reuses what build compiled");
    assert_eq!(
        put(
            &s,
            "/Product/mug",
            json!({"name":"Mug","price":10,"stock":5})
        ),
        204
    );
    assert_eq!(
        put(
            &s,
            "/Product/tea",
            json!({"name":"Tea","price":4.5,"stock":1})
        ),
        204
    );
    assert_eq!(put(&s, "/Product/bad", json!({"name":"","price":1})), 400);
    assert_eq!(
        s.client().get("/Product/mug").json()["priceWithTax"],
        json!(12)
    );
    let order = |body: &str| s.client().post_json("/Checkout/", body);
    let r = order(
        r#"{"customer":"ann","items":[{"product":"mug","quantity":2},{"product":"tea","quantity":1}]}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json();
    assert_eq!(
        r.header("Location"),
        Some(format!("/Order/{}", id.as_str().unwrap()).as_str())
    );
    let o = s
        .client()
        .get(&format!("/Order/{}", id.as_str().unwrap()))
        .json();
    assert_eq!(
        (o["customer"].clone(), o["total"].clone()),
        (json!("ann"), json!(24.5))
    );
    // Tea is out of stock now: the mug's decrement is rolled back with it.
    let r = order(
        r#"{"customer":"bob","items":[{"product":"mug","quantity":1},{"product":"tea","quantity":1}]}"#,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let stock = |p: &str| s.client().get(&format!("/Product/{p}")).json()["stock"].clone();
    assert_eq!((stock("mug"), stock("tea")), (json!(3), json!(0)));
    assert_eq!(
        s.client().get("/Order/").json().as_array().map(Vec::len),
        Some(1)
    );
}

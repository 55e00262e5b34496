//! Schema enforcement through the real binary (docs/rest.md).

use serde_json::json;
use tessera_tests::{App, Server, Start, to_msgpack};

const SCHEMA: &str = r#"
type Thing @table @export {
  id: ID @primaryKey
  name: String!
  count: Int
  big: Long
  ratio: Float
  huge: BigInt
  flag: Boolean
  ref: ID
  anything: Any
  when: Date
  raw: Bytes
  tags: [String]
  matrix: [[Int]]
  address: Address
  createdAt: Float @createdTime
  updatedAt: Float @updatedTime
}
type Address { street: String! zip: Int }
type Strict @table @export @sealed {
  id: Int @primaryKey
  name: String
}
type Counter @table @export { id: Int @primaryKey n: Int }
"#;

fn bad(c: &mut tessera_tests::Client, body: &str, needle: &str) {
    let r = c.put_json("/Thing/t", body);
    assert_eq!(r.status, 400, "{body} -> {}", r.text());
    let msg = r.json();
    let msg = msg.as_str().unwrap();
    assert!(
        msg.starts_with("ClientError: ") && msg.contains(needle),
        "{body}: {msg}"
    );
}

#[test]
fn types_are_enforced_with_harper_messages() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    bad(
        &mut c,
        r#"{"name":"x","count":"five"}"#,
        r#"Value "five" in property count must be an integer (from -2147483648 to 2147483647)"#,
    );
    bad(
        &mut c,
        r#"{"name":"x","count":2147483648}"#,
        "property count must be an integer",
    );
    bad(&mut c, r#"{"name":"x","count":1.5}"#, "property count");
    bad(
        &mut c,
        r#"{"name":"x","big":9007199254740993}"#,
        "property big must be an integer (from -9007199254740992 to 9007199254740992)",
    );
    bad(
        &mut c,
        r#"{"name":"x","ratio":"1"}"#,
        "property ratio must be a number",
    );
    bad(
        &mut c,
        r#"{"name":"x","flag":1}"#,
        "property flag must be a boolean",
    );
    bad(
        &mut c,
        r#"{"name":"x","flag":"yes"}"#,
        "property flag must be a boolean",
    );
    bad(&mut c, r#"{"name":5}"#, "property name must be a string");
    bad(
        &mut c,
        r#"{"name":"x","ref":5}"#,
        "property ref must be a string",
    );
    bad(
        &mut c,
        r#"{"name":"x","when":"not a date"}"#,
        "property when must be a Date",
    );
    bad(
        &mut c,
        r#"{"name":"x","tags":"a"}"#,
        "property tags must be an Array",
    );
    bad(
        &mut c,
        r#"{"name":"x","tags":["a",1]}"#,
        "property tags[1] must be a string",
    );
    bad(
        &mut c,
        r#"{"name":"x","matrix":[[1],["x"]]}"#,
        "property matrix[1][0]",
    );
    bad(
        &mut c,
        r#"{"name":"x","address":"here"}"#,
        "property address must be an object",
    );
    bad(
        &mut c,
        r#"{"name":"x","address":{"zip":1}}"#,
        "Property address.street is required",
    );
    bad(&mut c, r#"{"count":1}"#, "Property name is required");
    bad(&mut c, r#"{"name":null}"#, "Property name is required");
    bad(
        &mut c,
        r#"{"name":"x","huge":"12"}"#,
        "property huge must be an integer",
    );
    assert_eq!(c.get("/Thing/t").status, 404, "nothing was written");

    let ok = r#"{"name":"ok","count":-2147483648,"big":9007199254740992,"ratio":3,"huge":123456789012,"flag":false,
        "ref":"r1","anything":{"a":[1,"b",null]},"when":"2024-01-05T20:07:27.955Z","raw":{"type":"Buffer","data":[1,2,255]},
        "tags":["x",null],"matrix":[[1,2],[3]],"address":{"street":"Main","zip":12345,"extra":true},"createdAt":1,"updatedAt":2}"#;
    let r = c.put_json("/Thing/t", ok);
    assert_eq!(r.status, 204, "{}", r.text());
    let got = c.get("/Thing/t").json();
    assert_eq!(got["count"], json!(-2147483648));
    assert_eq!(got["ratio"], json!(3));
    assert_eq!(got["when"], json!("2024-01-05T20:07:27.955Z"));
    assert_eq!(got["raw"], json!({"type":"Buffer","data":[1,2,255]}));
    assert_eq!(got["anything"], json!({"a":[1,"b",null]}));
    assert_eq!(
        got["address"],
        json!({"street":"Main","zip":12345,"extra":true})
    );
    // Dates given as numbers are epoch milliseconds.
    assert_eq!(c.patch_json("/Thing/t", r#"{"when":0}"#).status, 204);
    assert_eq!(
        c.get("/Thing/t").json()["when"],
        json!("1970-01-01T00:00:00.000Z")
    );
    // PATCH may omit required properties but not null them.
    assert_eq!(c.patch_json("/Thing/t", r#"{"count":3}"#).status, 204);
    assert_eq!(c.patch_json("/Thing/t", r#"{"name":null}"#).status, 400);
    // MessagePack bodies are checked the same way.
    let r = c.request(
        "PUT",
        "/Thing/m",
        &[("Content-Type", "application/x-msgpack")],
        Some(&to_msgpack(&json!({"name":"m","count":"x"}))),
    );
    assert_eq!(r.status, 400);
    assert!(r.json().as_str().unwrap().contains("property count"));
}

#[test]
fn timestamps_are_set_by_the_server() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    assert_eq!(
        c.put_json("/Thing/ts", r#"{"name":"a","createdAt":5,"updatedAt":6}"#)
            .status,
        204
    );
    let first = c.get("/Thing/ts").json();
    let (created, updated) = (
        first["createdAt"].as_f64().unwrap(),
        first["updatedAt"].as_f64().unwrap(),
    );
    assert_eq!(created, updated);
    assert!(
        created >= before - 1.0 && created < before + 60_000.0,
        "{created} vs {before}"
    );
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(c.put_json("/Thing/ts", r#"{"name":"b"}"#).status, 204);
    let second = c.get("/Thing/ts").json();
    assert_eq!(
        second["createdAt"].as_f64().unwrap(),
        created,
        "createdAt survives a full PUT"
    );
    assert!(second["updatedAt"].as_f64().unwrap() > updated);
    assert_eq!(c.patch_json("/Thing/ts", r#"{"count":1}"#).status, 204);
    assert!(
        c.get("/Thing/ts").json()["updatedAt"].as_f64().unwrap()
            > second["updatedAt"].as_f64().unwrap()
    );
}

#[test]
fn sealed_tables_refuse_undeclared_properties() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    for (method, body) in [
        ("PUT", r#"{"name":"a","color":"red"}"#),
        ("PATCH", r#"{"color":"red"}"#),
    ] {
        let r = c.request(
            method,
            "/Strict/1",
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        );
        assert_eq!(
            (r.status, r.json()),
            (400, json!("ClientError: Property color is not allowed")),
            "{method}"
        );
    }
    let r = c.post_json("/Strict/", r#"{"name":"a","color":"red"}"#);
    assert_eq!(r.status, 400);
    assert_eq!(c.get("/Strict/").json(), json!([]));
    assert_eq!(c.put_json("/Strict/1", r#"{"name":"a"}"#).status, 204);
    // An Int primary key from the URL is type-checked too.
    assert_eq!(c.put_json("/Strict/abc", r#"{"name":"a"}"#).status, 400);
    assert_eq!(
        c.put_json("/Strict/3000000000", r#"{"name":"a"}"#).status,
        400
    );
}

#[test]
fn int_keys_count_up_within_32_bits() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    let a = c
        .post_json("/Counter/", r#"{"n":1}"#)
        .json()
        .as_i64()
        .unwrap();
    let b = c
        .post_json("/Counter/", r#"{"n":2}"#)
        .json()
        .as_i64()
        .unwrap();
    assert_eq!(b, a + 1);
    assert!(b <= i32::MAX as i64);
}

#[test]
fn unknown_directives_and_types_fail_start_up_naming_the_line() {
    let root = tempfile::tempdir().unwrap();
    for (schema, needle) in [
        (
            "type T @table @export {\n  id: ID @primaryKey\n  x: Int @indexd\n}\n",
            "schema.graphql:3:10: unknown directive @indexd",
        ),
        (
            "type T @table @exprt {\n  id: ID @primaryKey\n}\n",
            "schema.graphql:1:15: unknown directive @exprt",
        ),
        (
            "type T @table {\n  id: ID @primaryKey\n  x: Strng\n}\n",
            "schema.graphql:3:3: unknown type Strng",
        ),
        (
            "type T @table {\n  x: Int @primaryKey\n  y: Int @primaryKey\n}\n",
            "has more than one @primaryKey",
        ),
        (
            "type T @table(audit: 3) {\n  id: ID\n}\n",
            "@table(audit:) must be a boolean",
        ),
        ("type T @table {", "schema.graphql"),
    ] {
        let app = App::new(schema);
        let (code, out) = Start::new(app.dir.path(), root.path()).fail();
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(needle), "{needle:?} not in {out}");
    }
}

#[test]
fn expired_records_disappear() {
    let (s, _a, _r) = Server::with_schema(
        "type Session @table(expiration: 1) @export { id: ID @primaryKey v: Int }",
    );
    let mut c = s.client();
    assert_eq!(c.put_json("/Session/a", r#"{"v":1}"#).status, 204);
    assert_eq!(c.put_json("/Session/b", r#"{"v":2}"#).status, 204);
    assert_eq!(c.get("/Session/a").status, 200);
    assert_eq!(c.get("/Session/").json().as_array().unwrap().len(), 2);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // Rewriting restarts the lifetime.
    assert_eq!(c.put_json("/Session/b", r#"{"v":3}"#).status, 204);
    assert_eq!(c.get("/Session/a").status, 404);
    assert_eq!(c.get("/Session/").json(), json!([{"id":"b","v":3}]));
}

#[test]
fn harpers_table_and_export_forms() {
    let schema = r#"
type Audited @table(audit: "1d", replicated: false) @export { id: ID @primaryKey }
type Quiet @table(audit: false) @export { id: ID @primaryKey }
type RestOnly @table @export(rest: true, mqtt: false) { id: ID @primaryKey v: Int }
type MqttOnly @table @export(mqtt: true, rest: false) { id: ID @primaryKey v: Int }
type NoKey @table @export { created: Float @createdTime note: String }
type Pair @table @export { id: [ID]! @primaryKey name: String }
"#;
    let (s, _app, _root) = Server::with_schema(schema);
    let mut ops = s.ops();
    let (_, d) = ops.operation(&json!({"operation": "describe_table", "table": "Audited"}));
    assert_eq!(d["audit"], true, "{d}");
    let (_, d) = ops.operation(&json!({"operation": "describe_table", "table": "Quiet"}));
    assert_eq!(d["audit"], false, "{d}");

    // The export flags: REST serves one, MQTT the other.
    let mut c = s.client();
    assert_eq!(c.put_json("/RestOnly/1", r#"{"v":1}"#).status, 204);
    assert_eq!(c.put_json("/MqttOnly/1", r#"{"v":1}"#).status, 404);
    let paths = c.get("/openapi").json()["paths"].clone();
    assert!(
        paths.get("/RestOnly/").is_some() && paths.get("/MqttOnly/").is_none(),
        "{paths}"
    );
    let (st, body) = ops.operation(&json!({"operation": "insert", "table": "MqttOnly",
        "records": [{"id": "m", "v": 2}]}));
    assert_eq!(st, 200, "{body}");
    let (mut m, ack) = tessera_tests::mqtt::MqttClient::connect(
        s.mqtt_port,
        tessera_protocol::mqtt::Version::V5,
        "flags",
        Some(tessera_tests::ADMIN),
    );
    assert!(ack.is_some());
    use tessera_protocol::mqtt::QoS;
    assert!(m.subscribe(&[("RestOnly/1", QoS::AtLeastOnce)])[0] >= 0x80);
    assert_eq!(m.subscribe(&[("MqttOnly/m", QoS::AtLeastOnce)]), [1]);

    // A table declared without a key gets `id`, generated on insert.
    let r = c.post_json("/NoKey/", r#"{"note":"hi"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json().as_str().unwrap().to_owned();
    let got = c.get(&format!("/NoKey/{id}")).json();
    assert_eq!(got["note"], "hi");
    assert!(got["created"].as_f64().unwrap() > 0.0);

    // A composite key: a record per distinct array.
    let (st, body) = ops.operation(&json!({"operation": "insert", "table": "Pair",
        "records": [{"id": ["a", "1"], "name": "a1"}, {"id": ["a", "2"], "name": "a2"}]}));
    assert_eq!(st, 200, "{body}");
    let (_, rows) = ops.operation(&json!({"operation": "search_by_id", "table": "Pair",
        "ids": [["a", "2"]], "get_attributes": ["id", "name"]}));
    assert_eq!(rows, json!([{"id": ["a", "2"], "name": "a2"}]));
}

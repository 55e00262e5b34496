//! Content types (docs/rest.md) decoded by independent decoders: JSON (serde_json),
//! MessagePack (rmp-serde), CBOR (cbor4ii) and CSV (the csv crate); request bodies in JSON,
//! MessagePack, CBOR and form-urlencoded.

use serde_json::{Value, json};
use tessera_tests::{Client, Server, from_msgpack, to_msgpack};

const SCHEMA: &str = r#"
type Product @table @export {
  id: ID @primaryKey
  name: String @indexed
  price: Float
  tags: [String]
  note: String
}
"#;

fn setup() -> (Server, tessera_tests::App, tempfile::TempDir, Client) {
    let (s, a, r) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    for body in [
        r#"{"id":"p1","name":"Mouse","price":49.99,"tags":["usb","input"],"note":"says \"hi\", twice"}"#,
        r#"{"id":"p2","name":"Cable","price":9,"tags":[],"note":null}"#,
    ] {
        let id = serde_json::from_str::<Value>(body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(c.put_json(&format!("/Product/{id}"), body).status, 204);
    }
    (s, a, r, c)
}

fn get_as(c: &mut Client, path: &str, accept: &str) -> tessera_tests::Response {
    let r = c.request("GET", path, &[("Accept", accept)], None);
    assert_eq!(r.status, 200, "{path} as {accept}: {}", r.text());
    r
}

fn cbor(bytes: &[u8]) -> Value {
    cbor4ii::serde::from_slice(bytes).expect("valid CBOR")
}

#[test]
fn responses_in_every_type() {
    let (_s, _a, _r, mut c) = setup();
    let p1 = json!({"id":"p1","name":"Mouse","price":49.99,"tags":["usb","input"],"note":"says \"hi\", twice"});

    let r = get_as(&mut c, "/Product/p1", "application/cbor");
    assert_eq!(r.header("Content-Type"), Some("application/cbor"));
    assert_eq!(cbor(&r.body), p1);
    let r = get_as(&mut c, "/Product/?select(id,price)", "application/cbor");
    assert_eq!(r.body.first(), Some(&0x9f), "an indefinite-length array");
    assert_eq!(
        cbor(&r.body),
        json!([{"id":"p1","price":49.99},{"id":"p2","price":9}])
    );
    // Equal preference picks CBOR over MessagePack over JSON.
    let r = get_as(
        &mut c,
        "/Product/p1",
        "application/json, application/x-msgpack, application/cbor",
    );
    assert_eq!(r.header("Content-Type"), Some("application/cbor"));
    let r = get_as(&mut c, "/Product/.cbor?name=Cable", "application/json");
    assert_eq!(
        cbor(&r.body),
        json!([{"id":"p2","name":"Cable","price":9,"tags":[],"note":null}])
    );

    let r = get_as(&mut c, "/Product/p1", "application/x-msgpack");
    assert_eq!(from_msgpack(&r.body), p1);

    // CSV: a collection has the declared attributes in schema order; arrays are JSON cells.
    let r = get_as(&mut c, "/Product/", "text/csv");
    assert_eq!(
        r.header("Content-Disposition"),
        Some("attachment; filename=\"data.csv\"")
    );
    let mut rd = csv::Reader::from_reader(r.body.as_slice());
    let header: Vec<String> = rd.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header, ["id", "name", "price", "tags", "note"]);
    let rows: Vec<Vec<String>> = rd
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "p1",
                "Mouse",
                "49.99",
                r#"["usb","input"]"#,
                "says \"hi\", twice"
            ],
            vec!["p2", "Cable", "9", "[]", ""],
        ]
    );
    let r = get_as(&mut c, "/Product/.csv?select(name,id)", "*/*");
    assert_eq!(r.text(), "name,id\r\nMouse,p1\r\nCable,p2\r\n");
    let r = get_as(&mut c, "/Product/p2.csv", "application/json");
    let mut rd = csv::Reader::from_reader(r.body.as_slice());
    assert_eq!(
        rd.headers().unwrap().iter().collect::<Vec<_>>(),
        ["id", "name", "price", "tags", "note"]
    );
    // YAML: a record is a mapping, a collection a sequence.
    let r = get_as(&mut c, "/Product/p2", "text/yaml");
    assert_eq!(r.header("Content-Type"), Some("text/yaml"));
    assert!(r.text().contains("name: Cable"), "{}", r.text());
    let r = get_as(&mut c, "/Product/?select(id,price)", "text/yaml");
    assert_eq!(r.text(), "- id: p1\n  price: 49.99\n- id: p2\n  price: 9\n");
    let r = get_as(&mut c, "/Product/?name=none", "text/yaml");
    assert_eq!(r.text(), "[]\n");
    assert_eq!(
        c.request("GET", "/Product/p1", &[("Accept", "image/png")], None)
            .status,
        406
    );
}

#[test]
fn request_bodies_in_every_type() {
    let (_s, _a, _r, mut c) = setup();
    let want = json!({"id":"q1","name":"Dock","price":150,"tags":["dev"]});
    let mut cbor_body = Vec::new();
    cbor4ii::serde::to_writer(&mut cbor_body, &want).unwrap();
    for (ct, body) in [
        (
            "application/json; charset=utf-8",
            serde_json::to_vec(&want).unwrap(),
        ),
        ("application/x-msgpack", to_msgpack(&want)),
        ("application/cbor", cbor_body),
    ] {
        let r = c.request("PUT", "/Product/q1", &[("Content-Type", ct)], Some(&body));
        assert_eq!(r.status, 204, "{ct}: {}", r.text());
        assert_eq!(c.get("/Product/q1").json(), want, "{ct}");
        assert_eq!(c.delete("/Product/q1").status, 200);
    }
    let r = c.request(
        "PUT",
        "/Product/f1",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"name=Rex+Jr&note=a%26b"),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        c.get("/Product/f1").json(),
        json!({"id":"f1","name":"Rex Jr","note":"a&b"})
    );
    // Any other type is stored opaquely and returned as sent.
    let ics = b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n";
    let r = c.request(
        "PUT",
        "/Product/cal",
        &[("Content-Type", "text/calendar")],
        Some(ics),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = c.get("/Product/cal");
    assert_eq!(r.header("Content-Type"), Some("text/calendar"));
    assert_eq!(r.body, ics);
    // Broken CBOR is a 400 and writes nothing.
    let r = c.request(
        "PUT",
        "/Product/bad",
        &[("Content-Type", "application/cbor")],
        Some(&[0xa1, 0x61]),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(c.get("/Product/bad").status, 404);
}

/// Every JSON answer is `Content-Type: application/json` exactly, as Harper sends it: records,
/// collections, errors, the framing layer's refusals, the Operations API and OpenAPI.
#[test]
fn json_is_exactly_application_json_everywhere() {
    let (s, _a, _r, mut c) = setup();
    let json_type = |r: &tessera_tests::Response| r.header("Content-Type").map(str::to_owned);
    let want = Some("application/json".to_owned());
    for path in [
        "/Product/p1",
        "/Product/",
        "/Product/?price=gt=1",
        "/openapi",
    ] {
        let r = c.get(path);
        assert_eq!((r.status, json_type(&r)), (200, want.clone()), "{path}");
    }
    let bad = c.put_json("/Product/p3", r#"{"price":"free"}"#);
    assert_eq!((bad.status, json_type(&bad)), (400, want.clone()));
    let mut raw = s.client();
    raw.send_raw(b"GET /Product/p1 HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n");
    let framing = raw.read_response(false).expect("a refusal");
    assert_eq!((framing.status, json_type(&framing)), (400, want.clone()));
    let mut ops = s.ops();
    for op in [
        json!({"operation": "describe_all"}),
        json!({"operation": "nope"}),
    ] {
        let r = ops.post_json("/", &op.to_string());
        assert_eq!(json_type(&r), want, "{op}");
    }
}

/// A JSON number too large for 64-bit integers is a number all the same, a float (found by
/// fuzzing the body decoder: it was refused as invalid JSON). simd-json reads it to within an
/// ulp or so, not always the nearest float.
#[test]
fn integer_literals_beyond_64_bits_are_numbers() {
    let (_s, _a, _r, mut c) = setup();
    let r = c.put_json(
        "/Product/big",
        r#"{"name":"Big","price":120000000002721000000}"#,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let price = c.get("/Product/big").json()["price"].as_f64().unwrap();
    assert!((price / 1.20000000002721e20 - 1.0).abs() < 1e-15, "{price}");
}

//! REST behaviour of tables through the real binary (docs/rest.md).

use serde_json::json;
use tessera_tests::{Server, from_msgpack, to_msgpack};

const SCHEMA: &str = r#"
type Product @table @export {
  id: ID @primaryKey
  name: String @indexed
  price: Float @indexed
  tags: [String] @indexed
  note: String
}
type Ticket @table @export {
  id: Long @primaryKey
  title: String
}
type Item @table @export(name: "item") {
  id: ID @primaryKey
  label: String
}
type Hidden @table {
  id: ID @primaryKey
}
"#;

fn server() -> (Server, tessera_tests::App, tempfile::TempDir) {
    Server::with_schema(SCHEMA)
}

#[test]
fn put_get_head_patch_delete_round_trip() {
    let (s, _a, _r) = server();
    let mut c = s.client();
    assert_eq!(c.get("/Product/p01").status, 404);
    let r = c.put_json("/Product/p01", r#"{"id":"ignored","name":"Mouse","price":49.99,"tags":["usb","input"],"extra":{"deep":[1,2]}}"#);
    assert_eq!(r.status, 204, "{}", r.text());
    let r = c.get("/Product/p01");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    // The URL id wins over the body's, and what you PUT is what you GET.
    assert_eq!(
        r.json(),
        json!({"id":"p01","name":"Mouse","price":49.99,"tags":["usb","input"],"extra":{"deep":[1,2]}})
    );
    let etag = r.header("ETag").unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'));

    let h = c.request("HEAD", "/Product/p01", &[], None);
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(h.header("Content-Length"), r.header("Content-Length"));

    let r = c.request("GET", "/Product/p01", &[("If-None-Match", &etag)], None);
    assert_eq!(r.status, 304);
    let r = c.patch_json(
        "/Product/p01",
        r#"{"price":39.5,"note":null,"extra":{"other":true}}"#,
    );
    assert_eq!(r.status, 204);
    let r = c.get("/Product/p01");
    assert_eq!(
        r.json(),
        json!({"id":"p01","name":"Mouse","price":39.5,"tags":["usb","input"],"extra":{"other":true},"note":null})
    );
    assert_ne!(r.header("ETag").unwrap(), etag);
    assert_eq!(
        c.request("GET", "/Product/p01", &[("If-None-Match", &etag)], None)
            .status,
        200
    );

    // PATCH creates a missing record.
    assert_eq!(
        c.patch_json("/Product/p02", r#"{"name":"Pad"}"#).status,
        204
    );
    assert_eq!(
        c.get("/Product/p02").json(),
        json!({"id":"p02","name":"Pad"})
    );

    let r = c.delete("/Product/p01");
    assert_eq!((r.status, r.json()), (200, json!(true)));
    assert_eq!(c.get("/Product/p01").status, 404);
    // Deleting a missing record is still `true`.
    assert_eq!(c.delete("/Product/p01").json(), json!(true));
}

#[test]
fn collection_in_primary_key_order_and_delete_all() {
    let (s, _a, _r) = server();
    let mut c = s.client();
    for id in [5, 1, 300, 42, 7] {
        assert_eq!(
            c.put_json(&format!("/Ticket/{id}"), &format!(r#"{{"title":"t{id}"}}"#))
                .status,
            204
        );
    }
    let r = c.get("/Ticket/");
    assert_eq!(r.status, 200);
    assert!(r.header("ETag").is_none());
    let ids: Vec<i64> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 5, 7, 42, 300]);
    // Long ids are converted to numbers.
    assert_eq!(c.get("/Ticket/42").json(), json!({"id":42,"title":"t42"}));
    assert_eq!(c.get("/Ticket/042").json()["id"], json!(42));
    assert_eq!(c.get("/Ticket/abc").status, 404);

    let r = c.delete("/Ticket/");
    assert_eq!((r.status, r.json()), (200, json!(true)));
    assert_eq!(c.get("/Ticket/").json(), json!([]));
}

#[test]
fn post_creates_with_generated_keys() {
    let (s, _a, _r) = server();
    let mut c = s.client();
    let r = c.post_json("/Product/", r#"{"name":"Gen"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json();
    let id = id.as_str().unwrap();
    assert_eq!(r.header("Location"), Some(id));
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4", "UUID v4: {id}");
    assert_eq!(
        c.get(&format!("/Product/{id}")).json(),
        json!({"id":id,"name":"Gen"})
    );

    let a = c
        .post_json("/Ticket/", r#"{"title":"one"}"#)
        .json()
        .as_i64()
        .unwrap();
    let b = c
        .post_json("/Ticket/", r#"{"title":"two"}"#)
        .json()
        .as_i64()
        .unwrap();
    assert_eq!(b, a + 1);
    assert_eq!(
        c.get(&format!("/Ticket/{b}")).json(),
        json!({"id":b,"title":"two"})
    );
    // A key given in the body is used.
    let r = c.post_json("/Ticket/", r#"{"id":900,"title":"mine"}"#);
    assert_eq!((r.status, r.json()), (201, json!(900)));
    let next = c
        .post_json("/Ticket/", r#"{"title":"after"}"#)
        .json()
        .as_i64()
        .unwrap();
    assert!(next > b);
}

#[test]
fn table_description_options_and_method_errors() {
    let (s, _a, _r) = server();
    let mut c = s.client();
    let d = c.get("/Product").json();
    assert_eq!(d["name"], "Product");
    assert_eq!(d["database"], "data");
    assert_eq!(d["records"], "./");
    let attrs = d["attributes"].as_array().unwrap();
    assert_eq!(attrs[0]["name"], "id");
    assert_eq!(attrs[0]["isPrimaryKey"], true);
    assert!(
        attrs
            .iter()
            .any(|a| a["name"] == "price" && a["type"] == "Float" && a["indexed"].is_object())
    );

    let r = c.request("OPTIONS", "/Product/p1", &[], None);
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("Allow"),
        Some("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, QUERY, COPY, MOVE")
    );
    let r = c.request(
        "POST",
        "/Product",
        &[("Content-Type", "application/json")],
        Some(b"{}"),
    );
    assert_eq!(r.status, 405);
    assert!(r.header("Allow").is_some());
    let r = c.request(
        "POST",
        "/Product/p1",
        &[("Content-Type", "application/json")],
        Some(b"{}"),
    );
    assert_eq!(r.status, 405);
    assert!(r.header("Allow").unwrap().contains("PUT"));
    assert_eq!(c.request("BREW", "/Product/p1", &[], None).status, 501);
    assert_eq!(c.get("/Product/p1").status, 404);
}

#[test]
fn paths_names_and_multi_segment_ids() {
    let (s, _a, _r) = server();
    let mut c = s.client();
    // Unknown, case-mismatched, unexported, or renamed-by-export resources are 404 "Not found".
    for path in ["/Nope/1", "/product/", "/Hidden/x", "/Item/x"] {
        let r = c.get(path);
        assert_eq!(
            (r.status, r.text().as_str(), r.header("Content-Type")),
            (404, "Not found", None),
            "{path}"
        );
    }
    assert_eq!(c.put_json("/item/grp/one", r#"{"label":"a"}"#).status, 204);
    assert_eq!(c.put_json("/item/grp/two", r#"{"label":"b"}"#).status, 204);
    assert_eq!(c.put_json("/item/grpx", r#"{"label":"c"}"#).status, 204);
    assert_eq!(
        c.put_json("/item/has%20space", r#"{"label":"d"}"#).status,
        204
    );
    assert_eq!(
        c.get("/item/grp/one").json(),
        json!({"id":"grp/one","label":"a"})
    );
    assert_eq!(c.get("/item/grp%2Fone").json()["id"], "grp/one");
    assert_eq!(
        c.get("/item/has space".replace(' ', "%20").as_str()).json()["id"],
        "has space"
    );
    let under: Vec<String> = c
        .get("/item/grp/")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(under, vec!["grp/one", "grp/two"]);
    assert_eq!(c.get("/item/grp").status, 404);
    assert_eq!(c.get("/item/").json().as_array().unwrap().len(), 4);
    // A suffix picks the response type; other suffixes stay part of the id.
    let r = c.get("/item/grpx.msgpack");
    assert_eq!(r.header("Content-Type"), Some("application/x-msgpack"));
    assert_eq!(from_msgpack(&r.body), json!({"id":"grpx","label":"c"}));
    assert_eq!(c.get("/item/grpx.nope").status, 404);
}

#[test]
fn msgpack_bodies_and_accept_negotiation() {
    let (s, _a, _r) = server();
    let mut c = s.client();
    let rec = json!({"name":"Packed","price":12.5,"tags":["a"]});
    let r = c.request(
        "PUT",
        "/Product/m1",
        &[("Content-Type", "application/x-msgpack")],
        Some(&to_msgpack(&rec)),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = c.request(
        "GET",
        "/Product/m1",
        &[("Accept", "application/x-msgpack")],
        None,
    );
    assert_eq!(r.header("Content-Type"), Some("application/x-msgpack"));
    assert_eq!(r.header("Vary"), Some("Accept, Accept-Encoding"));
    assert_eq!(
        from_msgpack(&r.body),
        json!({"id":"m1","name":"Packed","price":12.5,"tags":["a"]})
    );
    // Equal preference: MessagePack over JSON (docs/rest.md).
    let r = c.request(
        "GET",
        "/Product/m1",
        &[("Accept", "application/json, application/x-msgpack")],
        None,
    );
    assert_eq!(r.header("Content-Type"), Some("application/x-msgpack"));
    let r = c.request(
        "GET",
        "/Product/m1",
        &[("Accept", "application/x-msgpack;q=0.5, application/json")],
        None,
    );
    assert!(
        r.header("Content-Type")
            .unwrap()
            .starts_with("application/json")
    );
    let r = c.request(
        "GET",
        "/Product/m1",
        &[("Accept", "text/html,*/*;q=0.8")],
        None,
    );
    assert_eq!(r.json()["name"], "Packed");
    assert_eq!(
        c.request(
            "GET",
            "/Product/m1",
            &[("Accept", "application/msgpack")],
            None
        )
        .status,
        406
    );
    assert_eq!(
        c.request("GET", "/Product/m1", &[("Accept", "image/png")], None)
            .status,
        406
    );
    // A MessagePack collection is a sequence of maps, not an array.
    c.put_json("/Product/m2", r#"{"name":"Second"}"#);
    let r = c.request(
        "GET",
        "/Product/",
        &[("Accept", "application/x-msgpack")],
        None,
    );
    let mut rest = r.body.as_slice();
    let mut names = vec![];
    while !rest.is_empty() {
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        let v: serde_json::Value = serde::Deserialize::deserialize(&mut de).unwrap();
        names.push(v["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(names, vec!["Packed", "Second"]);
    // POST answers the new id in the negotiated type.
    let r = c.request(
        "POST",
        "/Ticket/",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/x-msgpack"),
        ],
        Some(b"{\"title\":\"x\"}"),
    );
    assert_eq!(r.status, 201);
    assert!(from_msgpack(&r.body).is_i64());
}

#[test]
fn keep_alive_pipelining_and_chunked_bodies() {
    let (s, _a, _r) = server();
    let mut c = s.client();
    // Three pipelined requests in one write; answers come back in order.
    let mut batch = c.format(
        "PUT",
        "/Product/a",
        &[("Content-Type", "application/json")],
        Some(br#"{"name":"A"}"#),
    );
    batch.extend(c.format("GET", "/Product/a", &[], None));
    batch.extend(c.format("GET", "/Product/zz", &[], None));
    c.send_raw(&batch);
    assert_eq!(c.read_response(false).unwrap().status, 204);
    assert_eq!(c.read_response(false).unwrap().json()["name"], "A");
    assert_eq!(c.read_response(false).unwrap().status, 404);

    // A chunked body, split across writes.
    let head = format!(
        "PUT /Product/ch HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        c.auth.clone().unwrap()
    );
    c.send_raw(head.as_bytes());
    c.send_raw(b"7\r\n{\"name\"\r\n");
    std::thread::sleep(std::time::Duration::from_millis(50));
    c.send_raw(b"8\r\n:\"Chunk\"\r\n1\r\n}\r\n0\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().status, 204);
    assert_eq!(
        c.get("/Product/ch").json(),
        json!({"id":"ch","name":"Chunk"})
    );

    // Expect: 100-continue gets its interim answer before the body is sent.
    let mut req = c.format(
        "PUT",
        "/Product/ex",
        &[
            ("Content-Type", "application/json"),
            ("Expect", "100-continue"),
        ],
        Some(br#"{"name":"E"}"#),
    );
    let body_at = req.len() - br#"{"name":"E"}"#.len();
    let body = req.split_off(body_at);
    c.send_raw(&req);
    assert_eq!(c.read_response(false).unwrap().status, 100);
    c.send_raw(&body);
    assert_eq!(c.read_response(false).unwrap().status, 204);

    // Connection: close is honoured.
    let r = c.request("GET", "/Product/a", &[("Connection", "close")], None);
    assert_eq!(r.status, 200);
    assert!(c.is_closed());
}

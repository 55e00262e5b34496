//! Bad input gets a clear 4xx, the server keeps serving, and stored data does not change.

use serde_json::json;
use tessera_tests::{Client, Server};

const SCHEMA: &str = r#"
type Dog @table @export @sealed {
  id: Long @primaryKey
  name: String!
  age: Int @indexed
}
"#;

const ORIGINAL: &str = r#"{"name":"Rex","age":3}"#;

fn setup() -> (Server, tessera_tests::App, tempfile::TempDir, Client) {
    let (s, a, r) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    assert_eq!(c.put_json("/Dog/1", ORIGINAL).status, 204);
    (s, a, r, c)
}

/// The record is exactly as first written and the server still answers on a new connection.
fn unchanged(s: &Server) {
    let mut c = s.client();
    assert_eq!(c.get("/Dog/1").json(), json!({"id":1,"name":"Rex","age":3}));
    assert_eq!(c.get("/Dog/").json().as_array().unwrap().len(), 1);
}

fn client_error(r: &tessera_tests::Response, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let text = r.text();
    assert!(text.contains(needle), "{needle:?} not in {text}");
}

#[test]
fn malformed_json_and_msgpack() {
    let (s, _a, _r, mut c) = setup();
    for body in [
        r#"{"name":"X""#,
        "not json",
        r#"{"name":"X",}"#,
        "[1,2",
        "\u{0}",
    ] {
        let r = c.put_json("/Dog/1", body);
        client_error(&r, 400, "ClientError: Invalid JSON");
    }
    for body in [
        &[0x81u8, 0xa4, b'n', b'a'][..],
        &[0xc1],
        &[0x82, 0xa4, b'n', b'a', b'm', b'e', 0xa1, b'X'],
        &[0xdd, 0xff, 0xff, 0xff, 0xff],
    ] {
        let r = c.request(
            "PUT",
            "/Dog/1",
            &[("Content-Type", "application/x-msgpack")],
            Some(body),
        );
        client_error(&r, 400, "Invalid MessagePack");
    }
    let r = c.post_json("/Dog/", "{{{{");
    client_error(&r, 400, "Invalid JSON");
    let r = c.patch_json("/Dog/1", "[]");
    client_error(&r, 400, "must be an object");
    let r = c.put_json("/Dog/1", "");
    client_error(&r, 400, "empty");
    unchanged(&s);
}

#[test]
fn schema_violations() {
    let (s, _a, _r, mut c) = setup();
    client_error(
        &c.put_json("/Dog/1", r#"{"name":"Rex","age":"old"}"#),
        400,
        "property age must be an integer",
    );
    client_error(
        &c.put_json("/Dog/1", r#"{"age":4}"#),
        400,
        "Property name is required",
    );
    client_error(
        &c.put_json("/Dog/1", r#"{"name":"Rex","color":"brown"}"#),
        400,
        "Property color is not allowed",
    );
    client_error(
        &c.patch_json("/Dog/1", r#"{"name":null}"#),
        400,
        "Property name is required",
    );
    client_error(
        &c.patch_json("/Dog/1", r#"{"age":1.5}"#),
        400,
        "property age",
    );
    unchanged(&s);
}

#[test]
fn unknown_table_and_method() {
    let (s, _a, _r, mut c) = setup();
    let r = c.put_json("/Cat/1", ORIGINAL);
    assert_eq!((r.status, r.text().as_str()), (404, "Not found"));
    assert_eq!(c.request("DELETE", "/Dog", &[], None).status, 405);
    assert_eq!(
        c.request(
            "PUT",
            "/Dog",
            &[("Content-Type", "application/json")],
            Some(b"{}")
        )
        .status,
        405
    );
    assert_eq!(c.request("PROPFIND", "/Dog/1", &[], None).status, 501);
    let r = c.request(
        "PUT",
        "/Dog/1",
        &[("Content-Type", "text/calendar")],
        Some(b"BEGIN:VCALENDAR"),
    );
    // Stored opaquely as {contentType, data}, which this sealed table does not allow.
    assert_eq!(r.status, 400, "{}", r.text());
    unchanged(&s);
}

#[test]
fn oversized_bodies_are_refused_before_they_are_read() {
    let (s, _a, _r, mut c) = setup();
    let head = format!(
        "PUT /Dog/1 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 10000001\r\n\r\n",
        c.auth.clone().unwrap()
    );
    c.send_raw(head.as_bytes());
    let r = c.read_response(false).unwrap();
    assert_eq!(
        (r.status, r.json()),
        (
            413,
            json!("Request body too large, maximum size is 10000000 bytes")
        )
    );
    assert!(c.is_closed());

    // A chunked body is counted as it is decoded.
    let mut c = s.client();
    let head = format!(
        "PUT /Dog/1 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        c.auth.clone().unwrap()
    );
    c.send_raw(head.as_bytes());
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..12 {
        let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
        piece.extend_from_slice(&chunk);
        piece.extend_from_slice(b"\r\n");
        if !c.try_send(&piece) {
            break;
        }
    }
    let status = c.read_response(false).map(|r| r.status);
    assert_eq!(status, Some(413));

    // Exactly at the limit is fine as far as framing goes (the body is then invalid JSON).
    let mut c = s.client();
    let body = vec![b' '; 10_000_000];
    let r = c.request(
        "PUT",
        "/Dog/2",
        &[("Content-Type", "application/json")],
        Some(&body),
    );
    assert_eq!(r.status, 400);
    unchanged(&s);
}

#[test]
fn truncated_bodies_write_nothing() {
    let (s, _a, _r, mut c) = setup();
    let full = c.format(
        "PUT",
        "/Dog/1",
        &[("Content-Type", "application/json")],
        Some(br#"{"name":"Changed","age":9}"#),
    );
    c.send_raw(&full[..full.len() - 5]);
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(100));
    unchanged(&s);
}

#[test]
fn garbage_requests_get_400_and_a_closed_connection() {
    let (s, _a, _r, _c) = setup();
    for garbage in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET /Dog/1 HTTP/9.9\r\n\r\n",
        b"GET\r\n\r\n",
        b"PUT /Dog/1 HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        b"GET /Dog/1 HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ] {
        let mut c = s.client();
        c.send_raw(garbage);
        let r = c.read_response(false).expect("an answer before the close");
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(garbage));
        assert!(c.is_closed());
    }
    let mut c = s.client();
    let huge_head = format!("GET /Dog/1 HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70_000));
    c.send_raw(huge_head.as_bytes());
    assert_eq!(c.read_response(false).unwrap().status, 431);
    unchanged(&s);
}

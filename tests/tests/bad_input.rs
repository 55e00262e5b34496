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

/// Starts a server whose `tessera.yaml` is `yaml`.
fn with_config(yaml: &str) -> (Server, tessera_tests::App, tempfile::TempDir) {
    let app = tessera_tests::App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("tessera.yaml"), yaml).unwrap();
    let s = tessera_tests::Start::new(app.dir.path(), root.path()).start();
    (s, app, root)
}

/// What a raw connection reads until the server closes it (or 10 s pass).
fn read_to_close(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// A client that trickles its head or never finishes its body is answered 408 and cut off; an
/// idle keep-alive connection is closed; everyone else is served meanwhile.
#[test]
fn slow_clients_are_cut_off() {
    use std::io::Write;
    let (s, _a, _r) =
        with_config("http:\n  headersTimeout: 400\n  timeout: 800\n  keepAliveTimeout: 400\n");
    let connect = || std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    // Headers a byte at a time, slower than the limit allows.
    let mut trickle = connect();
    let head = b"GET /Dog/1 HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n\r\n";
    let mut refused = String::new();
    for b in head {
        if trickle.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        if !refused.is_empty() {
            break;
        }
        trickle
            .set_read_timeout(Some(std::time::Duration::from_millis(1)))
            .unwrap();
        let mut buf = [0u8; 256];
        if let Ok(n) = std::io::Read::read(&mut trickle, &mut buf) {
            refused.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    refused.push_str(&read_to_close(&mut trickle));
    assert!(refused.starts_with("HTTP/1.1 408"), "{refused}");
    // A body that never ends.
    let mut stalled = connect();
    stalled
        .write_all(b"PUT /Dog/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"name\"")
        .unwrap();
    assert!(read_to_close(&mut stalled).starts_with("HTTP/1.1 408"));
    // Idle past the keep-alive time: closed without a word.
    let mut idle = connect();
    assert_eq!(read_to_close(&mut idle), "");
    // Nothing was written; others are served.
    assert_eq!(s.client().get("/Dog/2").status, 404);
    assert_eq!(
        s.client().put_json("/Dog/2", r#"{"name":"Ida"}"#).status,
        204
    );
}

/// With `http.maxConnections`, a connection over the limit is answered 503 and closed; one
/// that leaves makes room. With `mqtt.network.maxConnections`, MQTT's is closed.
#[test]
fn connection_limits_refuse_the_one_too_many() {
    let (s, _a, _r) =
        with_config("http:\n  maxConnections: 2\nmqtt:\n  network:\n    maxConnections: 1\n");
    let mut first = s.client();
    let mut second = s.client();
    assert_eq!(first.get("/Dog/1").status, 404);
    assert_eq!(second.get("/Dog/1").status, 404);
    let mut third = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    assert!(read_to_close(&mut third).starts_with("HTTP/1.1 503"));
    drop(first);
    // Room again once the server has seen the first one go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut next = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        std::io::Write::write_all(&mut next, b"GET /Dog/1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let answer = read_to_close_or_first(&mut next);
        if !answer.starts_with("HTTP/1.1 503") {
            assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no room made");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(second);
    let mqtt = |id: &str| {
        tessera_tests::mqtt::MqttClient::connect(
            s.mqtt_port,
            tessera_protocol::mqtt::Version::V5,
            id,
            Some(tessera_tests::ADMIN),
        )
    };
    let (_kept, ack) = mqtt("one");
    assert_eq!(ack.map(|a| a.code), Some(0));
    let (_refused, ack) = mqtt("two");
    assert!(ack.is_none(), "closed before CONNACK");
}

/// The first response on a connection (its head and what came with it).
fn read_to_close_or_first(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

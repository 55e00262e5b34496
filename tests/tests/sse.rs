//! Server-Sent Events (docs/realtime.md) through the real binary, read from a raw socket.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use tessera_tests::{ADMIN, Server, basic, kim_sees_price_only_when_allowed, shop_with_kim};

/// Opens an event stream as the admin (or anonymously) and returns a reader positioned after
/// the response head.
fn open(s: &Server, path: &str, auth: bool) -> (u16, BufReader<TcpStream>) {
    open_as(s, path, auth.then_some(ADMIN))
}

/// [`open`] as the user with these credentials.
fn open_as(s: &Server, path: &str, user: Option<(&str, &str)>) -> (u16, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = match user {
        Some((u, p)) => format!("Authorization: {}\r\n", basic(u, p)),
        None => String::new(),
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{auth}\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(stream);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code = status.split(' ').nth(1).unwrap().parse().unwrap();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    (code, r)
}

/// The next `data:` event's JSON (chunk-size lines and blank lines skipped).
fn next_event(r: &mut BufReader<TcpStream>) -> Value {
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended");
        if let Some(data) = line.strip_prefix("data: ") {
            return serde_json::from_str(data.trim()).expect("event JSON");
        }
    }
}

#[test]
fn events_of_a_record_and_a_table() {
    let (s, _a, _r) =
        Server::with_schema("type Sensor @table @export { id: ID @primaryKey temp: Float }");
    let mut c = s.client();
    assert_eq!(c.put_json("/Sensor/s1", r#"{"temp":1}"#).status, 204);
    let (code, mut one) = open(&s, "/Sensor/s1", true);
    assert_eq!(code, 200);
    let (_, mut all) = open(&s, "/Sensor/", true);
    // The current record first.
    let e = next_event(&mut one);
    assert_eq!(
        (&e["id"], &e["type"], &e["value"]),
        (&json!("s1"), &json!("put"), &json!({"id":"s1","temp":1}))
    );
    assert!(e["version"].as_f64().unwrap() > 1.6e12 && e["localTime"].as_f64().is_some());
    assert_eq!(next_event(&mut all)["id"], json!("s1"));
    // Then changes, in order: put, patch (full record), delete.
    assert_eq!(c.put_json("/Sensor/s1", r#"{"temp":2}"#).status, 204);
    assert_eq!(c.patch_json("/Sensor/s1", r#"{"unit":"C"}"#).status, 204);
    assert_eq!(c.delete("/Sensor/s1").status, 200);
    assert_eq!(c.put_json("/Sensor/s2", r#"{"temp":3}"#).status, 204);
    for r in [&mut one, &mut all] {
        assert_eq!(next_event(r)["value"], json!({"id":"s1","temp":2}));
        assert_eq!(
            next_event(r)["value"],
            json!({"id":"s1","temp":2,"unit":"C"})
        );
        let d = next_event(r);
        assert_eq!((&d["type"], d.get("value")), (&json!("delete"), None));
    }
    assert_eq!(next_event(&mut all)["id"], json!("s2"));
    // Unauthenticated: 401 with the error as an event.
    let (code, mut r) = open(&s, "/Sensor/s1", false);
    assert_eq!(code, 401);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "data: AccessViolation: Must login\n");
}

#[test]
fn subscriptions_can_start_in_the_past() {
    let (s, _a, _r) =
        Server::with_schema("type Sensor @table @export { id: ID @primaryKey temp: Float }");
    let mut c = s.client();
    for t in 1..=4 {
        assert_eq!(
            c.put_json("/Sensor/h1", &format!(r#"{{"temp":{t}}}"#))
                .status,
            204
        );
    }
    assert_eq!(c.put_json("/Sensor/other", r#"{"temp":9}"#).status, 204);
    // previousCount: the last N changes of the record instead of its current value.
    let (_, mut r) = open(&s, "/Sensor/h1?previousCount=2", true);
    assert_eq!(next_event(&mut r)["value"]["temp"], json!(3));
    assert_eq!(next_event(&mut r)["value"]["temp"], json!(4));
    assert_eq!(c.put_json("/Sensor/h1", r#"{"temp":5}"#).status, 204);
    assert_eq!(next_event(&mut r)["value"]["temp"], json!(5));
    // startTime on a table: every change since then, in commit order.
    let (_, mut all) = open(&s, "/Sensor/?startTime=0", true);
    let temps: Vec<Value> = (0..6)
        .map(|_| next_event(&mut all)["value"]["temp"].clone())
        .collect();
    assert_eq!(
        temps,
        [json!(1), json!(2), json!(3), json!(4), json!(9), json!(5)]
    );
}

/// A role that may not read `price` gets events without it; a change of its role reaches the
/// live stream; a dropped user's stream ends.
#[test]
fn events_carry_only_what_the_role_may_read_as_it_is_now() {
    let (s, _a, _r, mut admin) = shop_with_kim();
    let (code, mut r) = open_as(&s, "/Item/", Some(("kim", "pw-kim")));
    assert_eq!(code, 200);
    kim_sees_price_only_when_allowed(&s, &mut admin, || next_event(&mut r)["value"].clone());
    // Dropped: the stream ends (within about a second; the socket's read limit is 10 s).
    let (st, _) = admin.operation(&json!({"operation": "drop_user", "username": "kim"}));
    assert_eq!(st, 200);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut r, &mut rest).expect("the stream ends");
}

//! WebSocket subscriptions (docs/realtime.md) with tungstenite as the client.

use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use tessera_tests::{
    ADMIN, Server, basic, from_msgpack, kim_sees_price_only_when_allowed, shop_with_kim,
};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

fn open(s: &Server, path: &str, headers: &[(&'static str, String)]) -> WebSocket<TcpStream> {
    let mut req = format!("ws://127.0.0.1:{}{path}", s.port)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    let stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (ws, resp) = tungstenite::client(req, stream).expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

fn auth() -> (&'static str, String) {
    ("Authorization", basic(ADMIN.0, ADMIN.1))
}

fn next_json(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn record_and_table_subscriptions() {
    let (s, _a, _r) =
        Server::with_schema("type Sensor @table @export { id: ID @primaryKey temp: Float }");
    let mut c = s.client();
    assert_eq!(c.put_json("/Sensor/s1", r#"{"temp":1}"#).status, 204);
    let mut one = open(&s, "/Sensor/s1", &[auth()]);
    let mut all = open(&s, "/Sensor/", &[auth()]);
    let mut packed = open(
        &s,
        "/Sensor/s1",
        &[auth(), ("Accept", "application/x-msgpack".into())],
    );
    let e = next_json(&mut one);
    assert_eq!(
        (&e["type"], &e["value"]),
        (&json!("put"), &json!({"id":"s1","temp":1}))
    );
    assert_eq!(next_json(&mut all)["id"], json!("s1"));
    match packed.read().unwrap() {
        Message::Binary(b) => assert_eq!(from_msgpack(&b)["value"], json!({"id":"s1","temp":1})),
        other => panic!("expected a binary frame, got {other:?}"),
    }
    // Client messages are ignored.
    one.send(Message::Text("hello".into())).unwrap();
    assert_eq!(c.put_json("/Sensor/s1", r#"{"temp":2}"#).status, 204);
    assert_eq!(c.delete("/Sensor/s1").status, 200);
    for ws in [&mut one, &mut all] {
        assert_eq!(next_json(ws)["value"], json!({"id":"s1","temp":2}));
        assert_eq!(next_json(ws)["type"], json!("delete"));
    }
}

#[test]
fn refusals_are_close_codes() {
    let (s, _a, _r) =
        Server::with_schema("type Sensor @table @export { id: ID @primaryKey temp: Float }");
    let close_code = |ws: &mut WebSocket<TcpStream>| loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (f.code, f.reason.to_string()),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    let mut anon = open(&s, "/Sensor/s1", &[]);
    assert_eq!(
        close_code(&mut anon),
        (
            CloseCode::from(3000),
            "AccessViolation: Must login".to_owned()
        )
    );
    let mut unknown = open(&s, "/Nope/1", &[auth()]);
    assert_eq!(close_code(&mut unknown).0, CloseCode::from(1011));
}

/// A role that may not read `price` gets changes without it; a change of its role reaches the
/// live subscription; a dropped user's socket is closed with 3000.
#[test]
fn changes_carry_only_what_the_role_may_read_as_it_is_now() {
    let (s, _a, _r, mut admin) = shop_with_kim();
    let mut ws = open(&s, "/Item/", &[("Authorization", basic("kim", "pw-kim"))]);
    kim_sees_price_only_when_allowed(&s, &mut admin, || next_json(&mut ws)["value"].clone());
    // Dropped: closed with 3000 (within about a second), with no change needed to notice.
    let (st, _) = admin.operation(&json!({"operation": "drop_user", "username": "kim"}));
    assert_eq!(st, 200);
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(f.code, CloseCode::from(3000));
                break;
            }
            Ok(Message::Text(t)) => panic!("delivered to a dropped user: {t}"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

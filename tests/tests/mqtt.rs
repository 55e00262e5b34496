//! The MQTT broker through the real binary (docs/mqtt.md), with Tessera's test client for
//! exact packet-level checks and with mosquitto_pub/mosquitto_sub (Debian's mosquitto-clients,
//! installed by tests/run.sh) as independent real clients, both protocol versions.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tessera_protocol::mqtt::{Packet, QoS, Version};
use tessera_tests::mqtt::MqttClient;
use tessera_tests::{ADMIN, Server, hidden_price, shop_with_kim};

const SCHEMA: &str = r#"
type Sensor @table @export {
  id: ID @primaryKey
  temp: Float
}
type Secret @table {
  id: ID @primaryKey
}
"#;

const WAIT: Duration = Duration::from_secs(5);

fn json_of(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| panic!("not JSON: {payload:?}"))
}

fn client(s: &Server, v: Version, id: &str) -> MqttClient {
    let (c, ack) = MqttClient::connect(s.mqtt_port, v, id, Some(ADMIN));
    assert_eq!(ack.map(|a| a.code), Some(0), "CONNACK");
    c
}

#[test]
fn credentials_are_checked_per_version() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    for (v, bad, missing) in [(Version::V311, 0x04, 0x05), (Version::V5, 0x86, 0x87)] {
        let (_c, ack) = MqttClient::connect(s.mqtt_port, v, "x", Some((ADMIN.0, "wrong")));
        assert_eq!(ack.map(|a| a.code), Some(bad), "{v:?} bad password");
        let (_c, ack) = MqttClient::connect(s.mqtt_port, v, "x", None);
        assert_eq!(ack.map(|a| a.code), Some(missing), "{v:?} no credentials");
        let (_c, ack) = MqttClient::connect(s.mqtt_port, v, "x", Some(ADMIN));
        assert_eq!(ack.map(|a| a.code), Some(0), "{v:?} good credentials");
    }
}

#[test]
fn subscriptions_see_current_records_then_changes_in_order() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut rest = s.client();
    assert_eq!(rest.put_json("/Sensor/s1", r#"{"temp":20}"#).status, 204);
    for v in [Version::V311, Version::V5] {
        let mut sub = client(&s, v, "sub");
        assert_eq!(
            sub.subscribe(&[("Sensor/s1", QoS::AtLeastOnce), ("Nope/x", QoS::AtMostOnce)]),
            vec![1, if v == Version::V5 { 0x8F } else { 0x80 }]
        );
        // The current record first, with RETAIN set.
        let p = sub.next_publish(WAIT).expect("current record");
        assert!(p.retain);
        assert_eq!(
            (p.topic.as_str(), json_of(&p.payload)),
            ("Sensor/s1", json!({"id":"s1","temp":20}))
        );
        // Then every change in write order: REST PUT, PATCH, an MQTT message, a delete.
        assert_eq!(rest.put_json("/Sensor/s1", r#"{"temp":21}"#).status, 204);
        assert_eq!(rest.patch_json("/Sensor/s1", r#"{"temp":22}"#).status, 204);
        let mut publisher = client(&s, v, "pub");
        assert_eq!(
            publisher.publish("Sensor/s1", b"hello", QoS::AtLeastOnce, false),
            Some(0)
        );
        assert_eq!(rest.delete("/Sensor/s1").status, 200);
        let mut got = Vec::new();
        for _ in 0..4 {
            let p = sub.next_publish(WAIT).expect("a change");
            assert!(!p.retain);
            got.push(String::from_utf8(p.payload).unwrap());
        }
        assert_eq!(
            got,
            [
                r#"{"id":"s1","temp":21}"#,
                r#"{"id":"s1","temp":22}"#,
                "hello",
                "null"
            ]
        );
        // A retained publish is a PUT, visible over REST.
        assert_eq!(
            publisher.publish("Sensor/s1", br#"{"temp":20}"#, QoS::AtLeastOnce, true),
            Some(0)
        );
        assert_eq!(rest.get("/Sensor/s1").json(), json!({"id":"s1","temp":20}));
        let p = sub.next_publish(WAIT).unwrap();
        assert_eq!(json_of(&p.payload), json!({"id":"s1","temp":20}));
    }
}

#[test]
fn table_and_wildcard_subscriptions() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut rest = s.client();
    for id in ["a", "zone%2Fb", "zone%2Fc%2Fd"] {
        assert_eq!(
            rest.put_json(&format!("/Sensor/{id}"), r#"{"temp":1}"#)
                .status,
            204
        );
    }
    let mut all = client(&s, Version::V5, "all");
    assert_eq!(all.subscribe(&[("Sensor/#", QoS::AtMostOnce)]), vec![0]);
    let mut topics: Vec<String> = (0..3)
        .map(|_| all.next_publish(WAIT).expect("current").topic)
        .collect();
    topics.sort();
    assert_eq!(topics, ["Sensor/a", "Sensor/zone/b", "Sensor/zone/c/d"]);
    let mut one_level = client(&s, Version::V311, "plus");
    assert_eq!(
        one_level.subscribe(&[("Sensor/zone/+", QoS::AtMostOnce)]),
        vec![0]
    );
    assert_eq!(one_level.next_publish(WAIT).unwrap().topic, "Sensor/zone/b");
    assert!(one_level.next_publish(Duration::from_millis(300)).is_none());
    // Changes anywhere in the table reach the table subscription; only matching ids the other.
    assert_eq!(rest.put_json("/Sensor/x", r#"{"temp":2}"#).status, 204);
    assert_eq!(
        rest.put_json("/Sensor/zone%2Fe", r#"{"temp":3}"#).status,
        204
    );
    assert_eq!(all.next_publish(WAIT).unwrap().topic, "Sensor/x");
    assert_eq!(all.next_publish(WAIT).unwrap().topic, "Sensor/zone/e");
    assert_eq!(one_level.next_publish(WAIT).unwrap().topic, "Sensor/zone/e");
    // Unsubscribed: nothing more.
    one_level.send(&Packet::Unsubscribe(tessera_protocol::mqtt::Unsubscribe {
        packet_id: 9,
        properties: Default::default(),
        filters: vec!["Sensor/zone/+".into()],
    }));
    assert!(matches!(one_level.recv(WAIT), Some(Packet::UnsubAck(_))));
    assert_eq!(
        rest.put_json("/Sensor/zone%2Ff", r#"{"temp":4}"#).status,
        204
    );
    assert_eq!(all.next_publish(WAIT).unwrap().topic, "Sensor/zone/f");
    assert!(one_level.next_publish(Duration::from_millis(300)).is_none());
    // Publishing to an unexported table is refused (MQTT 5 reason 0x90).
    assert_eq!(
        all.publish("Secret/x", b"{}", QoS::AtLeastOnce, true),
        Some(0x90)
    );
}

#[test]
fn malformed_packets_close_only_their_connection() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut good = client(&s, Version::V5, "good");
    assert_eq!(good.subscribe(&[("Sensor/#", QoS::AtMostOnce)]), vec![0]);
    let mut bad = client(&s, Version::V5, "bad");
    // PUBLISH with QoS 3: DISCONNECT "malformed packet", then the connection closes.
    bad.send_raw(&[0x36, 0x05, 0, 1, b'a', 0, 1]);
    match bad.recv(WAIT) {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, 0x81),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(bad.recv(Duration::from_secs(2)).is_none(), "closed");
    // A second CONNECT is a protocol error: the connection closes; others go on.
    let mut early = client(&s, Version::V311, "early");
    let (mut raw, _) = MqttClient::connect(s.mqtt_port, Version::V311, "x", Some(ADMIN));
    raw.send_raw(&[0x10, 0x02, 0x00, 0x00]);
    assert!(raw.recv(Duration::from_secs(2)).is_none());
    early.send(&Packet::PingReq);
    assert!(matches!(early.recv(WAIT), Some(Packet::PingResp)));
    let mut rest = s.client();
    assert_eq!(rest.put_json("/Sensor/q", r#"{"temp":9}"#).status, 204);
    assert_eq!(good.next_publish(WAIT).unwrap().topic, "Sensor/q");
}

fn mosquitto_available() -> bool {
    Command::new("mosquitto_sub")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[test]
fn real_clients_mosquitto_pub_and_sub() {
    assert!(
        mosquitto_available(),
        "mosquitto-clients is missing: tests/run.sh installs it"
    );
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let port = s.mqtt_port.to_string();
    for v in ["mqttv311", "mqttv5"] {
        let sub = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-u", ADMIN.0, "-P", ADMIN.1])
            .args(["-V", v, "-t", "Sensor/m1", "-v", "-C", "2", "-W", "10"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub");
        std::thread::sleep(Duration::from_millis(500));
        for (payload, retain) in [(r#"{"temp":5}"#, true), ("plain", false)] {
            let mut c = Command::new("mosquitto_pub");
            c.args(["-h", "127.0.0.1", "-p", &port, "-u", ADMIN.0, "-P", ADMIN.1])
                .args(["-V", v, "-t", "Sensor/m1", "-q", "1", "-m", payload]);
            if retain {
                c.arg("-r");
            }
            assert!(c.status().unwrap().success(), "mosquitto_pub {v}");
        }
        let out = sub.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "Sensor/m1 {\"id\":\"m1\",\"temp\":5}\nSensor/m1 plain\n",
            "{v}"
        );
        assert_eq!(
            s.client().get("/Sensor/m1").json(),
            json!({"id":"m1","temp":5})
        );
        assert_eq!(s.client().delete("/Sensor/m1").status, 200);
        // Bad credentials: mosquitto_pub fails.
        let st = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-u", ADMIN.0, "-P", "nope"])
            .args(["-V", v, "-t", "Sensor/m1", "-m", "x"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!st.success(), "{v}: refused");
    }
}

fn connect_session(
    s: &Server,
    v: Version,
    id: &str,
    clean: bool,
    will: Option<tessera_protocol::mqtt::Will>,
) -> (MqttClient, tessera_protocol::mqtt::ConnAck) {
    let mut properties = tessera_protocol::mqtt::Properties::default();
    if v == Version::V5 && !clean {
        properties.session_expiry_interval = Some(3600);
    }
    connect_full(s, v, id, clean, will, properties)
}

/// Connects with the admin's credentials and the given CONNECT options.
fn connect_full(
    s: &Server,
    v: Version,
    id: &str,
    clean: bool,
    will: Option<tessera_protocol::mqtt::Will>,
    properties: tessera_protocol::mqtt::Properties,
) -> (MqttClient, tessera_protocol::mqtt::ConnAck) {
    let (c, ack) = MqttClient::connect_with(
        s.mqtt_port,
        tessera_protocol::mqtt::Connect {
            version: v,
            client_id: id.to_owned(),
            clean_start: clean,
            keep_alive: 30,
            username: Some(ADMIN.0.to_owned()),
            password: Some(ADMIN.1.as_bytes().to_vec()),
            will,
            properties,
        },
    );
    (c, ack.expect("CONNACK"))
}

#[test]
fn persistent_sessions_queue_qos1_changes_while_offline() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut rest = s.client();
    for v in [Version::V311, Version::V5] {
        let id = format!("durable-{v:?}");
        // A record of its own per version.
        let (topic, path) = (format!("Sensor/d-{v:?}"), format!("/Sensor/d-{v:?}"));
        let (mut c, ack) = connect_session(&s, v, &id, false, None);
        assert!(!ack.session_present);
        assert_eq!(c.subscribe(&[(topic.as_str(), QoS::AtLeastOnce)]), vec![1]);
        c.send(&Packet::Disconnect(Default::default()));
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(rest.put_json(&path, r#"{"temp":1}"#).status, 204);
        assert_eq!(rest.put_json(&path, r#"{"temp":2}"#).status, 204);
        let (mut c, ack) = connect_session(&s, v, &id, false, None);
        assert!(ack.session_present, "{v:?}: session present");
        for want in [1, 2] {
            let p = c.next_publish(WAIT).expect("a queued change");
            assert_eq!(json_of(&p.payload)["temp"], json!(want), "{v:?}");
        }
        // Still subscribed after resuming.
        assert_eq!(rest.put_json(&path, r#"{"temp":3}"#).status, 204);
        assert_eq!(
            json_of(&c.next_publish(WAIT).unwrap().payload)["temp"],
            json!(3)
        );
        // A clean connection discards the session.
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        let (_c, ack) = connect_session(&s, v, &id, true, None);
        assert!(!ack.session_present);
        assert_eq!(rest.delete(&path).status, 200);
    }
}

/// A write answered before a subscription starts is in the subscription's current record and
/// is not sent again as a change, even while the write's change is still on its way to the
/// subscriptions (other writes keep the owner cores busy dispatching meanwhile): for a
/// subscription to the record and for a wildcard one.
#[test]
fn a_write_answered_before_a_subscription_is_not_sent_to_it_again() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut watcher = client(&s, Version::V311, "watcher");
    assert_eq!(watcher.subscribe(&[("Sensor/#", QoS::AtMostOnce)]), vec![0]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let (stop, mut rest) = (stop.clone(), s.client());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let path = format!("/Sensor/busy-{}", n % 64);
                assert_eq!(rest.put_json(&path, r#"{"temp":0}"#).status, 204);
            }
        })
    };
    let mut rest = s.client();
    for i in 0..500 {
        let topic = if i % 2 == 0 {
            "Sensor/race/x"
        } else {
            "Sensor/race/+"
        };
        assert_eq!(
            rest.put_json("/Sensor/race/x", &format!(r#"{{"temp":{i}}}"#))
                .status,
            204
        );
        let mut c = client(&s, Version::V311, "racer");
        assert_eq!(c.subscribe(&[(topic, QoS::AtMostOnce)]), vec![0]);
        let current = c.next_publish(WAIT).expect("the current record");
        assert!(current.retain);
        assert_eq!(
            json_of(&current.payload)["temp"],
            json!(i),
            "round {i} ({topic}): current"
        );
        let next = format!(r#"{{"temp":{}}}"#, i + 1000);
        assert_eq!(rest.put_json("/Sensor/race/x", &next).status, 204);
        let change = c.next_publish(WAIT).expect("the next change");
        assert_eq!(
            json_of(&change.payload)["temp"],
            json!(i + 1000),
            "round {i} ({topic}): the change after the current record"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.join().unwrap();
}

#[test]
fn a_publishers_writes_and_messages_reach_subscribers_in_publish_order() {
    // Messages skip the shard's writer thread; each must still come after the write its
    // publisher made just before it, on a record and on a wildcard subscription.
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut exact = client(&s, Version::V311, "exact");
    assert_eq!(
        exact.subscribe(&[("Sensor/order", QoS::AtMostOnce)]),
        vec![0]
    );
    let mut wild = client(&s, Version::V5, "wild");
    assert_eq!(wild.subscribe(&[("Sensor/+", QoS::AtMostOnce)]), vec![0]);
    let mut publisher = client(&s, Version::V311, "publisher");
    const ROUNDS: u64 = 1000;
    for i in 0..ROUNDS {
        let record = format!(r#"{{"temp":{i}}}"#);
        publisher.publish("Sensor/order", record.as_bytes(), QoS::AtMostOnce, true);
        let message = format!("message {i}");
        publisher.publish("Sensor/order", message.as_bytes(), QoS::AtMostOnce, false);
    }
    for (name, c) in [("exact", &mut exact), ("wildcard", &mut wild)] {
        for i in 0..ROUNDS {
            let put = c.next_publish(WAIT).expect("the write");
            assert!(
                !put.payload.starts_with(b"message"),
                "{name}: {} came before write {i}",
                String::from_utf8_lossy(&put.payload)
            );
            assert_eq!(json_of(&put.payload)["temp"], json!(i), "{name}: write {i}");
            let message = c.next_publish(WAIT).expect("the message");
            assert_eq!(
                String::from_utf8_lossy(&message.payload),
                format!("message {i}"),
                "{name}: the message after write {i}"
            );
        }
    }
}

#[test]
fn client_id_takeover_and_will_messages() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let (mut first, _) = connect_session(&s, Version::V5, "same", true, None);
    let (mut second, ack) = connect_session(&s, Version::V5, "same", true, None);
    assert_eq!(ack.code, 0);
    match first.recv(WAIT) {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, 0x8E, "session taken over"),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    second.send(&Packet::PingReq);
    assert!(matches!(second.recv(WAIT), Some(Packet::PingResp)));
    // A will is published when a connection ends without DISCONNECT, not after one.
    let mut watcher = client(&s, Version::V311, "watcher");
    assert_eq!(watcher.subscribe(&[("Sensor/w", QoS::AtMostOnce)]), vec![0]);
    let will = |payload: &[u8]| tessera_protocol::mqtt::Will {
        topic: "Sensor/w".into(),
        payload: payload.to_vec(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    };
    let (mut polite, _) = connect_session(&s, Version::V311, "polite", true, Some(will(b"bye")));
    polite.send(&Packet::Disconnect(Default::default()));
    drop(polite);
    let (abrupt, _) = connect_session(&s, Version::V311, "abrupt", true, Some(will(b"gone")));
    drop(abrupt);
    let p = watcher.next_publish(WAIT).expect("the will");
    assert_eq!(p.payload, b"gone");
    assert!(watcher.next_publish(Duration::from_millis(300)).is_none());
}

#[test]
fn mqtt5_topic_aliases_and_maximum_packet_size() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut sub = client(&s, Version::V5, "alias-sub");
    assert_eq!(sub.subscribe(&[("Sensor/a1", QoS::AtMostOnce)]), vec![0]);
    let mut publisher = client(&s, Version::V5, "alias-pub");
    let publish = |c: &mut MqttClient, topic: &str, alias: u16, payload: &[u8]| {
        let properties = tessera_protocol::mqtt::Properties {
            topic_alias: Some(alias),
            ..Default::default()
        };
        c.send(&Packet::Publish(tessera_protocol::mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: Some(alias),
            properties,
            payload: payload.to_vec(),
        }));
        match c.recv(WAIT) {
            Some(Packet::PubAck(a)) => a.reason,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    };
    assert_eq!(publish(&mut publisher, "Sensor/a1", 3, b"first"), 0);
    assert_eq!(publish(&mut publisher, "", 3, b"second"), 0);
    // An alias never set, or above the maximum, is a protocol error: DISCONNECT 0x94.
    for (topic, alias) in [("", 4), ("Sensor/a1", 1000)] {
        let mut bad = client(&s, Version::V5, "alias-bad");
        let properties = tessera_protocol::mqtt::Properties {
            topic_alias: Some(alias),
            ..Default::default()
        };
        bad.send(&Packet::Publish(tessera_protocol::mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: Some(1),
            properties,
            payload: b"x".to_vec(),
        }));
        assert!(
            matches!(bad.recv(WAIT), Some(Packet::Disconnect(d)) if d.reason == 0x94),
            "alias {alias}"
        );
        assert!(bad.recv(Duration::from_millis(500)).is_none(), "closed");
    }
    for want in [&b"first"[..], b"second"] {
        let p = sub.next_publish(WAIT).unwrap();
        assert_eq!(
            (p.topic.as_str(), p.payload.as_slice()),
            ("Sensor/a1", want)
        );
    }
    assert!(sub.next_publish(Duration::from_millis(300)).is_none());

    // A client's maximum packet size: larger packets are not sent to it.
    let properties = tessera_protocol::mqtt::Properties {
        maximum_packet_size: Some(64),
        ..Default::default()
    };
    let (mut small, ack) = connect_full(&s, Version::V5, "small", true, None, properties);
    assert_eq!(ack.code, 0);
    assert_eq!(small.subscribe(&[("Sensor/a1", QoS::AtMostOnce)]), vec![0]);
    assert_eq!(publish(&mut publisher, "Sensor/a1", 5, &[b'x'; 200]), 0);
    assert_eq!(publish(&mut publisher, "Sensor/a1", 5, b"fits"), 0);
    assert_eq!(small.next_publish(WAIT).unwrap().payload, b"fits");
}

/// Lets what was sent reach the server, then ends the connection without a DISCONNECT and gives
/// the server time to park the session.
fn hang_up(c: MqttClient) {
    std::thread::sleep(Duration::from_millis(100));
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn unacknowledged_qos1_deliveries_are_sent_again_when_the_session_resumes() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut rest = s.client();
    for v in [Version::V311, Version::V5] {
        let id = format!("redeliver-{v:?}");
        let topic = format!("Sensor/r-{v:?}");
        let path = format!("/{topic}");
        let (mut c, _) = connect_session(&s, v, &id, false, None);
        assert_eq!(c.subscribe(&[(topic.as_str(), QoS::AtLeastOnce)]), vec![1]);
        for t in [1, 2, 3] {
            let body = format!(r#"{{"temp":{t}}}"#);
            assert_eq!(rest.put_json(&path, &body).status, 204);
        }
        // The first is acknowledged; the other two are not when the connection drops.
        let first = c.next_publish(WAIT).expect("first delivery");
        assert_eq!(json_of(&first.payload)["temp"], json!(1), "{v:?}");
        c.send(&Packet::PubAck(tessera_protocol::mqtt::Ack::new(
            first.packet_id.unwrap(),
        )));
        let mut first_ids = Vec::new();
        for want in [2, 3] {
            let p = c.next_publish(WAIT).expect("unacknowledged delivery");
            assert_eq!(json_of(&p.payload)["temp"], json!(want), "{v:?}");
            assert!(!p.dup);
            first_ids.push(p.packet_id.unwrap());
        }
        hang_up(c);
        assert_eq!(rest.put_json(&path, r#"{"temp":4}"#).status, 204);
        let (mut c, ack) = connect_session(&s, v, &id, false, None);
        assert!(ack.session_present, "{v:?}");
        // Delivered again, in order, with their first packet ids and DUP, before what came
        // while away (a new delivery); the acknowledged one not.
        for (i, want) in [2, 3, 4].into_iter().enumerate() {
            let p = c.next_publish(WAIT).expect("redelivery");
            assert_eq!(json_of(&p.payload)["temp"], json!(want), "{v:?}");
            let again = i < 2;
            assert_eq!(p.dup, again, "{v:?} {want}");
            if again {
                assert_eq!(p.packet_id, Some(first_ids[i]), "{v:?} {want}");
            } else {
                assert!(!first_ids.contains(&p.packet_id.unwrap()), "{v:?}");
            }
            c.send(&Packet::PubAck(tessera_protocol::mqtt::Ack::new(
                p.packet_id.unwrap(),
            )));
        }
        assert!(
            c.next_publish(Duration::from_millis(300)).is_none(),
            "{v:?}"
        );
        // Everything acknowledged: nothing comes again after another resume.
        hang_up(c);
        let (mut c, _) = connect_session(&s, v, &id, false, None);
        assert!(
            c.next_publish(Duration::from_millis(300)).is_none(),
            "{v:?}"
        );
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        let (_c, _) = connect_session(&s, v, &id, true, None);
    }
}

/// The next packet within [`WAIT`] that is not a PUBLISH.
fn next_control(c: &mut MqttClient) -> Packet {
    loop {
        match c.recv(WAIT) {
            Some(Packet::Publish(_)) => {}
            Some(p) => return p,
            None => panic!("no packet"),
        }
    }
}

#[test]
fn qos2_deliveries_complete_in_four_steps_and_a_received_one_is_only_released_again() {
    use tessera_protocol::mqtt::Ack;
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut rest = s.client();
    for v in [Version::V311, Version::V5] {
        let id = format!("exactly-once-{v:?}");
        let topic = format!("Sensor/q2-{v:?}");
        let path = format!("/{topic}");
        let (mut c, ack) = connect_session(&s, v, &id, false, None);
        // QoS 2 is supported: no Maximum QoS in the CONNACK, and granted as asked.
        assert_eq!(ack.properties.maximum_qos, None, "{v:?}");
        assert_eq!(c.subscribe(&[(topic.as_str(), QoS::ExactlyOnce)]), vec![2]);
        for t in [1, 2] {
            let body = format!(r#"{{"temp":{t}}}"#);
            assert_eq!(rest.put_json(&path, &body).status, 204);
        }
        // The first completes: PUBLISH, PUBREC, PUBREL, PUBCOMP.
        let first = c.next_publish(WAIT).expect("first delivery");
        assert_eq!(json_of(&first.payload)["temp"], json!(1), "{v:?}");
        assert_eq!(first.qos, QoS::ExactlyOnce, "{v:?}");
        let first_id = first.packet_id.unwrap();
        let second = c.next_publish(WAIT).expect("second delivery");
        assert_eq!(json_of(&second.payload)["temp"], json!(2), "{v:?}");
        assert_eq!(second.qos, QoS::ExactlyOnce, "{v:?}");
        let second_id = second.packet_id.unwrap();
        c.send(&Packet::PubRec(Ack::new(first_id)));
        match next_control(&mut c) {
            Packet::PubRel(a) => assert_eq!(a.packet_id, first_id, "{v:?}"),
            other => panic!("{v:?}: expected PUBREL, got {other:?}"),
        }
        c.send(&Packet::PubComp(Ack::new(first_id)));
        // The second is received but never completed when the connection drops.
        c.send(&Packet::PubRec(Ack::new(second_id)));
        match next_control(&mut c) {
            Packet::PubRel(a) => assert_eq!(a.packet_id, second_id, "{v:?}"),
            other => panic!("{v:?}: expected PUBREL, got {other:?}"),
        }
        hang_up(c);
        assert_eq!(rest.put_json(&path, r#"{"temp":3}"#).status, 204);
        let (mut c, ack) = connect_session(&s, v, &id, false, None);
        assert!(ack.session_present, "{v:?}");
        // The received one goes again as its PUBREL alone (not a second PUBLISH), then what
        // came while away; the completed one not at all.
        match c.recv(WAIT) {
            Some(Packet::PubRel(a)) => assert_eq!(a.packet_id, second_id, "{v:?}"),
            other => panic!("{v:?}: expected PUBREL again, got {other:?}"),
        }
        c.send(&Packet::PubComp(Ack::new(second_id)));
        let third = c.next_publish(WAIT).expect("delivery made while away");
        assert_eq!(json_of(&third.payload)["temp"], json!(3), "{v:?}");
        assert!(!third.dup, "{v:?}");
        let third_id = third.packet_id.unwrap();
        assert_ne!(third_id, second_id, "{v:?}");
        c.send(&Packet::PubRec(Ack::new(third_id)));
        match next_control(&mut c) {
            Packet::PubRel(a) => assert_eq!(a.packet_id, third_id, "{v:?}"),
            other => panic!("{v:?}: expected PUBREL, got {other:?}"),
        }
        c.send(&Packet::PubComp(Ack::new(third_id)));
        assert!(c.recv(Duration::from_millis(300)).is_none(), "{v:?}");
        // Everything completed: nothing goes again after another resume.
        hang_up(c);
        let (mut c, _) = connect_session(&s, v, &id, false, None);
        assert!(c.recv(Duration::from_millis(300)).is_none(), "{v:?}");
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        let (_c, _) = connect_session(&s, v, &id, true, None);
    }
}

#[test]
fn receive_maximum_limits_unacknowledged_qos1_deliveries() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let properties = tessera_protocol::mqtt::Properties {
        receive_maximum: Some(2),
        ..Default::default()
    };
    let (mut slow, ack) = connect_full(&s, Version::V5, "slow", true, None, properties);
    assert_eq!(ack.code, 0);
    assert_eq!(slow.subscribe(&[("Sensor/f", QoS::AtLeastOnce)]), vec![1]);
    let mut publisher = client(&s, Version::V5, "fast");
    for i in 0..4 {
        let body = format!("m{i}");
        assert_eq!(
            publisher.publish("Sensor/f", body.as_bytes(), QoS::AtLeastOnce, false),
            Some(0)
        );
    }
    // Two unacknowledged deliveries at most...
    let first = slow.next_publish(WAIT).unwrap();
    let second = slow.next_publish(WAIT).unwrap();
    assert_eq!(
        (first.payload.as_slice(), second.payload.as_slice()),
        (&b"m0"[..], &b"m1"[..])
    );
    assert!(slow.next_publish(Duration::from_millis(400)).is_none());
    // ...and one more for each acknowledgement.
    slow.send(&Packet::PubAck(tessera_protocol::mqtt::Ack::new(
        first.packet_id.unwrap(),
    )));
    assert_eq!(slow.next_publish(WAIT).unwrap().payload, b"m2");
    assert!(slow.next_publish(Duration::from_millis(400)).is_none());
    slow.send(&Packet::PubAck(tessera_protocol::mqtt::Ack::new(
        second.packet_id.unwrap(),
    )));
    assert_eq!(slow.next_publish(WAIT).unwrap().payload, b"m3");
}

#[test]
fn mqtt5_message_expiry() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let (mut live, _) = connect_session(&s, Version::V5, "expiry-live", true, None);
    assert_eq!(live.subscribe(&[("Sensor/e", QoS::AtLeastOnce)]), vec![1]);
    let (mut away, _) = connect_session(&s, Version::V5, "expiry-away", false, None);
    assert_eq!(away.subscribe(&[("Sensor/e", QoS::AtLeastOnce)]), vec![1]);
    away.send(&Packet::Disconnect(Default::default()));
    drop(away);
    std::thread::sleep(Duration::from_millis(200));
    let mut publisher = client(&s, Version::V5, "expiry-pub");
    for (payload, expiry) in [(&b"short"[..], Some(1)), (b"forever", None)] {
        publisher.send(&Packet::Publish(tessera_protocol::mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "Sensor/e".into(),
            packet_id: Some(7),
            properties: tessera_protocol::mqtt::Properties {
                message_expiry_interval: expiry,
                ..Default::default()
            },
            payload: payload.to_vec(),
        }));
        assert!(matches!(publisher.recv(WAIT), Some(Packet::PubAck(_))));
    }
    // A live subscriber gets the time left.
    let p = live.next_publish(WAIT).unwrap();
    assert_eq!(
        (p.payload.as_slice(), p.properties.message_expiry_interval),
        (&b"short"[..], Some(1))
    );
    assert_eq!(live.next_publish(WAIT).unwrap().payload, b"forever");
    // An absent one, back after the expiry, gets only what has not expired.
    std::thread::sleep(Duration::from_millis(1500));
    let (mut back, ack) = connect_session(&s, Version::V5, "expiry-away", false, None);
    assert!(ack.session_present);
    assert_eq!(back.next_publish(WAIT).unwrap().payload, b"forever");
    assert!(back.next_publish(Duration::from_millis(300)).is_none());
}

#[test]
fn kept_sessions_and_what_they_are_owed_outlive_a_restart() {
    let app = tessera_tests::App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let start = tessera_tests::Start::new(app.dir.path(), root.path());
    let restart = |s: Server, kill: bool| {
        if kill {
            // The session's file is written in the background as its connection ends.
            std::thread::sleep(Duration::from_millis(300));
            s.kill9();
        } else {
            assert_eq!(s.terminate(), Some(0));
        }
        start.start()
    };
    let mut s = start.start();
    let (st, body) = s
        .ops()
        .operation(&json!({"operation": "add_user", "username": "mallory",
        "password": "pw", "role": "super_user"}));
    assert_eq!(st, 200, "{body}");
    for (v, kill) in [(Version::V311, false), (Version::V5, true)] {
        let id = format!("kept-{v:?}");
        let path = format!("/Sensor/k-{v:?}");
        let mut rest = s.client();
        let (mut c, _) = connect_session(&s, v, &id, false, None);
        let filters = [(&path[1..], QoS::AtLeastOnce)];
        assert_eq!(c.subscribe(&filters), vec![1]);
        // Delivered and never acknowledged before the connection ends.
        assert_eq!(rest.put_json(&path, r#"{"temp":1}"#).status, 204);
        let first = c.next_publish(WAIT).expect("first delivery");
        assert_eq!(json_of(&first.payload)["temp"], json!(1), "{v:?}");
        hang_up(c);
        // Committed while the client is away, then the server goes: cleanly, or by SIGKILL.
        assert_eq!(rest.put_json(&path, r#"{"temp":2}"#).status, 204);
        drop(rest);
        s = restart(s, kill);
        // Committed after the restart, while the client is still away.
        assert_eq!(s.client().put_json(&path, r#"{"temp":3}"#).status, 204);
        // Another user's connection with the same client id does not get the session.
        let (mut m, ack) = MqttClient::connect_with(
            s.mqtt_port,
            tessera_protocol::mqtt::Connect {
                version: v,
                client_id: id.clone(),
                clean_start: false,
                keep_alive: 30,
                username: Some("mallory".into()),
                password: Some(b"pw".to_vec()),
                will: None,
                properties: Default::default(),
            },
        );
        assert_eq!(ack.map(|a| (a.code, a.session_present)), Some((0, false)));
        assert!(
            m.next_publish(Duration::from_millis(300)).is_none(),
            "{v:?}"
        );
        // Mallory's connection with a clean session discarded the owner's, which is gone now.
        hang_up(m);
        let (c, ack) = connect_session(&s, v, &id, false, None);
        assert!(!ack.session_present, "{v:?}: discarded by another user");
        drop(c);

        // Again, without the other user: the owner gets everything back in order.
        let (mut c, _) = connect_session(&s, v, &id, false, None);
        assert_eq!(c.subscribe(&filters), vec![1]);
        let current = c.next_publish(WAIT).expect("current record");
        assert_eq!(json_of(&current.payload)["temp"], json!(3), "{v:?}");
        c.send(&Packet::PubAck(tessera_protocol::mqtt::Ack::new(
            current.packet_id.unwrap(),
        )));
        assert_eq!(s.client().put_json(&path, r#"{"temp":4}"#).status, 204);
        let p4 = c.next_publish(WAIT).expect("delivery of 4");
        assert_eq!(json_of(&p4.payload)["temp"], json!(4), "{v:?}");
        hang_up(c);
        assert_eq!(s.client().put_json(&path, r#"{"temp":5}"#).status, 204);
        s = restart(s, kill);
        assert_eq!(s.client().put_json(&path, r#"{"temp":6}"#).status, 204);
        let (mut c, ack) = connect_session(&s, v, &id, false, None);
        assert!(
            ack.session_present,
            "{v:?}: session present after the restart"
        );
        // The unacknowledged delivery again (its id, DUP), then the change made before the
        // restart (from the audit log), then the one after it.
        for (want, again) in [(4, true), (5, false), (6, false)] {
            let p = c
                .next_publish(WAIT)
                .unwrap_or_else(|| panic!("{v:?}: the delivery of {want}\n{}", s.output()));
            assert_eq!(json_of(&p.payload)["temp"], json!(want), "{v:?}");
            assert_eq!(p.dup, again, "{v:?} {want}");
            if again {
                assert_eq!(p.packet_id, p4.packet_id, "{v:?}");
            }
            c.send(&Packet::PubAck(tessera_protocol::mqtt::Ack::new(
                p.packet_id.unwrap(),
            )));
        }
        assert!(
            c.next_publish(Duration::from_millis(300)).is_none(),
            "{v:?}"
        );
        // Still subscribed.
        assert_eq!(s.client().put_json(&path, r#"{"temp":7}"#).status, 204);
        let p = c.next_publish(WAIT).expect("a new change");
        assert_eq!(json_of(&p.payload)["temp"], json!(7), "{v:?}");
        drop(c);
    }

    // An MQTT 5 session whose expiry passes while the server is down is gone.
    let properties = tessera_protocol::mqtt::Properties {
        session_expiry_interval: Some(1),
        ..Default::default()
    };
    let (mut c, _) = connect_full(&s, Version::V5, "brief", false, None, properties.clone());
    assert_eq!(c.subscribe(&[("Sensor/b", QoS::AtLeastOnce)]), vec![1]);
    hang_up(c);
    assert_eq!(s.terminate(), Some(0));
    std::thread::sleep(Duration::from_millis(1200));
    let s = start.start();
    let (_c, ack) = connect_full(&s, Version::V5, "brief", false, None, properties);
    assert!(!ack.session_present, "expired while the server was down");
}

/// The role's attribute limits on MQTT: deliveries (retained and live, QoS 0 and 1) carry only
/// the attributes it may read, a retained publish naming one it may not write is refused (0x87,
/// nothing written), a change of role reaches the live session, and a dropped user's
/// connections end.
#[test]
fn deliveries_and_publishes_follow_the_roles_attribute_permissions() {
    let (s, _a, _r, mut ops) = shop_with_kim();
    let mut admin = client(&s, Version::V5, "admin-pub");
    let mut subs = Vec::new();
    for (id, qos) in [("kim-0", QoS::AtMostOnce), ("kim-1", QoS::AtLeastOnce)] {
        let (mut kim, ack) =
            MqttClient::connect(s.mqtt_port, Version::V5, id, Some(("kim", "pw-kim")));
        assert_eq!(ack.map(|a| a.code), Some(0));
        assert_eq!(kim.subscribe(&[("Item/#", qos)]), vec![qos as u8]);
        let retained = kim.next_publish(WAIT).expect("the retained record");
        assert_eq!(
            json_of(&retained.payload),
            json!({"id": "a", "name": "apple"})
        );
        subs.push(kim);
    }
    assert_eq!(
        admin.publish(
            "Item/b",
            br#"{"name":"bean","price":2}"#,
            QoS::AtLeastOnce,
            true
        ),
        Some(0)
    );
    for kim in &mut subs {
        let p = kim.next_publish(WAIT).expect("a delivery");
        assert_eq!(json_of(&p.payload), json!({"id": "b", "name": "bean"}));
    }
    // Writing price is refused; the record is as it was.
    let kim = &mut subs[1];
    assert_eq!(
        kim.publish(
            "Item/b",
            br#"{"name":"bean","price":0}"#,
            QoS::AtLeastOnce,
            true
        ),
        Some(0x87)
    );
    assert_eq!(s.client().get("/Item/b").json()["price"], 2);
    assert_eq!(
        kim.publish("Item/e", br#"{"name":"egg"}"#, QoS::AtLeastOnce, true),
        Some(0)
    );
    for kim in &mut subs {
        let p = kim.next_publish(WAIT).expect("its own write");
        assert_eq!(json_of(&p.payload), json!({"id": "e", "name": "egg"}));
    }
    // May read price now: the next delivery has it.
    let (st, _) = ops.operation(&json!({"operation": "alter_role", "id": "shopper",
        "permission": hidden_price(true)}));
    assert_eq!(st, 200);
    assert_eq!(
        admin.publish(
            "Item/c",
            br#"{"name":"corn","price":3}"#,
            QoS::AtLeastOnce,
            true
        ),
        Some(0)
    );
    for kim in &mut subs {
        let p = kim.next_publish(WAIT).expect("a delivery");
        assert_eq!(json_of(&p.payload)["price"], 3);
    }
    // Dropped: its connections end (DISCONNECT 0x87 in MQTT 5), within about a second.
    let (st, _) = ops.operation(&json!({"operation": "drop_user", "username": "kim"}));
    assert_eq!(st, 200);
    for kim in &mut subs {
        loop {
            match kim.recv(WAIT) {
                Some(Packet::Disconnect(d)) => {
                    assert_eq!(d.reason, 0x87);
                    break;
                }
                Some(Packet::Publish(p)) => panic!("delivered to a dropped user: {p:?}"),
                Some(_) => continue,
                None => panic!("no DISCONNECT"),
            }
        }
        assert!(kim.recv(Duration::from_secs(2)).is_none(), "closed");
    }
}

/// What MQTT 3.1.1 and 5 require of a broker at connect, subscribe and publish.
#[test]
fn connect_subscribe_and_publish_as_the_standard_says() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    // 3.1.1: a session to keep needs a client id (MQTT-3.1.3-8): CONNACK 0x02.
    let connect = |version, client_id: &str, clean_start| tessera_protocol::mqtt::Connect {
        version,
        client_id: client_id.to_owned(),
        clean_start,
        keep_alive: 30,
        username: Some(ADMIN.0.to_owned()),
        password: Some(ADMIN.1.as_bytes().to_vec()),
        will: None,
        properties: Default::default(),
    };
    let (_c, ack) = MqttClient::connect_with(s.mqtt_port, connect(Version::V311, "", false));
    assert_eq!(ack.map(|a| a.code), Some(0x02));
    // MQTT 5 may: the broker assigns one.
    let (_c, ack) = MqttClient::connect_with(s.mqtt_port, connect(Version::V5, "", false));
    let ack = ack.expect("CONNACK");
    assert_eq!(ack.code, 0);
    assert!(ack.properties.assigned_client_identifier.is_some());
    // Subscription identifiers are not available, and CONNACK says so: sending one is a
    // protocol error.
    assert_eq!(ack.properties.subscription_identifier_available, Some(0));
    let mut c = client(&s, Version::V5, "sub-id");
    c.send(&Packet::Subscribe(tessera_protocol::mqtt::Subscribe {
        packet_id: 1,
        properties: tessera_protocol::mqtt::Properties {
            subscription_identifiers: vec![7],
            ..Default::default()
        },
        filters: vec![(
            "Sensor/#".into(),
            tessera_protocol::mqtt::Options::qos(QoS::AtMostOnce),
        )],
    }));
    assert!(matches!(c.recv(WAIT), Some(Packet::Disconnect(d)) if d.reason == 0xA1));

    // Retain Handling: 0 sends the current records at every subscribe, 1 at a new one only,
    // 2 never.
    assert_eq!(
        s.client().put_json("/Sensor/r1", r#"{"temp":1}"#).status,
        204
    );
    let mut c = client(&s, Version::V5, "handling");
    let subscribe = |c: &mut MqttClient, id: u16, handling: u8| {
        let mut options = tessera_protocol::mqtt::Options::qos(QoS::AtMostOnce);
        options.retain_handling = handling;
        c.send(&Packet::Subscribe(tessera_protocol::mqtt::Subscribe {
            packet_id: id,
            properties: Default::default(),
            filters: vec![("Sensor/r1".into(), options)],
        }));
        assert!(matches!(c.recv(WAIT), Some(Packet::SubAck(_))));
        c.next_publish(Duration::from_millis(500)).is_some()
    };
    assert!(!subscribe(&mut c, 1, 2), "2: never");
    assert!(
        !subscribe(&mut c, 2, 1),
        "1: not for a subscription that exists"
    );
    assert!(subscribe(&mut c, 3, 0), "0: every time");
    let mut fresh = client(&s, Version::V5, "handling-new");
    assert!(subscribe(&mut fresh, 1, 1), "1: for a new one");

    // 3.1.1 has no refusal codes: a refused publish closes the connection.
    let mut old = client(&s, Version::V311, "refused");
    old.send(&Packet::Publish(tessera_protocol::mqtt::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "Secret/x".into(),
        packet_id: Some(1),
        properties: Default::default(),
        payload: b"{}".to_vec(),
    }));
    assert!(old.recv(WAIT).is_none(), "no PUBACK, and closed");
}

/// A message reaches subscribers at the lower of its publish's QoS and their subscription's,
/// with the MQTT 5 properties it was published (or willed) with.
#[test]
fn messages_keep_their_qos_and_mqtt5_properties() {
    use tessera_protocol::mqtt::{Properties, Publish, Will};
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut v5 = client(&s, Version::V5, "props-5");
    assert_eq!(v5.subscribe(&[("Sensor/#", QoS::ExactlyOnce)]), vec![2]);
    let mut v3 = client(&s, Version::V311, "props-3");
    assert_eq!(v3.subscribe(&[("Sensor/#", QoS::AtLeastOnce)]), vec![1]);
    let sent = Properties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("Sensor/reply".into()),
        correlation_data: Some(b"c-1".to_vec()),
        user_properties: vec![("trace".into(), "t-9".into())],
        ..Properties::default()
    };
    let mut publisher = client(&s, Version::V5, "props-pub");
    publisher.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "Sensor/p1".into(),
        packet_id: Some(1),
        properties: sent.clone(),
        payload: br#"{"temp":3}"#.to_vec(),
    }));
    assert!(matches!(publisher.recv(WAIT), Some(Packet::PubAck(a)) if a.reason == 0));
    let got = v5.next_publish(WAIT).expect("the message");
    assert_eq!(got.qos, QoS::AtLeastOnce, "the lower of 1 and 2");
    assert_eq!(got.properties.payload_format_indicator, Some(1));
    assert_eq!(got.properties.content_type, sent.content_type);
    assert_eq!(got.properties.response_topic, sent.response_topic);
    assert_eq!(got.properties.correlation_data, sent.correlation_data);
    assert_eq!(got.properties.user_properties, sent.user_properties);
    let old = v3.next_publish(WAIT).expect("the message, in 3.1.1");
    assert_eq!(
        (old.qos, old.payload.as_slice()),
        (QoS::AtLeastOnce, &br#"{"temp":3}"#[..])
    );
    // Published at QoS 0: delivered at QoS 0, unnumbered.
    assert_eq!(
        publisher.publish("Sensor/p2", b"{}", QoS::AtMostOnce, false),
        None
    );
    let zero = v5.next_publish(WAIT).expect("a QoS 0 message");
    assert_eq!((zero.qos, zero.packet_id), (QoS::AtMostOnce, None));

    // A will's properties go with it.
    let will = Will {
        topic: "Sensor/gone".into(),
        payload: b"bye".to_vec(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("why".into(), "crash".into())],
            ..Properties::default()
        },
    };
    let (doomed, ack) = connect_full(
        &s,
        Version::V5,
        "doomed",
        true,
        Some(will),
        Properties::default(),
    );
    assert_eq!(ack.code, 0);
    hang_up(doomed);
    let willed = v5.next_publish(WAIT).expect("the will");
    assert_eq!(willed.payload, b"bye");
    assert_eq!(
        willed.properties.content_type.as_deref(),
        Some("text/plain")
    );
    assert_eq!(
        willed.properties.user_properties,
        vec![("why".to_owned(), "crash".to_owned())]
    );
}

/// MQTT 5 DISCONNECT: a session expiry of 0 ends a kept session there and then; reason 0x04
/// sends the will as an unexpected end would.
#[test]
fn disconnect_sets_the_session_expiry_and_may_ask_for_the_will() {
    use tessera_protocol::mqtt::{Disconnect, Properties, Will};
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let (mut kept, ack) = connect_session(&s, Version::V5, "leaver", false, None);
    assert_eq!(ack.code, 0);
    assert_eq!(kept.subscribe(&[("Sensor/#", QoS::AtLeastOnce)]), vec![1]);
    kept.send(&Packet::Disconnect(Disconnect {
        reason: 0,
        properties: Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        },
    }));
    hang_up(kept);
    let (_again, ack) = connect_session(&s, Version::V5, "leaver", false, None);
    assert!(
        !ack.session_present,
        "the session ended with its connection"
    );

    let mut watcher = client(&s, Version::V5, "will-watcher");
    assert_eq!(watcher.subscribe(&[("Sensor/#", QoS::AtMostOnce)]), vec![0]);
    let will = Will {
        topic: "Sensor/w".into(),
        payload: b"asked".to_vec(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    };
    let (mut asking, _) = connect_session(&s, Version::V5, "asker", true, Some(will));
    asking.send(&Packet::Disconnect(Disconnect {
        reason: 0x04,
        properties: Properties::default(),
    }));
    assert_eq!(
        watcher.next_publish(WAIT).expect("the will").payload,
        b"asked"
    );
}

/// MQTT 5 subscription options: No Local keeps a client's own messages from it; Retain As
/// Published delivers a record's changes (retained state) with RETAIN set, messages without.
#[test]
fn no_local_and_retain_as_published() {
    use tessera_protocol::mqtt::{Options, Subscribe};
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let subscribe = |c: &mut MqttClient, options: Options| {
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: vec![("Sensor/#".into(), options)],
        }));
        assert!(matches!(c.recv(WAIT), Some(Packet::SubAck(a)) if a.codes == vec![0]));
    };
    let mut local = client(&s, Version::V5, "no-local");
    let mut options = Options::qos(QoS::AtMostOnce);
    options.no_local = true;
    subscribe(&mut local, options);
    let mut plain = client(&s, Version::V5, "plain");
    subscribe(&mut plain, Options::qos(QoS::AtMostOnce));
    let mut kept_flag = client(&s, Version::V5, "rap");
    let mut options = Options::qos(QoS::AtMostOnce);
    options.retain_as_published = true;
    subscribe(&mut kept_flag, options);

    local.publish("Sensor/n1", b"{\"from\":\"local\"}", QoS::AtMostOnce, false);
    plain.publish("Sensor/n2", b"{\"from\":\"plain\"}", QoS::AtMostOnce, false);
    // The no-local client gets the other's message only; the plain one gets both, its own too.
    let got = local.next_publish(WAIT).expect("the other's message");
    assert_eq!(got.topic, "Sensor/n2");
    assert!(local.next_publish(Duration::from_millis(300)).is_none());
    // (Two publishers to two records: in either order.)
    let mut topics: Vec<String> = (0..2)
        .map(|_| plain.next_publish(WAIT).expect("a message").topic)
        .collect();
    topics.sort();
    assert_eq!(topics, ["Sensor/n1", "Sensor/n2"]);
    // Retain As Published: the messages without RETAIN, a record's change with it.
    for _ in 0..2 {
        assert!(!kept_flag.next_publish(WAIT).expect("a message").retain);
    }
    assert_eq!(
        s.client().put_json("/Sensor/r", r#"{"temp":1}"#).status,
        204
    );
    assert!(kept_flag.next_publish(WAIT).expect("the change").retain);
    assert!(!plain.next_publish(WAIT).expect("the change").retain);
}

/// MQTT 5 Will Delay Interval: the will goes out when the delay ends (or the session, sooner),
/// and not at all when the session resumes first.
#[test]
fn a_will_waits_out_its_delay_unless_the_session_resumes() {
    use tessera_protocol::mqtt::{Properties, Will};
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut watcher = client(&s, Version::V5, "delay-watcher");
    assert_eq!(watcher.subscribe(&[("Sensor/#", QoS::AtMostOnce)]), vec![0]);
    let will = |payload: &[u8], delay: u32| Will {
        topic: "Sensor/w".into(),
        payload: payload.to_vec(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(delay),
            ..Properties::default()
        },
    };
    // A session kept an hour, a will delayed a second: not at once, then after the second.
    let (c, _) = connect_session(&s, Version::V5, "delayed", false, Some(will(b"late", 1)));
    hang_up(c);
    assert!(
        watcher.next_publish(Duration::from_millis(300)).is_none(),
        "not yet"
    );
    assert_eq!(
        watcher.next_publish(WAIT).expect("the will").payload,
        b"late"
    );
    // The session resumes within the delay: no will.
    let (c, _) = connect_session(&s, Version::V5, "back", false, Some(will(b"never", 2)));
    hang_up(c);
    let (_again, ack) = connect_session(&s, Version::V5, "back", false, None);
    assert!(ack.session_present);
    assert!(watcher.next_publish(Duration::from_secs(3)).is_none());
    // A session that ends with its connection ends the delay too: the will goes at once.
    let (c, _) = connect_session(&s, Version::V5, "short", true, Some(will(b"now", 60)));
    hang_up(c);
    assert_eq!(
        watcher.next_publish(WAIT).expect("the will").payload,
        b"now"
    );
}

/// A QoS 1 subscriber that falls behind (its Receive Maximum full, it acknowledges nothing)
/// while more messages arrive than a QoS 0 inbox holds loses none of them: once it catches up
/// it gets every one, in publishing order.
#[test]
fn a_lagging_qos1_subscriber_loses_nothing() {
    use tessera_protocol::mqtt::{Ack, Properties};
    const N: usize = 3_000;
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let properties = Properties {
        receive_maximum: Some(10),
        ..Properties::default()
    };
    let (mut slow, ack) = connect_full(&s, Version::V5, "slow", true, None, properties);
    assert_eq!(ack.code, 0);
    assert_eq!(slow.subscribe(&[("Sensor/q", QoS::AtLeastOnce)]), vec![1]);
    let mut publisher = client(&s, Version::V5, "fast");
    for i in 0..N {
        let payload = format!("{{\"n\":{i}}}");
        assert_eq!(
            publisher.publish("Sensor/q", payload.as_bytes(), QoS::AtLeastOnce, false),
            Some(0)
        );
    }
    for want in 0..N {
        let p = slow
            .next_publish(WAIT)
            .unwrap_or_else(|| panic!("message {want} of {N} never came"));
        assert_eq!(json_of(&p.payload)["n"], want);
        slow.send(&Packet::PubAck(Ack::new(p.packet_id.unwrap())));
    }
}

/// Shared subscriptions (`$share/{group}/{filter}`): each message goes to one member of the
/// group, taking turns; plain subscribers still get every one; a shared subscription gets no
/// current records, and No Local on one is a protocol error.
#[test]
fn shared_subscriptions_take_turns() {
    use tessera_protocol::mqtt::{Options, Subscribe};
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    assert_eq!(
        s.client().put_json("/Sensor/old", r#"{"temp":1}"#).status,
        204
    );
    let mut members: Vec<MqttClient> = ["m1", "m2"]
        .iter()
        .map(|id| {
            let mut m = client(&s, Version::V5, id);
            assert_eq!(
                m.subscribe(&[("$share/workers/Sensor/#", QoS::AtLeastOnce)]),
                vec![1]
            );
            m
        })
        .collect();
    let mut everyone = client(&s, Version::V311, "everyone");
    assert_eq!(
        everyone.subscribe(&[("Sensor/#", QoS::AtMostOnce)]),
        vec![0]
    );
    assert!(everyone.next_publish(WAIT).is_some(), "the current record");
    let mut publisher = client(&s, Version::V5, "producer");
    const N: usize = 12;
    for i in 0..N {
        let topic = format!("Sensor/job{i}");
        assert_eq!(
            publisher.publish(&topic, b"{}", QoS::AtLeastOnce, false),
            Some(0)
        );
    }
    for _ in 0..N {
        assert!(everyone.next_publish(WAIT).is_some());
    }
    let mut got = Vec::new();
    for m in &mut members {
        let mut mine = Vec::new();
        while let Some(p) = m.next_publish(Duration::from_millis(500)) {
            mine.push(p.topic);
        }
        assert!(!mine.is_empty(), "every member takes a turn");
        assert!(
            !mine.contains(&"Sensor/old".to_owned()),
            "no current records"
        );
        got.extend(mine);
    }
    got.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("Sensor/job{i}")).collect();
    want.sort();
    assert_eq!(got, want, "each message to exactly one member");
    // No Local on a shared subscription: a protocol error.
    let mut bad = client(&s, Version::V5, "bad-share");
    let mut options = Options::qos(QoS::AtMostOnce);
    options.no_local = true;
    bad.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![("$share/g/Sensor/#".into(), options)],
    }));
    assert!(matches!(bad.recv(WAIT), Some(Packet::Disconnect(d)) if d.reason == 0x82));
    // A malformed share is refused in its SUBACK.
    let mut odd = client(&s, Version::V5, "odd-share");
    assert_eq!(
        odd.subscribe(&[("$share/+/Sensor/#", QoS::AtMostOnce)]),
        vec![0x8F]
    );
}

/// A member of a share group that leaves (clean session) before acknowledging its QoS 1
/// deliveries: the group's other member gets them.
#[test]
fn a_departing_share_members_unacknowledged_messages_go_to_another_member() {
    const N: usize = 10;
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut leaver = client(&s, Version::V5, "leaver");
    let mut stayer = client(&s, Version::V5, "stayer");
    for m in [&mut leaver, &mut stayer] {
        assert_eq!(
            m.subscribe(&[("$share/g/Sensor/#", QoS::AtLeastOnce)]),
            vec![1]
        );
    }
    let mut publisher = client(&s, Version::V5, "boss");
    for i in 0..N {
        let topic = format!("Sensor/task{i}");
        assert_eq!(
            publisher.publish(&topic, b"{}", QoS::AtLeastOnce, false),
            Some(0)
        );
    }
    // The leaver takes its turns and acknowledges none, then goes.
    let mut taken = Vec::new();
    while let Some(p) = leaver.next_publish(Duration::from_millis(500)) {
        taken.push(p.topic);
    }
    assert!(!taken.is_empty(), "the leaver took its turns");
    drop(leaver);
    let mut got = Vec::new();
    while let Some(p) = stayer.next_publish(Duration::from_secs(2)) {
        stayer.send(&Packet::PubAck(tessera_protocol::mqtt::Ack::new(
            p.packet_id.unwrap(),
        )));
        got.push(p.topic);
    }
    got.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("Sensor/task{i}")).collect();
    want.sort();
    assert_eq!(got, want, "the stayer gets its own and the leaver's");
}

/// The server's resident memory, in MiB.
fn rss_mib(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024
}

/// A kept session whose client stops reading while 100,000 QoS 1 messages are published to its
/// topic: the broker ends the connection once 65,536 wait (0x97), the session's backlog takes
/// them and the rest (spilling to disk past 10,000), and the client, reading again and
/// resuming the session, gets every one, in order.
#[test]
fn a_stalled_kept_session_gets_every_acknowledged_message_in_order() {
    const N: usize = 100_000;
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    // A Receive Maximum of 100: what it does not take waits in the broker.
    let session = || {
        let properties = tessera_protocol::mqtt::Properties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(100),
            ..Default::default()
        };
        let (c, ack) = MqttClient::connect_with(
            s.mqtt_port,
            tessera_protocol::mqtt::Connect {
                version: Version::V5,
                client_id: "stalled".into(),
                clean_start: false,
                keep_alive: 30,
                username: Some(ADMIN.0.to_owned()),
                password: Some(ADMIN.1.as_bytes().to_vec()),
                will: None,
                properties,
            },
        );
        let out = s.output();
        let tail = &out[out.len().saturating_sub(3000)..];
        (c, ack.unwrap_or_else(|| panic!("no CONNACK: {tail}")))
    };
    let (mut sub, ack) = session();
    assert_eq!(ack.code, 0);
    assert_eq!(sub.subscribe(&[("Sensor/feed", QoS::AtLeastOnce)]), vec![1]);
    let before = rss_mib(&s);
    // Another client publishes them at QoS 1, up to 500 unacknowledged at a time (mosquitto_pub
    // -l cannot be used: past its own queue of a few thousand, it drops lines); this
    // subscriber reads nothing meanwhile.
    let t0 = std::time::Instant::now();
    let (mut publisher, ack) = MqttClient::connect(s.mqtt_port, Version::V5, "feeder", Some(ADMIN));
    assert_eq!(ack.map(|a| a.code), Some(0));
    let mut unacked = 0;
    for n in 0..N {
        publisher.send(&Packet::Publish(tessera_protocol::mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "Sensor/feed".into(),
            packet_id: Some((n % 60_000) as u16 + 1),
            properties: Default::default(),
            payload: format!("{{\"n\":{n}}}").into_bytes(),
        }));
        unacked += 1;
        while unacked >= 500 || (n + 1 == N && unacked > 0) {
            match publisher.recv(Duration::from_secs(10)) {
                Some(Packet::PubAck(a)) => {
                    assert_eq!(a.reason, 0);
                    unacked -= 1;
                }
                other => panic!("{other:?} instead of a PUBACK"),
            }
        }
    }
    eprintln!("published in {:?}", t0.elapsed());
    // The broker ends the stalled connection and its session takes what waits, spilling past
    // its first 10,000 to a file (unlinked once open: seen among the server's descriptors).
    let spilled = || {
        std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
            .unwrap()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| target.to_string_lossy().contains(".backlog"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !spilled() {
        assert!(std::time::Instant::now() < deadline, "no backlog file");
        std::thread::sleep(Duration::from_millis(50));
    }
    let peak = rss_mib(&s);
    eprintln!("server RSS: {before} MiB before, {peak} MiB with {N} messages owed");
    // Reading again: what the connection still carries, then the rest on resuming.
    let mut first_seen: Vec<usize> = Vec::with_capacity(N);
    let mut got = vec![false; N];
    let mut resumes = 0;
    let mut trace = Vec::new();
    while first_seen.len() < N {
        match sub.recv(Duration::from_secs(3)) {
            Some(Packet::Publish(p)) => {
                if let Some(id) = p.packet_id {
                    // Unacknowledged if the broker has ended the connection: it goes again.
                    sub.try_send(&Packet::PubAck(tessera_protocol::mqtt::Ack::new(id)));
                }
                let v: Value = serde_json::from_slice(&p.payload).unwrap();
                let n = v["n"].as_u64().unwrap() as usize;
                trace.push((n, p.dup, resumes));
                if !std::mem::replace(&mut got[n], true) {
                    first_seen.push(n);
                }
            }
            Some(_) => {}
            None => {
                resumes += 1;
                assert!(
                    resumes < 10,
                    "{} of {N} after {resumes} resumes",
                    first_seen.len()
                );
                let (again, ack) = session();
                assert_eq!(ack.code, 0);
                assert!(ack.session_present);
                sub = again;
            }
        }
    }
    let disorder = first_seen.windows(2).position(|w| w[0] > w[1]);
    if let Some(i) = disorder {
        let at = trace.iter().position(|t| t.0 == first_seen[i + 1]).unwrap();
        eprintln!(
            "TRACE {:?}",
            &trace[at.saturating_sub(30)..(at + 30).min(trace.len())]
        );
    }
    assert!(
        disorder.is_none(),
        "not in order at {disorder:?}: {:?}; {resumes} resumes",
        disorder.map(|i| &first_seen[i.saturating_sub(3)..(i + 4).min(N)])
    );
    eprintln!("resumed {resumes} times");
    // More than 65,536 waited: the connection was ended, and the session took them.
    assert!(resumes >= 1);
    assert!(s.output().contains("quota exceeded"), "{}", s.output());
    // The owed deliveries waited on disk, not in memory.
    assert!(peak < before + 256, "{before} MiB -> {peak} MiB");
}

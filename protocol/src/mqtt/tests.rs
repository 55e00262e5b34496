use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

const MAX: usize = 1 << 20;

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9/_ é-]{0,12}"
}

fn topic() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}(/[a-z0-9]{1,6}){0,3}"
}

fn filter() -> impl Strategy<Value = String> {
    prop_oneof![
        topic(),
        topic().prop_map(|t| format!("{t}/#")),
        topic().prop_map(|t| format!("{t}/+/x")),
        Just("#".to_owned()),
    ]
}

fn props(version: Version) -> BoxedStrategy<Properties> {
    if version == Version::V311 {
        return Just(Properties::default()).boxed();
    }
    (
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        vec((text(), text()), 0..3),
        proptest::option::of(1..u16::MAX),
    )
        .prop_map(|(expiry, ct, user, alias)| Properties {
            message_expiry_interval: expiry,
            content_type: ct,
            user_properties: user,
            topic_alias: alias,
            ..Properties::default()
        })
        .boxed()
}

/// Properties valid in every packet: user properties (and a reason string where allowed).
fn common_props(version: Version) -> BoxedStrategy<Properties> {
    if version == Version::V311 {
        return Just(Properties::default()).boxed();
    }
    vec((text(), text()), 0..3)
        .prop_map(|user| Properties {
            user_properties: user,
            ..Properties::default()
        })
        .boxed()
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V311), Just(Version::V5)]
}

/// A PUBLISH valid for `v`, with properties.
fn publish(v: Version) -> BoxedStrategy<Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic(),
        1..u16::MAX,
        props(v),
    )
        .prop_flat_map(move |(q, dup, retain, t, pid, p)| {
            vec(any::<u8>(), 0..64).prop_map(move |payload| Publish {
                dup: dup && q != QoS::AtMostOnce,
                qos: q,
                retain,
                topic: t.clone(),
                packet_id: (q != QoS::AtMostOnce).then_some(pid),
                properties: p.clone(),
                payload,
            })
        })
        .boxed()
}

fn packet(v: Version) -> BoxedStrategy<Packet> {
    let id = 1..u16::MAX;
    let publish = publish(v).prop_map(Packet::Publish);
    let ack = (id.clone(), 0..4u8, common_props(v)).prop_map(move |(pid, kind, p)| {
        let mut a = Ack::new(pid);
        if v == Version::V5 {
            a.reason = if kind == 0 { 0 } else { 0x10 };
            a.properties = p;
        }
        match kind {
            0 => Packet::PubAck(a),
            1 => Packet::PubRec(a),
            2 => Packet::PubRel(a),
            _ => Packet::PubComp(a),
        }
    });
    let subscribe = (
        id.clone(),
        vec((filter(), qos(), any::<bool>(), 0..3u8), 1..4),
        common_props(v),
    )
        .prop_map(move |(pid, fs, p)| {
            Packet::Subscribe(Subscribe {
                packet_id: pid,
                properties: p,
                filters: fs
                    .into_iter()
                    .map(|(f, q, nl, rh)| {
                        let mut o = Options::qos(q);
                        if v == Version::V5 {
                            o.no_local = nl;
                            o.retain_handling = rh;
                        }
                        (f, o)
                    })
                    .collect(),
            })
        });
    let suback = (
        id.clone(),
        vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)], 1..4),
    )
        .prop_map(|(pid, codes)| {
            Packet::SubAck(SubAck {
                packet_id: pid,
                properties: Properties::default(),
                codes,
            })
        });
    let unsubscribe = (id.clone(), vec(filter(), 1..4)).prop_map(|(pid, filters)| {
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid,
            properties: Properties::default(),
            filters,
        })
    });
    let unsuback = (id, vec(Just(0u8), 1..3)).prop_map(move |(pid, codes)| {
        Packet::UnsubAck(UnsubAck {
            packet_id: pid,
            properties: Properties::default(),
            codes: if v == Version::V5 { codes } else { vec![] },
        })
    });
    let connack = (any::<bool>(), 0..6u8).prop_map(|(sp, code)| {
        Packet::ConnAck(ConnAck {
            session_present: sp,
            code,
            properties: Properties::default(),
        })
    });
    let disconnect = (0..2u8).prop_map(move |r| {
        Packet::Disconnect(Disconnect {
            reason: if v == Version::V5 { r * 0x04 } else { 0 },
            properties: Properties::default(),
        })
    });
    let mut all = vec![
        publish.boxed(),
        ack.boxed(),
        subscribe.boxed(),
        suback.boxed(),
        unsubscribe.boxed(),
        unsuback.boxed(),
        connack.boxed(),
        disconnect.boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
    ];
    if v == Version::V5 {
        all.push(
            Just(Packet::Auth(Auth {
                reason: 0x18,
                properties: Properties::default(),
            }))
            .boxed(),
        );
    }
    proptest::strategy::Union::new(all).boxed()
}

fn connect(v: Version) -> impl Strategy<Value = Connect> {
    (
        text(),
        any::<bool>(),
        any::<u16>(),
        proptest::option::of(text()),
        proptest::option::of(vec(any::<u8>(), 0..8)),
        proptest::option::of((topic(), vec(any::<u8>(), 0..8), qos(), any::<bool>())),
    )
        .prop_map(move |(id, clean, ka, user, pass, will)| Connect {
            version: v,
            client_id: id,
            clean_start: clean,
            keep_alive: ka,
            // 3.1.1 needs a user name with a password.
            username: if v == Version::V311 && pass.is_some() {
                Some(user.unwrap_or_default())
            } else {
                user
            },
            password: pass,
            will: will.map(|(t, payload, q, retain)| Will {
                topic: t,
                payload,
                qos: q,
                retain,
                properties: Properties::default(),
            }),
            properties: Properties::default(),
        })
}

proptest! {
    /// Every packet decodes to itself after encoding, also when its bytes arrive one at a time.
    #[test]
    fn round_trip((v, p) in version().prop_flat_map(|v| (Just(v), packet(v)))) {
        let mut bytes = Vec::new();
        encode(&p, v, &mut bytes);
        let (back, used) = decode(&bytes, Some(v), MAX).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&back, &p);
        for cut in 0..bytes.len() {
            prop_assert_eq!(decode(&bytes[..cut], Some(v), MAX).unwrap(), None);
        }
    }

    /// A PUBLISH read in place has the topic, packet id and payload of its full decode.
    #[test]
    fn publish_read_in_place((v, p) in version().prop_flat_map(|v| (Just(v), publish(v)))) {
        let mut bytes = Vec::new();
        encode(&Packet::Publish(p.clone()), v, &mut bytes);
        let raw = split(&bytes, MAX).unwrap().unwrap();
        prop_assert_eq!((raw.first >> 4, raw.len), (3, bytes.len()));
        let r = super::publish::read_ref(raw.first & 0x0f, raw.body, v).unwrap();
        prop_assert_eq!(r.qos, p.qos);
        prop_assert_eq!(r.topic, p.topic.as_bytes());
        prop_assert_eq!(r.packet_id, p.packet_id);
        prop_assert_eq!(r.payload, &p.payload[..]);
    }

    #[test]
    fn connect_round_trip(c in version().prop_flat_map(connect)) {
        let mut bytes = Vec::new();
        let p = Packet::Connect(Box::new(c));
        let v = match &p { Packet::Connect(c) => c.version, _ => unreachable!() };
        encode(&p, v, &mut bytes);
        let (back, _) = decode(&bytes, None, MAX).unwrap().unwrap();
        prop_assert_eq!(back, p);
    }

    /// Arbitrary bytes never panic, in any state, and a decoded packet never claims more bytes
    /// than were given.
    #[test]
    fn garbage_never_panics(bytes in vec(any::<u8>(), 0..64), state in 0..3u8) {
        let v = match state { 0 => None, 1 => Some(Version::V311), _ => Some(Version::V5) };
        if let Ok(Some((_, used))) = decode(&bytes, v, MAX) {
            prop_assert!(used <= bytes.len());
        }
    }
}

#[test]
fn malformed_packets_are_refused() {
    let v5 = Some(Version::V5);
    let v3 = Some(Version::V311);
    let bad: &[(&[u8], Option<Version>)] = &[
        // Something other than CONNECT first.
        (&[0xc0, 0x00], None),
        // CONNECT with the reserved flag set.
        (
            &[
                0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x01, 0, 60, 0, 0,
            ],
            None,
        ),
        // Will QoS without a will.
        (
            &[
                0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x08, 0, 60, 0, 0,
            ],
            None,
        ),
        // 3.1.1 password without a user name.
        (
            &[
                0x10, 0x0e, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x40, 0, 60, 0, 0, 0, 0,
            ],
            None,
        ),
        // A second CONNECT.
        (
            &[
                0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0,
            ],
            v3,
        ),
        // PUBLISH QoS 3.
        (&[0x36, 0x05, 0, 1, b'a', 0, 1], v3),
        // PUBLISH QoS 0 with DUP.
        (&[0x38, 0x03, 0, 1, b'a'], v3),
        // PUBLISH with a wildcard in its topic.
        (&[0x30, 0x03, 0, 1, b'#'], v3),
        // PUBLISH QoS 1 with packet id 0.
        (&[0x32, 0x05, 0, 1, b'a', 0, 0], v3),
        // PUBREL with the wrong fixed-header flags.
        (&[0x60, 0x02, 0, 1], v3),
        // SUBSCRIBE without filters, and with a bad filter.
        (&[0x82, 0x02, 0, 1], v3),
        (&[0x82, 0x07, 0, 1, 0, 2, b'a', b'#', 0], v3),
        // SUBSCRIBE with reserved option bits (3.1.1) and retain handling 3 (5).
        (&[0x82, 0x06, 0, 1, 0, 1, b'a', 0x04], v3),
        (&[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x30], v5),
        // Invalid UTF-8, and U+0000, in a topic.
        (&[0x30, 0x03, 0, 1, 0xff], v3),
        (&[0x30, 0x03, 0, 1, 0x00], v3),
        // A 5-byte remaining length.
        (&[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f], v3),
        // MQTT 5 property not allowed in PUBLISH (session expiry), and a duplicated one.
        (&[0x30, 0x09, 0, 1, b'a', 5, 0x11, 0, 0, 0, 1], v5),
        (&[0x30, 0x08, 0, 1, b'a', 4, 0x01, 1, 0x01, 1], v5),
        // AUTH in 3.1.1; packet type 0.
        (&[0xf0, 0x00], v3),
        (&[0x00, 0x00], v3),
        // An acknowledgement cut short.
        (&[0x40, 0x01, 0], v3),
    ];
    for (bytes, v) in bad {
        assert!(decode(bytes, *v, MAX).is_err(), "accepted {bytes:02x?}");
    }
    // Oversized packets are refused from their header alone.
    assert_eq!(
        decode(&[0x30, 0xff, 0x7f], v3, 1000),
        Err(Error::TooLarge(16_386))
    );
    // An unsupported protocol level is reported as such (CONNACK 0x01 / 0x84).
    assert_eq!(
        decode(
            &[
                0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 3, 0x02, 0, 60, 0, 0
            ],
            None,
            MAX
        ),
        Err(Error::UnsupportedVersion(3))
    );
}

#[test]
fn known_bytes() {
    // mosquitto_sub -V 311 -i c1 -u u -P p: CONNECT as captured from the wire.
    let connect = [
        0x10, 0x14, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xc2, 0x00, 0x3c, 0x00, 0x02, b'c',
        b'1', 0x00, 0x01, b'u', 0x00, 0x01, b'p',
    ];
    let (p, used) = decode(&connect, None, MAX).unwrap().unwrap();
    assert_eq!(used, connect.len());
    let Packet::Connect(c) = p else { panic!() };
    assert_eq!(
        (c.version, c.client_id.as_str(), c.clean_start, c.keep_alive),
        (Version::V311, "c1", true, 60)
    );
    assert_eq!(
        (c.username.as_deref(), c.password.as_deref()),
        (Some("u"), Some(&b"p"[..]))
    );
    // A v5 CONNACK with no properties, and a PINGRESP.
    let mut out = Vec::new();
    encode(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0,
            properties: Properties::default(),
        }),
        Version::V5,
        &mut out,
    );
    encode(&Packet::PingResp, Version::V5, &mut out);
    assert_eq!(out, [0x20, 0x03, 0x00, 0x00, 0x00, 0xd0, 0x00]);
    // Two pipelined packets decode one after the other.
    let two = [0xc0, 0x00, 0xe0, 0x00];
    let (p, used) = decode(&two, Some(Version::V311), MAX).unwrap().unwrap();
    assert_eq!((p, used), (Packet::PingReq, 2));
    let (p, _) = decode(&two[2..], Some(Version::V311), MAX)
        .unwrap()
        .unwrap();
    assert_eq!(p, Packet::Disconnect(Disconnect::default()));
}

/// rumqtt's `mqttbytes` as an independent oracle: what we encode it reads the same, and what it
/// encodes we read the same.
mod oracle {
    use bytes::BytesMut;
    use mqttbytes::{v4, v5};

    use super::*;

    fn their_qos(q: QoS) -> mqttbytes::QoS {
        match q {
            QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
            QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
            QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
        }
    }

    proptest! {
        #[test]
        fn publish_agrees(v in version(), q in qos(), retain in any::<bool>(), t in topic(),
                          pid in 1..u16::MAX, payload in vec(any::<u8>(), 0..64)) {
            let ours = Publish {
                dup: false,
                qos: q,
                retain,
                topic: t.clone(),
                packet_id: (q != QoS::AtMostOnce).then_some(pid),
                properties: Properties::default(),
                payload: payload.clone(),
            };
            let mut bytes = Vec::new();
            encode(&Packet::Publish(ours.clone()), v, &mut bytes);
            let their_pid = if q == QoS::AtMostOnce { 0 } else { pid };
            let mut buf = BytesMut::from(&bytes[..]);
            match v {
                Version::V311 => {
                    let Ok(v4::Packet::Publish(p)) = v4::read(&mut buf, MAX) else {
                        panic!("mqttbytes v4 refused {bytes:02x?}")
                    };
                    prop_assert_eq!((p.qos, p.retain, &p.topic, p.pkid, &p.payload[..]),
                        (their_qos(q), retain, &t, their_pid, &payload[..]));
                    let mut back = BytesMut::new();
                    p.write(&mut back).unwrap();
                    prop_assert_eq!(decode(&back, Some(v), MAX).unwrap().unwrap().0,
                        Packet::Publish(ours));
                }
                Version::V5 => {
                    let Ok(v5::Packet::Publish(p)) = v5::read(&mut buf, MAX) else {
                        panic!("mqttbytes v5 refused {bytes:02x?}")
                    };
                    prop_assert_eq!((p.qos, p.retain, &p.topic, p.pkid, &p.payload[..]),
                        (their_qos(q), retain, &t, their_pid, &payload[..]));
                    let mut back = BytesMut::new();
                    p.write(&mut back).unwrap();
                    prop_assert_eq!(decode(&back, Some(v), MAX).unwrap().unwrap().0,
                        Packet::Publish(ours));
                }
            }
        }

        #[test]
        fn subscribe_agrees(v in version(), pid in 1..u16::MAX,
                            fs in vec((filter(), qos()), 1..4)) {
            let ours = Subscribe {
                packet_id: pid,
                properties: Properties::default(),
                filters: fs.iter().map(|(f, q)| (f.clone(), Options::qos(*q))).collect(),
            };
            let mut bytes = Vec::new();
            encode(&Packet::Subscribe(ours.clone()), v, &mut bytes);
            let mut buf = BytesMut::from(&bytes[..]);
            let theirs: Vec<(String, mqttbytes::QoS)> = match v {
                Version::V311 => match v4::read(&mut buf, MAX) {
                    Ok(v4::Packet::Subscribe(s)) => {
                        prop_assert_eq!(s.pkid, pid);
                        s.filters.into_iter().map(|f| (f.path, f.qos)).collect()
                    }
                    other => panic!("mqttbytes v4: {other:?}"),
                },
                Version::V5 => match v5::read(&mut buf, MAX) {
                    Ok(v5::Packet::Subscribe(s)) => {
                        prop_assert_eq!(s.pkid, pid);
                        s.filters.into_iter().map(|f| (f.path, f.qos)).collect()
                    }
                    other => panic!("mqttbytes v5: {other:?}"),
                },
            };
            let want: Vec<(String, mqttbytes::QoS)> =
                fs.into_iter().map(|(f, q)| (f, their_qos(q))).collect();
            prop_assert_eq!(theirs, want);
        }

        #[test]
        fn connect_agrees(mut c in connect(Version::V311)) {
            // mqttbytes keeps passwords as strings; MQTT allows any bytes.
            c.password = c.password.map(|p| p.iter().map(|b| b'a' + b % 26).collect());
            let mut bytes = Vec::new();
            encode(&Packet::Connect(Box::new(c.clone())), Version::V311, &mut bytes);
            let mut buf = BytesMut::from(&bytes[..]);
            let Ok(v4::Packet::Connect(t)) = v4::read(&mut buf, MAX) else {
                panic!("mqttbytes refused {bytes:02x?}")
            };
            prop_assert_eq!((&t.client_id, t.clean_session, t.keep_alive),
                (&c.client_id, c.clean_start, c.keep_alive));
            prop_assert_eq!(t.last_will.map(|w| (w.topic, w.message.to_vec())),
                c.will.map(|w| (w.topic, w.payload)));
        }
    }
}

//! The MQTT decoder never panics, in any connection state, and whatever it decodes re-encodes to
//! bytes that decode to the same packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_protocol::mqtt::{Packet, Version, decode, encode};

fuzz_target!(|data: &[u8]| {
    let Some((&state, bytes)) = data.split_first() else {
        return;
    };
    let version = match state % 3 {
        0 => None,
        1 => Some(Version::V311),
        _ => Some(Version::V5),
    };
    let Ok(Some((packet, used))) = decode(bytes, version, 1 << 20) else {
        return;
    };
    assert!(used <= bytes.len());
    let v = match (&packet, version) {
        (Packet::Connect(c), _) => c.version,
        (_, Some(v)) => v,
        (_, None) => unreachable!("only CONNECT decodes before CONNECT"),
    };
    let mut again = Vec::new();
    encode(&packet, v, &mut again);
    let state = if matches!(packet, Packet::Connect(_)) { None } else { Some(v) };
    let (back, n) = decode(&again, state, 1 << 20)
        .expect("re-encoded packet decodes")
        .expect("re-encoded packet is whole");
    assert_eq!(n, again.len());
    assert_eq!(back, packet);
});

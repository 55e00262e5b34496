//! The MessagePack decoder (request bodies and stored records) never panics, and what it
//! decodes encodes to bytes that decode to the same value; the JSON transcoder agrees.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_storage::value::{from_msgpack, msgpack_to_json};

fuzz_target!(|data: &[u8]| {
    let mut json = Vec::new();
    let transcoded = msgpack_to_json(data, &mut json);
    let Ok(v) = from_msgpack(data) else {
        return;
    };
    let again = v.to_msgpack();
    let back = from_msgpack(&again).expect("re-encoded MessagePack decodes");
    // NaN is the one value not equal to itself.
    if !format!("{v:?}").contains("NaN") {
        assert_eq!(back, v);
    }
    assert!(transcoded.is_ok(), "decoded, but not transcoded to JSON");
});

//! The CBOR decoder (request bodies) never panics, and what it decodes encodes to CBOR that
//! decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_storage::cbor::{from_cbor, write};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = from_cbor(data) else {
        return;
    };
    let mut again = Vec::new();
    write(&v, &mut again);
    let back = from_cbor(&again).expect("re-encoded CBOR decodes");
    if !format!("{v:?}").contains("NaN") {
        assert_eq!(back, v);
    }
});

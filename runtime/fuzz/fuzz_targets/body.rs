//! The request-body decoder (JSON through simd-json's tape, MessagePack, CBOR, forms, and any
//! other type kept opaque) never panics on any body of any content type, and what it decodes
//! from JSON writes out as JSON it reads back (numbers past 64-bit integers are floats it reads
//! to within an ulp, so the values are not compared).
//!
//! Found here: an integer literal past 64 bits was refused as invalid JSON (simd-json's
//! `big-int-as-float` now reads it as a float).
#![no_main]

#[allow(dead_code)]
#[path = "../../src/app/body.rs"]
mod body;

use libfuzzer_sys::fuzz_target;

const TYPES: [Option<&str>; 6] = [
    None,
    Some("application/json; charset=utf-8"),
    Some("application/x-msgpack"),
    Some("application/cbor"),
    Some("application/x-www-form-urlencoded"),
    Some("text/calendar"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let content_type = TYPES[usize::from(which) % TYPES.len()];
    let mut bytes = rest.to_vec();
    let mut buffers = simd_json::Buffers::default();
    let Ok(v) = body::decode(content_type, &mut bytes, &mut buffers) else {
        return;
    };
    if content_type.is_none() {
        let mut text = Vec::new();
        v.write_json(&mut text);
        body::json(&mut text, &mut buffers).expect("re-encoded JSON decodes");
    }
});

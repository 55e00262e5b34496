//! The REST query parser never panics on any input, and its errors point inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_protocol::query;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Err(e) = query::parse(s) {
            assert!(e.at <= s.len(), "error position {} past the end of {s:?}", e.at);
        }
    }
});

//! The schema.graphql loader never panics: any text loads or is refused with an error, and what
//! loads describes itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_storage::Catalog;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut catalog = Catalog::default();
    if catalog.load_schema("fuzz.graphql", text).is_ok() {
        for table in &catalog.tables {
            let _ = table.describe(0);
        }
    }
});

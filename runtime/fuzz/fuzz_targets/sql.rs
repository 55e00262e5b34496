//! The SQL parser never panics (nor overflows its stack) on any text, parsed as the Operations
//! API's `sql` parses it (sqlparser, MySQL's dialect, its recursion limit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Parser::parse_sql(&MySqlDialect {}, text);
    }
});

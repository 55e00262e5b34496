//! `@table(expiration:, eviction:, scanInterval:)`: expired records leave reads and queries at
//! once, and clock-aligned eviction scans remove them (and their index entries) later.

use std::time::{Duration, Instant};

use serde_json::json;
use tessera_tests::Server;

const SCHEMA: &str = r#"
type Session @table(expiration: 1, eviction: 1, scanInterval: 1) @export {
  id: ID @primaryKey
  v: Int @indexed
}
type Cache @table(expiration: 1, eviction: 3600) @export {
  id: ID @primaryKey
  v: Int @indexed
}
"#;

#[test]
fn expired_records_disappear_and_are_evicted() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    assert_eq!(c.put_json("/Session/s1", r#"{"v":1}"#).status, 204);
    assert_eq!(c.get("/Session/s1").status, 200);
    assert_eq!(c.get("/Session/?v=1").json(), json!([{"id":"s1","v":1}]));
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(c.get("/Session/s1").status, 404);
    assert_eq!(c.get("/Session/?v=1").json(), json!([]));
    assert_eq!(c.get("/Session/").json(), json!([]));
    // Expired at 1 s, evictable at 2 s, and the scans run every second.
    let started = Instant::now();
    while !s
        .output()
        .contains("eviction: removed 1 expired records of data.Session")
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no eviction: {}",
            s.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rewriting_an_expired_record_replaces_its_index_entries() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    assert_eq!(c.put_json("/Cache/k", r#"{"v":5}"#).status, 204);
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(c.get("/Cache/k").status, 404);
    // Rewriting restarts its lifetime; the entry for the old value must not find it.
    assert_eq!(c.put_json("/Cache/k", r#"{"v":6}"#).status, 204);
    assert_eq!(c.get("/Cache/?v=5").json(), json!([]));
    assert_eq!(c.get("/Cache/?v=6").json(), json!([{"id":"k","v":6}]));
    assert_eq!(c.get("/Cache/k").json(), json!({"id":"k","v":6}));
}

//! The binary: help, configuration, shutdown on signals, restart with the same root.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tessera_tests::{App, Start, binary};

const SCHEMA: &str =
    "type Dog @table @export { id: Long @primaryKey name: String breed: String @indexed }";

#[test]
fn help_documents_every_flag() {
    let out = Command::new(binary())
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--root",
        "--threads",
        "--http-port",
        "--mqtt-port",
        "--ops-port",
        "--host",
        "--durability",
        "TESSERA_ROOT",
        "TESSERA_HTTP_PORT",
        "APP_DIR",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let out = Command::new(binary()).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("run"));
}

#[test]
fn sigterm_flushes_and_a_restart_keeps_data_and_shard_count() {
    let app = App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    assert!(s.output().contains("2 shards"), "{}", s.output());
    let mut c = s.client();
    for i in 0..50 {
        assert_eq!(
            c.put_json(
                &format!("/Dog/{i}"),
                &format!(r#"{{"name":"d{i}","breed":"b{}"}}"#, i % 3)
            )
            .status,
            204
        );
    }
    assert_eq!(s.terminate(), Some(0));

    // Fewer threads later: the shard count stays as created, data is all there.
    let mut start = Start::new(app.dir.path(), root.path());
    start.threads = 1;
    let s = start.start();
    assert!(s.output().contains("1 threads, 2 shards"), "{}", s.output());
    let mut c = s.client();
    let all = c.get("/Dog/").json();
    assert_eq!(all.as_array().unwrap().len(), 50);
    assert_eq!(
        c.get("/Dog/49").json(),
        json!({"id":49,"name":"d49","breed":"b1"})
    );
    // POST continues after the largest existing key.
    assert_eq!(c.post_json("/Dog/", r#"{"name":"next"}"#).json(), json!(50));
    assert_eq!(s.terminate(), Some(0));

    // More threads than shards works too.
    let mut start = Start::new(app.dir.path(), root.path());
    start.threads = 3;
    let s = start.start();
    assert_eq!(s.client().get("/Dog/").json().as_array().unwrap().len(), 51);
}

#[test]
fn settings_come_from_tessera_yaml_and_the_environment() {
    let app = App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("tessera.yaml"),
        "storage:\n  durability: sometimes\n",
    )
    .unwrap();
    let (code, out) = Start::new(app.dir.path(), root.path()).fail();
    assert_eq!(code, Some(1));
    assert!(
        out.contains("durability must be durable or buffered"),
        "{out}"
    );

    std::fs::write(
        root.path().join("tessera.yaml"),
        "storage:\n  durability: buffered\n",
    )
    .unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    assert!(s.output().contains("Buffered"), "{}", s.output());
    drop(s);

    let out = Command::new(binary())
        .args(["run", "--root"])
        .arg(root.path())
        .arg(app.dir.path())
        .env("TESSERA_THREADS", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads must be at least 1"));
}

#[test]
fn a_missing_app_is_a_start_up_error() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("no-such-app");
    let (code, out) = Start::new(&missing, root.path()).fail();
    assert_eq!(code, Some(1));
    assert!(out.contains("is not a directory"), "{out}");
}

#[test]
fn a_newly_indexed_attribute_is_built_at_start() {
    let app = App::new("type Dog @table @export { id: Long @primaryKey name: String }");
    let root = tempfile::tempdir().unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    let mut c = s.client();
    for i in 0..10 {
        c.put_json(&format!("/Dog/{i}"), r#"{"name":"x"}"#);
    }
    assert_eq!(s.terminate(), Some(0));
    std::fs::write(
        app.dir.path().join("schema.graphql"),
        SCHEMA
            .replace("breed: String @indexed", "breed: String")
            .replace("name: String", "name: String @indexed"),
    )
    .unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    assert!(
        s.output().contains("building index data.Dog.name"),
        "{}",
        s.output()
    );
    let layout = std::fs::read_to_string(root.path().join("data/layout.json")).unwrap();
    assert!(layout.contains("\"name\""));
}

/// A second server asked for a port a running one listens on refuses to start, instead of
/// taking half of its connections (every listener is shared across the executors with
/// `SO_REUSEPORT`, which another process of the same user could join).
#[test]
fn a_port_another_server_listens_on_is_a_start_up_error() {
    let app = App::new(SCHEMA);
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Start::new(app.dir.path(), root_a.path()).start();
    for ports in [[a.port, 0, 0], [0, a.mqtt_port, 0], [0, 0, a.ops_port]] {
        let mut b = Start::new(app.dir.path(), root_b.path());
        b.ports = ports;
        b.timeout = Duration::from_secs(10);
        let (code, out) = b.fail();
        assert_ne!(code, Some(0), "{out}");
        assert!(out.contains("in use"), "{ports:?}: {out}");
    }
    assert_eq!(a.client().get("/Dog/").status, 200);
}

//! Authentication (docs/operations.md): anonymous access is refused unless configured.

use serde_json::json;
use tessera_tests::{ADMIN, App, Server, Start, basic};

const SCHEMA: &str = "type Dog @table @export { id: Long @primaryKey name: String }";

#[test]
fn every_request_needs_the_super_user() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut admin = s.client();
    assert_eq!(admin.put_json("/Dog/1", r#"{"name":"Rex"}"#).status, 204);
    let bad_auth = [
        None,
        Some(basic(ADMIN.0, "wrong")),
        Some(basic("nobody", ADMIN.1)),
        Some("Bearer garbage.token.here".to_owned()),
        Some("Basic !!!not-base64".to_owned()),
        Some(basic(ADMIN.0, "")),
    ];
    for auth in bad_auth {
        let mut c = s.client();
        c.auth = auth.clone();
        for (method, path, body) in [
            ("GET", "/Dog/1", None),
            ("GET", "/Dog/", None),
            ("GET", "/Dog", None),
            ("PUT", "/Dog/1", Some(&br#"{"name":"Hacked"}"#[..])),
            ("PUT", "/Dog/2", Some(&br#"{"name":"New"}"#[..])),
            ("PATCH", "/Dog/1", Some(&br#"{"name":"Hacked"}"#[..])),
            ("POST", "/Dog/", Some(&br#"{"name":"New"}"#[..])),
            ("DELETE", "/Dog/1", None),
            ("DELETE", "/Dog/", None),
            ("GET", "/Unknown/1", None),
        ] {
            let r = c.request(method, path, &[("Content-Type", "application/json")], body);
            assert_eq!(r.status, 401, "{auth:?} {method} {path}");
            assert_eq!(r.header("WWW-Authenticate"), Some("Basic"));
            assert_eq!(r.json(), json!("AccessViolation: Must login"));
        }
    }
    assert_eq!(
        admin.get("/Dog/").json(),
        json!([{"id":1,"name":"Rex"}]),
        "nothing changed or was created"
    );
    let stored = std::fs::read_to_string(s.root.join("data/users.json")).unwrap();
    assert!(
        stored.contains("$argon2id$") && !stored.contains(ADMIN.1),
        "passwords are stored hashed"
    );
    assert!(
        !s.output().contains(ADMIN.1),
        "the password is never logged"
    );
}

#[test]
fn loopback_is_trusted_only_when_configured() {
    let app = App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("tessera.yaml"),
        "authentication:\n  authorizeLocal: true\n",
    )
    .unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    let mut c = s.client().anonymous();
    assert_eq!(c.put_json("/Dog/5", r#"{"name":"Local"}"#).status, 204);
    assert_eq!(c.get("/Dog/5").json()["name"], "Local");
}

#[test]
fn without_users_everything_is_refused() {
    let app = App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let mut start = Start::new(app.dir.path(), root.path());
    start.admin = false;
    let s = start.start();
    assert!(s.output().contains("no users exist"));
    assert_eq!(s.client().get("/Dog/").status, 401);
    assert_eq!(s.client().anonymous().get("/Dog/").status, 401);
}

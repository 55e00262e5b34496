//! Caching tables (`sources` in config.yaml, `app/sources.rs`, `data/cache.rs`) through the real
//! binary, in front of a real HTTP origin on loopback that counts the requests it receives:
//! one origin request per miss whatever the concurrency, expiry and reload, stale while
//! revalidating, failures and time-outs (502, 504, nothing cached), negative caching, writes
//! handed to the origin, subscribers seeing loads, and the source in the table's description.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_protocol::mqtt::{QoS, Version};
use tessera_tests::mqtt::MqttClient;
use tessera_tests::{ADMIN, Server, Start};

/// What the origin does, set by the test as it goes.
#[derive(Default)]
struct Behaviour {
    /// Each GET waits this long before answering.
    delay: Duration,
    /// Every request is answered with this status (and no record).
    status: Option<u16>,
}

/// A plain HTTP/1.1 origin: `GET /breeds/<id>` answers `{"name": "<id> v<n>"}`, n counting the
/// GETs of that id (404 for ids starting with `missing`, a 3 s wait for ids starting with
/// `slow`, `Cache-Control: max-age=1` for ids starting with `short`); PUT, PATCH and DELETE
/// answer 204. Every request is recorded.
struct Origin {
    port: u16,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl Origin {
    fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<(String, String, String)>>> = Default::default();
        let behaviour: Arc<Mutex<Behaviour>> = Default::default();
        let (s, b) = (seen.clone(), behaviour.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let (s, b) = (s.clone(), b.clone());
                std::thread::spawn(move || serve(conn, &s, &b));
            }
        });
        Origin {
            port,
            seen,
            behaviour,
        }
    }

    /// How many `method` requests reached `path`.
    fn count(&self, method: &str, path: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(m, p, _)| m == method && p == path)
            .count()
    }

    fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().unwrap());
    }
}

fn serve(
    conn: TcpStream,
    seen: &Mutex<Vec<(String, String, String)>>,
    behaviour: &Mutex<Behaviour>,
) {
    let mut out = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut length = 0;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let n = {
            let mut s = seen.lock().unwrap();
            s.push((
                method.clone(),
                path.clone(),
                String::from_utf8_lossy(&body).into_owned(),
            ));
            s.iter()
                .filter(|(m, p, _)| *m == method && *p == path)
                .count()
        };
        let (delay, forced) = {
            let b = behaviour.lock().unwrap();
            (b.delay, b.status)
        };
        let id = path.rsplit('/').next().unwrap_or("").to_owned();
        let (status, answer) = match (forced, method.as_str()) {
            (Some(st), _) => (st, String::new()),
            (None, "GET") if id.starts_with("missing") => (404, String::new()),
            (None, "GET") => {
                std::thread::sleep(if id.starts_with("slow") {
                    Duration::from_secs(3)
                } else {
                    delay
                });
                (200, json!({"name": format!("{id} v{n}")}).to_string())
            }
            _ => (204, String::new()),
        };
        // Ids starting with `short` are to be kept one second.
        let keep = if id.starts_with("short") {
            "Cache-Control: public, max-age=1\r\n"
        } else {
            ""
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{keep}Content-Length: {}\r\n\r\n",
            answer.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// `Breed` serves stale while revalidating; `Strict` does not, and gives its origin 500 ms;
/// `Long` keeps records an hour.
/// Both expire after a second; expired Breeds are kept a minute (`eviction`) to be served stale.
fn app(origin: &Origin) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let port = origin.port;
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "rest: true\ngraphqlSchema:\n  files: schema.graphql\nsources:\n  Breed:\n    \
             url: http://127.0.0.1:{port}/breeds/{{id}}\n    allowStaleWhileRevalidate: true\n  \
             Strict:\n    url: http://127.0.0.1:{port}/strict/{{id}}\n    timeout: 500\n  \
             Long:\n    url: http://127.0.0.1:{port}/long/{{id}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("schema.graphql"),
        "type Breed @table(expiration: 1, eviction: 60) @export { id: ID @primaryKey name: String }\n\
         type Strict @table(expiration: 1) @export { id: ID @primaryKey name: String }\n\
         type Plain @table @export { id: ID @primaryKey name: String }\n\
         type Long @table(expiration: 3600) @export { id: ID @primaryKey name: String }\n",
    )
    .unwrap();
    dir
}

fn start(app: &Path) -> (Server, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let s = Start::new(app, root.path()).start();
    (s, root)
}

#[test]
fn a_miss_asks_the_origin_once_and_later_reads_are_hits() {
    let origin = Origin::start();
    let dir = app(&origin);
    let (s, _root) = start(dir.path());
    let mut c = s.client();
    let r = c.get("/Long/lab");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"id": "lab", "name": "lab v1"}));
    assert_eq!(r.header("cache-status"), Some("tessera; fwd=miss; stored"));
    for _ in 0..5 {
        let r = c.get("/Long/lab");
        assert_eq!(r.json(), json!({"id": "lab", "name": "lab v1"}));
        assert_eq!(r.header("cache-status"), Some("tessera; hit"));
    }
    assert_eq!(origin.count("GET", "/long/lab"), 1);
    // A plain table's reads say nothing of caching.
    assert_eq!(c.get("/Plain/x").header("cache-status"), None);
    // Stored like any record: queries see it.
    assert_eq!(
        c.get("/Long/?name=lab%20v1").json(),
        json!([{"id": "lab", "name": "lab v1"}])
    );
}

#[test]
fn concurrent_misses_of_one_key_make_one_origin_request() {
    let origin = Origin::start();
    origin.set(|b| b.delay = Duration::from_millis(400));
    let dir = app(&origin);
    let (s, _root) = start(dir.path());
    // 64 connections, spread by the kernel over both cores, all asking for one cold key.
    let clients: Vec<_> = (0..64).map(|_| s.client()).collect();
    let answers: Vec<_> = clients
        .into_iter()
        .map(|mut c| std::thread::spawn(move || c.get("/Strict/hot")))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), json!({"id": "hot", "name": "hot v1"}));
    }
    assert_eq!(origin.count("GET", "/strict/hot"), 1);
}

#[test]
fn expired_records_reload_or_serve_stale_while_one_request_revalidates() {
    let origin = Origin::start();
    let dir = app(&origin);
    let (s, _root) = start(dir.path());
    let mut c = s.client();
    assert_eq!(c.get("/Strict/a").json()["name"], "a v1");
    assert_eq!(c.get("/Breed/b").json()["name"], "b v1");
    std::thread::sleep(Duration::from_millis(1200));
    // Without stale allowed: the expired record is reloaded before the answer.
    let r = c.get("/Strict/a");
    assert_eq!(r.json()["name"], "a v2");
    assert_eq!(r.header("cache-status"), Some("tessera; fwd=miss; stored"));
    // With it: answered at once with the stale record, while one load refreshes it.
    origin.set(|b| b.delay = Duration::from_millis(2500));
    let started = Instant::now();
    for _ in 0..10 {
        let r = c.get("/Breed/b");
        assert_eq!(r.json()["name"], "b v1");
        assert_eq!(
            r.header("cache-status"),
            Some("tessera; hit; fwd=stale; detail=revalidating")
        );
    }
    // Ten answers on loopback, against an origin that takes 2.5 s for one.
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "stale answers waited for the origin"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.get("/Breed/b");
        if r.json()["name"] == "b v2" {
            assert_eq!(r.header("cache-status"), Some("tessera; hit"));
            break;
        }
        assert!(Instant::now() < deadline, "never refreshed: {}", r.text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        origin.count("GET", "/breeds/b"),
        2,
        "one background refresh"
    );
}

#[test]
fn origin_failures_answer_502_or_504_and_cache_nothing_unless_stale_is_allowed() {
    let origin = Origin::start();
    let dir = app(&origin);
    let (s, _root) = start(dir.path());
    let mut c = s.client();
    assert_eq!(c.get("/Breed/kept").json()["name"], "kept v1");
    origin.set(|b| b.status = Some(503));
    for _ in 0..2 {
        let r = c.get("/Strict/down");
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.text().contains("answered 503"), "{}", r.text());
    }
    assert_eq!(
        origin.count("GET", "/strict/down"),
        2,
        "a failure is not cached"
    );
    // An expired record with stale allowed is served while the origin fails.
    std::thread::sleep(Duration::from_millis(1200));
    for _ in 0..3 {
        let r = c.get("/Breed/kept");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["name"], "kept v1");
        assert!(r.header("cache-status").unwrap().contains("fwd=stale"));
    }
    origin.set(|b| b.status = None);
    // A time-out (the origin takes 3 s, Strict waits 500 ms): 504, and nothing stored.
    let started = Instant::now();
    let r = c.get("/Strict/slow1");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(r.text().contains("did not answer in time"), "{}", r.text());
    // An origin that is not there at all: 502.
    drop(s);
    let dead = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(dir.path().join("config.yaml"))
        .unwrap()
        .replace(&origin.port.to_string(), "1");
    std::fs::write(dead.path().join("config.yaml"), config).unwrap();
    std::fs::copy(
        dir.path().join("schema.graphql"),
        dead.path().join("schema.graphql"),
    )
    .unwrap();
    let (s, _root) = start(dead.path());
    let r = s.client().get("/Strict/x");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("connection failed"), "{}", r.text());
}

#[test]
fn a_missing_record_is_cached_as_absent_for_the_expiration() {
    let origin = Origin::start();
    let dir = app(&origin);
    let (s, _root) = start(dir.path());
    let mut c = s.client();
    // Long keeps an absence for its hour, Strict for its second.
    for _ in 0..20 {
        assert_eq!(c.get("/Long/missing-1").status, 404);
    }
    assert_eq!(origin.count("GET", "/long/missing-1"), 1);
    assert_eq!(c.get("/Strict/missing-2").status, 404);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(c.get("/Strict/missing-2").status, 404);
    assert_eq!(
        origin.count("GET", "/strict/missing-2"),
        2,
        "asked again once expired"
    );
}

#[test]
fn writes_go_to_the_origin_first() {
    let origin = Origin::start();
    let dir = app(&origin);
    let (s, _root) = start(dir.path());
    let mut c = s.client();
    assert_eq!(c.put_json("/Long/w", r#"{"name":"written"}"#).status, 204);
    assert_eq!(origin.count("PUT", "/long/w"), 1);
    let body = origin.seen.lock().unwrap().last().unwrap().2.clone();
    assert_eq!(body, r#"{"name":"written"}"#);
    let r = c.get("/Long/w");
    assert_eq!(r.json(), json!({"id": "w", "name": "written"}));
    assert_eq!(
        origin.count("GET", "/long/w"),
        0,
        "a written record is a hit"
    );
    assert_eq!(c.patch_json("/Long/w", r#"{"name":"patched"}"#).status, 204);
    assert_eq!(origin.count("PATCH", "/long/w"), 1);
    assert_eq!(c.get("/Long/w").json()["name"], "patched");
    assert_eq!(c.delete("/Long/w").status, 200);
    assert_eq!(origin.count("DELETE", "/long/w"), 1);
    // A write the origin refuses is not made here.
    origin.set(|b| b.status = Some(500));
    let r = c.put_json("/Long/refused", r#"{"name":"no"}"#);
    assert_eq!(r.status, 502, "{}", r.text());
    origin.set(|b| b.status = None);
    assert_eq!(c.get("/Long/refused").json()["name"], "refused v1");
}

#[test]
fn subscribers_see_loads_and_the_description_shows_the_source() {
    let origin = Origin::start();
    let dir = app(&origin);
    let (s, _root) = start(dir.path());
    let (mut sub, ack) = MqttClient::connect(s.mqtt_port, Version::V5, "sub", Some(ADMIN));
    assert_eq!(ack.map(|a| a.code), Some(0));
    sub.subscribe(&[("Breed/#", QoS::AtLeastOnce)]);
    let mut c = s.client();
    assert_eq!(c.get("/Breed/seen").status, 200);
    let p = sub
        .next_publish(Duration::from_secs(5))
        .expect("the load as a change");
    assert_eq!(p.topic, "Breed/seen");
    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v, json!({"id": "seen", "name": "seen v1"}));

    let url = format!("http://127.0.0.1:{}/breeds/{{id}}", origin.port);
    let d = c.get("/Breed").json();
    assert_eq!(d["sources"][0]["url"], url.as_str(), "{d}");
    assert_eq!(d["sources"][0]["allowStaleWhileRevalidate"], true);
    let (st, d) = s.ops().operation(&json!({
        "operation": "describe_table", "table": "Breed"
    }));
    assert_eq!(st, 200);
    assert_eq!(d["sources"][0]["type"], "http", "{d}");
    let (_, d) = s.ops().operation(&json!({
        "operation": "describe_table", "table": "Plain"
    }));
    assert_eq!(d["sources"], json!([]));
}

#[test]
fn the_example_caches_its_sample_origin() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cache");
    let (mut py, port) = sample_origin(&example);
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.yaml", "schema.graphql"] {
        let text = std::fs::read_to_string(example.join(f))
            .unwrap()
            .replace("8090", &port.to_string());
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    let (s, _root) = start(dir.path());
    let mut c = s.client();
    let r = c.get("/Breed/1");
    assert_eq!(
        r.json(),
        json!({"id": "1", "name": "Labrador", "group": "sample"})
    );
    assert_eq!(r.header("cache-status"), Some("tessera; fwd=miss; stored"));
    assert_eq!(
        c.get("/Breed/1").header("cache-status"),
        Some("tessera; hit")
    );
    assert_eq!(c.get("/Breed/missing-9").status, 404);
    drop(s);
    let _ = py.kill();
    let _ = py.wait();
    let mut log = String::new();
    py.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let gets: HashMap<&str, usize> = ["GET /breeds/1 ", "GET /breeds/missing-9 "]
        .into_iter()
        .map(|p| (p, log.matches(p).count()))
        .collect();
    assert_eq!(gets["GET /breeds/1 "], 1, "{log}");
    assert_eq!(gets["GET /breeds/missing-9 "], 1, "{log}");
}

#[test]
fn a_wasm_resource_calls_allowed_origins_and_can_be_a_tables_source() {
    let origin = Origin::start();
    let app = tessera_tests::App::with_wasm(tessera_tests::GUEST_SCHEMA);
    let config = std::fs::read_to_string(app.dir.path().join("config.yaml")).unwrap();
    // Port 1 is allowed but nothing listens there.
    std::fs::write(
        app.dir.path().join("config.yaml"),
        format!(
            "{config}outbound:\n  allow:\n    - http://127.0.0.1:{}\n    - http://127.0.0.1:1\n",
            origin.port
        ),
    )
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    // A 300 ms budget: waiting 600 ms on the origin is not running time.
    std::fs::write(root.path().join("tessera.yaml"), "wasm:\n  timeout: 300\n").unwrap();
    let mut start = Start::new(app.dir.path(), root.path());
    start.timeout = Duration::from_secs(240);
    let s = start.start();
    let mut c = s.client();
    let fetch = |c: &mut tessera_tests::Client, url: &str, ms: u64| {
        let url = url
            .replace(':', "%3A")
            .replace('/', "%2F")
            .replace(' ', "%20");
        let r = c.get(&format!("/Fetch/x?url={url}&ms={ms}"));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    let base = format!("http://127.0.0.1:{}", origin.port);
    origin.set(|b| b.delay = Duration::from_millis(600));
    let r = fetch(&mut c, &format!("{base}/breeds/w1"), 2000);
    assert_eq!(r, json!({"status": "200", "body": r#"{"name":"w1 v1"}"#}));
    let r = fetch(&mut c, &format!("{base}/breeds/w2"), 200);
    assert_eq!(r, json!({"error": "FetchError::Timeout"}));
    origin.set(|b| b.delay = Duration::ZERO);
    let long = "y".repeat(80);
    let r = fetch(&mut c, &format!("{base}/breeds/{long}"), 2000);
    assert_eq!(r, json!({"error": "FetchError::TooLarge(64)"}));
    let r = fetch(&mut c, "http://127.0.0.1:2/x", 2000);
    assert_eq!(
        r,
        json!({"error": "FetchError::NotAllowed(\"http://127.0.0.1:2\")"})
    );
    let r = fetch(&mut c, "http://127.0.0.1:1/x", 2000);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("FetchError::Refused("),
        "{r}"
    );
    let r = fetch(&mut c, "not a url", 2000);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("FetchError::Invalid("),
        "{r}"
    );
    assert_eq!(origin.count("GET", "/x"), 0);
    // The guests' CachedSource is the source of `Cached`: it reads its origin from Plain/1.
    let body = json!({"name": base}).to_string();
    assert_eq!(c.put_json("/Plain/1", &body).status, 204);
    let r = c.get("/Cached/c1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"id": "c1", "name": "c1 v1"}));
    assert_eq!(r.header("cache-status"), Some("tessera; fwd=miss; stored"));
    let r = c.get("/Cached/c1");
    assert_eq!(r.header("cache-status"), Some("tessera; hit"));
    assert_eq!(origin.count("GET", "/breeds/c1"), 1);
    origin.set(|b| b.delay = Duration::from_millis(300));
    let answers: Vec<_> = (0..16)
        .map(|_| s.client())
        .map(|mut c| std::thread::spawn(move || c.get("/Cached/hot")))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    origin.set(|b| b.delay = Duration::ZERO);
    for r in answers {
        assert_eq!(r.json(), json!({"id": "hot", "name": "hot v1"}));
    }
    assert_eq!(origin.count("GET", "/breeds/hot"), 1);
    for _ in 0..5 {
        assert_eq!(c.get("/Cached/missing-2").status, 404);
    }
    assert_eq!(origin.count("GET", "/breeds/missing-2"), 1);
    assert_eq!(c.put_json("/Cached/w", r#"{"name":"written"}"#).status, 204);
    let seen = origin.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        seen,
        (
            "PUT".into(),
            "/breeds/w".into(),
            r#"{"name":"written"}"#.into()
        )
    );
    assert_eq!(c.get("/Cached/w").json()["name"], "written");
    assert_eq!(c.delete("/Cached/w").status, 200);
    assert_eq!(origin.count("DELETE", "/breeds/w"), 1);
    // A guest reading a caching table reads through its source too.
    let r = c.get("/Fetch/x?table=Cached&id=viaguest");
    assert_eq!(r.json(), json!({"id": "viaguest", "name": "viaguest v1"}));
    assert_eq!(r.header("x-loaded-from-source"), Some("yes"));
    let r = c.get("/Fetch/x?table=Cached&id=viaguest");
    assert_eq!(r.json(), json!({"id": "viaguest", "name": "viaguest v1"}));
    assert_eq!(r.header("x-loaded-from-source"), Some("no"));
    assert_eq!(origin.count("GET", "/breeds/viaguest"), 1);
    // Invalidated: the next read asks the source again.
    assert_eq!(c.get("/Fetch/x?invalidate=viaguest").status, 204);
    let r = c.get("/Cached/viaguest");
    assert_eq!(r.json(), json!({"id": "viaguest", "name": "viaguest v2"}));
    assert_eq!(r.header("cache-status"), Some("tessera; fwd=miss; stored"));
    let r = c.get("/Fetch/x?invalidate=nope&table=Plain");
    assert_eq!(r.status, 204, "an absent record invalidates fine");
    assert_eq!(origin.count("GET", "/breeds/viaguest"), 2);
    let d = c.get("/Cached").json();
    assert_eq!(d["sources"][0]["type"], "resource", "{d}");
    assert_eq!(d["sources"][0]["resource"], "CachedSource");
}

/// Starts `examples/cache/origin.py` on a free port; returns it and the port.
fn sample_origin(dir: &Path) -> (std::process::Child, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let py = std::process::Command::new("python3")
        .arg(dir.join("origin.py"))
        .arg(port.to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the sample origin did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (py, port)
}

#[test]
fn the_rust_source_example_caches_its_sample_origin() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let (mut py, port) = sample_origin(&examples.join("cache"));
    // The example as it is, but for the origin's port; its crate built in place, in the tests'
    // wasm target directory.
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = examples
        .join("cache-rust/resources")
        .canonicalize()
        .unwrap();
    let config = std::fs::read_to_string(examples.join("cache-rust/config.yaml"))
        .unwrap()
        .replace("8090", &port.to_string())
        .replace(
            "crate: resources",
            &format!("crate: '{}'", crate_dir.display()),
        );
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    std::fs::copy(
        examples.join("cache-rust/schema.graphql"),
        dir.path().join("schema.graphql"),
    )
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut start = Start::new(dir.path(), root.path());
    start.timeout = Duration::from_secs(300);
    start.env.push((
        "CARGO_TARGET_DIR".into(),
        tessera_tests::wasm_target_dir().display().to_string(),
    ));
    let s = start.start();
    let mut c = s.client();
    let origin = json!({"url": format!("http://127.0.0.1:{port}")}).to_string();
    assert_eq!(c.put_json("/Origin/breeds", &origin).status, 204);
    let r = c.get("/Breed/2");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"id": "2", "name": "Beagle", "group": "sample"})
    );
    assert_eq!(r.header("cache-status"), Some("tessera; fwd=miss; stored"));
    assert_eq!(
        c.get("/Breed/2").header("cache-status"),
        Some("tessera; hit")
    );
    assert_eq!(c.get("/Breed/missing-3").status, 404);
    assert_eq!(c.put_json("/Breed/9", r#"{"name":"Saluki"}"#).status, 204);
    assert_eq!(c.get("/Breed/9").json()["name"], "Saluki");
    drop(s);
    let _ = py.kill();
    let _ = py.wait();
    let mut log = String::new();
    py.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert_eq!(log.matches("\"GET /breeds/2 ").count(), 1, "{log}");
    assert_eq!(log.matches("\"GET /breeds/missing-3 ").count(), 1, "{log}");
    assert_eq!(log.matches("\"PUT /breeds/9 ").count(), 1, "{log}");
    assert_eq!(log.matches("\"GET /breeds/9 ").count(), 0, "{log}");
}

#[test]
fn an_event_stream_sees_loads_refreshes_and_deletes_of_a_caching_table() {
    let origin = Origin::start();
    let dir = app(&origin);
    let (s, _root) = start(dir.path());
    let mut stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /Breed/ HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: {}\r\n\r\n",
        tessera_tests::basic(ADMIN.0, ADMIN.1)
    )
    .unwrap();
    let mut events = BufReader::new(stream);
    // The head first: the stream is subscribed (a record loaded before it would still come
    // first, as the table's current state).
    let mut head = String::new();
    events.read_line(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut next = move || loop {
        let mut line = String::new();
        assert!(events.read_line(&mut line).unwrap() > 0, "stream ended");
        if let Some(data) = line.strip_prefix("data: ") {
            let e: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
            return (e["type"].as_str().unwrap().to_owned(), e["value"].clone());
        }
    };
    let mut c = s.client();
    // Breed, whose expired records stay (eviction 60 s) and are refreshed in the background:
    // the change a reader sees is the refresh, not an eviction's delete first.
    assert_eq!(c.get("/Breed/r1").status, 200);
    assert_eq!(
        next(),
        ("put".into(), json!({"id": "r1", "name": "r1 v1"})),
        "the load"
    );
    std::thread::sleep(Duration::from_millis(1200));
    // Answered stale; the refresh follows.
    assert_eq!(c.get("/Breed/r1").json()["name"], "r1 v1");
    assert_eq!(
        next(),
        ("put".into(), json!({"id": "r1", "name": "r1 v2"})),
        "the refresh"
    );
    assert_eq!(c.delete("/Breed/r1").status, 200);
    assert_eq!(next().0, "delete");
}

#[test]
fn the_origins_cache_control_sets_a_records_lifetime() {
    let origin = Origin::start();
    let dir = app(&origin);
    let (s, _root) = start(dir.path());
    let mut c = s.client();
    assert_eq!(c.get("/Long/short-1").json()["name"], "short-1 v1");
    assert_eq!(c.get("/Long/kept-1").json()["name"], "kept-1 v1");
    std::thread::sleep(Duration::from_millis(1300));
    // max-age=1 overrides the table's hour; the other record keeps it.
    let r = c.get("/Long/short-1");
    assert_eq!(r.json()["name"], "short-1 v2");
    assert_eq!(r.header("cache-status"), Some("tessera; fwd=miss; stored"));
    let r = c.get("/Long/kept-1");
    assert_eq!(r.json()["name"], "kept-1 v1");
    assert_eq!(r.header("cache-status"), Some("tessera; hit"));
    assert_eq!(origin.count("GET", "/long/short-1"), 2);
    assert_eq!(origin.count("GET", "/long/kept-1"), 1);
}

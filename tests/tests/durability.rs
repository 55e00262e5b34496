//! `kill -9` during a write load loses no acknowledged write (durable mode, the default).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_tests::{App, Start};

const SCHEMA: &str =
    "type Counter @table @export { id: ID @primaryKey n: Int @indexed writer: Int }";

#[test]
fn acknowledged_writes_survive_kill_9() {
    let app = App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    let port = s.port;
    let stop = Arc::new(AtomicBool::new(false));
    // Per writer: the last value acknowledged for each of its keys.
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut c = tessera_tests::Client::connect(port);
                let mut n = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // Each writer cycles over 50 keys, so later writes overwrite earlier ones.
                    let id = format!("w{w}-k{}", n % 50);
                    let req = c.format(
                        "PUT",
                        &format!("/Counter/{id}"),
                        &[("Content-Type", "application/json")],
                        Some(format!(r#"{{"n":{n},"writer":{w}}}"#).as_bytes()),
                    );
                    if !c.try_send(&req) {
                        return;
                    }
                    match c.read_response(false) {
                        Some(r) if r.status == 204 => acked.lock().unwrap().push((id, n)),
                        Some(r) => panic!("unexpected {}: {}", r.status, r.text()),
                        None => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "the load did too little to mean anything: {} writes",
        acked.len()
    );

    // The latest acknowledged value of each key must be there (or a later, unacknowledged one).
    let mut latest = std::collections::HashMap::new();
    for (id, n) in &acked {
        latest.insert(id.clone(), *n);
    }
    let s = Start::new(app.dir.path(), root.path()).start();
    let mut c = s.client();
    for (id, n) in &latest {
        let r = c.get(&format!("/Counter/{id}"));
        assert_eq!(r.status, 200, "acknowledged record {id} is lost");
        let got = r.json()["n"].as_i64().unwrap();
        assert!(got >= *n, "{id}: acknowledged n={n}, found {got}");
    }
    eprintln!(
        "{} acknowledged writes over {} keys, all present after kill -9",
        acked.len(),
        latest.len()
    );
}

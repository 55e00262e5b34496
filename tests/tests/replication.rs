//! Replication between two nodes through a real NATS server with JetStream (Debian's
//! `nats-server`, installed by tests/run.sh): writes on either node reach the other, concurrent
//! writes to one record converge on the same version everywhere, deletes replicate, and a node
//! that was down catches up from its durable consumer.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_protocol::mqtt::{QoS, Version};
use tessera_tests::mqtt::MqttClient;
use tessera_tests::{ADMIN, App, Server, Start};

const SCHEMA: &str = "type Dog @table @export { id: ID @primaryKey name: String n: Int }
type Local @table(replicate: false) @export { id: ID @primaryKey v: Int }";

/// A NATS server with JetStream on a free loopback port, stopped when dropped.
struct Nats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        Nats::start_with(&[])
    }

    /// With more of nats-server's options (credentials, TLS).
    fn start_with(options: &[&str]) -> Nats {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian's package) runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nats {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node's root, configured to replicate as `name` through `nats`.
fn node_root(name: &str, nats: &Nats) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("tessera.yaml"),
        format!(
            "replication:\n  hostname: {name}\n  nats: nats://127.0.0.1:{}\n",
            nats.port
        ),
    )
    .unwrap();
    root
}

/// Two nodes of `app`, alpha and beta, replicating through `nats` (and their roots, to keep
/// while they run).
fn pair(nats: &Nats, app: &App) -> (Server, Server, [tempfile::TempDir; 2]) {
    let roots = [node_root("alpha", nats), node_root("beta", nats)];
    let a = Start::new(app.dir.path(), roots[0].path()).start();
    let b = Start::new(app.dir.path(), roots[1].path()).start();
    (a, b, roots)
}

/// The record at `path` on `s` once `done` holds for it (status, body), within 15 s.
fn eventually(
    s: &Server,
    path: &str,
    what: &str,
    done: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = s.client().get(path);
        let body = if r.status == 200 {
            r.json()
        } else {
            serde_json::Value::Null
        };
        if done(r.status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {path} is {} {body}\n{}",
            r.status,
            s.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PUTs `body` at `path` on `from`, then waits until `to` serves a record with its fields.
fn put_and_see(from: &Server, to: &Server, path: &str, body: &str) {
    assert_eq!(from.client().put_json(path, body).status, 204);
    let want: serde_json::Value = serde_json::from_str(body).unwrap();
    eventually(to, path, "a write made on the other node", |st, v| {
        st == 200 && want.as_object().unwrap().iter().all(|(k, w)| &v[k] == w)
    });
}

#[test]
fn two_nodes_replicate_writes_deletes_and_catch_up_through_jetstream() {
    let nats = Nats::start();
    let app = App::new(SCHEMA);
    let (root_a, root_b) = (node_root("alpha", &nats), node_root("beta", &nats));
    let a = Start::new(app.dir.path(), root_a.path()).start();
    let mut b = Start::new(app.dir.path(), root_b.path()).start();

    // A subscriber on B is told of A's writes as of B's own.
    let (mut sub, _) = MqttClient::connect(b.mqtt_port, Version::V5, "watcher", Some(ADMIN));
    sub.subscribe(&[("Dog/1", QoS::AtLeastOnce)]);

    // Each way.
    put_and_see(&a, &b, "/Dog/1", r#"{"name":"Rex","n":1}"#);
    let told = sub
        .next_publish(Duration::from_secs(10))
        .expect("B's subscriber is told of A's write");
    assert_eq!(told.topic, "Dog/1");
    let told: serde_json::Value = serde_json::from_slice(&told.payload).unwrap();
    assert_eq!(told["name"], "Rex");
    put_and_see(&b, &a, "/Dog/2", r#"{"name":"Ace","n":2}"#);

    // Each node's cluster_status names the other, with the last change it applied from it (noted
    // once the apply is answered, a moment after the record can be read).
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let (st, status) = a
            .ops()
            .operation(&serde_json::json!({"operation": "cluster_status"}));
        assert_eq!(st, 200, "{status}");
        if status["connections"][0]["name"] == "beta" || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["type"], "cluster-status");
    assert_eq!(status["node_name"], "alpha");
    assert_eq!(status["is_enabled"], true);
    let beta = &status["connections"][0];
    assert_eq!(beta["name"], "beta", "{status}");
    assert_eq!(beta["database_sockets"][0]["database"], "data", "{status}");
    assert_eq!(beta["database_sockets"][0]["connected"], true, "{status}");
    assert!(
        beta["database_sockets"][0]["lastReceivedVersion"]
            .as_f64()
            .unwrap()
            > 1.7e12
    );

    // The same record written on both at once: both end with the same one (the later write).
    for round in 0..5 {
        let path = format!("/Dog/c{round}");
        let (mut ca, mut cb) = (a.client(), b.client());
        let wa = std::thread::spawn(move || ca.put_json(&path, r#"{"name":"from-a"}"#).status);
        let path = format!("/Dog/c{round}");
        assert_eq!(cb.put_json(&path, r#"{"name":"from-b"}"#).status, 204);
        assert_eq!(wa.join().unwrap(), 204);
    }
    for round in 0..5 {
        let path = format!("/Dog/c{round}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (ra, rb) = (a.client().get(&path).json(), b.client().get(&path).json());
            if ra == rb {
                break;
            }
            assert!(Instant::now() < deadline, "{path}: A has {ra}, B has {rb}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // A table declared `replicate: false` stays on its node.
    assert_eq!(a.client().put_json("/Local/1", r#"{"v":1}"#).status, 204);
    assert_eq!(
        a.client().put_json("/Dog/after", r#"{"name":"x"}"#).status,
        204
    );
    eventually(&b, "/Dog/after", "a write after the local one", |st, _| {
        st == 200
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.client().get("/Local/1").status, 404);

    // A delete on B goes from A too.
    assert_eq!(b.client().delete("/Dog/1").status, 200);
    eventually(&a, "/Dog/1", "B's delete on A", |st, _| st == 404);

    // B stops; what A commits meanwhile reaches B when it is back, from its durable consumer.
    assert!(b.terminate().is_some());
    assert_eq!(
        a.client()
            .put_json("/Dog/3", r#"{"name":"Zed","n":3}"#)
            .status,
        204
    );
    assert_eq!(
        a.client()
            .put_json("/Dog/2", r#"{"name":"Ace II","n":22}"#)
            .status,
        204
    );
    b = Start::new(app.dir.path(), root_b.path()).start();
    eventually(&b, "/Dog/3", "a write made while B was down", |st, v| {
        st == 200 && v["name"] == "Zed"
    });
    eventually(&b, "/Dog/2", "an update made while B was down", |st, v| {
        st == 200 && v["n"] == 22
    });
    // B's own writes are not sent back to it as changes: its record of /Dog/c0 is the one both
    // agree on.
    assert_eq!(
        a.client().get("/Dog/c0").json(),
        b.client().get("/Dog/c0").json()
    );
    // B's data is lost; B starts again, empty, under the same name, at once: its new writes
    // reach A (its message ids carry the new data directory's epoch).
    assert!(b.terminate().is_some());
    let root_b = node_root("beta", &nats);
    let b = Start::new(app.dir.path(), root_b.path()).start();
    // It copies what A holds (its old consumer's place means nothing to its new data).
    eventually(&b, "/Dog/2", "A's data copied to the new B", |st, v| {
        st == 200 && v["n"] == 22
    });
    eventually(
        &b,
        "/Dog/1",
        "a delete stays deleted in the copy",
        |st, _| st == 404,
    );
    put_and_see(&b, &a, "/Dog/5", r#"{"name":"Reborn","n":5}"#);
    // A third node, new, copies too, then tails: every record of A's, the same.
    let root_c = node_root("gamma", &nats);
    let c = Start::new(app.dir.path(), root_c.path()).start();
    put_and_see(&a, &c, "/Dog/6", r#"{"name":"after the copy","n":6}"#);
    let all = |s: &Server| s.client().get("/Dog/?sort(+id)").json();
    eventually(&c, "/Dog/5", "B's write, through the stream", |st, _| {
        st == 200
    });
    assert_eq!(all(&a), all(&c));
    assert!(c.output().contains("copied"), "{}", c.output());
}

#[test]
fn a_node_without_replication_says_so_in_cluster_status() {
    let (s, _app, _root) = Server::with_schema(SCHEMA);
    let (st, status) = s
        .ops()
        .operation(&serde_json::json!({"operation": "cluster_status"}));
    assert_eq!(st, 200, "{status}");
    assert_eq!(status["is_enabled"], false);
    assert_eq!(status["connections"], serde_json::json!([]));
    // A write that asks for confirmation by other nodes is told there are none to give it.
    let r = s.client().request(
        "PUT",
        "/Dog/1",
        &[
            ("Content-Type", "application/json"),
            ("X-Replicate-To", "1;confirm=1"),
        ],
        Some(br#"{"name":"Rex"}"#),
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("does not replicate"), "{}", r.text());
    assert_eq!(
        s.client().get("/Dog/1").status,
        200,
        "committed all the same"
    );
}

/// A write that asks for confirmation (`X-Replicate-To: ...;confirm=N`, or
/// `replicatedConfirmation` in an operation) is answered once the other node applied it: read
/// there at once, it is there. With the other node away, it is answered 504 in time, and kept.
#[test]
fn a_confirmed_write_is_answered_once_the_other_node_has_it() {
    let nats = Nats::start();
    let app = App::new(SCHEMA);
    let (a, b, _roots) = pair(&nats, &app);
    // Both connected: B's consumer exists once it has applied anything of A's.
    put_and_see(&a, &b, "/Dog/0", r#"{"name":"first"}"#);
    let confirmed = |s: &Server, path: &str, header: &str, body: &str| {
        s.client().request(
            "PUT",
            path,
            &[
                ("Content-Type", "application/json"),
                ("X-Replicate-To", header),
            ],
            Some(body.as_bytes()),
        )
    };
    for i in 1..=20 {
        let path = format!("/Dog/{i}");
        let r = confirmed(&a, &path, "2;confirm=1", &format!(r#"{{"name":"c{i}"}}"#));
        assert_eq!(r.status, 204, "{}", r.text());
        let there = b.client().get(&path);
        assert_eq!(there.status, 200, "{path} confirmed but not on B");
        assert_eq!(there.json()["name"], format!("c{i}"));
    }
    let (st, out) = a.ops().operation(&serde_json::json!({"operation": "upsert",
        "table": "Dog", "records": [{"id": "op", "name": "by operation"}],
        "replicatedConfirmation": 1}));
    assert_eq!(st, 200, "{out}");
    assert_eq!(b.client().get("/Dog/op").json()["name"], "by operation");
    assert_eq!(confirmed(&a, "/Dog/x", "two;confirm=1", "{}").status, 400);
    let (st, _) = a.ops().operation(&serde_json::json!({"operation": "upsert",
        "table": "Dog", "records": [{"id": "x"}], "replicatedConfirmation": "one"}));
    assert_eq!(st, 400);

    // More nodes than there are, or the only other one away: 504 after the wait, and the
    // write kept here.
    let r = confirmed(&a, "/Dog/many", "3;confirm=2", r#"{"name":"many"}"#);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("1 of the 2"), "{}", r.text());
    assert!(b.terminate().is_some());
    let r = confirmed(&a, "/Dog/away", "1;confirm=1", r#"{"name":"away"}"#);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("committed here"), "{}", r.text());
    assert_eq!(a.client().get("/Dog/away").json()["name"], "away");
    drop(nats);
}

#[test]
fn increments_made_on_two_nodes_at_once_add_up_on_both() {
    let nats = Nats::start();
    // The guests' `Widget` resource adds a message's `restock` to the stock with `addTo`.
    let app = App::with_wasm(tessera_tests::GUEST_SCHEMA);
    let (root_a, root_b) = (node_root("alpha", &nats), node_root("beta", &nats));
    let start = |root: &Path| {
        let mut s = Start::new(app.dir.path(), root);
        // Each node compiles the guests' module (cranelift, in the debug build).
        s.timeout = Duration::from_secs(300);
        s.start()
    };
    let (a, b) = (start(root_a.path()), start(root_b.path()));
    assert_eq!(
        a.client()
            .put_json("/Widget/1", r#"{"name":"bolt","price":8,"stock":5}"#)
            .status,
        204
    );
    eventually(&b, "/Widget/1", "the widget on B", |st, _| st == 200);
    // Ten restocks of 1 through A and ten of 2 through B, at the same time: each an `addTo`.
    let restock = |s: &Server, id: &str, n: i64| {
        let port = s.mqtt_port;
        let id = id.to_owned();
        std::thread::spawn(move || {
            let (mut c, _) = MqttClient::connect(port, Version::V5, &id, Some(ADMIN));
            for _ in 0..10 {
                let body = format!(r#"{{"restock":{n}}}"#);
                assert_eq!(
                    c.publish("Widget/1", body.as_bytes(), QoS::AtLeastOnce, false),
                    Some(0)
                );
            }
        })
    };
    let (ta, tb) = (restock(&a, "on-a", 1), restock(&b, "on-b", 2));
    ta.join().unwrap();
    tb.join().unwrap();
    // 5 + 10 x 1 + 10 x 2, on both, with the same record.
    for s in [&a, &b] {
        eventually(s, "/Widget/1", "every increment", |st, v| {
            st == 200 && v["stock"] == 35
        });
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.client().get("/Widget/1").json() != b.client().get("/Widget/1").json() {
        assert!(Instant::now() < deadline, "the two nodes' records differ");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The number of Dogs a node holds.
fn dogs(s: &Server) -> i64 {
    let (st, rows) = s.ops().operation(&serde_json::json!({
        "operation": "sql",
        "sql": "SELECT COUNT(*) AS n FROM data.Dog"
    }));
    assert_eq!(st, 200, "{rows}");
    rows[0]["n"].as_i64().unwrap()
}

#[test]
fn nothing_acknowledged_is_lost_to_replication_when_either_node_is_killed() {
    let nats = Nats::start();
    let app = App::new(SCHEMA);
    let (root_a, root_b) = (node_root("alpha", &nats), node_root("beta", &nats));
    let a = Start::new(app.dir.path(), root_a.path()).start();
    let mut b = Some(Start::new(app.dir.path(), root_b.path()).start());
    // B is killed while A writes; A is killed right after its last write is acknowledged,
    // before it can have published all of them.
    let mut ca = a.client();
    for id in 1..=150 {
        let body = format!(r#"{{"name":"dog {id}","n":{id}}}"#);
        assert_eq!(ca.put_json(&format!("/Dog/{id}"), &body).status, 204);
        if id == 50 {
            b.take().unwrap().kill9();
        }
    }
    a.kill9();
    let a = Start::new(app.dir.path(), root_a.path()).start();
    let b = Start::new(app.dir.path(), root_b.path()).start();
    assert_eq!(dogs(&a), 150, "A lost an acknowledged write");
    let deadline = Instant::now() + Duration::from_secs(30);
    while dogs(&b) != 150 {
        assert!(
            Instant::now() < deadline,
            "B holds {} of A's 150 Dogs\nA: {}\nB: {}",
            dogs(&b),
            a.output(),
            b.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in [1, 50, 51, 149, 150] {
        let path = format!("/Dog/{id}");
        assert_eq!(a.client().get(&path).json(), b.client().get(&path).json());
    }
}

/// A silent partition between the nodes and the NATS server (an nftables rule dropping its
/// port's packets both ways, as a cut cable would), removed when dropped.
struct Partition(&'static str);

impl Partition {
    fn cut(port: u16) -> Partition {
        let table = "tessera_replication_test";
        let rules = format!(
            "table inet {table} {{\n chain out {{\n type filter hook output priority 0;\n \
             tcp dport {port} drop\n tcp sport {port} drop\n }}\n}}\n"
        );
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft (Debian's nftables) runs");
        use std::io::Write;
        nft.stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft took the rule");
        Partition(table)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", self.0])
            .status();
    }
}

#[test]
fn writes_on_both_sides_of_a_partition_converge_once_it_heals() {
    let nats = Nats::start();
    let app = App::new(SCHEMA);
    let (a, b, _roots) = pair(&nats, &app);
    put_and_see(&a, &b, "/Dog/0", r#"{"name":"before"}"#);

    let cut = Partition::cut(nats.port);
    for i in 1..=20 {
        let body = format!(r#"{{"name":"a{i}"}}"#);
        assert_eq!(
            a.client().put_json(&format!("/Dog/a{i}"), &body).status,
            204
        );
        let body = format!(r#"{{"name":"b{i}"}}"#);
        assert_eq!(
            b.client().put_json(&format!("/Dog/b{i}"), &body).status,
            204
        );
    }
    assert_eq!(
        a.client().put_json("/Dog/both", r#"{"name":"A"}"#).status,
        204
    );
    assert_eq!(
        b.client().put_json("/Dog/both", r#"{"name":"B"}"#).status,
        204
    );
    // Patches of different attributes of one record on both sides both stay; a put on A older
    // than a patch on B is applied under it on B (Harper's rule), not dropped.
    assert_eq!(
        a.client()
            .patch_json("/Dog/0", r#"{"name":"renamed"}"#)
            .status,
        204
    );
    assert_eq!(b.client().patch_json("/Dog/0", r#"{"n":7}"#).status, 204);
    assert_eq!(
        a.client()
            .put_json("/Dog/late", r#"{"name":"put on A"}"#)
            .status,
        204
    );
    assert_eq!(b.client().patch_json("/Dog/late", r#"{"n":1}"#).status, 204);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(b.client().get("/Dog/a1").status, 404, "the partition held");
    drop(cut);

    // Every write on both sides reaches the other, and the record written on both ends the
    // same on both (the later write).
    let deadline = Instant::now() + Duration::from_secs(90);
    while dogs(&a) != 43 || dogs(&b) != 43 {
        assert!(
            Instant::now() < deadline,
            "after healing: A {} and B {} of 43\nA: {}\nB: {}",
            dogs(&a),
            dogs(&b),
            a.output(),
            b.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    while a.client().get("/Dog/both").json() != b.client().get("/Dog/both").json() {
        assert!(Instant::now() < deadline, "/Dog/both differs");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(b.client().get("/Dog/both").json()["name"], "B");
    for (path, name, n) in [("/Dog/0", "renamed", 7), ("/Dog/late", "put on A", 1)] {
        for s in [&a, &b] {
            eventually(s, path, "both sides' writes", |st, v| {
                st == 200 && v["name"] == name && v["n"] == n
            });
        }
    }
}

/// What the Operations API makes on one node (a database, a table, an attribute, a role, a
/// user) appears on the other, a user's password works there, and a user dropped on one node
/// cannot sign in on the other; a table dropped stays on the node that did not drop it (as in
/// Harper).
#[test]
fn schema_users_and_roles_made_on_one_node_appear_on_the_other() {
    let nats = Nats::start();
    let app = App::new(SCHEMA);
    let (a, b, _roots) = pair(&nats, &app);
    let op = |s: &Server, body: serde_json::Value| {
        let (st, out) = s.ops().operation(&body);
        assert_eq!(st, 200, "{body} on {}: {out}", s.ops_port);
        out
    };
    op(
        &a,
        serde_json::json!({"operation": "create_database", "database": "shop"}),
    );
    op(
        &a,
        serde_json::json!({"operation": "create_table", "database": "shop", "table": "Order",
                           "primary_key": "id", "attributes": [{"name": "total"}]}),
    );
    op(
        &a,
        serde_json::json!({"operation": "insert", "database": "shop", "table": "Order",
                           "records": [{"id": 1, "total": 12.5, "note": "new attribute"}]}),
    );
    op(
        &a,
        serde_json::json!({"operation": "add_role", "role": "reader", "permission": {
            "shop": {"tables": {"Order": {"read": true, "insert": false, "update": false,
                                          "delete": false, "attribute_permissions": []}}}}}),
    );
    op(
        &a,
        serde_json::json!({"operation": "add_user", "username": "ann", "password": "s3cret!",
                           "role": "reader", "active": true}),
    );

    // On B: the table with A's record and its new attribute, found by it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let search = serde_json::json!({"operation": "search_by_value", "database": "shop",
        "table": "Order", "search_attribute": "note", "search_value": "new attribute",
        "get_attributes": ["id", "total"]});
    loop {
        let (st, out) = b.ops().operation(&search);
        if st == 200 && out == serde_json::json!([{"id": 1, "total": 12.5}]) {
            break;
        }
        assert!(Instant::now() < deadline, "B: {st} {out}\n{}", b.output());
        std::thread::sleep(Duration::from_millis(100));
    }
    let described = op(
        &b,
        serde_json::json!({"operation": "describe_table", "database": "shop", "table": "Order"}),
    );
    let names: Vec<&str> = described["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attribute"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"total") && names.contains(&"note"),
        "{described}"
    );

    // Ann signs in on B with the password set on A, and has the role's limits there.
    let ann =
        |s: &Server, body: &serde_json::Value| s.ops().as_user("ann", "s3cret!").operation(body);
    let read = serde_json::json!({"operation": "search_by_id", "database": "shop",
                                  "table": "Order", "ids": [1], "get_attributes": ["total"]});
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (st, out) = ann(&b, &read);
        if st == 200 {
            assert_eq!(out, serde_json::json!([{"total": 12.5}]));
            break;
        }
        assert!(Instant::now() < deadline, "ann on B: {st} {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let write = serde_json::json!({"operation": "insert", "database": "shop", "table": "Order",
                                   "records": [{"id": 2, "total": 1}]});
    assert_eq!(ann(&b, &write).0, 403, "the reader role holds on B");

    // Dropped on A: refused on B. A table dropped on B stays on A.
    op(
        &a,
        serde_json::json!({"operation": "drop_user", "username": "ann"}),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while ann(&b, &read).0 == 200 {
        assert!(
            Instant::now() < deadline,
            "ann, dropped on A, still signs in on B"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ann(&b, &read).0, 401);
    op(
        &b,
        serde_json::json!({"operation": "drop_table", "database": "shop", "table": "Order"}),
    );
    std::thread::sleep(Duration::from_secs(1));
    let (st, out) = a.ops().operation(&read);
    assert_eq!((st, out), (200, serde_json::json!([{"total": 12.5}])));
}

/// `replication.routes` are the NATS servers a node fails over to: a node whose own NATS
/// server is down replicates through the route. The route operations keep them in the
/// configuration with Harper's answers, and `remove_node` forgets a node.
#[test]
fn routes_are_kept_by_the_route_operations_and_a_node_fails_over_to_them() {
    let nats = Nats::start();
    let app = App::new(SCHEMA);
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root_a = tempfile::tempdir().unwrap();
    std::fs::write(
        root_a.path().join("tessera.yaml"),
        format!(
            "replication:\n  hostname: alpha\n  nats: nats://127.0.0.1:{dead}\n  routes:\n    - hostname: 127.0.0.1\n      port: {}\n",
            nats.port
        ),
    )
    .unwrap();
    let root_b = node_root("beta", &nats);
    let a = Start::new(app.dir.path(), root_a.path()).start();
    let b = Start::new(app.dir.path(), root_b.path()).start();
    put_and_see(&a, &b, "/Dog/1", r#"{"name":"through the route"}"#);
    put_and_see(&b, &a, "/Dog/2", r#"{"name":"and back"}"#);

    let op = |body: serde_json::Value| {
        let (st, out) = a.ops().operation(&body);
        assert_eq!(st, 200, "{body}: {out}");
        out
    };
    let route = serde_json::json!({"hostname": "127.0.0.1", "port": nats.port});
    assert_eq!(
        op(serde_json::json!({"operation": "cluster_get_routes"})),
        serde_json::json!([route])
    );
    let set = op(serde_json::json!({"operation": "cluster_set_routes",
        "routes": ["wss://server-two:9925", route]}));
    assert_eq!(
        set,
        serde_json::json!({"message": "cluster routes successfully set",
                           "set": ["wss://server-two:9925"], "skipped": [route]})
    );
    assert_eq!(
        op(serde_json::json!({"operation": "cluster_get_routes"})),
        serde_json::json!([route, "wss://server-two:9925"])
    );
    let deleted = op(serde_json::json!({"operation": "cluster_delete_routes",
        "routes": ["wss://server-two:9925", "wss://nowhere:1"]}));
    assert_eq!(
        deleted,
        serde_json::json!({"message": "cluster routes successfully deleted",
                           "deleted": ["wss://server-two:9925"], "skipped": ["wss://nowhere:1"]})
    );
    let (st, _) = a.ops().operation(
        &serde_json::json!({"operation": "cluster_set_routes", "routes": [{"port": 1}]}),
    );
    assert_eq!(st, 400);
    assert_eq!(
        op(
            serde_json::json!({"operation": "add_node", "hostname": "gamma", "url": "nats://gamma:4222"})
        )["message"],
        "Successfully added 'gamma' to cluster"
    );
    assert_eq!(
        op(serde_json::json!({"operation": "remove_node", "hostname": "gamma"}))["message"],
        "Successfully removed 'gamma' from cluster"
    );
    assert_eq!(
        op(serde_json::json!({"operation": "cluster_get_routes"})),
        serde_json::json!([route])
    );
    // The configuration file holds them for the next start.
    let config = std::fs::read_to_string(root_a.path().join("tessera.yaml")).unwrap();
    assert!(config.contains(&nats.port.to_string()), "{config}");
    // Removing beta forgets it here (until it sends again).
    op(serde_json::json!({"operation": "remove_node", "hostname": "beta"}));
    let status = op(serde_json::json!({"operation": "cluster_status"}));
    assert_eq!(status["connections"], serde_json::json!([]), "{status}");
}

/// An MQTT message published (not retained) on one node reaches the subscribers of every node,
/// and stores nothing anywhere.
#[test]
fn a_message_published_on_one_node_reaches_subscribers_on_the_other() {
    let nats = Nats::start();
    let app = App::new(SCHEMA);
    let (a, b, _roots) = pair(&nats, &app);
    // Both connected to NATS: a replicated write has gone through.
    put_and_see(&a, &b, "/Dog/0", r#"{"name":"first"}"#);
    let (mut sub, _) = MqttClient::connect(b.mqtt_port, Version::V5, "listener", Some(ADMIN));
    sub.subscribe(&[("Dog/7", QoS::AtLeastOnce)]);
    let (mut publisher, _) = MqttClient::connect(a.mqtt_port, Version::V5, "talker", Some(ADMIN));
    // The subscription on B and NATS's subject interest settle within a moment; a message sent
    // before may miss (at most once, like the message itself): send until one arrives.
    let deadline = Instant::now() + Duration::from_secs(15);
    let got = loop {
        publisher.publish("Dog/7", br#"{"say":"hi"}"#, QoS::AtLeastOnce, false);
        if let Some(p) = sub.next_publish(Duration::from_millis(300)) {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "B's subscriber heard nothing\n{}",
            b.output()
        );
    };
    assert_eq!(got.topic, "Dog/7");
    assert_eq!(got.payload, br#"{"say":"hi"}"#);
    assert!(!got.retain);
    for s in [&a, &b] {
        assert_eq!(
            s.client().get("/Dog/7").status,
            404,
            "a message stores nothing"
        );
    }
}

/// A new node's copy killed (`kill -9`) half way goes on from where it was when the node
/// starts again, and ends with every record.
#[test]
fn a_copy_cut_short_by_a_crash_goes_on_from_where_it_was() {
    let nats = Nats::start();
    let app = App::new(SCHEMA);
    let root_a = node_root("alpha", &nats);
    let a = Start::new(app.dir.path(), root_a.path()).start();
    const N: usize = 40_000;
    for chunk in 0..N / 5_000 {
        let records: Vec<_> = (chunk * 5_000..(chunk + 1) * 5_000)
            .map(|i| serde_json::json!({"id": format!("d{i:06}"), "name": "x".repeat(64), "n": i}))
            .collect();
        let (st, out) = a.ops().operation(
            &serde_json::json!({"operation": "insert", "table": "Dog", "records": records}),
        );
        assert_eq!(st, 200, "{out}");
    }
    let root_b = node_root("beta", &nats);
    let progress = root_b.path().join("data/replication/copy");
    let b = Start::new(app.dir.path(), root_b.path()).start();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copied = std::fs::read(&progress)
            .ok()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
            .and_then(|p| p["records"].as_u64())
            .unwrap_or(0);
        if copied > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's copy did not begin\n{}",
            b.output()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    b.kill9();
    let b = Start::new(app.dir.path(), root_b.path()).start();
    let count = |s: &Server| {
        let (_, out) = s.ops().operation(
            &serde_json::json!({"operation": "sql", "sql": "SELECT COUNT(*) AS n FROM data.Dog"}),
        );
        out[0]["n"].as_u64().unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&b) < N as u64 {
        assert!(
            Instant::now() < deadline,
            "B has {} of {N}\n{}",
            count(&b),
            b.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(count(&b), N as u64);
    assert!(b.output().contains("resuming the copy"), "{}", b.output());
    assert!(
        !progress.exists(),
        "the copy's progress goes once it is done"
    );
}

/// A transaction that spans shards on one node (an Operations API insert of many records)
/// appears whole on the other: its changes come from each shard's part of it and are committed
/// there together, so a query never sees some of its records without the rest.
#[test]
fn a_transaction_across_shards_appears_whole_on_the_other_node() {
    let nats = Nats::start();
    let app = App::new(SCHEMA);
    let (a, b, _roots) = pair(&nats, &app);
    // B, new, first copies what A has, table by table and shard by shard (not transaction by
    // transaction), then tails the stream: the reads start once B tails, which its seeing a
    // record made and then deleted on A shows.
    put_and_see(&a, &b, "/Dog/ready", r#"{"name":"ready"}"#);
    assert!(matches!(a.client().delete("/Dog/ready").status, 200 | 204));
    eventually(&b, "/Dog/ready", "a delete made on A", |st, _| st == 404);
    const BATCHES: usize = 20;
    const RECORDS: usize = 100;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (seen, done, port) = (seen.clone(), done.clone(), b.port);
        std::thread::spawn(move || {
            let mut client = tessera_tests::Client::connect(port);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client.get("/Dog/?select(id)");
                assert_eq!(r.status, 200, "{}", r.text());
                let n = r.json().as_array().map_or(0, Vec::len);
                seen.lock().unwrap().push(n);
            }
        })
    };
    for batch in 0..BATCHES {
        let records: Vec<_> = (0..RECORDS)
            .map(|i| serde_json::json!({"id": format!("t{batch}-{i}"), "name": "txn", "n": i}))
            .collect();
        let (st, body) = a.ops().operation(&serde_json::json!({
            "operation": "insert", "database": "data", "table": "Dog", "records": records
        }));
        assert_eq!(st, 200, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while dogs(&b) != (BATCHES * RECORDS) as i64 {
        assert!(
            Instant::now() < deadline,
            "B has {} records (A {}), batches missing {:?}\n{}",
            dogs(&b),
            dogs(&a),
            (0..BATCHES)
                .filter(|i| b.client().get(&format!("/Dog/t{i}-0")).status != 200)
                .collect::<Vec<_>>(),
            b.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    let seen = seen.lock().unwrap();
    let torn: Vec<_> = seen.iter().filter(|n| **n % RECORDS != 0).collect();
    assert!(
        torn.is_empty(),
        "B showed part of a transaction in {} of {} reads: {torn:?}\n{}",
        torn.len(),
        seen.len(),
        b.output()
    );
    assert!(seen.len() > 10, "the reader read {} times", seen.len());
}

/// A NATS server that asks for a user and password over TLS (its certificate from the test's
/// own CA): nodes configured with them (`replication.natsUser`, `natsPassword`,
/// `natsTls.certificateAuthority`) replicate; a node with a wrong password gets nothing, and
/// its log says why without the password.
#[test]
fn nodes_replicate_through_a_nats_server_that_asks_for_credentials_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = server.signed_by(&key, &issuer).unwrap();
    let file = |name: &str, pem: String| {
        let path = certs.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ca_pem, cert_pem, key_pem) = (
        file("ca.pem", ca_cert.pem()),
        file("server.pem", cert.pem()),
        file("server.key", key.serialize_pem()),
    );
    let nats = Nats::start_with(&[
        "--user",
        "tessera",
        "--pass",
        "s3cret-pass",
        "--tls",
        "--tlscert",
        &cert_pem,
        "--tlskey",
        &key_pem,
    ]);
    let app = App::new(SCHEMA);
    let node = |name: &str, password: &str| {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("tessera.yaml"),
            format!(
                "replication:\n  hostname: {name}\n  nats: nats://127.0.0.1:{}\n  natsUser: tessera\n  \
                 natsPassword: {password}\n  natsTls:\n    certificateAuthority: {ca_pem}\n",
                nats.port
            ),
        )
        .unwrap();
        let s = Start::new(app.dir.path(), root.path()).start();
        (s, root)
    };
    let (a, _ra) = node("alpha", "s3cret-pass");
    let (b, _rb) = node("beta", "s3cret-pass");
    let (c, _rc) = node("gamma", "n0t-the-pass");
    put_and_see(&a, &b, "/Dog/1", r#"{"name":"over TLS"}"#);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.client().get("/Dog/1").status, 404, "gamma got it");
    let (st, status) = c
        .ops()
        .operation(&serde_json::json!({"operation": "cluster_status"}));
    assert_eq!(st, 200, "{status}");
    let out = c.output();
    assert!(
        out.to_lowercase().contains("authorization"),
        "gamma does not say why: {out}"
    );
    for s in [&a, &b, &c] {
        assert!(
            !s.output().contains("pass"),
            "a password in the log: {}",
            s.output()
        );
    }
}

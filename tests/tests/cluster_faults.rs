//! The fault harness of replication: three Tessera nodes, each with its own nats-server (the
//! three clustered, the stream kept on all of them), each pair in its own network namespace
//! joined to a bridge by a veth pair, and one node's clock 3 s ahead (libfaketime). Clients write
//! to every node at once, the same records from all sides, while the harness injects one fault
//! after another: `kill -9` of a node, `kill -9` of a node's nats-server, a silent partition (an
//! nftables drop rule), packet loss (nftables, at random) and a bandwidth cap (tc tbf). Once all
//! is healed it checks that every node holds the same records with the same versions, that every
//! write acknowledged with `confirm=1` is everywhere, that records deleted while a node was cut
//! off stay deleted once it is back, and that a subscriber saw every record's final state.
//!
//! Runs as root, with `ip`, `nft`, `tc`, libfaketime, `nats-server` and `mosquitto_sub` (Debian's
//! packages, installed by `tests/run.sh`). The namespaces, the bridge and every process go when
//! the harness does, on failure too. Every wait is bounded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tessera_tests::{ADMIN, App, basic, binary};

const NODES: usize = 3;
const SCHEMA: &str = "type Dog @table @export { id: ID @primaryKey name: String n: Int }";
/// The records every node writes in every round: the same ones, so that writes conflict.
const KEYS: usize = 24;
const HTTP: u16 = 9926;
const MQTT: u16 = 1883;
const OPS: u16 = 9925;
/// Node 2's (index 2) clock is this far ahead.
const SKEW: &str = "+3s";
/// Debian's libfaketime (package `faketime`).
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The network, the processes and their directories; all removed when dropped.
struct Harness {
    /// Names the namespaces (`<tag>-<i>`), the bridge and the veths (`<tag>h<i>`).
    tag: String,
    /// The second byte of the 10.x.0.0/24 the nodes live in.
    net: u8,
    dir: tempfile::TempDir,
    app: App,
    nats: Mutex<Vec<Option<Child>>>,
    nodes: Mutex<Vec<Option<Child>>>,
    watcher: Mutex<Option<Child>>,
}

/// Runs a command to its end; panics with its output if it fails.
fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!("{args:?}: {e} (the harness needs Debian's iproute2, nftables)")
        });
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGKILL, and reaped.
fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// SIGKILL to the process `ip netns exec` became (it execs, keeping the pid), and reaped.
fn kill_in(children: &Mutex<Vec<Option<Child>>>, i: usize) {
    kill(&mut children.lock().unwrap()[i]);
}

impl Harness {
    fn new() -> Harness {
        let euid = Command::new("id").arg("-u").output().expect("id");
        assert_eq!(
            String::from_utf8_lossy(&euid.stdout).trim(),
            "0",
            "the fault harness makes network namespaces: run the suite as root"
        );
        let pid = std::process::id();
        let h = Harness {
            tag: format!("tf{:x}", pid % 0xfffff),
            net: 100 + (pid % 100) as u8,
            dir: tempfile::tempdir().unwrap(),
            app: App::new(SCHEMA),
            nats: Mutex::new((0..NODES).map(|_| None).collect()),
            nodes: Mutex::new((0..NODES).map(|_| None).collect()),
            watcher: Mutex::new(None),
        };
        let bridge = format!("{}br", h.tag);
        run(&["ip", "link", "add", &bridge, "type", "bridge"]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", h.client_ip()),
            "dev",
            &bridge,
        ]);
        run(&["ip", "link", "set", &bridge, "up"]);
        for i in 0..NODES {
            let (ns, host, inner) = (h.ns(i), h.veth(i), format!("{}n{i}", h.tag));
            run(&["ip", "netns", "add", &ns]);
            run(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &inner,
            ]);
            run(&["ip", "link", "set", &inner, "netns", &ns]);
            run(&["ip", "link", "set", &host, "master", &bridge, "up"]);
            let ip = format!("{}/24", h.ip(i));
            run(&[
                "ip", "netns", "exec", &ns, "ip", "addr", "add", &ip, "dev", &inner,
            ]);
            run(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", &inner, "up",
            ]);
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        }
        h
    }

    fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    fn veth(&self, i: usize) -> String {
        format!("{}h{i}", self.tag)
    }

    fn ip(&self, i: usize) -> String {
        format!("10.{}.0.{}", self.net, i + 1)
    }

    /// The harness's own address on the bridge (the clients').
    fn client_ip(&self) -> String {
        format!("10.{}.0.254", self.net)
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.dir.path().join(name)).unwrap()
    }

    /// Node `i`'s nats-server: JetStream, clustered with the other two.
    fn start_nats(&self, i: usize) {
        let routes: Vec<String> = (0..NODES)
            .filter(|j| *j != i)
            .map(|j| format!("nats://{}:6222", self.ip(j)))
            .collect();
        let store = self.dir.path().join(format!("nats{i}"));
        let nats = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(i), nats, "-js", "--server_name"])
            .arg(format!("n{i}"))
            .args(["-a", &self.ip(i), "-p", "4222", "-sd"])
            .arg(&store)
            .args(["--cluster_name", "tessera", "--cluster"])
            .arg(format!("nats://{}:6222", self.ip(i)))
            .args(["--routes", &routes.join(",")])
            .stdout(self.log(&format!("nats{i}.out")))
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian's package)");
        self.nats.lock().unwrap()[i] = Some(child);
    }

    fn root(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    /// Node `i`'s Tessera: its own nats-server first, the others' as routes; node 2 under a
    /// clock [`SKEW`] ahead. Returns once it answers HTTP.
    fn start_node(&self, i: usize) {
        let root = self.root(i);
        std::fs::create_dir_all(&root).unwrap();
        let routes: String = (0..NODES)
            .filter(|j| *j != i)
            .map(|j| format!("    - nats://{}:4222\n", self.ip(j)))
            .collect();
        std::fs::write(
            root.join("tessera.yaml"),
            format!(
                "replication:\n  hostname: node{i}\n  nats: nats://{}:4222\n  streamReplicas: 3\n  routes:\n{routes}",
                self.ip(i)
            ),
        )
        .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(i)]);
        if i == 2 {
            // libfaketime preloaded (its `faketime` wrapper would fork, and a kill would miss).
            cmd.env("LD_PRELOAD", FAKETIME_LIB).env("FAKETIME", SKEW);
        }
        let out = self.log(&format!("node{i}.out"));
        let child = cmd
            .arg(binary())
            .arg("run")
            .arg(self.app.dir.path())
            .arg("--root")
            .arg(&root)
            .args(["--threads", "1", "--host", &self.ip(i)])
            .args(["--http-port", &HTTP.to_string()])
            .args(["--mqtt-port", &MQTT.to_string()])
            .args(["--ops-port", &OPS.to_string()])
            .env("TESSERA_ADMIN_USERNAME", ADMIN.0)
            .env("TESSERA_ADMIN_PASSWORD", ADMIN.1)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("the tessera binary");
        self.nodes.lock().unwrap()[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.http(i, "GET", "/Dog/none", &[], None).is_none() {
            assert!(
                Instant::now() < deadline,
                "node {i} did not answer:\n{}",
                self.output(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn output(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{i}.out"))).unwrap_or_default()
    }

    /// One HTTP request to node `i` on its own connection: (status, ETag, body), or `None`
    /// when the node cannot be reached or does not answer within 20 s.
    fn http(
        &self,
        i: usize,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Option<(u16, Option<String>, String)> {
        let addr = format!("{}:{HTTP}", self.ip(i)).parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {}\r\n",
            basic(ADMIN.0, ADMIN.1)
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let etag = head
            .lines()
            .find_map(|l| l.strip_prefix("ETag: "))
            .map(|e| e.trim_matches('"').to_owned());
        Some((status, etag, body.to_owned()))
    }

    /// Every client writes the same [`KEYS`] records on every node (reachable or not), plus
    /// one record of its own asking for confirmation by one other node; returns the confirmed
    /// ones (id, name).
    fn round(self: &Arc<Self>, round: &str) -> Vec<(String, String)> {
        let confirmed = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..NODES)
            .map(|i| {
                let (h, round, confirmed) = (self.clone(), round.to_owned(), confirmed.clone());
                std::thread::spawn(move || {
                    for k in 0..KEYS {
                        let body = format!(r#"{{"name":"{round}-node{i}","n":{k}}}"#);
                        h.http(i, "PUT", &format!("/Dog/k{k}"), &[], Some(&body));
                    }
                    let id = format!("c-{round}-{i}");
                    let name = format!("confirmed {round} on node{i}");
                    let body = format!(r#"{{"name":"{name}"}}"#);
                    // A confirmation can time out while the faults last (a 504 that says the
                    // write is committed here but not yet confirmed): asked twice.
                    let confirm = [("X-Replicate-To", "2;confirm=1")];
                    for _ in 0..2 {
                        let r = h.http(i, "PUT", &format!("/Dog/{id}"), &confirm, Some(&body));
                        if r.is_some_and(|(st, ..)| st == 204) {
                            confirmed.lock().unwrap().push((id, name));
                            break;
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        Arc::try_unwrap(confirmed).unwrap().into_inner().unwrap()
    }

    /// Every record node `i` holds: id -> (version, body).
    fn records(&self, i: usize) -> Option<BTreeMap<String, (String, String)>> {
        let (st, _, list) = self.http(i, "GET", "/Dog/", &[], None)?;
        if st != 200 {
            return None;
        }
        let list: serde_json::Value = serde_json::from_str(&list).ok()?;
        let mut out = BTreeMap::new();
        for r in list.as_array()? {
            let id = r["id"].as_str()?.to_owned();
            let (st, etag, body) = self.http(i, "GET", &format!("/Dog/{id}"), &[], None)?;
            if st == 200 {
                out.insert(id, (etag?, body));
            }
        }
        Some(out)
    }

    /// Waits (60 s at most) until every node holds the same records at the same versions.
    fn converged(&self) -> BTreeMap<String, (String, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all: Vec<_> = (0..NODES).map(|i| self.records(i)).collect();
            if let Some(Some(first)) = all.first()
                && all.iter().all(|r| r.as_ref() == Some(first))
            {
                return first.clone();
            }
            if Instant::now() > deadline {
                let sizes: Vec<_> = all.iter().map(|r| r.as_ref().map(|m| m.len())).collect();
                let diff: Vec<_> = match (&all[0], &all[1], &all[2]) {
                    (Some(a), Some(b), Some(c)) => a
                        .iter()
                        .filter(|(k, v)| b.get(*k) != Some(v) || c.get(*k) != Some(v))
                        .map(|(k, v)| format!("{k}: {v:?} / {:?} / {:?}", b.get(k), c.get(k)))
                        .take(5)
                        .collect(),
                    _ => Vec::new(),
                };
                panic!(
                    "the nodes did not converge in 60 s: {sizes:?} records; {diff:#?}\n{}",
                    (0..NODES)
                        .map(|i| self.output(i))
                        .collect::<Vec<_>>()
                        .join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// nftables in node `i`'s namespace: `rules` (a table named `name`) added, or the table
    /// removed when `rules` is `None`.
    fn nft(&self, i: usize, name: &str, rules: Option<&str>) {
        let script = match rules {
            Some(r) => format!("table inet {name} {{\n{r}\n}}\n"),
            None => format!("delete table inet {name}\n"),
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(i), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft (Debian's nftables)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft: {script}");
    }

    /// Node `i` cut off from the other nodes (not from the clients): nothing passes, nothing
    /// is refused.
    fn partition(&self, i: usize) {
        let (net, me) = (format!("10.{}.0.0/24", self.net), self.client_ip());
        self.nft(
            i,
            "partition",
            Some(&format!(
                "chain input {{ type filter hook input priority 0; ip saddr {net} ip saddr != {me} drop; }}\n\
                 chain output {{ type filter hook output priority 0; ip daddr {net} ip daddr != {me} drop; }}"
            )),
        );
    }

    /// Node `i` drops `percent` of the packets from the other nodes, at random.
    fn lossy(&self, i: usize, percent: u32) {
        let (net, me) = (format!("10.{}.0.0/24", self.net), self.client_ip());
        self.nft(
            i,
            "loss",
            Some(&format!(
                "chain input {{ type filter hook input priority 0; ip saddr {net} ip saddr != {me} numgen random mod 100 < {percent} drop; }}"
            )),
        );
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        kill(&mut self.watcher.lock().unwrap());
        for i in 0..NODES {
            kill_in(&self.nodes, i);
            kill_in(&self.nats, i);
        }
        for i in 0..NODES {
            // Anything still running in the namespace goes with it.
            if let Ok(out) = Command::new("ip")
                .args(["netns", "pids", &self.ns(i)])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}br", self.tag)])
            .status();
    }
}

#[test]
fn a_three_node_cluster_converges_through_kills_partitions_loss_and_a_bandwidth_cap() {
    let h = Arc::new(Harness::new());
    for i in 0..NODES {
        h.start_nats(i);
    }
    for i in 0..NODES {
        h.start_node(i);
    }
    // A subscriber on node 0 (mosquitto's client), for the end: it must have seen every
    // record's final state.
    let watcher = Command::new("mosquitto_sub")
        .args([
            "-h",
            &h.ip(0),
            "-p",
            &MQTT.to_string(),
            "-V",
            "mqttv5",
            "-q",
            "1",
        ])
        .args([
            "-u", ADMIN.0, "-P", ADMIN.1, "-t", "Dog/#", "-v", "-i", "watcher",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub (Debian's mosquitto-clients)");
    let mut watcher = watcher;
    let out = watcher.stdout.take().unwrap();
    *h.watcher.lock().unwrap() = Some(watcher);
    let seen: Arc<Mutex<BTreeMap<String, String>>> = Default::default();
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some((topic, payload)) = line.split_once(' ') {
                    seen.lock()
                        .unwrap()
                        .insert(topic.to_owned(), payload.to_owned());
                }
            }
        });
    }
    let mut confirmed = Vec::new();

    // The cluster forms (JetStream elects its leaders): a write on each node reaches the others.
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..NODES {
        let body = format!(r#"{{"name":"hello from node{i}"}}"#);
        h.http(i, "PUT", &format!("/Dog/hello{i}"), &[], Some(&body));
    }
    while (0..NODES).any(|i| {
        (0..NODES).any(|j| {
            h.http(i, "GET", &format!("/Dog/hello{j}"), &[], None)
                .is_none_or(|(st, ..)| st != 200)
        })
    }) {
        assert!(
            Instant::now() < deadline,
            "the cluster did not form:\n{}",
            h.output(0)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Node 2's clock is ahead: its versions say so.
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    h.http(2, "PUT", "/Dog/clock", &[], Some(r#"{"name":"now"}"#));
    let (_, etag, _) = h.http(2, "GET", "/Dog/clock", &[], None).unwrap();
    let version = u64::from_str_radix(&etag.unwrap(), 16).unwrap();
    assert!(
        version > now_us + 1_000_000,
        "node 2's clock is not ahead: {version} at {now_us}"
    );

    let calm = h.round("calm");
    assert_eq!(
        calm.len(),
        NODES,
        "writes not confirmed on a calm cluster: {calm:?}"
    );
    confirmed.extend(calm);

    // kill -9 of a node mid-writes; it comes back and catches up.
    kill_in(&h.nodes, 1);
    confirmed.extend(h.round("node1-killed"));
    h.start_node(1);
    // kill -9 of a node's nats-server: the node fails over to the others' through its routes.
    kill_in(&h.nats, 2);
    confirmed.extend(h.round("nats2-killed"));
    h.start_nats(2);

    // A silent partition of node 0, with deletes made on the other side meanwhile: one of a
    // record node 0 wrote while cut off (before the delete), one of a record it did not touch.
    for id in ["del-a", "del-b"] {
        h.http(
            1,
            "PUT",
            &format!("/Dog/{id}"),
            &[],
            Some(r#"{"name":"to delete"}"#),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while h
        .http(0, "GET", "/Dog/del-b", &[], None)
        .is_none_or(|(st, ..)| st != 200)
    {
        assert!(Instant::now() < deadline, "del-b did not reach node 0");
        std::thread::sleep(Duration::from_millis(100));
    }
    h.partition(0);
    confirmed.extend(h.round("node0-cut-off"));
    h.http(
        0,
        "PUT",
        "/Dog/del-a",
        &[],
        Some(r#"{"name":"written while cut off"}"#),
    );
    std::thread::sleep(Duration::from_millis(50));
    for id in ["del-a", "del-b"] {
        let r = h.http(1, "DELETE", &format!("/Dog/{id}"), &[], None);
        assert_eq!(r.map(|r| r.0), Some(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    h.nft(0, "partition", None);

    // 20 % of the packets between the nodes lost, at random, on every node.
    for i in 0..NODES {
        h.lossy(i, 20);
    }
    confirmed.extend(h.round("lossy"));
    for i in 0..NODES {
        h.nft(i, "loss", None);
    }

    // Node 1's link capped at 1 Mbit/s.
    let veth = h.veth(1);
    run(&[
        "tc", "qdisc", "add", "dev", &veth, "root", "tbf", "rate", "1mbit", "burst", "32kbit",
        "latency", "400ms",
    ]);
    confirmed.extend(h.round("capped"));
    run(&["tc", "qdisc", "del", "dev", &veth, "root"]);

    // Healed: one state everywhere, with every confirmed write, the deletes kept, and the
    // subscriber's last word on each record the record.
    let all = h.converged();
    // Beyond the calm round's, at least one write confirmed while a fault lasted: how many
    // depends on how fast JetStream elects leaders again on a busy machine.
    assert!(
        confirmed.len() > NODES,
        "no write confirmed during a fault: {confirmed:?}"
    );
    for (id, name) in &confirmed {
        let (_, body) = all
            .get(id)
            .unwrap_or_else(|| panic!("confirmed {id} is gone"));
        assert!(body.contains(name.as_str()), "{id}: {body}");
    }
    for id in ["del-a", "del-b"] {
        assert!(
            !all.contains_key(id),
            "{id} came back after node 0 rejoined"
        );
    }
    let keys = all.keys().filter(|k| k.starts_with('k')).count();
    assert_eq!(keys, KEYS);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = seen.lock().unwrap().clone();
        let stale: Vec<_> = all
            .iter()
            .filter(|(id, (_, body))| {
                let got = seen.get(&format!("Dog/{id}"));
                got.and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
                    != serde_json::from_str(body).ok()
            })
            .map(|(id, _)| id.clone())
            .collect();
        if stale.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber's last word differs for {stale:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

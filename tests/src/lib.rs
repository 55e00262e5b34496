//! The black-box test harness: starts the real `tessera` binary on loopback (temp root, a port
//! picked by the kernel, two threads) and speaks raw HTTP/1.1 to it.
//!
//! The binary is the one `cargo build -p tessera-runtime` put in the target directory (the
//! README's test command builds it first); `TESSERA_BIN` overrides the path.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

pub mod mqtt;

pub const ADMIN: (&str, &str) = ("admin", "s3cret-pass");

/// The path of the `tessera` binary under test.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("TESSERA_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug/tessera");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p tessera-runtime` first",
        p.display()
    );
    p
}

/// An application component written to a temp directory.
pub struct App {
    pub dir: tempfile::TempDir,
}

impl App {
    pub fn new(schema: &str) -> App {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("config.yaml"),
            "rest: true\ngraphqlSchema:\n  files: 'schema.graphql'\n",
        )
        .expect("write config");
        std::fs::write(dir.path().join("schema.graphql"), schema).expect("write schema");
        App { dir }
    }
}

/// A running server. Killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    pub mqtt_port: u16,
    pub ops_port: u16,
    pub root: PathBuf,
    output: Arc<Mutex<String>>,
}

/// Options for starting a server.
pub struct Start<'a> {
    pub app: &'a Path,
    pub root: &'a Path,
    pub threads: usize,
    pub extra: Vec<String>,
    pub admin: bool,
    /// Extra environment of the server process.
    pub env: Vec<(String, String)>,
    /// How long start-up may take (longer when the server builds wasm crates).
    pub timeout: Duration,
    /// The HTTP, MQTT and Operations API ports (0: any free one).
    pub ports: [u16; 3],
}

impl<'a> Start<'a> {
    pub fn new(app: &'a Path, root: &'a Path) -> Self {
        Start {
            app,
            root,
            threads: 2,
            extra: vec![],
            admin: true,
            env: vec![],
            timeout: Duration::from_secs(60),
            ports: [0; 3],
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(binary());
        c.arg("run")
            .arg(self.app)
            .arg("--root")
            .arg(self.root)
            .arg("--threads")
            .arg(self.threads.to_string());
        let [http, mqtt, ops] = self.ports.map(|p| p.to_string());
        c.args([
            "--http-port",
            &http,
            "--mqtt-port",
            &mqtt,
            "--ops-port",
            &ops,
            "--host",
            "127.0.0.1",
        ])
        .args(&self.extra);
        c.env_remove("TESSERA_ADMIN_USERNAME")
            .env_remove("TESSERA_ADMIN_PASSWORD");
        c.env_remove("HDB_ADMIN_USERNAME")
            .env_remove("HDB_ADMIN_PASSWORD");
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.admin {
            c.env("TESSERA_ADMIN_USERNAME", ADMIN.0)
                .env("TESSERA_ADMIN_PASSWORD", ADMIN.1);
        }
        c
    }

    /// The server process, its output piped.
    fn spawn(&self) -> std::process::Child {
        self.command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tessera")
    }

    /// Starts the server and waits for its listener line.
    pub fn start(&self) -> Server {
        let mut child = self.spawn();
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let out2 = output.clone();
        std::thread::spawn(move || {
            // One line per listener: HTTP, MQTT, then the Operations API.
            let (mut http, mut mqtt) = (None, None);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let port = line
                    .split("listening on ")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok());
                out2.lock()
                    .map(|mut o| o.push_str(&format!("{line}\n")))
                    .ok();
                let Some(p) = port else { continue };
                if line.contains("MQTT listening") {
                    mqtt = Some(p);
                } else if line.contains("Operations API listening") {
                    if let (Some(h), Some(m)) = (http, mqtt) {
                        let _ = tx.send((h, m, p));
                    }
                } else {
                    http = Some(p);
                }
            }
        });
        let out3 = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                out3.lock().map(|mut o| o.push_str(&(line + "\n"))).ok();
            }
        });
        let (port, mqtt_port, ops_port) = match rx.recv_timeout(self.timeout) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "tessera did not start: {}",
                    output.lock().map(|o| o.clone()).unwrap_or_default()
                );
            }
        };
        Server {
            child,
            port,
            mqtt_port,
            ops_port,
            root: self.root.to_owned(),
            output,
        }
    }

    /// Runs the server expecting it to fail at start-up; returns (exit code, output). One
    /// still running after the start-up timeout is killed: (`None`, its output).
    pub fn fail(&self) -> (Option<i32>, String) {
        let mut child = self.spawn();
        let deadline = std::time::Instant::now() + self.timeout;
        let code = loop {
            if let Some(status) = child.try_wait().expect("wait for tessera") {
                break status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().expect("tessera's output");
        (
            code,
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

impl Server {
    /// Starts a server on `schema` with a fresh root. Returns the server and the temp dirs.
    pub fn with_schema(schema: &str) -> (Server, App, tempfile::TempDir) {
        let app = App::new(schema);
        let root = tempfile::tempdir().expect("temp root");
        let s = Start::new(app.dir.path(), root.path()).start();
        (s, app, root)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server printed so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    /// A client of the Operations API port.
    pub fn ops(&self) -> Client {
        Client::connect(self.ops_port)
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "tessera did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no flush.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds role `role` with `permission` and a user of it (as the admin client `c`).
pub fn add_user_with_role(
    c: &mut Client,
    user: &str,
    password: &str,
    role: &str,
    permission: &serde_json::Value,
) {
    let (st, body) = c.operation(&serde_json::json!({"operation": "add_role", "role": role,
        "permission": permission}));
    assert_eq!(st, 200, "{body}");
    let (st, body) = c.operation(&serde_json::json!({"operation": "add_user", "role": role,
        "username": user, "password": password, "active": true}));
    assert_eq!(st, 200, "{body}");
}

/// The permission of a role on `data.Item` that reads, inserts and updates everything but
/// `price`, which it reads only when `price_readable` (and never writes).
pub fn hidden_price(price_readable: bool) -> serde_json::Value {
    serde_json::json!({"super_user": false, "data": {"tables": {"Item": {"read": true,
        "insert": true, "update": true, "delete": false, "attribute_permissions": [
            {"attribute_name": "name", "read": true, "insert": true, "update": true},
            {"attribute_name": "price", "read": price_readable, "insert": false,
             "update": false}]}}}})
}

/// The schema of the attribute-permission subscription tests: `Item`, whose `price`
/// [`hidden_price`] hides.
pub const ITEMS: &str = "type Item @table @export { id: ID @primaryKey name: String price: Int }";

/// Starts a server of [`ITEMS`] with the user `kim` (password `pw-kim`) of role `shopper`, which
/// may not read `price`, and the record `Item/a` (`apple`, price 5). Returns the admin's
/// Operations API client.
pub fn shop_with_kim() -> (Server, App, tempfile::TempDir, Client) {
    let (s, app, root) = Server::with_schema(ITEMS);
    let mut admin = s.ops();
    add_user_with_role(&mut admin, "kim", "pw-kim", "shopper", &hidden_price(false));
    let r = s
        .client()
        .put_json("/Item/a", r#"{"name":"apple","price":5}"#);
    assert_eq!(r.status, 204);
    (s, app, root, admin)
}

/// Checks what kim's live subscription to `Item/` (its next record value from `next`) gets:
/// `Item/a` without price, a later write without it too, and once `shopper` may read price, the
/// next write with it.
pub fn kim_sees_price_only_when_allowed(
    s: &Server,
    admin: &mut Client,
    mut next: impl FnMut() -> serde_json::Value,
) {
    use serde_json::json;
    assert_eq!(next(), json!({"id": "a", "name": "apple"}));
    let mut c = s.client();
    assert_eq!(
        c.put_json("/Item/b", r#"{"name":"bean","price":2}"#).status,
        204
    );
    assert_eq!(next(), json!({"id": "b", "name": "bean"}));
    let (st, _) = admin.operation(&json!({"operation": "alter_role", "id": "shopper",
        "permission": hidden_price(true)}));
    assert_eq!(st, 200);
    assert_eq!(
        c.put_json("/Item/c", r#"{"name":"corn","price":3}"#).status,
        204
    );
    assert_eq!(next(), json!({"id": "c", "name": "corn", "price": 3}));
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// The Basic `Authorization` value of a user and password.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A keep-alive HTTP/1.1 connection.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    pub auth: Option<String>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: Vec::new(),
            auth: Some(basic(ADMIN.0, ADMIN.1)),
        }
    }

    pub fn anonymous(mut self) -> Self {
        self.auth = None;
        self
    }

    /// The client with HTTP Basic credentials of `user`.
    pub fn as_user(mut self, user: &str, password: &str) -> Self {
        self.auth = Some(basic(user, password));
        self
    }

    /// The client with `Authorization: Bearer token`.
    pub fn bearer(mut self, token: &str) -> Self {
        self.auth = Some(format!("Bearer {token}"));
        self
    }

    /// Formats one request (Content-Length framing) with the client's credentials.
    pub fn format(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if let Some(a) = &self.auth {
            r += &format!("Authorization: {a}\r\n");
        }
        for (k, v) in headers {
            r += &format!("{k}: {v}\r\n");
        }
        if let Some(b) = body {
            r += &format!("Content-Length: {}\r\n", b.len());
        }
        r += "\r\n";
        let mut bytes = r.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        bytes
    }

    /// Writes bytes; `false` if the server has closed the connection.
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let req = self.format(method, path, headers, body);
        self.send_raw(&req);
        self.read_response(method == "HEAD").expect("response")
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], None)
    }

    pub fn put_json(&mut self, path: &str, body: &str) -> Response {
        self.request(
            "PUT",
            path,
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
    }

    pub fn patch_json(&mut self, path: &str, body: &str) -> Response {
        self.request(
            "PATCH",
            path,
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
    }

    pub fn post_json(&mut self, path: &str, body: &str) -> Response {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
    }

    /// POSTs one operation (a JSON value) to `/` of the Operations API: (status, JSON body).
    pub fn operation(&mut self, op: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.post_json("/", &op.to_string());
        (r.status, r.json())
    }

    /// Starts a job with operation `op`, waits (up to a minute) for it to end and returns the
    /// job as `get_job` reports it.
    pub fn run_job(&mut self, op: serde_json::Value) -> serde_json::Value {
        let (st, started) = self.operation(&op);
        assert_eq!(st, 200, "{started}");
        let message = started["message"].as_str().unwrap();
        let id = started["job_id"].as_str().unwrap().to_owned();
        assert_eq!(message, format!("Starting job with id {id}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (st, job) = self.operation(&serde_json::json!({"operation": "get_job", "id": id}));
            assert_eq!(st, 200, "{job}");
            let job = job[0].clone();
            assert_eq!(job["id"], id.as_str());
            if job["status"] != "IN_PROGRESS" {
                assert!(
                    job["end_datetime"].as_u64().unwrap()
                        >= job["start_datetime"].as_u64().unwrap()
                );
                return job;
            }
            assert!(Instant::now() < deadline, "job never ended: {job}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn delete(&mut self, path: &str) -> Response {
        self.request("DELETE", path, &[], None)
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one response; `None` when the server closed the connection first.
    pub fn read_response(&mut self, head_only: bool) -> Option<Response> {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if self.fill().ok()? == 0 {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let no_body = head_only || status == 304 || status == 204 || status < 200;
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        if chunked && !no_body {
            self.buf.drain(..head_end);
            let body = self.read_chunked()?;
            return Some(Response {
                status,
                headers,
                body,
            });
        }
        let len = if no_body { 0 } else { len };
        while self.buf.len() < head_end + len {
            if self.fill().ok()? == 0 {
                return None;
            }
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Some(Response {
            status,
            headers,
            body,
        })
    }

    /// Reads a chunked body from the front of the buffer, through its last chunk.
    fn read_chunked(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                if self.fill().ok()? == 0 {
                    return None;
                }
            };
            let size = std::str::from_utf8(&self.buf[..line_end]).ok()?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            let total = line_end + 2 + size + 2;
            while self.buf.len() < total {
                if self.fill().ok()? == 0 {
                    return None;
                }
            }
            body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.drain(..total);
            if size == 0 {
                return Some(body);
            }
        }
    }

    /// Whether the server has closed the connection (reads EOF within a second).
    pub fn is_closed(&mut self) -> bool {
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(1)));
        matches!(self.fill(), Ok(0) | Err(_))
    }
}

/// MessagePack bytes of a JSON value.
pub fn to_msgpack(v: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("msgpack")
}

/// A JSON value from MessagePack bytes.
pub fn from_msgpack(b: &[u8]) -> serde_json::Value {
    rmp_serde::from_slice(b).expect("msgpack")
}

/// Where the tests build wasm guests: a target directory of their own, so that cargo never
/// waits for the cargo that runs the tests.
pub fn wasm_target_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("wasm-guests")
}

/// The schema the test guests (tests/guests) are written for.
pub const GUEST_SCHEMA: &str = "
type Widget @table @export { id: Long @primaryKey  name: String  price: Float @indexed  stock: Int }
type Log @table @export { id: Long @primaryKey  from: Long  to: Long  amount: Int }
type Plain @table @export { id: Long @primaryKey  name: String  price: Float }
type Priced @table @export { id: Long @primaryKey  price: Float  taxRate: Float
  total: Float @computed  band: String @computed }
type Cached @table(expiration: 60) @export { id: ID @primaryKey  name: String }
";

/// The test guests (`tests/guests`) built for `wasm32-unknown-unknown`, once per test binary
/// (installing the target with rustup when it is missing).
pub fn guest_module() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let installed = Command::new("rustup")
                .args(["target", "list", "--installed"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-unknown-unknown"))
                .unwrap_or(false);
            if !installed {
                let ok = Command::new("rustup")
                    .args(["target", "add", "wasm32-unknown-unknown"])
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "cannot install the wasm32-unknown-unknown target");
            }
            let guests = Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/Cargo.toml");
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
                .arg("--manifest-path")
                .arg(&guests)
                .env("CARGO_TARGET_DIR", wasm_target_dir())
                .status()
                .expect("run cargo");
            assert!(status.success(), "building the test guests failed");
            wasm_target_dir().join("wasm32-unknown-unknown/release/tessera_test_guests.wasm")
        })
        .clone()
}

impl App {
    /// An application with the test guests as its wasm resources (and `schema`).
    pub fn with_wasm(schema: &str) -> App {
        let app = App::new(schema);
        std::fs::copy(guest_module(), app.dir.path().join("guests.wasm")).expect("copy guests");
        std::fs::write(
            app.dir.path().join("config.yaml"),
            "rest: true\ngraphqlSchema:\n  files: 'schema.graphql'\nwasmResource:\n  files: '*.wasm'\n",
        )
        .expect("write config");
        app
    }
}

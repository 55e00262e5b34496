//! TLS through the real binary, with certificates of the test's own making (rcgen): HTTPS and the
//! Operations API over TLS with curl, MQTT over TLS with mosquitto's clients.

use std::process::{Command, Stdio};
use std::time::Duration;

use tessera_tests::{ADMIN, App, Start};

const SCHEMA: &str = "type Sensor @table @export { id: ID @primaryKey temp: Float }";

/// A CA, and a certificate it signed for `localhost` and 127.0.0.1: (CA PEM, certificate PEM,
/// key PEM).
fn certificates() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Tessera test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let server =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = server.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// The port a listener line of the server's output names (it follows the Operations API's,
/// which the start waits for).
fn port_of(s: &tessera_tests::Server, listener: &str) -> u16 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let output = s.output();
        let port = output
            .lines()
            .find_map(|l| l.split(&format!("{listener} listening on ")).nth(1))
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.trim().parse().ok());
        if let Some(p) = port {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {listener} line in {output}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn mqtt_over_tls_with_real_clients() {
    let (ca, cert, key) = certificates();
    let app = App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("tls")).unwrap();
    std::fs::write(root.path().join("tls/cert.pem"), cert).unwrap();
    std::fs::write(root.path().join("tls/key.pem"), key).unwrap();
    let ca_file = root.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    std::fs::write(
        root.path().join("tessera.yaml"),
        "tls:\n  certificate: tls/cert.pem\n  privateKey: tls/key.pem\nmqtt:\n  network:\n    securePort: 0\nhttp:\n  securePort: 0\noperationsApi:\n  network:\n    securePort: 0\n",
    )
    .unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    let port = port_of(&s, "MQTTS").to_string();
    let client = |tool: &str, ca: &std::path::Path| {
        let mut c = Command::new(tool);
        c.args(["-h", "localhost", "-p", &port, "-u", ADMIN.0, "-P", ADMIN.1])
            .arg("--cafile")
            .arg(ca);
        c
    };
    // A subscriber over TLS gets a record written over REST.
    let sub = client("mosquitto_sub", &ca_file)
        .args(["-V", "mqttv5", "-t", "Sensor/t1", "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.client().put_json("/Sensor/t1", r#"{"temp":21.5}"#).status,
        204
    );
    let out = sub.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"id\":\"t1\",\"temp\":21.5}\n"
    );
    // A publish over TLS writes the record.
    let st = client("mosquitto_pub", &ca_file)
        .args(["-t", "Sensor/t2", "-q", "1", "-r", "-m", r#"{"temp":3}"#])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(s.client().get("/Sensor/t2").json()["temp"], 3);
    // HTTPS: REST and the Operations API, with curl trusting the test's CA.
    let curl = |url: String, extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&ca_file)
            .args(["-u", &format!("{}:{}", ADMIN.0, ADMIN.1)])
            .args(extra)
            .arg(url)
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let https = port_of(&s, "HTTPS");
    assert_eq!(
        curl(format!("https://localhost:{https}/Sensor/t2"), &[]),
        r#"{"id":"t2","temp":3}"#
    );
    let ops = port_of(&s, "Operations API (TLS)");
    let described = curl(
        format!("https://localhost:{ops}/"),
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"operation":"describe_table","table":"Sensor"}"#,
        ],
    );
    assert!(described.contains(r#""name":"Sensor""#), "{described}");
    // Plain HTTP on the HTTPS port gets nothing back.
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://localhost:{https}/Sensor/t2"))
        .output()
        .unwrap();
    assert!(!plain.status.success());
    // A client that does not trust the server's CA is refused by its own side.
    let other = root.path().join("other-ca.pem");
    std::fs::write(&other, certificates().0).unwrap();
    let st = client("mosquitto_pub", &other)
        .args(["-t", "Sensor/t3", "-m", "{}"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success());
    // Plain MQTT on the TLS port gets no CONNACK; the plain port still works.
    let (_c, ack) = tessera_tests::mqtt::MqttClient::connect(
        port.parse().unwrap(),
        tessera_protocol::mqtt::Version::V311,
        "plain",
        Some(ADMIN),
    );
    assert!(ack.is_none());
    let (_c, ack) = tessera_tests::mqtt::MqttClient::connect(
        s.mqtt_port,
        tessera_protocol::mqtt::Version::V311,
        "plain",
        Some(ADMIN),
    );
    assert_eq!(ack.map(|a| a.code), Some(0));
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A WebSocket subscription to `Sensor/s1` over TLS to `name` on `port` (loopback), trusting
/// `dir/ca.pem` and presenting the client certificate `dir/<client>.pem`.
fn wss(
    dir: &std::path::Path,
    port: u16,
    name: &str,
    client: &str,
) -> tungstenite::WebSocket<TlsStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(dir.join(format!("{client}.pem")))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{client}.key"))).unwrap();
    // ring, as the server builds it (deprecated by rustls only for lacking post-quantum kex).
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let server = ServerName::try_from(name.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let url = format!("wss://{name}:{port}/Sensor/s1");
    let (ws, resp) =
        tungstenite::client(url, rustls::StreamOwned::new(conn, tcp)).expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

/// A certificate authority of the test's own.
struct Authority {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Authority {
    fn new() -> Authority {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Tessera test CA");
        let pem = params.self_signed(&key).unwrap().pem();
        Authority {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names`: (certificate PEM, key PEM).
    fn server(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let params = rcgen::CertificateParams::new(names).unwrap();
        (
            params.signed_by(&key, &self.issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    /// A client certificate whose subject's Common Name is `cn`.
    fn client(&self, cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        (
            params.signed_by(&key, &self.issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }
}

#[test]
fn certificates_by_name_reloaded_when_changed_and_client_certificates_as_users() {
    let ca = Authority::new();
    let app = App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    let (a, a_key) = ca.server(&["alpha.test"]);
    let (b, b_key) = ca.server(&["beta.test", "*.beta.test"]);
    write("a.pem", &a);
    write("a.key", &a_key);
    write("b.pem", &b);
    write("b.key", &b_key);
    write("ca.pem", &ca.pem);
    for (name, cn) in [("admin", ADMIN.0), ("stranger", "nobody-here")] {
        let (cert, key) = ca.client(cn);
        write(&format!("{name}.pem"), &cert);
        write(&format!("{name}.key"), &key);
    }
    write(
        "tessera.yaml",
        "tls:\n  - certificate: a.pem\n    privateKey: a.key\n    certificateAuthority: ca.pem\n  \
         - certificate: b.pem\n    privateKey: b.key\n\
         http:\n  securePort: 0\n  mtls:\n    user: Common Name\n\
         mqtt:\n  network:\n    securePort: 0\n    mtls:\n      required: true\n",
    );
    let s = Start::new(app.dir.path(), dir).start();
    assert_eq!(
        s.client().put_json("/Sensor/s1", r#"{"temp":1}"#).status,
        204
    );
    let https = port_of(&s, "HTTPS");
    // curl trusting the CA, naming `host` (resolved to loopback): the status, or None when
    // the TLS connection fails.
    let curl = |host: &str, extra: &[&str]| -> Option<u16> {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(dir.join("ca.pem"))
            .arg("--resolve")
            .arg(format!("{host}:{https}:127.0.0.1"))
            .args(extra)
            .arg(format!("https://{host}:{https}/Sensor/s1"))
            .output()
            .expect("curl");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).parse().unwrap())
    };
    let auth = format!("{}:{}", ADMIN.0, ADMIN.1);
    // Each name gets its own certificate (else curl's check of the name fails).
    assert_eq!(curl("alpha.test", &["-u", &auth]), Some(200));
    assert_eq!(curl("beta.test", &["-u", &auth]), Some(200));
    assert_eq!(curl("x.beta.test", &["-u", &auth]), Some(200));
    assert_eq!(
        curl("gamma.test", &["-u", &auth]),
        None,
        "no certificate serves gamma.test"
    );
    // A client certificate names its user; without one (not required here) a request needs
    // credentials; one naming no user is refused.
    let cert = |name: &str| {
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        [
            "--cert".to_owned(),
            c.display().to_string(),
            "--key".to_owned(),
            k.display().to_string(),
        ]
    };
    let admin = cert("admin");
    let admin: Vec<&str> = admin.iter().map(String::as_str).collect();
    assert_eq!(curl("alpha.test", &admin), Some(200));
    assert_eq!(curl("alpha.test", &[]), Some(401));
    let stranger = cert("stranger");
    let stranger: Vec<&str> = stranger.iter().map(String::as_str).collect();
    assert_eq!(curl("alpha.test", &stranger), Some(401));

    // MQTTS requires a certificate: with one, no password is needed; without, no connection.
    let mqtts = port_of(&s, "MQTTS").to_string();
    // mosquitto connects to 127.0.0.1, which no certificate names: `--insecure` skips only
    // the check of the name (the chain is still checked against the CA).
    let publish = |extra: &[&str], id: &str| {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &mqtts, "--insecure", "--cafile"])
            .arg(dir.join("ca.pem"))
            .args(extra)
            .args([
                "-t",
                &format!("Sensor/{id}"),
                "-q",
                "1",
                "-r",
                "-m",
                r#"{"temp":7}"#,
            ])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(publish(&admin, "m1"));
    assert_eq!(s.client().get("/Sensor/m1").json()["temp"], 7);
    assert!(!publish(&["-u", ADMIN.0, "-P", ADMIN.1], "m2"));
    assert_eq!(s.client().get("/Sensor/m2").status, 404);
    // paho (MQTT 5) the same way: its certificate is its user; without one it is refused.
    let paho = |cert: &str, key: &str| {
        let out = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/paho_tls.py"))
            .arg(&mqtts)
            .arg(dir.join("ca.pem"))
            .args([cert, key, "Sensor/p1"])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "paho: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (admin_pem, admin_key) = (dir.join("admin.pem"), dir.join("admin.key"));
    assert_eq!(
        paho(admin_pem.to_str().unwrap(), admin_key.to_str().unwrap()),
        "ok"
    );
    assert_eq!(s.client().get("/Sensor/p1").json()["temp"], 9);
    assert_eq!(paho("-", "-"), "refused");

    // WSS: a WebSocket subscription over HTTPS, its user named by the client certificate.
    let mut ws = wss(dir, https, "alpha.test", "admin");
    assert_eq!(
        s.client().put_json("/Sensor/s1", r#"{"temp":2}"#).status,
        204
    );
    // The record as it is, then the change.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match ws.read().expect("a message") {
            tungstenite::Message::Text(t) => seen.push(t.to_string()),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(seen[0].contains(r#""temp":1"#), "{seen:?}");
    assert!(seen[1].contains(r#""temp":2"#), "{seen:?}");

    // The certificate files change: the new ones serve from then on, without a restart.
    let (g, g_key) = ca.server(&["gamma.test"]);
    write("a.key", &g_key);
    write("a.pem", &g);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while curl("gamma.test", &["-u", &auth]) != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate is not served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        curl("alpha.test", &["-u", &auth]),
        None,
        "the old one is gone"
    );
    assert_eq!(curl("beta.test", &["-u", &auth]), Some(200));
}

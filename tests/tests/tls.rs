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

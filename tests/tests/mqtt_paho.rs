//! paho-mqtt (Python, installed by tests/run.sh) as a real client: MQTT 3.1.1 and 5 over TCP,
//! and MQTT over WebSocket on the HTTP port.

use std::process::Command;

use tessera_tests::{ADMIN, Server};

#[test]
fn paho_over_tcp_and_websocket() {
    let (s, _a, _r) =
        Server::with_schema("type Sensor @table @export { id: ID @primaryKey v: Int }");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/paho_clients.py");
    let out = Command::new("python3")
        .arg(script)
        .args([s.mqtt_port.to_string(), s.port.to_string()])
        .args([ADMIN.0, ADMIN.1])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "paho: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

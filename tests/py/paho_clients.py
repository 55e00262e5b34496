"""Real-client checks with paho-mqtt (PyPI), run by tests/tests/mqtt_paho.rs.

Usage: paho_clients.py MQTT_PORT HTTP_PORT USER PASSWORD
For MQTT 3.1.1 and 5 over TCP, and 3.1.1 over WebSocket on the HTTP port: subscribe to a record,
see its current value (retained), publish a retained update and a plain message, and receive both;
once more over MQTT 5 at QoS 2 (publishes and deliveries both exactly once).
Prints "ok" and exits 0, or fails with a message.
"""
import json
import sys
import time

import paho.mqtt.client as mqtt

mqtt_port, http_port, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]


def run(label, protocol, transport, port, topic, qos=1):
    got = []
    qos_seen = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"paho-{label}",
                    transport=transport, protocol=protocol)
    c.username_pw_set(user, password)
    if transport == "websockets":
        c.ws_set_options(path="/")
    def on_message(cl, u, m):
        got.append((m.topic, m.payload.decode(), bool(m.retain)))
        qos_seen.append(m.qos)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        deadline = time.time() + 5
        while not c.is_connected() and time.time() < deadline:
            time.sleep(0.02)
        assert c.is_connected(), f"{label}: not connected"
        c.publish(topic, json.dumps({"v": 1}), qos=qos, retain=True).wait_for_publish(5)
        c.subscribe(topic, qos=qos)
        time.sleep(0.3)
        c.publish(topic, json.dumps({"v": 2}), qos=qos, retain=True).wait_for_publish(5)
        c.publish(topic, "note", qos=qos).wait_for_publish(5)
        deadline = time.time() + 5
        while len(got) < 3 and time.time() < deadline:
            time.sleep(0.02)
        want = [(topic, json.dumps({"id": topic.split("/", 1)[1], "v": 1}, separators=(",", ":")), True),
                (topic, json.dumps({"id": topic.split("/", 1)[1], "v": 2}, separators=(",", ":")), False),
                (topic, "note", False)]
        assert got == want, f"{label}: got {got}, want {want}"
        assert qos_seen == [qos] * 3, f"{label}: delivered at QoS {qos_seen}, subscribed at {qos}"
    finally:
        c.loop_stop()
        c.disconnect()


run("v311", mqtt.MQTTv311, "tcp", mqtt_port, "Sensor/p1")
run("v5", mqtt.MQTTv5, "tcp", mqtt_port, "Sensor/p2")
run("ws", mqtt.MQTTv311, "websockets", http_port, "Sensor/p3")
run("v5-qos2", mqtt.MQTTv5, "tcp", mqtt_port, "Sensor/p4", qos=2)
print("ok")

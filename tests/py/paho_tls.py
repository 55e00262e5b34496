"""paho-mqtt over TLS with a client certificate, run by tests/tests/tls.rs.

Usage: paho_tls.py MQTTS_PORT CA_PEM CERT_PEM KEY_PEM TOPIC
Connects over TLS trusting CA_PEM (the server's name is not checked: the test's certificates
name hosts, not 127.0.0.1), authenticated by the client certificate alone (no password),
subscribes to TOPIC at QoS 1, publishes a retained record to it at QoS 1 and waits for it.
Without a certificate (CERT_PEM "-"), prints "refused" if the connection is refused.
Prints "ok" and exits 0, or fails with a message.
"""
import json
import ssl
import sys
import time

import paho.mqtt.client as mqtt

port, ca, cert, key, topic = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]

c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-tls", protocol=mqtt.MQTTv5)
if cert == "-":
    c.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
else:
    c.tls_set(ca_certs=ca, certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
c.tls_insecure_set(True)
got = []
c.on_message = lambda cl, u, m: got.append(json.loads(m.payload))
try:
    c.connect("127.0.0.1", port)
except (ssl.SSLError, OSError) as e:
    if cert == "-":
        print("refused")
        sys.exit(0)
    raise
c.loop_start()
deadline = time.time() + 5
while not c.is_connected() and time.time() < deadline:
    time.sleep(0.02)
if cert == "-":
    print("refused" if not c.is_connected() else "connected")
    sys.exit(0)
assert c.is_connected(), "not connected"
c.subscribe(topic, qos=1)
time.sleep(0.3)
c.publish(topic, json.dumps({"temp": 9}), qos=1, retain=True).wait_for_publish(5)
deadline = time.time() + 5
while not any(g and g.get("temp") == 9 for g in got) and time.time() < deadline:
    time.sleep(0.02)
c.loop_stop()
c.disconnect()
assert any(g and g.get("temp") == 9 for g in got), f"received {got}"
print("ok")

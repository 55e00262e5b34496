"""Replication lag probe: writes a record on one node and times until another node serves it.

Usage: lag_probe.py WRITE_PORT READ_PORT[,READ_PORT...] SECONDS USER PASSWORD
Every 50 ms, PUT /Dog/<1e9 + i> on WRITE_PORT with a fresh value, then GET it on each READ_PORT
until it has that value (the commit on the writer, acknowledged, to visible on the reader).
Prints one JSON line: count, p50_ms, p99_ms, max_ms, lost (probes not seen within 10 s).
"""
import base64
import http.client
import json
import sys
import time

write_port = int(sys.argv[1])
read_ports = [int(p) for p in sys.argv[2].split(",")]
seconds = float(sys.argv[3])
auth = "Basic " + base64.b64encode(f"{sys.argv[4]}:{sys.argv[5]}".encode()).decode()
headers = {"Authorization": auth, "Content-Type": "application/json"}

w = http.client.HTTPConnection("127.0.0.1", write_port, timeout=10)
readers = [http.client.HTTPConnection("127.0.0.1", p, timeout=10) for p in read_ports]
lags, lost, i = [], 0, 0
end = time.time() + seconds
while time.time() < end:
    i += 1
    key = 1_000_000_000 + i  # past the benchmark's ids (the Dog table's key is a Long)
    body = json.dumps({"id": key, "name": f"probe {i}", "breed": "Probe", "age": i})
    w.request("PUT", f"/Dog/{key}", body, headers)
    resp = w.getresponse()
    resp.read()
    if resp.status >= 300:
        sys.exit(f"the probe's PUT was answered {resp.status}")
    committed = time.perf_counter()
    for r in readers:
        deadline = committed + 10
        while True:
            r.request("GET", f"/Dog/{key}", headers={"Authorization": auth})
            resp = r.getresponse()
            data = resp.read()
            if resp.status == 200 and json.loads(data).get("age") == i:
                lags.append((time.perf_counter() - committed) * 1000)
                break
            if time.perf_counter() > deadline:
                lost += 1
                break
            time.sleep(0.0005)
    time.sleep(0.05)
lags.sort()
pick = lambda q: round(lags[min(len(lags) - 1, int(q * len(lags)))], 2) if lags else None
print(json.dumps({"count": len(lags), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                  "max_ms": round(lags[-1], 2) if lags else None, "lost": lost}))

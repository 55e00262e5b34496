#!/usr/bin/env python3
"""Loads the Dog table through the Operations API and times only the server's part.

The records are those of the shared loader (`../shared/bench/harper/load_data.py`, imported from
SHARED_BENCH): the same ids, the same fields, the same seed, the same `upsert` in batches of
1,000. The shared loader builds each batch (a seeded random.Random per record, then json.dumps)
between two requests, on one thread: 1.4 s of Python for 100,000 records on this machine, which
caps any server at about 73,000 records/s however fast it answers. Here every request body is
built before the clock starts, and the clock covers only sending the batches and waiting for the
answers, over CONCURRENCY keep-alive connections (default 1: one batch in flight, as the shared
loader).

Usage: ops_load.py --ops-url URL [--count N] [--batch 1000] [--concurrency 1] [--server-pid PID]
                   [--base-url URL]
Prints one JSON line: records, seconds, records_per_s, build_seconds (the client's untimed
preparation) and, with --server-pid, the server's CPU seconds per 1,000 records. With --base-url,
then reads records back over REST as the shared loader does (its verify()).
"""
import argparse
import base64
import http.client
import importlib.util
import json
import os
import threading
import time
import urllib.parse


def shared_module(directory, name):
    """The shared bench's `name`.py (load_data for the records, measure for server CPU)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(directory, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops-url", required=True)
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--database", default="data")
    p.add_argument("--server-pid", type=int)
    p.add_argument("--base-url", help="REST URL to read records back from after the load")
    p.add_argument("--user", default=os.environ.get("BENCH_USER", "admin"))
    p.add_argument("--password", default=os.environ.get("BENCH_PASSWORD", "password"))
    p.add_argument("--shared", default=os.environ.get("SHARED_BENCH", os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench", "harper")))
    args = p.parse_args()
    ld = shared_module(args.shared, "load_data")
    measure = shared_module(args.shared, "measure")

    def cpu_seconds(pid):
        return measure.proc_ticks(pid) / measure.TCK

    def body(table, records):
        return json.dumps({"operation": "upsert", "database": args.database, "table": table,
                           "records": records}).encode()

    t0 = time.time()
    bodies = [body("Breed", ld.breed_records())]
    for start in range(1, args.count + 1, args.batch):
        end = min(start + args.batch, args.count + 1)
        bodies.append(body("Dog", [ld.dog(i, args.seed) for i in range(start, end)]))
    build = time.time() - t0

    u = urllib.parse.urlsplit(args.ops_url)
    headers = {"Content-Type": "application/json",
               "Authorization": "Basic " + base64.b64encode(f"{args.user}:{args.password}".encode()).decode()}
    conns = [http.client.HTTPConnection(u.hostname, u.port or 80, timeout=120)
             for _ in range(args.concurrency)]
    for c in conns:
        c.connect()
    errors = []
    lock = threading.Lock()
    queue = list(reversed(bodies))

    def worker(c):
        while True:
            with lock:
                if not queue or errors:
                    return
                data = queue.pop()
            c.request("POST", u.path or "/", body=data, headers=headers)
            resp = c.getresponse()
            payload = resp.read()
            if resp.status >= 300:
                with lock:
                    errors.append(f"{resp.status} {payload[:300]!r}")

    cpu0 = cpu_seconds(args.server_pid) if args.server_pid else None
    t0 = time.time()
    threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.time() - t0
    cpu = cpu_seconds(args.server_pid) - cpu0 if args.server_pid else None
    if errors:
        raise SystemExit(f"ops upsert failed: {errors[0]}")
    if args.base_url:
        ld.verify(args)
    out = {"records": args.count, "batch": args.batch, "concurrency": args.concurrency,
           "seconds": round(dt, 3), "records_per_s": round(args.count / dt, 1),
           "build_seconds": round(build, 3)}
    if cpu is not None:
        out["server_cpu_s_per_1000"] = round(cpu * 1000 / args.count, 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

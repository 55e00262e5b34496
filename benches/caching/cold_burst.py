#!/usr/bin/env python3
"""N concurrent GETs of one cold key: opens N connections first, then sends every request at
once and times each answer. Prints one JSON line: statuses, p50/p99/max (ms).

Usage: cold_burst.py URL N [AUTH_HEADER_VALUE]
"""
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


async def one(host, port, path, auth, start, ready):
    r, w = await asyncio.open_connection(host, port)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    if auth:
        req += f"Authorization: {auth}\r\n"
    req += "\r\n"
    ready.release()
    await start.wait()
    t0 = time.perf_counter()
    w.write(req.encode())
    await w.drain()
    head = await r.readline()
    await r.read()
    w.close()
    return int(head.split()[1]), (time.perf_counter() - t0) * 1000


async def main():
    url, n = sys.argv[1], int(sys.argv[2])
    auth = sys.argv[3] if len(sys.argv) > 3 else None
    u = urlsplit(url)
    start, ready = asyncio.Event(), asyncio.Semaphore(0)
    tasks = [asyncio.create_task(one(u.hostname, u.port, u.path, auth, start, ready)) for _ in range(n)]
    for _ in range(n):
        await ready.acquire()
    start.set()
    results = await asyncio.gather(*tasks)
    lat = sorted(ms for _, ms in results)
    statuses = {}
    for st, _ in results:
        statuses[st] = statuses.get(st, 0) + 1
    print(json.dumps({
        "requests": n,
        "statuses": statuses,
        "p50_ms": round(lat[n // 2], 1),
        "p99_ms": round(lat[min(n - 1, int(n * 0.99))], 1),
        "max_ms": round(lat[-1], 1),
    }))


asyncio.run(main())

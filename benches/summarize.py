#!/usr/bin/env python3
"""Summary of one side-by-side run (benches/side-by-side.sh): medians per scenario for Harper,
Tessera and the fixed-response floor, with ratios, plus RSS and start-up figures.

Usage: summarize.py OUT_DIR
"""
import json
import os
import statistics
import sys


def rows(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def med(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def scenario_stats(results):
    by = {}
    for r in results:
        if r.get("kind") != "rest":
            continue
        by.setdefault(r["scenario"], []).append(r)
    out = {}
    for sc, rs in by.items():
        cpu_us = [r["server_cpu_cores"] * 1e6 / r["rps"] for r in rs if r.get("server_cpu_cores") and r.get("rps")]
        out[sc] = {
            "rps": med([r.get("rps") for r in rs]),
            "runs": [round(r.get("rps") or 0) for r in rs],
            "p50": med([r.get("lat_p50_ms") for r in rs]),
            "p99": med([r.get("lat_p99_ms") for r in rs]),
            "cpu_us": med(cpu_us),
            "errors": med([r.get("non2xx3xx", 0) + r.get("err_connect", 0) + r.get("err_read", 0) + r.get("err_timeout", 0) for r in rs]),
            "other": med([r.get("other_cpu_cores") for r in rs]),
        }
    return out


def fmt(v, nd=1):
    return "-" if v is None else f"{v:,.{nd}f}"


def ratio(a, b):
    return "-" if not a or not b else f"{a / b:.2f}x"


def figures(out):
    vals = {}
    path = os.path.join(out, "figures.txt")
    if os.path.exists(path):
        for line in open(path):
            parts = line.split()
            if len(parts) == 2:
                try:
                    vals.setdefault(parts[0], []).append(float(parts[1]))
                except ValueError:
                    pass
    return {k: med(v) for k, v in vals.items()}


def main():
    out = sys.argv[1]
    harper = scenario_stats(rows(os.path.join(out, "harper", "results.jsonl")))
    tessera = scenario_stats(rows(os.path.join(out, "tessera", "results.jsonl")))
    floor = scenario_stats(rows(os.path.join(out, "floor", "results.jsonl")))
    print("| scenario | Harper req/s | Tessera req/s | Tessera/Harper | Harper p50/p99 ms | Tessera p50/p99 ms | Harper CPU us/req | Tessera CPU us/req | Tessera runs | errors H/T |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for sc in ["get_by_id", "query_breed", "query_range", "put", "mixed"]:
        h, t = harper.get(sc, {}), tessera.get(sc, {})
        if not h and not t:
            continue
        print(f"| {sc} | {fmt(h.get('rps'))} | {fmt(t.get('rps'))} | {ratio(t.get('rps'), h.get('rps'))} | "
              f"{fmt(h.get('p50'), 2)}/{fmt(h.get('p99'), 2)} | {fmt(t.get('p50'), 2)}/{fmt(t.get('p99'), 2)} | "
              f"{fmt(h.get('cpu_us'))} | {fmt(t.get('cpu_us'))} | {t.get('runs', '-')} | {h.get('errors', '-')}/{t.get('errors', '-')} |")
    f = floor.get("get_by_id", {})
    t = tessera.get("get_by_id", {})
    print()
    print(f"Floor (bare glommio, fixed response) get_by_id: {fmt(f.get('rps'))} req/s, p50/p99 {fmt(f.get('p50'), 2)}/{fmt(f.get('p99'), 2)} ms, "
          f"{fmt(f.get('cpu_us'))} us CPU/req; Tessera GET by id = {ratio(t.get('rps'), f.get('rps'))} of the floor")
    n = scenario_stats(rows(os.path.join(out, "nginx", "results.jsonl"))).get("get_by_id", {})
    if n:
        print()
        print(f"nginx (Debian, fixed response, a worker per core) get_by_id: {fmt(n.get('rps'))} req/s, "
              f"p50/p99 {fmt(n.get('p50'), 2)}/{fmt(n.get('p99'), 2)} ms, {fmt(n.get('cpu_us'))} us CPU/req "
              f"(every worker); Tessera GET by id = {ratio(t.get('rps'), n.get('rps'))} of nginx's rate, "
              f"and nginx's CPU per request / Tessera's = {ratio(n.get('cpu_us'), t.get('cpu_us'))}")
    fig = figures(out)
    print()
    print("| figure | Harper | Tessera |")
    print("|---|---|---|")
    loads = {who: rows(os.path.join(out, f"{who}-load", "ops_load.jsonl")) for who in ("harper", "tessera")}
    for conns in sorted({r["concurrency"] for rs in loads.values() for r in rs}):
        at = {who: [r for r in rs if r["concurrency"] == conns] for who, rs in loads.items()}
        rate = {who: med([r["records_per_s"] for r in rs]) for who, rs in at.items()}
        cpu = {who: med([r.get("server_cpu_s_per_1000") for r in rs]) for who, rs in at.items()}
        print(f"| load {os.environ.get('BENCH_MAX_ID', '100000')} Dogs (ops upsert x1000, {conns} connections), records/s | "
              f"{fmt(rate['harper'])} | {fmt(rate['tessera'])} ({ratio(rate['tessera'], rate['harper'])}) |")
        print(f"| the same, server CPU ms per 1,000 records | {fmt(cpu['harper'] and cpu['harper'] * 1000, 1)} | "
              f"{fmt(cpu['tessera'] and cpu['tessera'] * 1000, 1)} ({ratio(cpu['harper'], cpu['tessera'])} less) |")
    print(f"| RSS after loading {os.environ.get('BENCH_MAX_ID', '100000')} Dogs (MB) | {fmt(fig.get('harper_rss_after_load_mb'))} | {fmt(fig.get('tessera_rss_after_load_mb'))} |")
    print(f"| start-up to first answered GET, median of 3 (s) | {fmt(fig.get('harper_startup_s'), 2)} | {fmt(fig.get('tessera_startup_s'), 3)} |")
    print(f"| RSS after the wrk scenarios (MB) | - | {fmt(fig.get('tessera_rss_after_bench_mb'))} |")
    others = [s.get("other") for s in list(harper.values()) + list(tessera.values()) if s.get("other") is not None]
    if others:
        print(f"\nCPU used by other work on the host during the runs (median, cores): {fmt(med(others), 2)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Summary of one MQTT side-by-side run (benches/mqtt-side-by-side.sh): medians per broker and
scenario, with Tessera's ratios to mosquitto and Harper, plus the idle-connection figures.

Usage: mqtt_summarize.py OUT_DIR
"""
import json
import os
import statistics
import sys


def med(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def fmt(v, nd=1):
    return "-" if v is None else f"{v:,.{nd}f}"


def ratio(a, b):
    return "-" if not a or not b else f"{a / b:.2f}x"


def main(out):
    rows = []
    path = os.path.join(out, "results.jsonl")
    if os.path.exists(path):
        rows = [json.loads(line) for line in open(path) if line.strip()]
    by = {}
    for r in rows:
        by.setdefault((r.get("broker"), r.get("scenario")), []).append(r)

    def stat(broker, sc, key):
        return med([r.get(key) for r in by.get((broker, sc), [])])

    print("| scenario | Tessera delivered/s | mosquitto | Harper | T/mosquitto | T/Harper "
          "| p99 ms T / M / H | loss T / M / H | server CPU cores T / M / H |")
    print("|---|---|---|---|---|---|---|---|---|")
    for sc in ["qos0_fanout", "qos1_fanout", "one_to_one", "latency_half"]:
        t, m, h = (stat(b, sc, "delivered_per_s") for b in ("tessera", "mosquitto", "harper"))
        p99 = " / ".join(fmt(stat(b, sc, "p99_ms"), 2) for b in ("tessera", "mosquitto", "harper"))
        loss = " / ".join(fmt(stat(b, sc, "loss"), 4) for b in ("tessera", "mosquitto", "harper"))
        cpu = " / ".join(fmt(stat(b, sc, "server_cpu_cores"), 2)
                         for b in ("tessera", "mosquitto", "harper"))
        runs = [round(r.get("delivered_per_s") or 0) for r in by.get(("tessera", sc), [])]
        print(f"| {sc} | {fmt(t)} {runs} | {fmt(m)} | {fmt(h)} | {ratio(t, m)} | {ratio(t, h)} "
              f"| {p99} | {loss} | {cpu} |")
    fig = os.path.join(out, "figures.txt")
    if os.path.exists(fig):
        print()
        for line in open(fig):
            print(f"    {line.rstrip()}")


if __name__ == "__main__":
    main(sys.argv[1])

#!/usr/bin/env python3
"""The figures of benches/scale.sh as a table (summary.md) and plots (throughput.png, p99.png):
each scenario against the number of records, Tessera beside Harper.

Usage: scale_plot.py RESULTS_DIR   (reads RESULTS_DIR/results.jsonl)
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCENARIOS = [("get_by_id", "GET by id"), ("query_breed", "query by breed, limit(10)"), ("put", "durable PUT")]


def main():
    out = sys.argv[1]
    rows = [json.loads(line) for line in open(os.path.join(out, "results.jsonl")) if line.strip()]
    for r in rows:
        r["size"] = int(r["size"])
    servers = [s for s in ("tessera", "harper") if any(r["server"] == s for r in rows)]

    def get(server, size, scenario):
        return next((r for r in rows if r["server"] == server and r["size"] == size
                     and r["scenario"] == scenario), {})

    lines = ["| server | records | load rec/s | GET/s (p99 ms) | query/s (p99 ms) | PUT/s (p99 ms) | "
             "CPU us per GET / PUT | raw B/record | disk B/record (x raw) | write amplification | "
             "disk B/record at rest | RSS MB after load / after runs | start-up s clean / kill -9 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for server in servers:
        for size in sorted({r["size"] for r in rows if r["server"] == server}):
            load, start = get(server, size, "load"), get(server, size, "startup")
            rss_after = get(server, size, "rss_after")

            def rate(sc):
                r = get(server, size, sc)
                return f"{r['rate']:,.0f} ({r['p99_ms']})" if r else "-"

            def cpu(sc):
                r = get(server, size, sc)
                return f"{r['cpu_us_per_op']:.1f}" if r.get("cpu_us_per_op") else "-"
            lines.append(
                f"| {server} | {size:,} | {load.get('rate', 0):,.0f} | {rate('get_by_id')} | "
                f"{rate('query_breed')} | {rate('put')} | {cpu('get_by_id')} / {cpu('put')} | "
                f"{load.get('raw_bytes_per_record', '-')} | {load.get('disk_bytes_per_record', '-')} "
                f"({load.get('disk_over_raw', '-')}) | {load.get('write_amplification', '-')} | "
                f"{start.get('disk_at_rest_bytes_per_record', '-')} | "
                f"{load.get('rss_mb', '-')} / {rss_after.get('rss_mb', '-')} | "
                f"{start.get('clean_s', '-')} / {start.get('killed_s', '-')} |")
    open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))

    for key, label, name in [("rate", "requests per second (log)", "throughput.png"),
                             ("p99_ms", "p99 latency, ms (log)", "p99.png")]:
        fig, axes = plt.subplots(1, len(SCENARIOS), figsize=(13, 4))
        for ax, (sc, title) in zip(axes, SCENARIOS):
            for server, style in zip(servers, ("o-", "s--")):
                pts = sorted((r["size"], r[key]) for r in rows
                             if r["server"] == server and r["scenario"] == sc and r.get(key))
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=server.capitalize())
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(title)
            ax.set_xlabel("records")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""One wrk run's figures as a JSON line: requests/s, requests, p99 (ms), non-2xx answers, and the
server's CPU per request from the clock ticks it used over the run.

Usage: wrk_result.py WRK_OUTPUT_FILE SERVER_TICKS CLK_TCK [KEY=VALUE ...]
The KEY=VALUE pairs are copied into the line (the build, server or scenario it belongs to).
Used by benches/ab.sh and benches/tls-bench.sh.
"""
import json
import re
import sys


def main():
    path, ticks, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    out = open(path).read()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    row = dict(arg.split("=", 1) for arg in sys.argv[4:])
    row.update(
        rate=rate,
        requests=requests,
        p99_ms=float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)] if p99 else None,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        cpu_us_per_op=ticks / hz * 1e6 / max(requests, 1),
    )
    print(json.dumps(row))


if __name__ == "__main__":
    main()

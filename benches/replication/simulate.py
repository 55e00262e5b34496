#!/usr/bin/env python3
"""A model of a 16-node, 4-region Tessera cluster replicating through a JetStream super-cluster,
fitted to figures measured on one machine (docs/replication-at-scale.md says which). It is a
discrete-event simulation of each node's apply queue; what it cannot know (WAN latencies, the
machines) is an input, printed with the results.

Usage: benches/replication/simulate.py [--seed N] [--json]
"""
import argparse
import heapq
import json
import math
import random
import statistics

# Regions and one-way latencies between them (ms): typical public-cloud round trips halved
# (us-east, us-west, eu-west, ap-southeast). Assumptions, not measurements.
REGIONS = ["us-east", "us-west", "eu-west", "ap-se"]
ONE_WAY_MS = {
    ("us-east", "us-west"): 32,
    ("us-east", "eu-west"): 38,
    ("us-east", "ap-se"): 110,
    ("us-west", "eu-west"): 68,
    ("us-west", "ap-se"): 85,
    ("eu-west", "ap-se"): 80,
}
NODES_PER_REGION = 4

# Fitted to this machine's measurements (benches/replication-bench.sh, -catchup.sh):
# - a follower applies a replicated change in APPLY_US of one core (69 us measured on the slow
#   day with the cluster's other processes on the same two cores; 4 cores per node assumed, a
#   core's share of the shard writers);
APPLY_US = 69.0
CORES = 4
# - the publisher finds new entries within IDLE_MS when idle and publishes a batch;
IDLE_MS = 20.0
# - the local path (publish, JetStream store with a quorum in the region, delivery, pull batch):
#   measured commit-to-visible on one machine, p50 25 ms / p99 75-133 ms, of which IDLE_MS/2 is
#   the publisher's poll; the rest modelled as a lognormal around 12 ms.
LOCAL_MEDIAN_MS = 12.0
LOCAL_SIGMA = 0.6
# - JetStream sourcing between regional streams adds its own batching.
SOURCE_MS = 5.0


def one_way(a, b):
    if a == b:
        return 0.0
    return ONE_WAY_MS.get((a, b)) or ONE_WAY_MS[(b, a)]


def simulate(rate_per_node, seconds, rng, region_down=None, down=(0.0, 0.0)):
    """Every node writes `rate_per_node` changes/s for `seconds`; returns the lags (ms) from
    commit to visible at the first node of each region (every node of a region sees the same
    arrivals), and when each of those had applied everything."""
    nodes = [(r, i) for r in REGIONS for i in range(NODES_PER_REGION)]
    watched = [(r, 0) for r in REGIONS]
    service_ms = APPLY_US / CORES / 1000.0
    free_at = {n: 0.0 for n in watched}
    arrivals = []
    t_end = seconds * 1000.0
    for src in nodes:
        t = 0.0
        while True:
            t += rng.expovariate(rate_per_node / 1000.0)
            if t > t_end:
                break
            if region_down == src[0] and down[0] <= t < down[1]:
                continue  # the region is gone: its clients write nowhere
            publish = t + rng.uniform(0, IDLE_MS) + rng.lognormvariate(
                math.log(LOCAL_MEDIAN_MS), LOCAL_SIGMA)
            for dst in watched:
                if dst == src:
                    continue
                at = publish + one_way(src[0], dst[0]) + (SOURCE_MS if src[0] != dst[0] else 0)
                # A region cut off receives nothing until it is back; what it wrote before the
                # cut reaches the others when it is back.
                for cut in (src[0], dst[0]):
                    if region_down == cut and down[0] <= at < down[1]:
                        at = down[1] + one_way(src[0], dst[0])
                arrivals.append((at, t, src, dst))
    heapq.heapify(arrivals)
    lags = {}
    done = {n: 0.0 for n in watched}
    drained = {}
    while arrivals:
        at, committed, src, dst = heapq.heappop(arrivals)
        start = max(at, free_at[dst])
        # The first moment after a cut the node's queue is empty again: the backlog is applied.
        # (After the backlog has arrived: it comes at most a WAN crossing after the cut ends.)
        if region_down and at > down[1] + 150 and start == at and dst not in drained:
            drained[dst] = at
        free_at[dst] = start + service_ms
        visible = free_at[dst]
        lags.setdefault((src[0], dst[0]), []).append(visible - committed)
        done[dst] = max(done[dst], visible)
    return lags, done, drained


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--apply-us", type=float, default=APPLY_US,
                    help="one core's time to apply a replicated change")
    ap.add_argument("--cores", type=int, default=CORES, help="cores applying, per node")
    ap.add_argument("--rates", default="100,1000,2500,3500,4000",
                    help="writes per second per node to simulate")
    ap.add_argument("--outage-rate", type=int, default=1000,
                    help="writes per second per node while a region is lost")
    a = ap.parse_args()
    globals()["APPLY_US"] = a.apply_us
    globals()["CORES"] = a.cores
    rng = random.Random(a.seed)
    out = {"inputs": {"regions": REGIONS, "one_way_ms": {f"{x}-{y}": v for (x, y), v in ONE_WAY_MS.items()},
                      "nodes_per_region": NODES_PER_REGION, "apply_us": APPLY_US, "cores": CORES,
                      "idle_ms": IDLE_MS, "local_median_ms": LOCAL_MEDIAN_MS, "source_ms": SOURCE_MS}}
    capacity = CORES * 1e6 / APPLY_US
    out["apply_capacity_per_node"] = round(capacity)
    rows = []
    for rate in map(int, a.rates.split(",")):
        lags, _, _ = simulate(rate, 2, rng)
        every = [x for v in lags.values() for x in v]
        same = [x for (s, d), v in lags.items() if s == d for x in v]
        far = lags[("us-east", "ap-se")]
        rows.append({"writes_per_node": rate, "cluster_writes": rate * 16,
                     "applies_per_node": rate * 15,
                     "lag_p50": round(pct(every, 0.5), 1), "lag_p99": round(pct(every, 0.99), 1),
                     "same_region_p50": round(pct(same, 0.5), 1),
                     "us_east_to_ap_p50": round(pct(far, 0.5), 1),
                     "us_east_to_ap_p99": round(pct(far, 0.99), 1)})
    out["lag"] = rows
    # A region cut off for 20 s under 1,000 writes/s per node, then back; 40 s in all.
    rate, cut, total = a.outage_rate, (10_000.0, 30_000.0), 40
    _, _, drained = simulate(rate, total, rng, region_down="ap-se", down=cut)
    backlog = (cut[1] - cut[0]) / 1000 * rate * 12
    back = [t for (r, _), t in drained.items() if r == "ap-se"]
    out["region_loss"] = {"region": "ap-se", "down_s": (cut[1] - cut[0]) / 1000,
                          "writes_per_node": rate,
                          "backlog_per_returning_node": round(backlog),
                          "returning_node_caught_up_s_after_it_is_back":
                              round((max(back) - cut[1]) / 1000, 2) if back else None,
                          "same_by_formula_s": round(backlog / (capacity - rate * 15), 1)}
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"apply capacity per node: {out['apply_capacity_per_node']} changes/s")
    print("| writes/s per node | cluster writes/s | applies/s per node | lag p50 ms | lag p99 ms |"
          " same region p50 | us-east to ap-se p50 / p99 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['writes_per_node']:,} | {r['cluster_writes']:,} | {r['applies_per_node']:,} |"
              f" {r['lag_p50']} | {r['lag_p99']} | {r['same_region_p50']} |"
              f" {r['us_east_to_ap_p50']} / {r['us_east_to_ap_p99']} |")
    print(json.dumps(out["region_loss"]))


if __name__ == "__main__":
    main()

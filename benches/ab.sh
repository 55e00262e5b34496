#!/usr/bin/env bash
# A/B in one run on this machine: the release build of BASE (a git revision, built in a worktree)
# against the release build of the working tree, interleaved round by round (A, B, A, B, ...), so
# that the machine's drift lands on both. Each round starts the build on a fresh root with the
# Dog table of ../shared/bench/harper/app (BENCH_MAX_ID records, loaded through the Operations
# API), then measures:
#   get_by_id     wrk -t2 -c64, WRK_DURATION: requests/s, p99, server CPU per request
#   qos0_fanout   benches' mqtt_load: 10 publishers, 100 subscribers, QoS 0, closed loop
#   qos1_fanout   the same at QoS 1
# and, once per build at the end, IDLE idle MQTT connections held: the server's RSS.
#
# Usage: benches/ab.sh BASE [WORKDIR]        (default WORKDIR: /tmp/tessera-ab)
# Environment: REPEATS [3]  WRK_DURATION [10s]  DURATION [10]  BENCH_MAX_ID [10000]  IDLE [10000]
set -euo pipefail

BASE=${1:?usage: benches/ab.sh BASE [WORKDIR]}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
HB="$SHARED/bench/harper"
WORK=${2:-/tmp/tessera-ab}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
OUT="$WORK/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
REPEATS=${REPEATS:-3}
WRK_DURATION=${WRK_DURATION:-10s}
DURATION=${DURATION:-10}
IDLE=${IDLE:-10000}
export BENCH_MAX_ID=${BENCH_MAX_ID:-10000}
HTTP=29966 MQTT=29967 OPS=29968

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/ab.log"; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
ulimit -n 65536 || true

log "building $BASE (A) in a worktree and the working tree (B)"
if [[ ! -d "$WORK/base" ]]; then
  git -C "$REPO" worktree add --detach "$WORK/base" "$BASE" > /dev/null
else
  git -C "$WORK/base" checkout --detach -q "$BASE"
fi
(cd "$WORK/base" && cargo build --release -p tessera-runtime)
(cd "$REPO" && cargo build --release -p tessera-runtime -p tessera-benches --bins)
declare -A BIN=([A]="$WORK/base/target/release/tessera" [B]="$REPO/target/release/tessera")
LOAD="$REPO/target/release/mqtt_load"
echo "A=$(git -C "$WORK/base" rev-parse --short HEAD) B=$(git -C "$REPO" rev-parse --short HEAD)+worktree" \
  | tee "$OUT/builds.txt"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
rss_mb() { awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$1/status"; }

start() {
  rm -rf "$WORK/root"
  TESSERA_ADMIN_USERNAME=admin TESSERA_ADMIN_PASSWORD=password \
    "${BIN[$1]}" run "$HB/app" --root "$WORK/root" --http-port $HTTP --mqtt-port $MQTT \
    --ops-port $OPS --host 127.0.0.1 >> "$OUT/server-$1.out" 2>&1 < /dev/null &
  PID=$!
  until curl -s -o /dev/null -u admin:password "http://127.0.0.1:$HTTP/Dog"; do sleep 0.05; done
  SHARED_BENCH="$HB" python3 "$HERE/ops_load.py" --ops-url "http://127.0.0.1:$OPS" \
    --count "$BENCH_MAX_ID" --concurrency 2 > /dev/null
}
stop() {
  kill -TERM "$PID"
  wait "$PID" 2>/dev/null || true
}

export BENCH_LUA_DIR="$HB/wrk" BENCH_AUTH="Basic $(printf admin:password | base64 -w0)"
# record BUILD SCENARIO RATE P99_MS TICKS COUNT: one JSON line.
record() {
  python3 -c "
import json
print(json.dumps({'build': '$1', 'scenario': '$2', 'rate': $3, 'p99_ms': $4,
                  'cpu_us_per_op': $5 / $HZ * 1e6 / max($6, 1)}))" >> "$OUT/results.jsonl"
}

get_by_id() {
  local before after file="$OUT/$1-get-$(date +%s%N).wrk"
  before=$(ticks "$PID")
  wrk -t2 -c64 -d"$WRK_DURATION" --latency -s "$HB/wrk/get_by_id.lua" "http://127.0.0.1:$HTTP" > "$file"
  after=$(ticks "$PID")
  python3 "$HERE/wrk_result.py" "$file" "$((after - before))" "$HZ" build="$1" scenario=get_by_id \
    >> "$OUT/results.jsonl"
}

fanout() {
  local build=$1 qos=$2 before after line
  before=$(ticks "$PID")
  line=$("$LOAD" --port $MQTT --user admin --password password --duration "$DURATION" \
    --pubs 10 --subs 100 --qos "$qos" 2> /dev/null | grep '^MQTT_LOAD' | sed 's/^MQTT_LOAD //')
  after=$(ticks "$PID")
  read -r rate p99 delivered < <(python3 -c "
import json, sys
r = json.loads('''$line''')
print(r['delivered_per_s'], r['p99_ms'], r['received'])")
  record "$build" "qos${qos}_fanout" "$rate" "$p99" $((after - before)) "$delivered"
}

for round in $(seq 1 "$REPEATS"); do
  for build in A B; do
    log "round $round: $build"
    start "$build"
    get_by_id "$build"
    fanout "$build" 0
    fanout "$build" 1
    stop
  done
done

for build in A B; do
  start "$build"
  "$LOAD" --port $MQTT --user admin --password password --idle "$IDLE" --duration 5 \
    > "$OUT/$build-idle.out" 2>&1 &
  lpid=$!
  until grep -q idle_connections "$OUT/$build-idle.out" || ! kill -0 $lpid 2>/dev/null; do sleep 0.2; done
  sleep 1
  echo "$build idle_connections $(grep -o '"idle_connections":[0-9]*' "$OUT/$build-idle.out" | cut -d: -f2) rss_mb $(rss_mb "$PID")" \
    | tee -a "$OUT/idle.txt"
  wait $lpid || true
  stop
done

python3 - "$OUT/results.jsonl" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(b, s, k):
    v = [r[k] for r in rows if r["build"] == b and r["scenario"] == s and r[k] is not None]
    return statistics.median(v) if v else float("nan")
print("| scenario | A rate/s | B rate/s | B/A | A p99 ms | B p99 ms | A CPU us/op | B CPU us/op |")
print("|---|---|---|---|---|---|---|---|")
for s in ["get_by_id", "qos0_fanout", "qos1_fanout"]:
    a, b = med("A", s, "rate"), med("B", s, "rate")
    print(f"| {s} | {a:,.0f} | {b:,.0f} | {b / a:.3f} | {med('A', s, 'p99_ms'):.2f} | "
          f"{med('B', s, 'p99_ms'):.2f} | {med('A', s, 'cpu_us_per_op'):.2f} | {med('B', s, 'cpu_us_per_op'):.2f} |")
PY
cat "$OUT/idle.txt" | tee -a "$OUT/summary.md"
log "results in $OUT"

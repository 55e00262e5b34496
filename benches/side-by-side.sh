#!/usr/bin/env bash
# Side by side, in one run on this machine: real Harper (npm harperdb, installed by
# ../shared/bench/harper/install-and-start.sh), Tessera (release build), a bare glommio server
# that answers a fixed response (benches/src/bin/floor.rs), and nginx from Debian answering a
# fixed response with keep-alive, a worker per core and no access log, as its docs advise (the
# HTTP ceiling: its CPU counts every worker).
#
# For each server: load the Dog table of ../shared/bench/harper/app (BENCH_MAX_ID records), read
# its RSS, restart it and time start-up to the first answered GET, then run the wrk scenarios of
# ../shared/bench/harper/wrk REPEATS times each through the shared bench.sh (which samples server
# CPU and RSS). Servers run one at a time. The summary gives medians and Tessera/Harper ratios.
#
# Both servers are loaded the same way, into a fresh root, once per entry of LOAD_CONNECTIONS:
# the records of the shared load_data.py, Operations API `upsert` in batches of 1,000, over that
# many connections, timed by benches/ops_load.py (request bodies built before the clock starts:
# the shared loader builds each batch in Python between two requests, 1.4 s for 100,000 records,
# which caps any server near 73,000 records/s). The data of the last load stays for the rest.
#
# Usage: benches/side-by-side.sh [WORKDIR]          (default WORKDIR: /tmp/tessera-side-by-side)
# Environment: REPEATS [3]  WRK_DURATION [15s]  BENCH_MAX_ID [100000]
#              SCENARIOS ["get_by_id query_breed put mixed"]  RANGE [1]  SKIP_HARPER [0]
#              LOAD_CONNECTIONS ["1 8"]
#              SHARED [../shared]
# query_range (benches/wrk/query_range.lua, an indexed range with a sort) runs after the shared
# scenarios when RANGE=1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
HB="$SHARED/bench/harper"
WORK=${1:-/tmp/tessera-side-by-side}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
OUT="$WORK/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"

export REPEATS=${REPEATS:-3}
export WRK_DURATION=${WRK_DURATION:-15s}
export BENCH_MAX_ID=${BENCH_MAX_ID:-100000}
export SCENARIOS=${SCENARIOS-"get_by_id query_breed put mixed"}
RANGE=${RANGE:-1}
export BENCH_USER=admin BENCH_PASSWORD=password MQTT=0
SKIP_HARPER=${SKIP_HARPER:-0}
LOAD_CONNECTIONS=${LOAD_CONNECTIONS:-"1 8"}
LOADS=$(wc -w <<< "$LOAD_CONNECTIONS")
TESSERA_PORT=29926
TESSERA_OPS_PORT=29925
FLOOR_PORT=29980
NGINX_PORT=29981

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/side-by-side.log"; }

# Tessera listens with SO_REUSEPORT: a server left over from an earlier run would silently share
# the ports, and the load, with the one measured.
if ss -ltn | grep -qE ":($TESSERA_PORT|$TESSERA_OPS_PORT|$FLOOR_PORT) "; then
  echo "a process already listens on port $TESSERA_PORT, $TESSERA_OPS_PORT or $FLOOR_PORT; stop it first" >&2
  exit 1
fi
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }

log "building release binaries"
(cd "$REPO" && cargo build --release -p tessera-runtime -p tessera-benches --bins)
TESSERA="$REPO/target/release/tessera"
FLOOR="$REPO/target/release/floor"

# Seconds from launching a server until GET URL answers 200. Prints "SECONDS PID".
wait_ready() {
  local url=$1 start=$2 pid=$3
  until [[ "$(curl -s -o /dev/null -w '%{http_code}' -u admin:password "$url")" == 200 ]]; do
    kill -0 "$pid" 2>/dev/null || { echo "server $pid exited" >&2; return 1; }
    sleep 0.01
  done
  echo "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.3f", b-a}') $pid"
}

# run_wrk LABEL SCENARIO LUA URL PID DIR: REPEATS wrk runs sampled by the shared measure.py.
run_wrk() {
  local label=$1 scenario=$2 lua=$3 url=$4 pid=$5 dir=$6
  mkdir -p "$dir"
  for run in $(seq 1 "$REPEATS"); do
    python3 "$HB/measure.py" --kind rest --label "$scenario" --run "$run" --log "$dir/wrk-$scenario-$run.log" \
      --prefix WRK_JSON --server-pid "$pid" -- \
      env BENCH_LABEL="$label" wrk -t2 -c64 -d"$WRK_DURATION" --latency -s "$lua" "$url" \
      >> "$dir/results.jsonl"
  done
}
export BENCH_LUA_DIR="$HB/wrk" BENCH_AUTH="Basic $(printf admin:password | base64 -w0)"

rss_mb() { awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$1/status"; }

# Writes back what the previous step left dirty, so that it does not land in the next one's
# fsyncs (Harper leaves hundreds of MB behind).
settle() { sync; sleep 1; }

# load_ops WHO PID OPS_URL REST_URL CONNECTIONS: one timed load, then records read back over REST.
load_ops() {
  settle
  mkdir -p "$OUT/$1-load"
  SHARED_BENCH="$HB" python3 "$HERE/ops_load.py" --ops-url "$3" --base-url "$4" --server-pid "$2" \
    --count "$BENCH_MAX_ID" --concurrency "$5" | tee -a "$OUT/$1-load/ops_load.jsonl"
}

# ---------------------------------------------------------------- Harper
if [[ "$SKIP_HARPER" != 1 ]]; then
  n=0
  for conns in $LOAD_CONNECTIONS; do
    n=$((n + 1))
    log "Harper: install and start (fresh root)"
    RESET=1 "$HB/install-and-start.sh" "$WORK/harper" | tee "$OUT/harper-start-load-$n.log"
    HPID=$(cat "$WORK/harper/harper.pid")
    log "Harper: load $BENCH_MAX_ID records (operations API upsert, batches of 1000, $conns connections)"
    load_ops harper "$HPID" http://127.0.0.1:19925 http://127.0.0.1:19926 "$conns"
    [[ $n == "$LOADS" ]] || "$HB/stop.sh" "$WORK/harper" > /dev/null
  done
  echo "harper_rss_after_load_mb $(rss_mb "$HPID")" | tee -a "$OUT/figures.txt"
  for i in 1 2 3; do
    "$HB/stop.sh" "$WORK/harper" > /dev/null
    "$HB/install-and-start.sh" "$WORK/harper" > "$OUT/harper-restart-$i.log"
    echo "harper_startup_s $(awk '/STARTUP_SECONDS/{print $2}' "$OUT/harper-restart-$i.log")" | tee -a "$OUT/figures.txt"
  done
  HPID=$(cat "$WORK/harper/harper.pid")
  settle
  log "Harper: wrk scenarios"
  SERVER_PID=$HPID OUT_DIR="$OUT/harper" LOAD=0 "$HB/bench.sh" http://127.0.0.1:19926 127.0.0.1 11883 > /dev/null
  [[ "$RANGE" == 1 ]] && run_wrk harper query_range "$HERE/wrk/query_range.lua" http://127.0.0.1:19926 "$HPID" "$OUT/harper"
  "$HB/stop.sh" "$WORK/harper" > /dev/null
fi

# ---------------------------------------------------------------- Tessera
# Starts Tessera; ready when GET $1 answers 200 (the table, or a record once loaded).
start_tessera() {
  local start
  start=$(date +%s.%N)
  TESSERA_ADMIN_USERNAME=admin TESSERA_ADMIN_PASSWORD=password \
    "$TESSERA" run "$HB/app" --root "$WORK/tessera-root" --http-port $TESSERA_PORT \
    --ops-port $TESSERA_OPS_PORT --host 127.0.0.1 \
    >> "$OUT/tessera.out" 2>&1 < /dev/null &
  wait_ready "http://127.0.0.1:$TESSERA_PORT$1" "$start" $!
}
stop_pid() {
  kill -TERM "$1"
  while kill -0 "$1" 2>/dev/null; do sleep 0.05; done
}

n=0
for conns in $LOAD_CONNECTIONS; do
  n=$((n + 1))
  rm -rf "$WORK/tessera-root"
  log "Tessera: start (fresh root)"
  read -r _ TPID < <(start_tessera /Dog)
  log "Tessera: load $BENCH_MAX_ID records (operations API upsert, batches of 1000, $conns connections)"
  load_ops tessera "$TPID" "http://127.0.0.1:$TESSERA_OPS_PORT" "http://127.0.0.1:$TESSERA_PORT" "$conns"
  [[ $n == "$LOADS" ]] || stop_pid "$TPID"
done
echo "tessera_rss_after_load_mb $(rss_mb "$TPID")" | tee -a "$OUT/figures.txt"
for i in 1 2 3; do
  stop_pid "$TPID"
  read -r secs TPID < <(start_tessera /Dog/1)
  echo "tessera_startup_s $secs" | tee -a "$OUT/figures.txt"
done
settle
log "Tessera: wrk scenarios"
SERVER_PID=$TPID OUT_DIR="$OUT/tessera" LOAD=0 "$HB/bench.sh" "http://127.0.0.1:$TESSERA_PORT" 127.0.0.1 1 > /dev/null
[[ "$RANGE" == 1 ]] && run_wrk tessera query_range "$HERE/wrk/query_range.lua" "http://127.0.0.1:$TESSERA_PORT" "$TPID" "$OUT/tessera"
echo "tessera_rss_after_bench_mb $(rss_mb "$TPID")" | tee -a "$OUT/figures.txt"
curl -s -u admin:password "http://127.0.0.1:$TESSERA_PORT/Dog/1" > "$OUT/dog-1.json" || true
stop_pid "$TPID"

# ---------------------------------------------------------------- the floor
log "floor: bare glommio fixed-response server, get_by_id"
"$FLOOR" $FLOOR_PORT 2 > "$OUT/floor.out" 2>&1 < /dev/null &
FPID=$!
sleep 0.5
run_wrk floor get_by_id "$HB/wrk/get_by_id.lua" "http://127.0.0.1:$FLOOR_PORT" "$FPID" "$OUT/floor"
kill "$FPID"

# ---------------------------------------------------------------- nginx, the HTTP ceiling
log "nginx: fixed response, worker per core, get_by_id"
# The body: a Dog as Tessera answered GET /Dog/1, so that both send as many bytes.
BODY=$(cat "$OUT/dog-1.json" 2>/dev/null || true)
[[ -n $BODY ]] || BODY='{"id":1,"name":"Dog 1","breed":"Labrador","age":3,"owner":"Owner 1","weight":20.5}'
# shellcheck source=nginx.sh
. "$HERE/nginx.sh"
nginx_start "$WORK/nginx" "$NGINX_PORT" "$BODY"
mkdir -p "$OUT/nginx"
for run in $(seq 1 "$REPEATS"); do
  t0=$(tree_ticks "$NPID") s0=$(date +%s.%N)
  row=$(python3 "$HB/measure.py" --kind rest --label get_by_id --run "$run" --log "$OUT/nginx/wrk-$run.log" \
    --prefix WRK_JSON --server-pid "$NPID" -- \
    env BENCH_LABEL=nginx wrk -t2 -c64 -d"$WRK_DURATION" --latency -s "$HB/wrk/get_by_id.lua" "http://127.0.0.1:$NGINX_PORT")
  t1=$(tree_ticks "$NPID") s1=$(date +%s.%N)
  # measure.py sees the master only: the server's CPU is every worker's.
  python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r["server_cpu_cores"] = int(sys.argv[2]) / int(sys.argv[3]) / (float(sys.argv[5]) - float(sys.argv[4])); print(json.dumps(r))' \
    "$row" "$((t1 - t0))" "$(getconf CLK_TCK)" "$s0" "$s1" >> "$OUT/nginx/results.jsonl"
done
nginx_stop "$WORK/nginx"

# ---------------------------------------------------------------- summary
python3 "$HERE/summarize.py" "$OUT" | tee "$OUT/summary.md"
log "results in $OUT"

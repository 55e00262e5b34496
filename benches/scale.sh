#!/usr/bin/env bash
# Cost as the work grows: for each size of SIZES, a fresh server loaded with that many Dogs
# (../shared/bench/harper/load_data.py's records, Operations API upserts of 1,000 over 8
# connections, benches/ops_load.py), then, at that size: GET by id, PUT and the indexed query
# (wrk -t2 -c64, DURATION, the shared wrk scripts over the whole id range) with their p99; disk
# bytes per record against the records' raw MessagePack size; write amplification (bytes the
# server wrote to disk, /proc/PID/io write_bytes, per byte of raw records loaded); RSS; and the
# start-up time to the first answered GET after a clean stop (SIGTERM) and after `kill -9`, and
# the disk bytes per record at rest (stopped cleanly after those starts; the PUT run's overwrites
# included).
# Tessera, then real Harper at the sizes of HARPER_SIZES. Writes results.jsonl, summary.md and
# PNG plots (throughput and p99 against size, Tessera beside Harper) to WORKDIR/results.
#
# Usage: benches/scale.sh [WORKDIR]           (default /tmp/tessera-scale)
# Environment: SIZES ["100000 1000000 10000000"]  HARPER_SIZES ["100000 1000000"]
#              DURATION [10s]  SKIP_BUILD [0]  STOP_WAIT [300] (s a clean stop may take)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
HB="$SHARED/bench/harper"
WORK=${1:-/tmp/tessera-scale}
SIZES=${SIZES:-"100000 1000000 10000000"}
HARPER_SIZES=${HARPER_SIZES-"100000 1000000"}
DURATION=${DURATION:-10s}
mkdir -p "$WORK/results"
WORK=$(cd "$WORK" && pwd)
OUT="$WORK/results"
: > "$OUT/results.jsonl"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
python3 -c 'import matplotlib, msgpack' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check 'matplotlib>=3.6,<4' 'msgpack>=1,<2'
[[ ${SKIP_BUILD:-0} == 1 ]] || (cd "$REPO" && cargo build --release -p tessera-runtime)
BIN="$REPO/target/release/tessera"
export BENCH_LUA_DIR="$HB/wrk" BENCH_AUTH="Basic $(printf admin:password | base64 -w0)"
PORT=29600 OPS=29602

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/scale.log"; }

# Seconds from now until GET URL answers 200, while PID lives.
ready_in() {
  local url=$1 pid=$2 start
  start=$(date +%s.%N)
  until [[ "$(curl -s -o /dev/null -w '%{http_code}' -u admin:password "$url")" == 200 ]]; do
    kill -0 "$pid" 2>/dev/null || { echo "server $pid exited" >&2; return 1; }
    sleep 0.01
  done
  python3 -c "import time; print(round(time.time() - $start, 3))"
}

start_tessera() { # root: starts in the background, sets PID (and STARTUP empty: time it)
  STARTUP=""
  TESSERA_ADMIN_USERNAME=admin TESSERA_ADMIN_PASSWORD=password "$BIN" run "$HB/app" --root "$1" \
    --http-port $PORT --mqtt-port $((PORT + 1)) --ops-port $OPS --host 127.0.0.1 \
    >> "$OUT/tessera.out" 2>&1 < /dev/null &
  PID=$!
}

start_harper() { # starts (installing on first use) the shared Harper, sets PID
  "$HB/install-and-start.sh" "$WORK/harper" > "$OUT/harper-start.log"
  PID=$(cat "$WORK/harper/harper.pid")
}

write_bytes() { awk '/^write_bytes/{print $2}' "/proc/$1/io"; }
rss_mb() { awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$1/status"; }

# The raw MessagePack bytes of the first N records the loader makes (sampled: 20,000 of them).
raw_bytes() {
  python3 - "$1" "$HB" <<'PY'
import importlib.util, os, sys, msgpack
n, hb = int(sys.argv[1]), sys.argv[2]
spec = importlib.util.spec_from_file_location("ld", os.path.join(hb, "load_data.py"))
ld = importlib.util.module_from_spec(spec); spec.loader.exec_module(ld)
step = max(1, n // 20000)
sample = [len(msgpack.packb(ld.dog(i, 42))) for i in range(1, n + 1, step)]
print(round(sum(sample) / len(sample) * n))
PY
}

# wrk_row SERVER SIZE SCENARIO LUA: one wrk run; appends its figures to results.jsonl.
wrk_row() {
  local file="$OUT/$1-$2-$3.wrk" t0
  t0=$(awk '{print $14 + $15}' "/proc/$PID/stat")
  BENCH_MAX_ID=$2 wrk -t2 -c64 -d"$DURATION" --latency -s "$HB/wrk/$4" "http://127.0.0.1:$5" > "$file"
  python3 "$HERE/wrk_result.py" "$file" $(($(awk '{print $14 + $15}' "/proc/$PID/stat") - t0)) \
    "$(getconf CLK_TCK)" server="$1" size="$2" scenario="$3" >> "$OUT/results.jsonl"
}

# measure SERVER SIZE DATA_DIR HTTP_PORT OPS_PORT: load it, then its figures at that size.
measure() {
  local server=$1 size=$2 data=$3 http=$4 ops=$5 raw w0 w1 disk
  raw=$(raw_bytes "$size")
  w0=$(write_bytes "$PID")
  log "$server $size: load"
  SHARED_BENCH="$HB" python3 "$HERE/ops_load.py" --ops-url "http://127.0.0.1:$ops" --count "$size" \
    --concurrency 8 --server-pid "$PID" > "$OUT/$server-$size-load.json"
  sync
  sleep 2
  w1=$(write_bytes "$PID")
  disk=$(du -sb "$data" | cut -f1)
  python3 - "$OUT/$server-$size-load.json" "$server" "$size" "$raw" "$((w1 - w0))" "$disk" "$(rss_mb "$PID")" >> "$OUT/results.jsonl" <<'PY'
import json, sys
load = json.load(open(sys.argv[1]))
server, size, raw, written, disk, rss = sys.argv[2:8]
size, raw, written, disk = int(size), int(raw), int(written), int(disk)
print(json.dumps({"server": server, "size": size, "scenario": "load", "rate": load["records_per_s"],
                  "raw_bytes": raw, "raw_bytes_per_record": round(raw / size, 1),
                  "disk_bytes_per_record": round(disk / size, 1), "disk_over_raw": round(disk / raw, 2),
                  "write_amplification": round(written / raw, 2), "rss_mb": float(rss)}))
PY
  log "$server $size: wrk"
  wrk_row "$server" "$size" get_by_id get_by_id.lua "$http"
  wrk_row "$server" "$size" query_breed query_breed.lua "$http"
  wrk_row "$server" "$size" put put.lua "$http"
  echo "{\"server\": \"$server\", \"size\": $size, \"scenario\": \"rss_after\", \"rss_mb\": $(rss_mb "$PID")}" >> "$OUT/results.jsonl"
}

restarts() { # SERVER SIZE START_FN ARG HTTP_PORT DATA_DIR: start-up after a clean stop and
  # after kill -9, and the disk the data takes at rest (after the last of these starts and a clean
  # stop: tables a compaction replaced are deleted by the next start)
  local server=$1 size=$2 clean killed stop start rest
  # The clean stop is timed too, and bounded (STOP_WAIT s): past it, the start-up after it is
  # not measured (null).
  start=$(date +%s.%N)
  kill -TERM "$PID"
  while kill -0 "$PID" 2>/dev/null; do
    if (($(date +%s) - ${start%.*} > ${STOP_WAIT:-300})); then kill -9 "$PID"; break; fi
    sleep 0.05
  done
  stop=$(python3 -c "import time; print(round(time.time() - $start, 3))")
  "$3" "$4"
  clean=${STARTUP:-$(ready_in "http://127.0.0.1:$5/Dog/1" "$PID")}
  ((${stop%.*} < ${STOP_WAIT:-300})) || clean=null
  kill -9 "$PID"
  while kill -0 "$PID" 2>/dev/null; do sleep 0.05; done
  "$3" "$4"
  killed=${STARTUP:-$(ready_in "http://127.0.0.1:$5/Dog/1" "$PID")}
  kill -TERM "$PID"
  while kill -0 "$PID" 2>/dev/null; do sleep 0.05; done
  rest=$(du -sb "$6" | cut -f1)
  echo "{\"server\": \"$server\", \"size\": $size, \"scenario\": \"startup\", \"stop_s\": $stop, \"clean_s\": $clean, \"killed_s\": $killed, \"disk_at_rest_bytes_per_record\": $((rest / size))}" >> "$OUT/results.jsonl"
  log "$server $size: a clean stop in $stop s, start-up $clean s after it, $killed s after kill -9"
}

for size in $SIZES; do
  root="$WORK/tessera-$size"
  rm -rf "$root"
  start_tessera "$root"
  ready_in "http://127.0.0.1:$PORT/Dog" "$PID" > /dev/null
  measure tessera "$size" "$root" $PORT $OPS
  restarts tessera "$size" start_tessera "$root" $PORT "$root"
  rm -rf "$root"
done

for size in $HARPER_SIZES; do
  RESET=1 start_harper
  measure harper "$size" "$WORK/harper/hdb/database" 19926 19925
  # Harper's own script starts it and times it (from launch to its table answering).
  harper_again() {
    "$HB/install-and-start.sh" "$WORK/harper" > "$OUT/harper-start.log"
    PID=$(cat "$WORK/harper/harper.pid")
    STARTUP=$(awk '/STARTUP_SECONDS/{print $2}' "$OUT/harper-start.log")
  }
  restarts harper "$size" harper_again "" 19926 "$WORK/harper/hdb/database"
done

python3 "$HERE/scale_plot.py" "$OUT"
log "results in $OUT"

#!/usr/bin/env bash
# A long scan must not stall its core: loads N Dogs (default 1,000,000) into a fresh Tessera,
# then measures GET-by-id latency with wrk, first alone and then while a client runs full scans
# back to back (`?name=ct=zzz`: a non-indexed condition, so every record is read and none
# matches). Each scan runs on every shard's owner core at once and yields between batches of
# 512 records; a stalled core would show as GET latency near the scan's duration.
#
# Usage: benches/scan-stall.sh [WORKDIR]
# Environment: SHARED [../shared]  N [1000000]  WRK_DURATION [15s]  REUSE [0] (1: keep WORKDIR/root and its records)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HB=$(cd "${SHARED:-$REPO/../shared}/bench/harper" && pwd)
WORK=${1:-/tmp/tessera-scan-stall}
N=${N:-1000000}
WRK_DURATION=${WRK_DURATION:-15s}
PORT=29927
mkdir -p "$WORK"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
(cd "$REPO" && cargo build --release -p tessera-runtime)
REUSE=${REUSE:-0}
[[ "$REUSE" == 1 && -d "$WORK/root" ]] || { rm -rf "$WORK/root"; REUSE=0; }
TESSERA_ADMIN_USERNAME=admin TESSERA_ADMIN_PASSWORD=password \
  "$REPO/target/release/tessera" run "$HB/app" --root "$WORK/root" --http-port $PORT --mqtt-port 0 --ops-port 0 --host 127.0.0.1 \
  > "$WORK/tessera.log" 2>&1 < /dev/null &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
until curl -s -o /dev/null -u admin:password "http://127.0.0.1:$PORT/Dog"; do sleep 0.1; done
[[ "$REUSE" == 1 ]] || { echo "loading $N Dogs"; SERVER_PID=$PID OUT_DIR="$WORK/load" SCENARIOS="" LOAD=1 LOAD_MODE=rest BENCH_MAX_ID=$N MQTT=0 \
  BENCH_USER=admin BENCH_PASSWORD=password "$HB/bench.sh" "http://127.0.0.1:$PORT" 127.0.0.1 1 > /dev/null; }
export BENCH_LUA_DIR="$HB/wrk" BENCH_AUTH="Basic $(printf admin:password | base64 -w0)" BENCH_MAX_ID=$N
get() { wrk -t1 -c8 -d"$WRK_DURATION" --latency -s "$HB/wrk/get_by_id.lua" "http://127.0.0.1:$PORT" | grep WRK_JSON; }
echo "GET alone:        $(get)"
(
  while true; do
    curl -s -o /dev/null -w '%{time_total}\n' -u admin:password "http://127.0.0.1:$PORT/Dog/?name=ct=zzz"
  done
) > "$WORK/scan-times.txt" &
SCANS=$!
sleep 1
echo "GET during scans: $(get)"
kill $SCANS
python3 - "$WORK/scan-times.txt" "$N" <<'PY'
import statistics, sys
t = [float(x) for x in open(sys.argv[1]) if x.strip()]
print(f"full scans of {int(sys.argv[2]):,} records: {len(t)} completed, median {statistics.median(t):.3f} s, "
      f"{int(sys.argv[2]) / statistics.median(t):,.0f} records/s")
PY

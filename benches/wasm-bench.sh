#!/usr/bin/env bash
# GET through a pass-through wasm resource against the same native table GET, in one run on one
# server: `GET /Plain/<id>` (the table's own handler), `GET /Pass/<id>` (a Rust resource compiled
# to wasm that reads the record through the host and hands it on as stored; its instance is kept
# between requests), `GET /Fresh/<id>` (the same resource with the default isolation: each
# request on an instance in its just-instantiated state) and `GET /Typed/<id>` (like Fresh, but
# decoding the record into a Value and encoding it again). Rounds are interleaved; prints req/s,
# p99 and server CPU per request for each, and the medians' ratios to native.
#
# Usage: benches/wasm-bench.sh [WORKDIR]
# Environment: SHARED [../shared]  N [10000] records, REPEATS [3], WRK_DURATION [10s], CONNECTIONS [16],
# PATHS ["Plain Pass Fresh Typed"], TESSERA_BIN [the release build] (another binary, for an A/B)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HB=$(cd "${SHARED:-$REPO/../shared}/bench/harper" && pwd)
WORK=${1:-/tmp/tessera-wasm-bench}
N=${N:-10000}
REPEATS=${REPEATS:-3}
WRK_DURATION=${WRK_DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
PATHS=${PATHS:-Plain Pass Fresh Typed}
PORT=29928
OPS=29929
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if [[ -z ${TESSERA_BIN:-} ]]; then
  (cd "$REPO" && cargo build --release -p tessera-runtime --bin tessera)
fi
TESSERA_BIN=${TESSERA_BIN:-$REPO/target/release/tessera}
(cd "$REPO" && cargo build --release --target wasm32-unknown-unknown -p tessera-test-guests)
rm -rf "$WORK" && mkdir -p "$WORK/app"
cp "$REPO/target/wasm32-unknown-unknown/release/tessera_test_guests.wasm" "$WORK/app/guests.wasm"
cat > "$WORK/app/config.yaml" <<'YAML'
rest: true
graphqlSchema:
  files: 'schema.graphql'
wasmResource:
  files: '*.wasm'
YAML
cat > "$WORK/app/schema.graphql" <<'GQL'
type Widget @table @export { id: Long @primaryKey  name: String  price: Float @indexed  stock: Int }
type Log @table @export { id: Long @primaryKey  from: Long  to: Long  amount: Int }
type Plain @table @export { id: Long @primaryKey  name: String  breed: String  age: Int  owner: String  weight: Float }
GQL
TESSERA_ADMIN_USERNAME=admin TESSERA_ADMIN_PASSWORD=password \
  "$TESSERA_BIN" run "$WORK/app" --root "$WORK/root" --http-port $PORT --ops-port $OPS \
  --mqtt-port 0 --host 127.0.0.1 > "$WORK/tessera.log" 2>&1 < /dev/null &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
until curl -s -o /dev/null -u admin:password "http://127.0.0.1:$PORT/Plain"; do sleep 0.1; done
python3 - "$N" > "$WORK/load.json" <<'PY'
import json, sys
n = int(sys.argv[1])
print(json.dumps({"operation": "upsert", "table": "Plain", "records": [
    {"id": i, "name": f"Dog-{i}", "breed": "Poodle", "age": i % 15, "owner": f"owner-{i}", "weight": 2 + i % 50}
    for i in range(1, n + 1)]}))
PY
curl -s -o /dev/null -u admin:password -H 'Content-Type: application/json' --data-binary @"$WORK/load.json" "http://127.0.0.1:$OPS/"
for path in $PATHS; do
  [[ $(curl -s -u admin:password "http://127.0.0.1:$PORT/$path/7") == *'"Dog-7"'* ]] || { echo "$path/7 is wrong"; exit 1; }
done
export BENCH_LUA_DIR="$HB/wrk" BENCH_AUTH="Basic $(printf admin:password | base64 -w0)" BENCH_MAX_ID=$N
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
: > "$WORK/results.txt"
for round in $(seq "$REPEATS"); do
  for path in $PATHS; do
    before=$(cpu)
    line=$(BENCH_TABLE=$path BENCH_LABEL=$path wrk -t1 -c"$CONNECTIONS" -d"$WRK_DURATION" --latency \
      -s "$HB/wrk/get_by_id.lua" "http://127.0.0.1:$PORT" | grep WRK_JSON)
    after=$(cpu)
    echo "$round $path $((after - before)) ${line#WRK_JSON }" | tee -a "$WORK/results.txt"
  done
done
python3 - "$WORK/results.txt" <<'PY'
import json, os, statistics, sys
hz = os.sysconf("SC_CLK_TCK")
runs = {}
for line in open(sys.argv[1]):
    _, path, ticks, js = line.split(" ", 3)
    j = json.loads(js)
    n = j["requests"]
    bad = j["non2xx3xx"] + j["err_connect"] + j["err_read"] + j["err_timeout"] + j["err_write"]
    if bad:
        sys.exit(f"{path}: {bad} failed requests")
    runs.setdefault(path, []).append((j["rps"], j["lat_p99_ms"], int(ticks) / hz * 1e6 / max(n, 1)))
base = statistics.median(r[0] for r in runs.get("Plain", next(iter(runs.values()))))
for path, rs in runs.items():
    rps = statistics.median(r[0] for r in rs)
    print(f"{path:6} req/s median {rps:>9,.0f} (runs {', '.join(f'{r[0]:,.0f}' for r in rs)}); "
          f"p99 {statistics.median(r[1] for r in rs):.2f} ms; server CPU {statistics.median(r[2] for r in rs):.1f} us/req; "
          f"{rps / base:.0%} of native")
PY

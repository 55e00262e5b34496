#!/usr/bin/env bash
# How fast a node catches up, same run on this machine: node 1 holds RECORDS Dogs; node 2 joins
# new and copies them from node 1 (then tails the stream); node 2 stops, node 1 takes TAIL more
# writes, and node 2, started again, catches up on them through its durable consumer. Reports
# records per second for each, and the copy's own figure from node 2's log.
#
# Usage: benches/replication-catchup.sh [WORKDIR]     (default /tmp/tessera-catchup)
# Environment: RECORDS [1000000]  TAIL [100000]  BATCH [10000] (records per insert)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
HB="$SHARED/bench/harper"
WORK=${1:-/tmp/tessera-catchup}
RECORDS=${RECORDS:-1000000}
TAIL=${TAIL:-100000}
BATCH=${BATCH:-10000}
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
[[ -x $NATS ]] || { apt-get update -qq && apt-get install -y -qq nats-server; NATS=/usr/sbin/nats-server; }
[[ ${SKIP_BUILD:-} == 1 ]] || (cd "$REPO" && cargo build --release -p tessera-runtime)
BIN="$REPO/target/release/tessera"
rm -rf "$WORK" && mkdir -p "$WORK"
OUT="$WORK/summary.md"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
NATS_PORT=29432

start_node() { # name index
  local root="$WORK/$1" http=$((29600 + $2 * 10))
  mkdir -p "$root"
  printf 'replication:\n  hostname: %s\n  nats: nats://127.0.0.1:%s\n' "$1" $NATS_PORT > "$root/tessera.yaml"
  TESSERA_ADMIN_USERNAME=admin TESSERA_ADMIN_PASSWORD=password "$BIN" run "$HB/app" --root "$root" \
    --threads 1 --http-port $http --mqtt-port $((http + 1)) --ops-port $((http + 2)) \
    --host 127.0.0.1 >> "$root.out" 2>&1 &
  PIDS+=($!)
  LAST=$!
  until curl -s -o /dev/null -u admin:password "http://127.0.0.1:$http/Dog"; do sleep 0.05; done
}

count() { # index
  curl -s -u admin:password -H 'Content-Type: application/json' \
    -d '{"operation":"sql","sql":"SELECT COUNT(*) AS n FROM data.Dog"}' \
    "http://127.0.0.1:$((29602 + $1 * 10))" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["n"])'
}

load() { # index from count: inserts Dogs from..from+count-1 through the Operations API
  python3 - "$((29602 + $1 * 10))" "$2" "$3" "$BATCH" <<'PY'
import base64, json, sys, urllib.request
port, start, count, batch = map(int, sys.argv[1:5])
auth = "Basic " + base64.b64encode(b"admin:password").decode()
for at in range(start, start + count, batch):
    records = [{"id": i, "name": f"dog {i}", "breed": ["lab", "pug", "boxer"][i % 3], "age": i % 15}
               for i in range(at, min(at + batch, start + count))]
    body = json.dumps({"operation": "upsert", "table": "Dog", "records": records}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}", body,
                                 {"Content-Type": "application/json", "Authorization": auth})
    urllib.request.urlopen(req).read()
PY
}

wait_for() { # index want: seconds until node index holds want records
  local start
  start=$(date +%s.%N)
  until [[ $(count "$1") -ge $2 ]]; do sleep 0.2; done
  python3 -c "print(round($(date +%s.%N) - $start, 2))"
}

echo "# Catch-up benchmark $(date -u +%F), $(nproc) cores, RECORDS=$RECORDS TAIL=$TAIL" | tee "$OUT"
"$NATS" -js -a 127.0.0.1 -p $NATS_PORT -sd "$WORK/jetstream" > "$WORK/nats.out" 2>&1 &
PIDS+=($!)
sleep 0.5
start_node node1 1
t0=$(date +%s.%N)
load 1 0 "$RECORDS"
echo "node1 loaded $RECORDS records in $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s" | tee -a "$OUT"
# Node 2 is new: the stream holds every write too, but a new node copies instead.
t0=$(date +%s.%N)
start_node node2 2
NODE2=$LAST
secs=$(wait_for 2 "$RECORDS")
total=$(python3 -c "print(round($(date +%s.%N) - $t0, 2))")
echo "new node2 holds all $RECORDS records $total s after it started: $(python3 -c "print(round($RECORDS / $total))") records/s" | tee -a "$OUT"
echo "node2's log: $(grep -o 'copied [0-9]* records from node [a-z0-9]* in [0-9.]* s' "$WORK/node2.out" | head -1)" | tee -a "$OUT"
kill "$NODE2"; wait "$NODE2" 2>/dev/null || true
load 1 "$RECORDS" "$TAIL"
t0=$(date +%s.%N)
start_node node2 2
want=$((RECORDS + TAIL))
wait_for 2 "$want" > /dev/null
total=$(python3 -c "print(round($(date +%s.%N) - $t0, 2))")
echo "node2, back after $TAIL writes, holds all $want records $total s after it started: $(python3 -c "print(round($TAIL / $total))") records/s from the stream" | tee -a "$OUT"

#!/usr/bin/env bash
# Replication, same run on this machine: durable PUT throughput on one node alone, then on a
# cluster of NODES nodes replicating through one nats-server with JetStream (wrk against the
# first node), the replication lag (commit on the first node to visible on each other node)
# measured by benches/replication/lag_probe.py under that load, and the time for the other
# nodes to hold every record written.
#
# Usage: benches/replication-bench.sh [WORKDIR]     (default /tmp/tessera-repl)
# Environment: NODES [3]  THREADS [1] (per node)  DURATION [10s]  BENCH_MAX_ID [10000]
#              SKIP_BUILD [0] (1: use target/release/tessera as it is)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
HB="$SHARED/bench/harper"
WORK=${1:-/tmp/tessera-repl}
NODES=${NODES:-3}
THREADS=${THREADS:-1}
DURATION=${DURATION:-10s}
export BENCH_MAX_ID=${BENCH_MAX_ID:-10000}
export BENCH_LUA_DIR="$HB/wrk" BENCH_AUTH="Basic $(printf admin:password | base64 -w0)"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
[[ -x $NATS ]] || { apt-get update -qq && apt-get install -y -qq nats-server; NATS=/usr/sbin/nats-server; }
[[ ${SKIP_BUILD:-0} == 1 ]] || (cd "$REPO" && cargo build --release -p tessera-runtime)
BIN="$REPO/target/release/tessera"
rm -rf "$WORK" && mkdir -p "$WORK"
OUT="$WORK/summary.md"
PIDS=()
NAMES=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
NATS_PORT=29422

start_node() { # name index [replicate]
  local root="$WORK/$1" http=$((29500 + $2 * 10))
  mkdir -p "$root"
  if [[ ${3:-} == replicate ]]; then
    printf 'replication:\n  hostname: %s\n  nats: nats://127.0.0.1:%s\n' "$1" $NATS_PORT > "$root/tessera.yaml"
  fi
  TESSERA_ADMIN_USERNAME=admin TESSERA_ADMIN_PASSWORD=password "$BIN" run "$HB/app" --root "$root" \
    --threads "$THREADS" --http-port $http --mqtt-port $((http + 1)) --ops-port $((http + 2)) \
    --host 127.0.0.1 > "$root.out" 2>&1 &
  PIDS+=($!)
  NAMES+=("$1")
  until curl -s -o /dev/null -u admin:password "http://127.0.0.1:$http/Dog"; do sleep 0.05; done
}

each_ticks() { # CPU clock ticks so far of each process started here, in the order started
  for p in "${PIDS[@]}"; do awk '{printf "%d ", $14 + $15}' "/proc/$p/stat"; done
}
# shellcheck source=replication/load.sh
. "$HERE/replication/load.sh"

count() { # port
  curl -s -u admin:password -H 'Content-Type: application/json' -d '{"operation":"sql","sql":"SELECT COUNT(*) AS n FROM data.Dog"}' \
    "http://127.0.0.1:$(( $1 + 2 ))" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["n"])'
}

echo "# Replication benchmark $(date -u +%F), $(nproc) cores, NODES=$NODES THREADS=$THREADS" | tee "$OUT"
start_node alone 0
echo "one node alone, PUT: $(put_load 29500 alone)" | tee -a "$OUT"
cleanup; PIDS=(); NAMES=()

"$NATS" -js -a 127.0.0.1 -p $NATS_PORT -sd "$WORK/jetstream" > "$WORK/nats.out" 2>&1 &
PIDS+=($!)
NAMES+=(nats-server)
sleep 0.5
readers=()
for i in $(seq 1 "$NODES"); do
  start_node "node$i" "$i" replicate
  [[ $i -gt 1 ]] && readers+=($((29500 + i * 10)))
done
READERS=$(IFS=,; echo "${readers[*]}")
python3 "$REPO/benches/replication/lag_probe.py" 29510 "$READERS" 12 admin password > "$WORK/lag.json" &
probe=$!
echo "cluster of $NODES, PUT on node1: $(put_load 29510 cluster)" | tee -a "$OUT"
echo "server CPU per PUT, each process: $(cat "$WORK/cluster.cpu")" | tee -a "$OUT"
wait $probe
echo "replication lag under that load (node1 commit -> visible on each other node): $(cat "$WORK/lag.json")" | tee -a "$OUT"
want=$(count 29510)
start=$(date +%s.%N)
for p in "${readers[@]}"; do
  until [[ $(count "$p") == "$want" ]]; do sleep 0.2; done
done
echo "every node holds node1's $want records $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s after the load ended" | tee -a "$OUT"

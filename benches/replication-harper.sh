#!/usr/bin/env bash
# The replication benchmark of benches/replication-bench.sh, run against real Harper (npm
# `harperdb`, 4.7.29 by default, which ships its WebSocket replication): durable PUT throughput on
# one Harper node alone, then on a cluster of NODES Harper nodes (wrk against the first), the
# replication lag under that load (benches/replication/lag_probe.py), and the time for the other
# nodes to hold every record written. Run it right after replication-bench.sh for a same-run
# side by side.
#
# The cluster: each node on its own ports on loopback (node N: 3N926 REST, 3N925 operations,
# 3N932 replication without TLS), named by `replication.hostname`; `add_node` both ways with
# `retain_authorization` (Basic credentials, since there is no TLS), then every node restarted,
# which is what made both directions connect in our tries.
#
# Usage: benches/replication-harper.sh [WORKDIR]     (default /tmp/harper-repl)
# Environment: NODES [3]  THREADS [1] (per node)  DURATION [10s]  BENCH_MAX_ID [10000]
#              HARPER_VERSION [4.7.29]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
HB="$SHARED/bench/harper"
WORK=${1:-/tmp/harper-repl}
NODES=${NODES:-3}
THREADS=${THREADS:-1}
DURATION=${DURATION:-10s}
HARPER_VERSION=${HARPER_VERSION:-4.7.29}
export BENCH_MAX_ID=${BENCH_MAX_ID:-10000}
export BENCH_LUA_DIR="$HB/wrk" BENCH_AUTH="Basic $(printf admin:password | base64 -w0)"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
mkdir -p "$WORK"
PKG="$WORK/pkg"
if [[ "$(node -p "try{require('$PKG/node_modules/harperdb/package.json').version}catch(e){''}")" != "$HARPER_VERSION" ]]; then
  mkdir -p "$PKG" && echo '{"name":"harper-cluster","private":true}' > "$PKG/package.json"
  (cd "$PKG" && npm install --no-audit --no-fund "harperdb@$HARPER_VERSION" > "$WORK/npm.log" 2>&1)
fi
BIN="$PKG/node_modules/harperdb/bin/harperdb.js"
rm -rf "$WORK"/node* && OUT="$WORK/summary.md"
PIDS=()
NAMES=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$p" 2>/dev/null || true
  done
  PIDS=()
  NAMES=()
}
trap stop_all EXIT

base() { echo $((30000 + $1 * 1000)); } # node index -> its port block

start_node() { # index: install once, then start detached and wait for the REST endpoint
  local n=$1 b root home
  b=$(base "$n") root="$WORK/node$n/hdb" home="$WORK/node$n/home"
  mkdir -p "$home"
  if [[ ! -f $root/harperdb-config.yaml ]]; then
    HOME=$home ROOTPATH=$root TC_AGREEMENT=yes HDB_ADMIN_USERNAME=admin HDB_ADMIN_PASSWORD=password \
      HTTP_PORT=$((b + 926)) OPERATIONSAPI_NETWORK_PORT=$((b + 925)) \
      MQTT_NETWORK_PORT=$((b + 883)) MQTT_NETWORK_SECUREPORT=$((b + 884)) \
      REPLICATION_PORT=$((b + 932)) REPLICATION_SECUREPORT=$((b + 933)) \
      REPLICATION_HOSTNAME="node$n" REPLICATION_URL="ws://127.0.0.1:$((b + 932))" \
      THREADS_COUNT=$THREADS LOCALSTUDIO_ENABLED=false \
      node "$BIN" install > "$WORK/node$n.install.log" 2>&1 < /dev/null
    mkdir -p "$root/components/dogs" && cp "$HB/app/"* "$root/components/dogs/"
  fi
  HOME=$home ROOTPATH=$root setsid node "$BIN" >> "$WORK/node$n.out" 2>&1 < /dev/null &
  PIDS+=($!)
  NAMES+=("node$n")
  for _ in $(seq 1 900); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' -u admin:password "http://127.0.0.1:$((b + 926))/Dog")" == 200 ]] && return
    sleep 0.2
  done
  echo "node$n did not start; see $WORK/node$n.out" >&2
  exit 1
}

op() { # index json: an Operations API call on node `index`
  curl -s -u admin:password -H 'Content-Type: application/json' -d "$2" "http://127.0.0.1:$(($(base "$1") + 925))"
}

each_ticks() { # CPU clock ticks so far of each node (with its child processes), in order
  for p in "${PIDS[@]}"; do
    local t=0
    for q in $p $(pgrep -P "$p" || true); do t=$((t + $(awk '{print $14 + $15}' "/proc/$q/stat"))); done
    printf '%d ' $t
  done
}
# shellcheck source=replication/load.sh
. "$HERE/replication/load.sh"

count() { # index
  op "$1" '{"operation":"sql","sql":"SELECT COUNT(*) AS n FROM data.Dog"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["n"])'
}

echo "# Replication benchmark, real Harper $HARPER_VERSION, $(date -u +%F), $(nproc) cores, NODES=$NODES THREADS=$THREADS" | tee "$OUT"
# Alone: a node of its own (installed apart from the cluster's, so that it starts empty).
start_node 9
echo "one node alone, PUT: $(put_load $(($(base 9) + 926)) alone)" | tee -a "$OUT"
stop_all

for i in $(seq 1 "$NODES"); do start_node "$i"; done
for i in $(seq 1 "$NODES"); do
  for j in $(seq 1 "$NODES"); do
    [[ $i == "$j" ]] && continue
    op "$i" "{\"operation\":\"add_node\",\"url\":\"ws://127.0.0.1:$(($(base "$j") + 932))\",\"authorization\":{\"username\":\"admin\",\"password\":\"password\"},\"retain_authorization\":true,\"verify_tls\":false}" > "$WORK/add_node.$i.$j.json"
  done
done
stop_all
for i in $(seq 1 "$NODES"); do start_node "$i"; done
# Connected both ways: a record written on each node is read on every other.
readers=()
for i in $(seq 1 "$NODES"); do
  [[ $i -gt 1 ]] && readers+=($(($(base "$i") + 926)))
  curl -s -u admin:password -X PUT -H 'Content-Type: application/json' \
    -d "{\"id\":$((2000000000 + i)),\"name\":\"hello\"}" "http://127.0.0.1:$(($(base "$i") + 926))/Dog/$((2000000000 + i))" > /dev/null
done
for i in $(seq 1 "$NODES"); do
  for j in $(seq 1 "$NODES"); do
    for _ in $(seq 1 300); do
      [[ "$(curl -s -o /dev/null -w '%{http_code}' -u admin:password "http://127.0.0.1:$(($(base "$i") + 926))/Dog/$((2000000000 + j))")" == 200 ]] && break
      sleep 0.2
    done
  done
done
READERS=$(IFS=,; echo "${readers[*]}")
python3 "$REPO/benches/replication/lag_probe.py" $(($(base 1) + 926)) "$READERS" 12 admin password > "$WORK/lag.json" &
probe=$!
echo "cluster of $NODES, PUT on node1: $(put_load $(($(base 1) + 926)) cluster)" | tee -a "$OUT"
echo "server CPU per PUT, each process: $(cat "$WORK/cluster.cpu")" | tee -a "$OUT"
wait $probe
echo "replication lag under that load (node1 commit -> visible on each other node): $(cat "$WORK/lag.json")" | tee -a "$OUT"
want=$(count 1)
start=$(date +%s.%N)
deadline=$(($(date +%s) + ${CONVERGE_WAIT:-60}))
all=1
for i in $(seq 2 "$NODES"); do
  # At least: Harper's COUNT(*) on node1 can lag its last writes by a record or two.
  until (($(count "$i") >= want)); do
    if (($(date +%s) > deadline)); then
      echo "node$i holds $(count "$i") of node1's $want records ${CONVERGE_WAIT:-60} s after the load ended" | tee -a "$OUT"
      all=0
      break
    fi
    sleep 0.2
  done
done
if ((all)); then
  echo "every node holds node1's $want records $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s after the load ended" | tee -a "$OUT"
fi

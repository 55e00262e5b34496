#!/usr/bin/env bash
# MQTT side by side, in one run on this machine: Tessera (release build), Debian's mosquitto
# (single-threaded broker, password file) and real Harper (../shared/bench/harper), one broker at
# a time, driven by our load generator (benches/src/bin/mqtt_load.rs).
#
# Scenarios per broker (REPEATS runs each, medians in the summary):
#   qos0_fanout   10 publishers, 100 subscribers, QoS 0, closed loop (window 100)
#   qos1_fanout   10 publishers, 100 subscribers, QoS 1, closed loop
#   one_to_one    100 publishers -> 100 subscribers, QoS 0
#   latency_half  fixed rate at half of Tessera's qos0_fanout publish rate (open loop): p99
# Then, Tessera and mosquitto only: IDLE idle connections held, broker RSS.
#
# Usage: benches/mqtt-side-by-side.sh [WORKDIR]
# Environment: REPEATS [3]  DURATION [10]  IDLE [10000]  SKIP_HARPER [0]  SHARED [../shared]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
HB="$SHARED/bench/harper"
WORK=${1:-/tmp/tessera-mqtt-side-by-side}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
OUT="$WORK/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-10}
IDLE=${IDLE:-10000}
SKIP_HARPER=${SKIP_HARPER:-0}
TESSERA_HTTP=29936
TESSERA_MQTT=29937
MOSQ_PORT=29938
HARPER_MQTT=11883

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/mqtt-side-by-side.log"; }

command -v /usr/sbin/mosquitto >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients
}
ulimit -n 65536 || true

log "building release binaries"
(cd "$REPO" && cargo build --release -p tessera-runtime -p tessera-benches --bins)
TESSERA="$REPO/target/release/tessera"
LOAD="$REPO/target/release/mqtt_load"

rss_mb() { awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

# scenario NAME BROKER PORT PID ARGS...: REPEATS runs, one JSON line each in results.jsonl.
scenario() {
  local name=$1 broker=$2 port=$3 pid=$4
  shift 4
  for run in $(seq 1 "$REPEATS"); do
    local t0 t1 line
    t0=$(cpu_ticks "$pid")
    line=$("$LOAD" --port "$port" --user admin --password password --duration "$DURATION" "$@" \
      2> "$OUT/$broker-$name-$run.err" | grep '^MQTT_LOAD' | sed 's/^MQTT_LOAD //')
    t1=$(cpu_ticks "$pid")
    echo "$line" | python3 -c "
import json, sys
r = json.loads(sys.stdin.read() or '{}')
r.update(broker='$broker', scenario='$name', run=$run,
         server_cpu_cores=($t1 - $t0) / 100 / $DURATION)
print(json.dumps(r))" >> "$OUT/results.jsonl"
    log "$broker $name run $run: $(tail -1 "$OUT/results.jsonl" | cut -c1-240)"
  done
}

# idle NAME PORT PID: IDLE connections opened, then held for 5 s; how many were open, and the
# broker's RSS a second after the last one connected.
idle() {
  local name=$1 port=$2 pid=$3
  log "$name: $IDLE idle connections"
  "$LOAD" --port "$port" --user admin --password password --idle "$IDLE" --duration 5 \
    > "$OUT/$name-idle.out" 2>&1 &
  local lpid=$!
  until grep -q idle_connections "$OUT/$name-idle.out" || ! kill -0 $lpid 2>/dev/null; do sleep 0.2; done
  sleep 1
  echo "${name}_idle_connections $(grep -o '"idle_connections":[0-9]*' "$OUT/$name-idle.out" | cut -d: -f2) rss_mb $(rss_mb "$pid")" | tee -a "$OUT/figures.txt"
  wait $lpid || true
}

scenarios() {
  local broker=$1 port=$2 pid=$3 rate=$4
  scenario qos0_fanout "$broker" "$port" "$pid" --pubs 10 --subs 100 --qos 0
  scenario qos1_fanout "$broker" "$port" "$pid" --pubs 10 --subs 100 --qos 1
  scenario one_to_one "$broker" "$port" "$pid" --pubs 100 --subs 100 --topics 100 --one-to-one --qos 0
  scenario latency_half "$broker" "$port" "$pid" --pubs 10 --subs 100 --qos 0 --rate "$rate" --window 1000000
}

# ---------------------------------------------------------------- Tessera
rm -rf "$WORK/tessera-root"
TESSERA_ADMIN_USERNAME=admin TESSERA_ADMIN_PASSWORD=password \
  "$TESSERA" run "$HB/app" --root "$WORK/tessera-root" --http-port $TESSERA_HTTP \
  --mqtt-port $TESSERA_MQTT --ops-port 0 --host 127.0.0.1 > "$OUT/tessera.out" 2>&1 < /dev/null &
TPID=$!
until grep -q "MQTT listening" "$OUT/tessera.out"; do sleep 0.05; done
log "Tessera: scenarios"
# Half of Tessera's peak publish rate, measured first.
scenario qos0_fanout_peak tessera $TESSERA_MQTT $TPID --pubs 10 --subs 100 --qos 0
PEAK=$(tail -1 "$OUT/results.jsonl" | python3 -c "import json,sys; print(json.load(sys.stdin)['published_per_s'])")
HALF=$(python3 -c "print(round($PEAK / 2))")
echo "tessera_peak_publish_rate $PEAK; latency_half rate $HALF msgs/s" | tee -a "$OUT/figures.txt"
scenarios tessera $TESSERA_MQTT $TPID "$HALF"
idle tessera $TESSERA_MQTT $TPID
kill -TERM $TPID; wait $TPID || true

# ---------------------------------------------------------------- mosquitto
mkdir -p "$WORK/mosquitto"
/usr/bin/mosquitto_passwd -b -c "$WORK/mosquitto/pw" admin password
printf 'listener %s 127.0.0.1\nallow_anonymous false\npassword_file %s\nmax_connections -1\n' \
  "$MOSQ_PORT" "$WORK/mosquitto/pw" > "$WORK/mosquitto/m.conf"
/usr/sbin/mosquitto -c "$WORK/mosquitto/m.conf" > "$OUT/mosquitto.out" 2>&1 &
MPID=$!
sleep 0.5
log "mosquitto: scenarios"
scenarios mosquitto $MOSQ_PORT $MPID "$HALF"
idle mosquitto $MOSQ_PORT $MPID
kill $MPID; wait $MPID || true

# ---------------------------------------------------------------- Harper
if [[ "$SKIP_HARPER" != 1 ]]; then
  log "Harper: install and start"
  RESET=1 "$HB/install-and-start.sh" "$WORK/harper" > "$OUT/harper-start.log"
  HPID=$(cat "$WORK/harper/harper.pid")
  log "Harper: scenarios"
  scenarios harper $HARPER_MQTT "$HPID" "$HALF"
  "$HB/stop.sh" "$WORK/harper" > /dev/null
fi

python3 "$HERE/mqtt_summarize.py" "$OUT" | tee "$OUT/summary.md"
log "results in $OUT"

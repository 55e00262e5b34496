#!/usr/bin/env bash
# Caching tables side by side, in one run on this machine (issue 30): Tessera's caching table
# (examples/cache: a config-only HTTP source), real Harper's caching table with a JavaScript
# source (benches/caching/harper-app, installed by ../shared/bench/harper/install-and-start.sh),
# and nginx's proxy_cache, each in front of the same origin (examples/cache/origin.py).
#
# For each: a hit (GET of a cached record) with wrk -t2 -c64, REPEATS runs, requests/s, p99 and
# server CPU per request; for Tessera and Harper also a GET of a plain table's record (the hit's
# baseline). Then COLD concurrent GETs of one cold key (benches/caching/cold_burst.py; the origin
# waits ORIGIN_DELAY_MS per GET): how many requests reached the origin, and the p99.
#
# Usage: benches/caching.sh [WORKDIR]            (default /tmp/tessera-caching)
# Environment: REPEATS [3]  DURATION [10s]  COLD [1000]  ORIGIN_DELAY_MS [50]
#              SKIP_HARPER [0]  SKIP_NGINX [0]  SKIP_BUILD [0]  SHARED [../shared]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
HB="$SHARED/bench/harper"
WORK=${1:-/tmp/tessera-caching}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
OUT="$WORK/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-10s}
COLD=${COLD:-1000}
export ORIGIN_DELAY_MS=${ORIGIN_DELAY_MS:-50}
ORIGIN_PORT=28090
TESSERA_PORT=28926
NGINX_PORT=28981
HZ=$(getconf CLK_TCK)
AUTH="Basic $(printf admin:password | base64)"
# shellcheck source=benches/nginx.sh
. "$HERE/nginx.sh"

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/caching.log"; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $WORK/nginx/nginx.pid ]] && nginx_stop "$WORK/nginx" 2>/dev/null || true
  [[ -f $WORK/harper/harper.pid ]] && "$WORK/kit/stop.sh" "$WORK/harper" >/dev/null 2>&1 || true
}
trap cleanup EXIT

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "building the release binary"
  (cd "$REPO" && cargo build --release -p tessera-runtime)
fi
TESSERA="$REPO/target/release/tessera"

log "origin on $ORIGIN_PORT (each GET waits $ORIGIN_DELAY_MS ms)"
python3 "$REPO/examples/cache/origin.py" "$ORIGIN_PORT" 2> "$OUT/origin.log" &
PIDS+=($!)
until curl -s -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/breeds/0"; do sleep 0.1; done

# origin_gets ID: how many GETs of /breeds/ID reached the origin.
origin_gets() { grep -c "\"GET /breeds/$1 HTTP" "$OUT/origin.log" || true; }

# hit LABEL SCENARIO URL PID [RUN]: REPEATS wrk runs (or just run RUN), one JSON line each.
hit() {
  local label=$1 scenario=$2 url=$3 pid=$4 i t0 t1
  for i in ${5:-$(seq "$REPEATS")}; do
    t0=$(tree_ticks "$pid")
    wrk -t2 -c64 -d"$DURATION" --latency -H "Authorization: $AUTH" "$url" > "$OUT/$label-$scenario-$i.wrk"
    t1=$(tree_ticks "$pid")
    python3 "$REPO/benches/wrk_result.py" "$OUT/$label-$scenario-$i.wrk" $((t1 - t0)) "$HZ" \
      server="$label" scenario="$scenario" run="$i" | tee -a "$OUT/results.jsonl"
  done
}

# cold LABEL URL ID: COLD concurrent GETs of a cold key.
cold() {
  local label=$1 url=$2 id=$3 before line
  before=$(origin_gets "$id")
  line=$(python3 "$HERE/caching/cold_burst.py" "$url" "$COLD" "$AUTH")
  sleep 0.5
  echo "{\"server\": \"$label\", \"scenario\": \"cold\", \"origin_requests\": $(($(origin_gets "$id") - before)), \"burst\": $line}" |
    tee -a "$OUT/results.jsonl"
}

# Tessera: examples/cache against this origin, plus a plain table.
APP="$WORK/tessera-app"
rm -rf "$APP" "$WORK/tessera-root"
mkdir -p "$APP"
sed "s/8090/$ORIGIN_PORT/" "$REPO/examples/cache/config.yaml" > "$APP/config.yaml"
cp "$REPO/examples/cache/schema.graphql" "$APP/"
printf 'type Plain @table @export {\n  id: ID @primaryKey\n  name: String\n  group: String\n}\n' >> "$APP/schema.graphql"
log "Tessera"
TESSERA_ADMIN_USERNAME=admin TESSERA_ADMIN_PASSWORD=password "$TESSERA" run "$APP" \
  --root "$WORK/tessera-root" --host 127.0.0.1 --http-port $TESSERA_PORT --mqtt-port 28883 \
  --ops-port 28925 > "$OUT/tessera.log" 2>&1 &
TPID=$!
PIDS+=($TPID)
until curl -s -o /dev/null -H "Authorization: $AUTH" "http://127.0.0.1:$TESSERA_PORT/Plain/"; do sleep 0.1; done
curl -s -H "Authorization: $AUTH" -H 'Content-Type: application/json' -X PUT \
  -d '{"name":"Labrador","group":"sample"}' "http://127.0.0.1:$TESSERA_PORT/Plain/1"
curl -s -o /dev/null -H "Authorization: $AUTH" "http://127.0.0.1:$TESSERA_PORT/Breed/1"
for i in $(seq "$REPEATS"); do
  hit tessera hit "http://127.0.0.1:$TESSERA_PORT/Breed/1" $TPID "$i"
  hit tessera plain "http://127.0.0.1:$TESSERA_PORT/Plain/1" $TPID "$i"
done
cold tessera "http://127.0.0.1:$TESSERA_PORT/Breed/cold-tessera" cold-tessera
kill $TPID

if [[ ${SKIP_NGINX:-0} != 1 ]]; then
  log "nginx proxy_cache"
  nginx_start "$WORK/nginx" $NGINX_PORT '{}'
  nginx_stop "$WORK/nginx"
  sleep 0.5
  mkdir -p "$WORK/nginx/cache"
  cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  proxy_cache_path $WORK/nginx/cache levels=1:2 keys_zone=origin:10m max_size=100m inactive=60m use_temp_path=off;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 16; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache origin;
      proxy_cache_valid 200 404 60s;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 30s;
      proxy_cache_use_stale updating error timeout;
      proxy_cache_background_update on;
    }
  }
}
CONF
  /usr/sbin/nginx -c "$WORK/nginx/nginx.conf"
  sleep 0.5
  NPID=$(cat "$WORK/nginx/nginx.pid")
  curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/breeds/1"
  hit nginx hit "http://127.0.0.1:$NGINX_PORT/breeds/1" "$NPID"
  cold nginx "http://127.0.0.1:$NGINX_PORT/breeds/cold-nginx" cold-nginx
  nginx_stop "$WORK/nginx"
fi

if [[ ${SKIP_HARPER:-0} != 1 ]]; then
  log "Harper with a JavaScript source"
  rm -rf "$WORK/kit"
  cp -r "$HB" "$WORK/kit"
  rm -rf "$WORK/kit/app"
  cp -r "$HERE/caching/harper-app" "$WORK/kit/app"
  sed -i "s/ORIGIN_PORT/$ORIGIN_PORT/" "$WORK/kit/app/resources.js"
  "$WORK/kit/install-and-start.sh" "$WORK/harper" > "$OUT/harper-start.log"
  HPID=$(cat "$WORK/harper/harper.pid")
  curl -s -H "Authorization: $AUTH" -H 'Content-Type: application/json' -X PUT \
    -d '{"name":"Labrador","group":"sample"}' "http://127.0.0.1:19926/Plain/1"
  curl -s -o /dev/null -H "Authorization: $AUTH" "http://127.0.0.1:19926/Breed/1"
  for i in $(seq "$REPEATS"); do
    hit harper hit "http://127.0.0.1:19926/Breed/1" "$HPID" "$i"
    hit harper plain "http://127.0.0.1:19926/Plain/1" "$HPID" "$i"
  done
  cold harper "http://127.0.0.1:19926/Breed/cold-harper" cold-harper
  "$WORK/kit/stop.sh" "$WORK/harper" > /dev/null
fi

python3 - "$OUT/results.jsonl" > "$OUT/summary.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs) if xs else None
print("| server | scenario | req/s (median) | p99 ms | server CPU us/req | runs |")
print("|---|---|---|---|---|---|")
runs = {}
for r in rows:
    if r["scenario"] != "cold":
        runs.setdefault((r["server"], r["scenario"]), []).append(r)
for (srv, sc), rs in runs.items():
    print(f"| {srv} | {sc} | {med([r['rate'] for r in rs]):,.0f} | {med([r['p99_ms'] for r in rs]):.2f} | "
          f"{med([r['cpu_us_per_op'] for r in rs]):.1f} | {len(rs)} |")
print()
print("| server | cold burst | origin requests | statuses | p50 ms | p99 ms |")
print("|---|---|---|---|---|---|")
for r in rows:
    if r["scenario"] == "cold":
        b = r["burst"]
        print(f"| {r['server']} | {b['requests']} GETs of one key | {r['origin_requests']} | {b['statuses']} | {b['p50_ms']} | {b['p99_ms']} |")
rate = lambda s, sc: med([r["rate"] for r in runs.get((s, sc), [])])
t_hit, t_plain = rate("tessera", "hit"), rate("tessera", "plain")
print()
if t_hit and t_plain:
    print(f"Tessera hit / Tessera plain GET: {t_hit / t_plain:.2f}")
for other in ("harper", "nginx"):
    o = rate(other, "hit")
    if t_hit and o:
        print(f"Tessera hit / {other} hit: {t_hit / o:.2f}")
PY
cat "$OUT/summary.md"
log "results in $OUT"

#!/usr/bin/env bash
# TLS side by side, in one run on this machine: Tessera's GET by id over plain HTTP and over
# HTTPS (keep-alive), and its TLS handshake rate (a new connection, so a full handshake, for every
# request), beside nginx from Debian answering a fixed response over HTTP and HTTPS with the same
# certificate (worker per core, access log off, as its docs advise).
#
# Tessera serves the Dog table of ../shared/bench/harper/app with BENCH_MAX_ID records (loaded
# through the Operations API). Each measurement is a wrk run of WRK_DURATION; the rounds
# interleave the servers and scenarios, REPEATS rounds; the summary gives medians of requests/s,
# p99 and server CPU per request (utime+stime of the server's processes over the requests).
#
# Usage: benches/tls-bench.sh [WORKDIR]          (default WORKDIR: /tmp/tessera-tls-bench)
# Environment: REPEATS [3]  WRK_DURATION [10s]  BENCH_MAX_ID [10000]  SHARED [../shared]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
HB="$SHARED/bench/harper"
WORK=${1:-/tmp/tessera-tls-bench}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
OUT="$WORK/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
REPEATS=${REPEATS:-3}
WRK_DURATION=${WRK_DURATION:-10s}
export BENCH_MAX_ID=${BENCH_MAX_ID:-10000}
T_HTTP=29946 T_HTTPS=29947 T_OPS=29948 N_HTTP=29956 N_HTTPS=29957

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/tls-bench.log"; }

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

log "building the release binary"
(cd "$REPO" && cargo build --release -p tessera-runtime)
TESSERA="$REPO/target/release/tessera"

# One self-signed certificate for both servers (P-256, as most deployments).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2> /dev/null

# ---------------------------------------------------------------- Tessera
rm -rf "$WORK/root" && mkdir -p "$WORK/root"
cat > "$WORK/root/tessera.yaml" <<EOF
tls:
  certificate: $WORK/cert.pem
  privateKey: $WORK/key.pem
http:
  securePort: $T_HTTPS
EOF
TESSERA_ADMIN_USERNAME=admin TESSERA_ADMIN_PASSWORD=password \
  "$TESSERA" run "$HB/app" --root "$WORK/root" --http-port $T_HTTP --ops-port $T_OPS \
  --host 127.0.0.1 > "$OUT/tessera.out" 2>&1 < /dev/null &
TPID=$!
until curl -s -o /dev/null -u admin:password "http://127.0.0.1:$T_HTTP/Dog"; do sleep 0.05; done
log "Tessera: loading $BENCH_MAX_ID records"
SHARED_BENCH="$HB" python3 "$HERE/ops_load.py" --ops-url "http://127.0.0.1:$T_OPS" \
  --count "$BENCH_MAX_ID" --concurrency 2 > "$OUT/load.json"

# ---------------------------------------------------------------- nginx
# shellcheck source=nginx.sh
. "$HERE/nginx.sh"
nginx_start "$WORK/nginx" "$N_HTTP" '{"id":1,"name":"Rex","breed":"Collie","age":3}' "$N_HTTPS" "$WORK/cert.pem" "$WORK/key.pem"

HZ=$(getconf CLK_TCK)

export BENCH_LUA_DIR="$HB/wrk" BENCH_AUTH="Basic $(printf admin:password | base64 -w0)"
# measure SERVER SCENARIO PID URL [LUA]: one wrk run (GET by id, or LUA); appends a JSON line.
measure() {
  local server=$1 scenario=$2 pid=$3 url=$4 lua=${5:-$HB/wrk/get_by_id.lua}
  local before after out
  before=$(tree_ticks "$pid")
  out=$(wrk -t2 -c64 -d"$WRK_DURATION" --latency -s "$lua" "$url")
  after=$(tree_ticks "$pid")
  local file="$OUT/$server-$scenario-$(date +%s%N).wrk"
  echo "$out" > "$file"
  python3 "$HERE/wrk_result.py" "$file" "$((after - before))" "$HZ" server="$server" \
    scenario="$scenario" >> "$OUT/results.jsonl"
}

for round in $(seq 1 "$REPEATS"); do
  log "round $round of $REPEATS"
  measure tessera http "$TPID" "http://127.0.0.1:$T_HTTP"
  measure nginx http "$NPID" "http://127.0.0.1:$N_HTTP"
  measure tessera https "$TPID" "https://127.0.0.1:$T_HTTPS"
  measure nginx https "$NPID" "https://127.0.0.1:$N_HTTPS"
  measure tessera handshake "$TPID" "https://127.0.0.1:$T_HTTPS" "$HERE/wrk/get_by_id_close.lua"
  measure nginx handshake "$NPID" "https://127.0.0.1:$N_HTTPS" "$HERE/wrk/get_by_id_close.lua"
done

kill -TERM "$TPID"
nginx_stop "$WORK/nginx"
wait "$TPID" 2>/dev/null || true

python3 - "$OUT/results.jsonl" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(server, scenario, key):
    v = [r[key] for r in rows if r["server"] == server and r["scenario"] == scenario and r[key] is not None]
    return statistics.median(v) if v else float("nan")
print("| scenario | Tessera req/s | nginx req/s | Tessera/nginx | Tessera p99 ms | nginx p99 ms | Tessera CPU us/req | nginx CPU us/req |")
print("|---|---|---|---|---|---|---|---|")
for sc, name in [("http", "GET over HTTP, keep-alive"), ("https", "GET over HTTPS, keep-alive"),
                 ("handshake", "new TLS connection per GET (handshakes/s)")]:
    t, n = med("tessera", sc, "rate"), med("nginx", sc, "rate")
    print(f"| {name} | {t:,.0f} | {n:,.0f} | {t / n:.2f} | {med('tessera', sc, 'p99_ms'):.2f} | "
          f"{med('nginx', sc, 'p99_ms'):.2f} | {med('tessera', sc, 'cpu_us_per_op'):.1f} | "
          f"{med('nginx', sc, 'cpu_us_per_op'):.1f} |")
t_http, t_https = med("tessera", "http", "rate"), med("tessera", "https", "rate")
print(f"\nTessera HTTPS/HTTP (keep-alive GET): {t_https / t_http:.2f}")
errs = sum(r["non_2xx"] for r in rows)
print(f"non-2xx answers in all runs: {errs}")
PY
log "results in $OUT"

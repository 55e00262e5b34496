# Shared by benches/replication-bench.sh (Tessera) and benches/replication-harper.sh (Harper):
# sourced, not run. Needs WORK, HB, REPO, DURATION, NAMES (the processes started, in order) and
# the caller's `each_ticks` (CPU clock ticks so far of each process in NAMES, in order).

ticks() { # every process started: CPU clock ticks so far
  local t=0
  for n in $(each_ticks); do t=$((t + n)); done
  echo $t
}

put_load() { # port label: the wrk figures, CPU per request counting every process started
  local t0 e0
  t0=$(ticks)
  e0=$(each_ticks)
  wrk -t2 -c64 -d"$DURATION" --latency -s "$HB/wrk/put.lua" "http://127.0.0.1:$1" > "$WORK/$2.wrk"
  python3 "$REPO/benches/wrk_result.py" "$WORK/$2.wrk" $(($(ticks) - t0)) "$(getconf CLK_TCK)" scenario="$2"
  # Each process's share: CPU us per request, in the order started.
  python3 - "$WORK/$2.wrk" "$e0" "$(each_ticks)" "$(getconf CLK_TCK)" "${NAMES[*]}" > "$WORK/$2.cpu" <<'PY'
import re, sys
wrk, before, after, tck, names = sys.argv[1:6]
requests = int(re.search(r"(\d+) requests in", open(wrk).read()).group(1))
per = [(int(a) - int(b)) / int(tck) * 1e6 / requests for a, b in zip(after.split(), before.split())]
print(", ".join(f"{n} {round(c, 1)} us" for n, c in zip(names.split(), per)))
PY
}

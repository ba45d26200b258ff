#!/usr/bin/env bash
# The plainest side-by-side a user would run, independent of compare.sh's
# machinery: one nginx backend (`return 200`), and in front of it
#   switchyard:  `switchyard proxy --listen A --to B --workers N` (nothing else)
#   nginx:       upstream keepalive 128, proxy_http_version 1.1, no forwarded headers
#   HAProxy:     http-reuse always, no forwardfor
# each with N workers; wrk -t1 -c64 keep-alive against each in turn, ROUNDS
# times. Prints each run, then medians and the ratios per round.
#
#   bash bench/plain.sh                    # N = 1 and 2, 3 rounds of 5 s
#   SY_BIN=/tmp/sy WORKERS=1 ROUNDS=5 DURATION=5s bash bench/plain.sh
#
# Loopback only; ports 19300-19303. Needs nginx, haproxy, wrk (compare.sh
# installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WORKERS=${WORKERS:-"1 2"}
SY=${SY_BIN:-}
if [ -z "$SY" ]; then
  cargo build --release --quiet
  SY=${CARGO_TARGET_DIR:-target}/release/switchyard
fi
W=$(mktemp -d /tmp/switchyard-plain.XXXXXX)
chmod 755 "$W"
B=19300 PN=19301 PH=19302 PS=19303
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$W"/b/nginx.pid "$W"/n/nginx.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  return 1
}
mkdir -p "$W/b" "$W/n"
cat >"$W/b/nginx.conf" <<CONF
worker_processes 1;
pid $W/b/nginx.pid;
error_log $W/b/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$B; location / { return 200 "ok\n"; } }
}
CONF
nginx -p "$W/b" -c "$W/b/nginx.conf" -g 'daemon on;' 2>/dev/null
wait_port $B

results=$W/results.tsv
: >"$results"
for n in $WORKERS; do
  cat >"$W/n/nginx.conf" <<CONF
worker_processes $n;
pid $W/n/nginx.pid;
error_log $W/n/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream b { server 127.0.0.1:$B; keepalive 128; }
  server {
    listen 127.0.0.1:$PN;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
  nginx -p "$W/n" -c "$W/n/nginx.conf" -g 'daemon on;' 2>/dev/null
  cat >"$W/h.cfg" <<CONF
global
  nbthread $n
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$PH
  default_backend be
backend be
  server s1 127.0.0.1:$B
CONF
  haproxy -f "$W/h.cfg" >"$W/h.log" 2>&1 &
  hp=$!
  pids+=("$hp")
  "$SY" proxy --listen 127.0.0.1:$PS --to 127.0.0.1:$B --workers "$n" >"$W/s.log" 2>&1 &
  sp=$!
  pids+=("$sp")
  wait_port $PN
  wait_port $PH
  wait_port $PS
  for r in $(seq 1 "$ROUNDS"); do
    for p in nginx:$PN haproxy:$PH switchyard:$PS; do
      name=${p%%:*} port=${p##*:}
      out=$(wrk -t1 -c64 -d"$DURATION" --latency "http://127.0.0.1:$port/" 2>&1 || true)
      rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
      p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
      printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$r" "$name" "${rps:-0}" "${p99:-?}" >>"$results"
      printf '  w=%s round %s %-10s %10s req/s  p99 %s\n' "$n" "$r" "$name" "${rps:-0}" "${p99:-?}" >&2
    done
  done
  kill "$(cat "$W/n/nginx.pid")" "$hp" "$sp" 2>/dev/null || true
  wait "$hp" "$sp" 2>/dev/null || true
  while [ -f "$W/n/nginx.pid" ]; do sleep 0.05; done
done

python3 - "$results" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
for n in sorted({r[0] for r in rows}):
    by = {}
    for w, r, p, rps, p99 in rows:
        if w == n:
            by.setdefault(p, {})[int(r)] = (float(rps), p99)
    print(f"workers={n}: " + ", ".join(
        f"{p} {statistics.median(v[0] for v in by[p].values()):.0f} req/s (p99 {', '.join(v[1] for _, v in sorted(by[p].items()))})"
        for p in ("nginx", "haproxy", "switchyard") if p in by))
    for other in ("nginx", "haproxy"):
        per = [by["switchyard"][r][0] / by[other][r][0] for r in sorted(by["switchyard"]) if by[other].get(r, (0,))[0]]
        print(f"  switchyard/{other}: per round {', '.join(f'{x:.2f}' for x in per)}; median {statistics.median(per):.2f}x")
PY

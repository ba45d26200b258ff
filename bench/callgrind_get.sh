#!/usr/bin/env bash
# Instructions per small keep-alive GET through switchyard, counted by callgrind
# (deterministic, unlike req/s on a shared machine; user space only, so system
# calls and the kernel's share are not in it).
#
#   bash bench/callgrind_get.sh BINARY [BINARY...]   # N=2000 CONNS=16 WORKERS=1
#
# Per binary: a warm-up of N/4 requests, counters zeroed, N requests, a dump; prints
# Ir per request and keeps the dump (callgrind_annotate it) under $WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
N=${N:-2000}
CONNS=${CONNS:-16}
WORKERS=${WORKERS:-1}
export PATH=$PATH:/usr/sbin
WORK=$(mktemp -d /tmp/switchyard-cg.XXXXXX)
chmod 755 "$WORK"
start_backend "$WORK" 19050 "keepalive_requests 1000000;"
trap 'kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true' EXIT
proxy_config "$WORK/sy.toml" 19051 19050 "$WORKERS" "keepalive = 64"
i=0
for bin in "$@"; do
  i=$((i + 1))
  out=$WORK/callgrind.$i
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out.%p" \
    "$bin" run -c "$WORK/sy.toml" >"$WORK/sy.$i.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/19051) 2>/dev/null && break; sleep 0.1; done
  python3 bench/fixed_get.py 127.0.0.1 19051 $((N / 4)) "$CONNS"
  callgrind_control -z "$pid" >/dev/null 2>&1
  python3 bench/fixed_get.py 127.0.0.1 19051 "$N" "$CONNS"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  dump=$(ls "$out".*.* 2>/dev/null | sort | sed -n 1p)
  ir=$(grep -h '^summary:' $dump | awk '{s += $2} END {print s}')
  echo "$bin: $((ir / N)) Ir/request (N=$N, $CONNS connections; dump $dump)"
done

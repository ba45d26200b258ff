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
N=${N:-2000}
CONNS=${CONNS:-16}
WORKERS=${WORKERS:-1}
export PATH=$PATH:/usr/sbin
WORK=$(mktemp -d /tmp/switchyard-cg.XXXXXX)
chmod 755 "$WORK"
cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:19050; location / { return 200 "ok\n"; } }
}
CONF
nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon on;' 2>/dev/null
trap 'kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true' EXIT
cat >"$WORK/sy.toml" <<CONF
[runtime]
workers = $WORKERS
[[listener]]
listen = "127.0.0.1:19051"
routes = [{ path_prefix = "/", upstream = "backend" }]
[upstream.backend]
keepalive = 64
servers = [{ addr = "127.0.0.1:19050" }]
CONF
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

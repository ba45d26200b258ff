#!/usr/bin/env bash
# RSS of two switchyard binaries holding IDLE_CONNS idle keep-alive client
# connections, measured in the same run (before, after, before, after).
#
#   bash bench/idle_ab.sh BEFORE_BINARY AFTER_BINARY     # IDLE_CONNS=10000 ROUNDS=2
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE_CONNS=${IDLE_CONNS:-10000}
ROUNDS=${ROUNDS:-2}
export PATH=$PATH:/usr/sbin
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d /tmp/switchyard-idle-ab.XXXXXX)
chmod 755 "$WORK"
cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:19040; location / { return 200 "ok\n"; } } }
CONF
nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon on;' 2>/dev/null
trap 'kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true' EXIT
cat >"$WORK/sy.toml" <<CONF
[runtime]
workers = 1
[[listener]]
listen = "127.0.0.1:19041"
routes = [{ path_prefix = "/", upstream = "backend" }]
[upstream.backend]
servers = [{ addr = "127.0.0.1:19040" }]
CONF
for r in $(seq 1 "$ROUNDS"); do
  for side in before after; do
    bin=$([ $side = before ] && echo "$1" || echo "$2")
    RUST_LOG=warn "$bin" run -c "$WORK/sy.toml" >"$WORK/sy.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/19041) 2>/dev/null && break; sleep 0.05; done
    wrk -t1 -c64 -d1s http://127.0.0.1:19041/ >/dev/null 2>&1 || true
    rss0=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status)
    rm -f "$WORK/ready"
    python3 bench/idle_clients.py 127.0.0.1 19041 "$IDLE_CONNS" "$WORK/ready" >/dev/null 2>&1 &
    cpid=$!
    for _ in $(seq 1 600); do [ -f "$WORK/ready" ] && break; sleep 0.1; done
    sleep 1
    rss1=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status)
    echo "$side round $r: RSS $rss0 KiB -> $rss1 KiB with $(cat "$WORK/ready") idle connections ($(( (rss1 - rss0) * 1024 / IDLE_CONNS )) bytes each)"
    kill $cpid $pid 2>/dev/null || true
    wait $cpid $pid 2>/dev/null || true
  done
done

#!/usr/bin/env bash
# RSS of two switchyard binaries holding IDLE_CONNS idle keep-alive client
# connections, measured in the same run (before, after, before, after).
#
#   bash bench/idle_ab.sh BEFORE_BINARY AFTER_BINARY     # IDLE_CONNS=10000 ROUNDS=2
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
IDLE_CONNS=${IDLE_CONNS:-10000}
ROUNDS=${ROUNDS:-2}
export PATH=$PATH:/usr/sbin
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d /tmp/switchyard-idle-ab.XXXXXX)
chmod 755 "$WORK"
start_backend "$WORK" 19040
trap 'kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true' EXIT
proxy_config "$WORK/sy.toml" 19041 19040 1
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

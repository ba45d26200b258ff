#!/usr/bin/env bash
# How evenly two workers share 64 keep-alive clients, and what that does to
# p99: five times, a fresh `switchyard proxy --workers 2` in front of an nginx
# backend, wrk -t1 -c64 -d2s, then each thread's CPU time (schedstat). With
# the connections unevenly split between the workers, one thread's CPU time
# is well above the other's, and on shared cores its clients queue.
#
#   bash bench/worker_split.sh target/release/switchyard
#
# Loopback only; ports 19600-19601. Needs nginx and wrk.
set -uo pipefail
W=$(mktemp -d /tmp/worker-split.XXXX); chmod 755 $W; mkdir -p $W/b
cat > $W/b/nginx.conf <<CONF
worker_processes 1; pid $W/b/nginx.pid; error_log $W/b/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:19600; location / { return 200 "ok\n"; } } }
CONF
nginx -p $W/b -c $W/b/nginx.conf -g 'daemon on;'
sleep 0.3
for r in 1 2 3 4 5; do
  $1 proxy --listen 127.0.0.1:19601 --to 127.0.0.1:19600 --workers 2 >/dev/null 2>&1 &
  P=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/19601) 2>/dev/null && break; sleep 0.02; done
  out=$(wrk -t1 -c64 -d2s --latency http://127.0.0.1:19601/ | awk '$1=="99%" {p=$2} $1=="50%" {q=$2} END {print "p50", q, "p99", p}')
  cpus=$(for t in /proc/$P/task/*; do echo "$(cat $t/comm):$(awk '{printf "%.0f", $1/1e6}' $t/schedstat)ms"; done | grep -v "^switchyard:[0-9]\{1,2\}ms" | tr '\n' ' ')
  echo "$out | $cpus"
  kill $P; wait $P 2>/dev/null
done
kill $(cat $W/b/nginx.pid)

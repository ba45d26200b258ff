#!/usr/bin/env bash
# System calls per 1 MiB upload (POST) in the proxy, counted by strace -c -f
# over 3 s of wrk -c4 with bench/upload.lua, against an nginx backend that
# answers 200 (client_body_buffer_size 2m). Counts, not times: they hold on a
# busy machine.
#
#   bash bench/upload_syscalls.sh target/release/switchyard   # `switchyard proxy --to`
#   bash bench/upload_syscalls.sh nginx                       # nginx, upstream keepalive 128
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/sysc.XXXX); chmod 755 $W; mkdir -p $W/b
cat > $W/b/nginx.conf <<CONF
worker_processes 1; pid $W/b/nginx.pid; error_log $W/b/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_max_body_size 2m; client_body_buffer_size 2m;
  server { listen 127.0.0.1:19400; location / { return 200 "ok\n"; } } }
CONF
nginx -p $W/b -c $W/b/nginx.conf -g 'daemon on;'
sleep 0.3
if [ "$1" = nginx ]; then
mkdir -p $W/n
cat > $W/n/nginx.conf <<CONF
worker_processes 1; pid $W/n/nginx.pid; error_log $W/n/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_max_body_size 2m; client_body_buffer_size 2m;
  upstream b { server 127.0.0.1:19400; keepalive 128; }
  server { listen 127.0.0.1:19401; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
nginx -p $W/n -c $W/n/nginx.conf -g 'daemon on;'
sleep 0.3
P=$(pgrep -P $(cat $W/n/nginx.pid))
else
  "$1" proxy --listen 127.0.0.1:19401 --to 127.0.0.1:19400 --workers 1 >/dev/null 2>&1 &
  P=$!
fi
sleep 0.5
wrk -t1 -c4 -d1s -s $ROOT/bench/upload.lua http://127.0.0.1:19401/ >/dev/null
strace -c -f -p "$P" -o $W/strace.txt 2>/dev/null &
S=$!
sleep 0.5
wrk -t1 -c4 -d3s -s $ROOT/bench/upload.lua http://127.0.0.1:19401/ > $W/wrk.txt
kill -INT $S; sleep 0.5
if [ "$1" = nginx ]; then kill "$(cat $W/n/nginx.pid)"; else kill "$P"; fi
kill "$(cat $W/b/nginx.pid)"
n=$(awk '/requests in/ {print $1}' $W/wrk.txt)
echo "requests: $n"
awk -v n=$n 'NR>2 && $NF ~ /^[a-z_0-9]+$/ && $4+0>0 {printf "%-14s %8.1f per request\n", $NF, $4/n}' $W/strace.txt | sort -k2 -n -r | head -8

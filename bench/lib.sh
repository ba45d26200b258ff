# shellcheck shell=bash
# Shared by the single-proxy bench scripts (ab.sh, callgrind_get.sh, idle_ab.sh,
# profile.sh, sched.sh): the nginx backend they all put behind switchyard,
# switchyard's configuration in front of it, nginx as the proxy to compare with
# (compare.sh, sched.sh), and a process's CPU time (compare.sh, ab.sh). Source
# it; it defines functions only.

# start_nginx WORK HTTP: nginx, one worker, files under WORK (pid in
# WORK/nginx.pid), with HTTP inside its http block.
start_nginx() {
  local work=$1 http=$2
  cat >"$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  $http
}
CONF
  nginx -p "$work" -c "$work/nginx.conf" -g 'daemon on;' 2>/dev/null
}

# start_backend WORK PORT [EXTRA_HTTP]: nginx, one worker, `return 200 "ok\n"` on
# 127.0.0.1:PORT, its files under WORK (pid in WORK/nginx.pid); EXTRA_HTTP goes
# into the http block.
start_backend() {
  local work=$1 port=$2 extra=${3:-}
  start_nginx "$work" "$extra
  server { listen 127.0.0.1:$port; location / { return 200 \"ok\\n\"; } }"
}

# proxy_config FILE PORT BACKEND_PORT WORKERS [UPSTREAM_LINES]: switchyard with
# WORKERS workers on 127.0.0.1:PORT, one upstream over the backend.
proxy_config() {
  local file=$1 port=$2 backend=$3 workers=$4 lines=${5:-} listener=${6:-}
  cat >"$file" <<CONF
[runtime]
workers = $workers
[[listener]]
listen = "127.0.0.1:$port"
routes = [{ path_prefix = "/", upstream = "backend" }]
$listener
[upstream.backend]
$lines
servers = [{ addr = "127.0.0.1:$backend" }]
CONF
}

# nginx_proxy_location: the location block of nginx as the proxy that
# compare.sh and sched.sh measure: to the upstream `backend`, keep-alive, with
# the forwarded headers switchyard sets.
nginx_proxy_location() {
  cat <<'CONF'
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
    }
CONF
}

# nginx_proxy WORK PORT BACKEND_PORT: nginx, one worker, as that proxy on
# 127.0.0.1:PORT (upstream keepalive 64), its files under WORK.
nginx_proxy() {
  local work=$1 port=$2 backend=$3
  start_nginx "$work" "keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$backend; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$port;
$(nginx_proxy_location)
  }"
}

# CPU time (ns, user + system) of a process, its threads and its children (nginx:
# master + workers), from /proc/*/task/*/schedstat. Unlike requests/s, CPU time per
# request barely moves when other work shares the machine.
cpu_ns() {
  local total=0 p t
  for p in $1 $(pgrep -P "$1" || true); do
    for t in /proc/"$p"/task/*/schedstat; do
      [ -r "$t" ] && total=$((total + $(cut -d' ' -f1 "$t" 2>/dev/null || echo 0)))
    done
  done
  echo "$total"
}

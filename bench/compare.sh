#!/usr/bin/env bash
# Side-by-side benchmark of switchyard, nginx and HAProxy on loopback (issue 6).
#
# One fast backend (nginx, one worker, `return 200`) and, in front of it, nginx
# (upstream keepalive 128), HAProxy (http-reuse always) and switchyard with its
# defaults (no keepalive setting), each with the same number of workers. wrk drives each in interleaved rounds (direct, nginx,
# haproxy, switchyard, direct, nginx, ...) so drift hits all alike.
#
#   bash bench/compare.sh                 # defaults and small GET, keep-alive, 1 and 2 workers
#   bash bench/compare.sh --all           # and every scenario below
#   bash bench/compare.sh --all --write BENCHMARKS.md   # also refresh the file's table
#   bash bench/compare.sh --defaults --write BENCHMARKS.md --block defaults  # the headline rows
#
# Scenario flags: --defaults --get (these two when none is given) --get-capped --64k
# --upload --close --idle --flip --tls-handshake --tls-keepalive --cold --c1000
# --many-rr --many-lc; --all is every one.
# --cold restarts the three proxies before every round, so each round is the
# first traffic a fresh process gets (pool empty, nothing warmed): COLD_DURATION
# (default 2s) long. --c1000 is the small GET with 1,000 keep-alive clients;
# --many-rr and --many-lc with 100 servers in the upstream (round robin, least
# connections; the backend listens on 100 ports, 21100-21199).
# --defaults is the plainest comparison a user would make: `switchyard proxy
# --listen A --to B --workers N` with nothing tuned, against the same nginx and
# HAProxy as every other row (tuned as their docs recommend: upstream keepalive,
# http-reuse). --block NAME splices the table into BENCHMARKS.md's block NAME
# (default: compare).
# --get-capped is the small GET with each proxy (all its workers together) held to
# CAP cores by a CPU cgroup quota (10 ms period; cgroup v1 or v2, as root), so that
# the proxy, not wrk or the backend that share the cores, sets the pace: requests/s
# per core of proxy. The backend and wrk are not capped. Knobs (environment):
# SY_BIN=PATH (a switchyard binary to use instead of building this tree)
# DURATION=5s CONNS=64 ROUNDS=3 WORKERS="1 2" WRK_THREADS=1 IDLE_CONNS=10000
# EXTRA_WORKERS=1 (worker counts for the scenarios beyond the two small-GET ones)
# CAP=0.5 (cores for each proxy in --get-capped) TLS_KEY=ec
# (ec: P-256, rsa: RSA 2048; one self-signed certificate for every TLS listener, made
# at run time). TLS rows terminate TLS in each proxy (backends stay plain HTTP; the
# `direct` row is the backend nginx terminating TLS itself): --tls-handshake is one
# new TLS connection per request (`Connection: close`, so req/s = handshakes/s),
# --tls-keepalive is keep-alive requests over TLS. Each server keeps its default
# session resumption, and wrk resumes sessions where it can, so the handshakes are
# mostly abbreviated ones. Loopback only; ports 19000-19020.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROOT=$PWD

DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-"1 2"}
EXTRA_WORKERS=${EXTRA_WORKERS:-1}
WRK_THREADS=${WRK_THREADS:-1}
IDLE_CONNS=${IDLE_CONNS:-10000}
TLS_KEY=${TLS_KEY:-ec}
CAP=${CAP:-0.5}
COLD_DURATION=${COLD_DURATION:-2s}
MANY=100        # servers in the many-rr and many-lc upstreams: ports 21100-21199
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

scenarios=()
write_file=""
block=compare
while [ $# -gt 0 ]; do
  case "$1" in
    --defaults) scenarios+=(defaults) ;;
    --get) scenarios+=(get) ;;
    --get-capped) scenarios+=(get-capped) ;;
    --64k) scenarios+=(64k) ;;
    --upload) scenarios+=(upload) ;;
    --close) scenarios+=(close) ;;
    --idle) scenarios+=(idle) ;;
    --flip) scenarios+=(flip) ;;
    --tls-handshake) scenarios+=(tls-handshake) ;;
    --tls-keepalive) scenarios+=(tls-keepalive) ;;
    --cold) scenarios+=(cold) ;;
    --c1000) scenarios+=(c1000) ;;
    --many-rr) scenarios+=(many-rr) ;;
    --many-lc) scenarios+=(many-lc) ;;
    --all) scenarios=(cold defaults get get-capped 64k upload close idle flip tls-handshake tls-keepalive c1000 many-rr many-lc) ;;
    --write) write_file=$2; shift ;;
    --block) block=$2; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown flag: $1" >&2; exit 2 ;;
  esac
  shift
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=(defaults get)

# --- tools -------------------------------------------------------------------
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
export PATH=$PATH:/usr/sbin
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ -n "${SY_BIN:-}" ]; then
  # A binary built elsewhere (an A/B of two commits: run once with each).
  SY=$SY_BIN
else
  echo "building switchyard (release)..." >&2
  cargo build --release --quiet
  SY=$TARGET_DIR/release/switchyard
fi

# --- layout ------------------------------------------------------------------
WORK=$(mktemp -d /tmp/switchyard-bench.XXXXXX)
RESULTS=$WORK/results.tsv
: >"$RESULTS"
BACKEND=19000   # and 19001: a second address of the same backend (flip scenario)
P_NGINX=19002
P_HAPROXY=19003
P_SY=19004
P_ADMIN=19005
T_BACKEND=19006 # TLS listeners: the backend itself (the `direct` row), nginx, ...
T_NGINX=19007
T_HAPROXY=19008
T_SY=19009
P_SYD=19010     # `switchyard proxy --to` with no configuration (defaults scenario)
mkdir -p "$WORK/www" "$WORK/backend" "$WORK/nginx" "$WORK/tls"
chmod 755 "$WORK" "$WORK/www" # nginx's workers run as an unprivileged user
head -c 65536 /dev/zero | tr '\0' 'x' >"$WORK/www/64k"

# One self-signed certificate for every TLS listener (same key type for all).
case $TLS_KEY in
  ec) key_args=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
  rsa) key_args=(-newkey rsa:2048) ;;
  *) echo "TLS_KEY must be ec or rsa" >&2; exit 2 ;;
esac
openssl req -x509 "${key_args[@]}" -nodes -subj /CN=localhost -days 2 \
  -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>/dev/null
cat "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >"$WORK/tls/combined.pem" # HAProxy's form
chmod 755 "$WORK/tls"
chmod 644 "$WORK/tls"/*.pem

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$WORK"/backend/nginx.pid "$WORK"/nginx/nginx.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  cap_cleanup
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  return 1
}

# The backend: one nginx worker answering 200 from memory (and /64k from a file).
cat >"$WORK/backend/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_max_body_size 2m;
  client_body_buffer_size 2m;
  server {
    listen 127.0.0.1:$BACKEND reuseport;
    listen 127.0.0.1:$((BACKEND + 1)) reuseport;
$(for i in $(seq 0 $((MANY - 1))); do echo "    listen 127.0.0.1:$((21100 + i));"; done)
    listen 127.0.0.1:$T_BACKEND ssl;
    ssl_certificate $WORK/tls/cert.pem;
    ssl_certificate_key $WORK/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; # nginx 1.22's default stops at 1.2; rustls and HAProxy offer 1.3
    root $WORK/www;
    location / { return 200 "ok\n"; }
    location = /64k { }
  }
}
CONF
nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -g 'daemon on;' 2>/dev/null
wait_port $BACKEND

# many_lines FORMAT [ARGS]: FORMAT once per many-server port (printf; with
# ARGS=2, the index and the port).
many_lines() {
  local i
  for i in $(seq 0 $((MANY - 1))); do
    if [ "${2:-1}" = 2 ]; then printf "$1" "$i" $((21100 + i)); else printf "$1" $((21100 + i)); fi
  done
}

start_proxies() { # $1 workers
  local n=$1
  cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes $n;
worker_rlimit_nofile 20000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_max_body_size 2m;
  client_body_buffer_size 2m;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; keepalive_requests 1000000; }
  upstream many_rr { $(many_lines "server 127.0.0.1:%s;") keepalive 128; keepalive_requests 1000000; }
  upstream many_lc { least_conn; $(many_lines "server 127.0.0.1:%s;") keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$P_NGINX;
$(nginx_proxy_location | sed 's|location / {|location /many-rr {|; s|http://backend|http://many_rr|')
$(nginx_proxy_location | sed 's|location / {|location /many-lc {|; s|http://backend|http://many_lc|')
    listen 127.0.0.1:$T_NGINX ssl;
    ssl_certificate $WORK/tls/cert.pem;
    ssl_certificate_key $WORK/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; # nginx 1.22's default stops at 1.2; rustls and HAProxy offer 1.3
$(nginx_proxy_location)
  }
}
CONF
  nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon on;' 2>/dev/null

  cat >"$WORK/haproxy.cfg" <<CONF
global
  nbthread $n
  # 10,000 idle clients need maxconn above 10,000; HAProxy asks for 2 fds per
  # connection, more than the 20,000 this machine allows, so it warns and goes on.
  maxconn 12000
  no strict-limits
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  use_backend many_rr if { path_beg /many-rr }
  use_backend many_lc if { path_beg /many-lc }
  default_backend be
frontend fe_tls
  bind 127.0.0.1:$T_HAPROXY ssl crt $WORK/tls/combined.pem
  default_backend be
backend be
  server s1 127.0.0.1:$BACKEND
backend many_rr
  balance roundrobin
$(many_lines "  server m%s 127.0.0.1:%s\n" 2)
backend many_lc
  balance leastconn
$(many_lines "  server m%s 127.0.0.1:%s\n" 2)
CONF
  haproxy -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  HAPROXY_PID=$!
  pids+=("$HAPROXY_PID")

  cat >"$WORK/switchyard.toml" <<CONF
[admin]
listen = "127.0.0.1:$P_ADMIN"

[runtime]
workers = $n
shutdown_grace = "1s"

[[listener]]
listen = "127.0.0.1:$P_SY"
routes = [
  { path_prefix = "/flip", upstream = "flip" },
  { path_prefix = "/many-rr", upstream = "many_rr" },
  { path_prefix = "/many-lc", upstream = "many_lc" },
  { path_prefix = "/", upstream = "backend" },
]

[[listener]]
listen = "127.0.0.1:$T_SY"
routes = [{ path_prefix = "/", upstream = "backend" }]
tls = { certificates = [{ cert = "$WORK/tls/cert.pem", key = "$WORK/tls/key.pem" }] }

[upstream.backend]
servers = [{ addr = "127.0.0.1:$BACKEND" }]

[upstream.flip]
servers = [{ addr = "127.0.0.1:$BACKEND" }, { addr = "127.0.0.1:$((BACKEND + 1))" }]

[upstream.many_rr]
servers = [$(many_lines '{ addr = "127.0.0.1:%s" }, ')]

[upstream.many_lc]
balance = "least_conn"
servers = [$(many_lines '{ addr = "127.0.0.1:%s" }, ')]
CONF
  RUST_LOG=warn "$SY" run -c "$WORK/switchyard.toml" >"$WORK/switchyard.log" 2>&1 &
  SY_PID=$!
  pids+=("$SY_PID")
  SYD_PID=""
  if [[ " ${scenarios[*]} " == *" defaults "* ]]; then
    # Nothing but the command line a new user would type.
    "$SY" proxy --listen 127.0.0.1:$P_SYD --to 127.0.0.1:$BACKEND --workers "$n" \
      >"$WORK/switchyard-defaults.log" 2>&1 &
    SYD_PID=$!
    pids+=("$SYD_PID")
    wait_port $P_SYD
  fi
  wait_port $P_NGINX
  wait_port $P_HAPROXY
  wait_port $P_SY
  wait_port $P_ADMIN
  wait_port $T_NGINX
  wait_port $T_HAPROXY
  wait_port $T_SY
}

stop_proxies() {
  kill "$(cat "$WORK/nginx/nginx.pid")" 2>/dev/null || true
  kill "$HAPROXY_PID" "$SY_PID" $SYD_PID 2>/dev/null || true
  wait "$HAPROXY_PID" "$SY_PID" $SYD_PID 2>/dev/null || true
  while [ -f "$WORK/nginx/nginx.pid" ]; do sleep 0.05; done
  sleep 0.5
}

# The scenario being run: `defaults` sends switchyard's rows to the untuned one.
SCENARIO=""

port_of() {
  case "$1" in
    switchyard) [ "$SCENARIO" = defaults ] && echo $P_SYD || echo $P_SY ;;
    direct) echo $BACKEND ;;
    nginx) echo $P_NGINX ;;
    haproxy) echo $P_HAPROXY ;;
    base | flipping) echo $P_SY ;; # flip rows: switchyard both
  esac
}

tls_port_of() {
  case "$1" in
    direct) echo $T_BACKEND ;;
    nginx) echo $T_NGINX ;;
    haproxy) echo $T_HAPROXY ;;
    switchyard) echo $T_SY ;;
  esac
}

pid_of() {
  case "$1" in
    direct) cat "$WORK/backend/nginx.pid" ;;
    nginx) cat "$WORK/nginx/nginx.pid" ;;
    haproxy) echo "$HAPROXY_PID" ;;
    switchyard) [ "$SCENARIO" = defaults ] && echo "$SYD_PID" || echo "$SY_PID" ;;
    *) echo "$SY_PID" ;;
  esac
}

# --- CPU caps (--get-capped) ---------------------------------------------------
# One cgroup per proxy with a CPU quota of CAP cores; cgroup v2 where the cpu
# controller is on the unified hierarchy, else v1's cpu controller.
CG_ROOT=""
CG_QUOTA=""
cap_init() {
  local period=10000
  CG_QUOTA=$(python3 -c "print(max(1000, int($CAP * $period)))")
  if grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    CG_ROOT=/sys/fs/cgroup
  elif [ -d /sys/fs/cgroup/cpu ] && [ -w /sys/fs/cgroup/cpu ]; then
    CG_ROOT=/sys/fs/cgroup/cpu
  else
    return 1
  fi
  local p g
  for p in nginx haproxy switchyard; do
    g=$CG_ROOT/switchyard-bench-$p
    mkdir -p "$g" 2>/dev/null || return 1
    if [ "$CG_ROOT" = /sys/fs/cgroup ]; then
      echo "$CG_QUOTA $period" >"$g/cpu.max" 2>/dev/null || return 1
    else
      echo "$period" >"$g/cpu.cfs_period_us" 2>/dev/null || return 1
      echo "$CG_QUOTA" >"$g/cpu.cfs_quota_us" 2>/dev/null || return 1
    fi
  done
}
cap_cleanup() {
  [ -n "$CG_ROOT" ] || return 0
  local p
  for p in nginx haproxy switchyard; do rmdir "$CG_ROOT/switchyard-bench-$p" 2>/dev/null || true; done
}
# cap_move on|off: the three proxies (nginx's master and workers) into their
# capped groups, or back to the root group.
cap_move() {
  local p q pid target
  for p in nginx haproxy switchyard; do
    target=$CG_ROOT/switchyard-bench-$p
    [ "$1" = off ] && target=$CG_ROOT
    pid=$(pid_of $p)
    for q in $pid $(pgrep -P "$pid" || true); do
      echo "$q" >"$target/cgroup.procs"
    done
  done
}

# One wrk run; appends a result line. $1 scenario $2 workers $3 round $4 proxy
# $5 path, then extra wrk arguments.
run_wrk() {
  local scenario=$1 n=$2 round=$3 proxy=$4 path=$5
  shift 5
  local out=$WORK/wrk-$scenario-$n-$round-$proxy.txt pid cpu0 cpu1 url
  url="http://127.0.0.1:$(port_of "$proxy")$path"
  case $scenario in tls-*) url="https://127.0.0.1:$(tls_port_of "$proxy")$path" ;; esac
  pid=$(pid_of "$proxy")
  cpu0=$(cpu_ns "$pid")
  wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" --latency "$@" "$url" >"$out" 2>&1 || true
  cpu1=$(cpu_ns "$pid")
  python3 "$ROOT/bench/report.py" parse "$scenario" "$n" "$round" "$proxy" --cpu-ns $((cpu1 - cpu0)) <"$out" >>"$RESULTS"
  tail -n1 "$RESULTS" | awk -F'\t' '{printf "  %-8s w=%s round %s %-10s %10s req/s  p50 %s ms  p99 %s ms  errors %s  CPU %s us/req\n", $1, $2, $3, $4, $5, $6, $7, $8, $9}' >&2
}

rounds() { # $1 scenario $2 workers $3 path, then wrk arguments
  local scenario=$1 n=$2 path=$3
  shift 3
  for r in $(seq 1 "$ROUNDS"); do
    for p in direct nginx haproxy switchyard; do
      run_wrk "$scenario" "$n" "$r" "$p" "$path" "$@"
    done
  done
}

# RSS (KiB) of a process and its children (nginx: master + workers).
rss_tree() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    total=$((total + $(awk '/^VmRSS/ {print $2}' /proc/"$p"/status 2>/dev/null || echo 0)))
  done
  echo "$total"
}

idle_run() { # $1 workers
  local n=$1 proxy port pid before after
  for proxy in nginx haproxy switchyard; do
    port=$(port_of $proxy)
    case $proxy in
      nginx) pid=$(cat "$WORK/nginx/nginx.pid") ;;
      haproxy) pid=$HAPROXY_PID ;;
      switchyard) pid=$SY_PID ;;
    esac
    # Warm up the same way for all: one short load, then measure.
    wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
    before=$(rss_tree "$pid")
    rm -f "$WORK/idle.ready"
    python3 "$ROOT/bench/idle_clients.py" 127.0.0.1 "$port" "$IDLE_CONNS" "$WORK/idle.ready" \
      >"$WORK/idle-$proxy.log" 2>&1 &
    local cpid=$!
    for _ in $(seq 1 600); do [ -f "$WORK/idle.ready" ] && break; sleep 0.1; done
    sleep 1
    after=$(rss_tree "$pid")
    local open
    open=$(cat "$WORK/idle.ready" 2>/dev/null || echo 0)
    kill "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
    printf 'idle\t%s\t1\t%s\t%s\t%s\t%s\t%s\n' "$n" "$proxy" "$before" "$after" "$open" "$IDLE_CONNS" >>"$WORK/idle.tsv"
    echo "  idle     w=$n $proxy: RSS $before KiB before, $after KiB with $open of $IDLE_CONNS idle connections" >&2
    sleep 1
  done
}

flip_run() { # $1 workers: switchyard only; base and flip runs interleaved
  local n=$1 r
  for r in $(seq 1 "$ROUNDS"); do
    run_wrk flip "$n" "$r" base /flip/
    python3 "$ROOT/bench/flipper.py" 127.0.0.1:$P_ADMIN flip 1 0.1 >"$WORK/flipper-$r.log" 2>&1 &
    local fpid=$!
    run_wrk flip "$n" "$r" flipping /flip/
    kill "$fpid" 2>/dev/null || true
    wait "$fpid" 2>/dev/null || true
    echo "    flips: $(tail -n1 "$WORK/flipper-$r.log")" >&2
    # Make sure the server is up again before the next base run.
    python3 "$ROOT/bench/flipper.py" 127.0.0.1:$P_ADMIN flip 1 0 up >/dev/null 2>&1 || true
  done
}

: >"$WORK/idle.tsv"
if [[ " ${scenarios[*]} " == *" get-capped "* ]]; then
  cap_init || { CG_ROOT=""; echo "no writable CPU cgroup: --get-capped will be skipped" >&2; }
fi
start_all=$(date +%s)
for n in $WORKERS; do
  start_proxies "$n"
  for s in "${scenarios[@]}"; do
    case $s in defaults | get | get-capped) ;; *) [[ " $EXTRA_WORKERS " == *" $n "* ]] || continue ;; esac
    echo "== $s, $n worker(s)" >&2
    SCENARIO=$s
    case $s in
      cold)
        # Each round: fresh proxies, then each one's first traffic.
        for r in $(seq 1 "$ROUNDS"); do
          stop_proxies
          start_proxies "$n"
          for p in direct nginx haproxy switchyard; do
            DURATION=$COLD_DURATION run_wrk cold "$n" "$r" "$p" /
          done
        done
        ;;
      c1000) CONNS=1000 rounds c1000 "$n" / ;;
      many-rr) rounds many-rr "$n" /many-rr/ ;;
      many-lc) rounds many-lc "$n" /many-lc/ ;;
      defaults) rounds defaults "$n" / ;;
      get) rounds get "$n" / ;;
      get-capped)
        if [ -n "$CG_ROOT" ]; then
          cap_move on
          rounds get-capped "$n" /
          cap_move off
        else
          echo "   skipped: no writable CPU cgroup (needs root and the cpu controller)" >&2
        fi
        ;;
      64k) rounds 64k "$n" /64k ;;
      upload) rounds upload "$n" /upload -s "$ROOT/bench/upload.lua" ;;
      close) rounds close "$n" / -H "Connection: close" ;;
      idle) idle_run "$n" ;;
      flip) flip_run "$n" ;;
      tls-handshake) rounds tls-handshake "$n" / -H "Connection: close" ;;
      tls-keepalive) rounds tls-keepalive "$n" / ;;
    esac
  done
  stop_proxies
done
elapsed=$(($(date +%s) - start_all))

cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
machine="$(nproc) CPUs ($cpu), $(uname -sr), nginx $(nginx -v 2>&1 | sed 's/.*\///'), HAProxy $((haproxy -v || true) | awk 'NR==1 {print $3}'), wrk $( (wrk -v 2>&1 || true) | awk 'NR==1 {print $2}')"
cmd="DURATION=$DURATION CONNS=$CONNS ROUNDS=$ROUNDS WORKERS=\"$WORKERS\" EXTRA_WORKERS=\"$EXTRA_WORKERS\" WRK_THREADS=$WRK_THREADS IDLE_CONNS=$IDLE_CONNS CAP=$CAP TLS_KEY=$TLS_KEY bash bench/compare.sh ${scenarios[*]/#/--}"
python3 "$ROOT/bench/report.py" table "$RESULTS" "$WORK/idle.tsv" \
  --machine "$machine" --command "$cmd" --elapsed "$elapsed" --commit "$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet -- . ':!BENCHMARKS.md' 2>/dev/null || echo '+dirty')" \
  >"$WORK/table.md"
cat "$WORK/table.md"
if [ -n "$write_file" ]; then
  python3 "$ROOT/bench/report.py" splice "$write_file" "$block" <"$WORK/table.md"
  echo "wrote the table into $write_file" >&2
fi
echo "raw results: $WORK" >&2

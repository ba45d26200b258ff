#!/usr/bin/env bash
# Where the whole machine's CPU goes under the small-GET load of compare.sh, with
# nginx or switchyard as the proxy: for each of the three processes that share the
# cores (wrk, the proxy, the backend) its CPU time per request, the cores it used,
# how often it went to sleep (voluntary context switches) and was preempted
# (involuntary ones), and how often it called epoll_wait; and the cores nobody
# used. req/s on a 2-core machine is set by all three processes and by these
# sleeps, not by the proxy's CPU alone; this shows by how much.
#
# Two layouts, each in interleaved rounds (nginx, switchyard, nginx, ...):
#   free    - no pinning, as compare.sh runs;
#   pinned  - the proxy alone on the last CPU, wrk and the backend on the others
#             (taskset), so the proxy's core and the rest can be told apart.
#
#   bash bench/sched.sh [--write BENCHMARKS.md]    # DURATION=5 ROUNDS=3 LAYOUTS="free pinned"
#   SWITCHYARD=/path/to/binary bash bench/sched.sh  # another build, not this tree's
#
# Needs nginx and wrk (run bench/compare.sh once) and taskset; perf for the
# epoll_wait counts (left blank without it). One proxy worker; loopback only,
# ports 19140-19142.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROOT=$PWD
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
LAYOUTS=${LAYOUTS:-"free pinned"}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
write_file=""
[ "${1:-}" = --write ] && write_file=$2
export PATH=$PATH:/usr/sbin
if ! command -v nginx >/dev/null 2>&1 || ! command -v wrk >/dev/null 2>&1; then
  echo "run bench/compare.sh once first (it installs nginx and wrk)" >&2
  exit 1
fi
[ "$DURATION" -ge 3 ] || { echo "DURATION must be at least 3 (seconds)" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# SWITCHYARD=path measures that binary instead of building this tree's.
if [ -n "${SWITCHYARD:-}" ]; then
  SY=$SWITCHYARD
else
  cargo build --release --quiet
  SY=$TARGET_DIR/release/switchyard
fi
WORK=$(mktemp -d /tmp/switchyard-sched.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/backend" "$WORK/nginx"
BACKEND=19140
P_NGINX=19141
P_SY=19142
start_backend "$WORK/backend" $BACKEND "keepalive_requests 1000000;"
nginx_proxy "$WORK/nginx" $P_NGINX $BACKEND
proxy_config "$WORK/switchyard.toml" $P_SY $BACKEND 1 "keepalive = 64"
RUST_LOG=warn "$SY" run -c "$WORK/switchyard.toml" >"$WORK/switchyard.log" 2>&1 &
SY_PID=$!
trap 'kill $SY_PID 2>/dev/null || true; kill "$(cat "$WORK/backend/nginx.pid")" "$(cat "$WORK/nginx/nginx.pid")" 2>/dev/null || true' EXIT
for p in $BACKEND $P_NGINX $P_SY; do
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null && break; sleep 0.05; done
done
BACKEND_PID=$(pgrep -P "$(cat "$WORK/backend/nginx.pid")" | head -1)
NGINX_PID=$(pgrep -P "$(cat "$WORK/nginx/nginx.pid")" | head -1)
LAST=$(($(nproc) - 1))
REST="0-$((LAST - 1))"
[ "$LAST" -ge 1 ] || { echo "needs at least 2 CPUs" >&2; exit 1; }
PERF=$(command -v perf || true)

# "cpu_ns voluntary involuntary" summed over a process's threads.
counters() {
  local c=0 v=0 i=0 t
  for t in /proc/"$1"/task/*; do
    c=$((c + $(cut -d' ' -f1 "$t/schedstat")))
    v=$((v + $(awk '/^voluntary_ctxt/ {print $2}' "$t/status")))
    i=$((i + $(awk '/^nonvoluntary_ctxt/ {print $2}' "$t/status")))
  done
  echo "$c $v $i"
}
idle_ticks() { awk '/^cpu / {print $5 + $6}' /proc/stat; }
epolls() { # pid seconds outfile: epoll_wait calls, or nothing without perf
  [ -n "$PERF" ] || return 0
  "$PERF" stat -x, -e syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait -p "$1" -o "$3" -- sleep "$2" 2>/dev/null || true
}
epoll_count() { [ -s "$1" ] && awk -F, '/epoll/ {s += $1} END {print s + 0}' "$1" || echo ""; }

pin() { # layout
  if [ "$1" = pinned ]; then
    taskset -a -p -c $LAST "$NGINX_PID" >/dev/null
    taskset -a -p -c $LAST "$SY_PID" >/dev/null
    taskset -a -p -c "$REST" "$BACKEND_PID" >/dev/null
  else
    taskset -a -p -c "0-$LAST" "$NGINX_PID" >/dev/null
    taskset -a -p -c "0-$LAST" "$SY_PID" >/dev/null
    taskset -a -p -c "0-$LAST" "$BACKEND_PID" >/dev/null
  fi
}

: >"$WORK/results.tsv"
window=$((DURATION - 2))
for layout in $LAYOUTS; do
  pin "$layout"
  for r in $(seq 1 "$ROUNDS"); do
    for proxy in nginx switchyard; do
      port=$([ $proxy = nginx ] && echo $P_NGINX || echo $P_SY)
      ppid=$([ $proxy = nginx ] && echo "$NGINX_PID" || echo "$SY_PID")
      cpus=$([ "$layout" = pinned ] && echo "$REST" || echo "0-$LAST")
      taskset -c "$cpus" wrk -t1 -c64 -d"${DURATION}s" "http://127.0.0.1:$port/" >"$WORK/wrk.txt" 2>&1 &
      wpid=$!
      sleep 1
      read -r pc0 pv0 pi0 < <(counters "$ppid")
      read -r bc0 bv0 bi0 < <(counters "$BACKEND_PID")
      read -r wc0 wv0 wi0 < <(counters "$wpid")
      i0=$(idle_ticks)
      epolls "$ppid" "$window" "$WORK/ep-p" &
      e1=$!
      epolls "$BACKEND_PID" "$window" "$WORK/ep-b" &
      e2=$!
      epolls "$wpid" "$window" "$WORK/ep-w" &
      e3=$!
      sleep "$window"
      read -r pc1 pv1 pi1 < <(counters "$ppid")
      read -r bc1 bv1 bi1 < <(counters "$BACKEND_PID")
      read -r wc1 wv1 wi1 < <(counters "$wpid")
      i1=$(idle_ticks)
      wait $e1 $e2 $e3 || true
      wait $wpid || true
      rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt")
      {
        printf '%s\t%s\t%s\t%s\t%s\t%s\t' "$layout" "$r" "$proxy" "$rps" "$window" "$((i1 - i0))"
        printf '%s\t%s\t%s\t%s\t' $((pc1 - pc0)) $((pv1 - pv0)) $((pi1 - pi0)) "$(epoll_count "$WORK/ep-p")"
        printf '%s\t%s\t%s\t%s\t' $((bc1 - bc0)) $((bv1 - bv0)) $((bi1 - bi0)) "$(epoll_count "$WORK/ep-b")"
        printf '%s\t%s\t%s\t%s\n' $((wc1 - wc0)) $((wv1 - wv0)) $((wi1 - wi0)) "$(epoll_count "$WORK/ep-w")"
      } >>"$WORK/results.tsv"
      rm -f "$WORK"/ep-*
      echo "  $layout round $r $proxy: $rps req/s" >&2
    done
  done
done
pin free

hz=$(getconf CLK_TCK)
python3 - "$WORK/results.tsv" "$hz" "$DURATION" "$ROUNDS" "$LAYOUTS" "${SWITCHYARD:+binary $SWITCHYARD, tree }$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet -- . ':!BENCHMARKS.md' 2>/dev/null || echo '+dirty')" "$(nproc)" >"$WORK/sched.md" <<'PY'
import statistics, sys
path, hz, duration, rounds, layouts, commit, ncpu = sys.argv[1:]
hz = float(hz)
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
med = statistics.median
print(f"Command: `DURATION={duration} ROUNDS={rounds} LAYOUTS=\"{layouts}\" bash bench/sched.sh` (commit {commit}, {ncpu} CPUs). "
      "wrk -t1 -c64 against one proxy worker over the backend of compare.sh; the counters are read over the middle "
      f"{int(duration) - 2} s of each run. Per process: CPU µs per request, cores used, voluntary context switches "
      "(it went to sleep) and involuntary ones (preempted) per 1,000 requests, epoll_wait calls per request. "
      "`idle`: cores nobody used. Medians over the rounds.")
print()
for layout in layouts.split():
    desc = {"free": "no pinning (as compare.sh runs)",
            "pinned": f"the proxy alone on CPU {int(ncpu) - 1}, wrk and the backend on the other CPU(s)"}.get(layout, layout)
    print(f"**{layout}**: {desc}")
    print()
    print("| proxy | req/s | idle cores | process | CPU µs/req | cores | sleeps /1k req | preempted /1k req | epoll_wait /req |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    ratio = {}
    for proxy in ("nginx", "switchyard"):
        rs = [r for r in rows if r[0] == layout and r[2] == proxy]
        if not rs:
            continue
        rps = med(float(r[3]) for r in rs)
        ratio[proxy] = rps
        idle = med(int(r[5]) / hz / float(r[4]) for r in rs)
        for i, name in enumerate(("proxy", "backend", "wrk")):
            base = 6 + 4 * i
            def per(r, k):
                n = float(r[3]) * float(r[4])
                return float(r[base + k]) / n if n else 0.0
            cpu = med(per(r, 0) / 1e3 for r in rs)
            cores = med(int(r[base]) / 1e9 / float(r[4]) for r in rs)
            vol = med(per(r, 1) * 1e3 for r in rs)
            inv = med(per(r, 2) * 1e3 for r in rs)
            ep = [per(r, 3) for r in rs if r[base + 3] != ""]
            epc = f"{med(ep):.3f}" if ep else ""
            label = f"{proxy} ({name})" if name == "proxy" else name
            head = (f"| {proxy} | {rps:.0f} | {idle:.2f} |" if i == 0 else "| | | |")
            print(f"{head} {label} | {cpu:.2f} | {cores:.2f} | {vol:.1f} | {inv:.1f} | {epc} |")
    if len(ratio) == 2 and ratio["nginx"]:
        per_round = []
        for r in range(1, int(rounds) + 1):
            a = [float(x[3]) for x in rows if x[0] == layout and x[1] == str(r) and x[2] == "nginx"]
            b = [float(x[3]) for x in rows if x[0] == layout and x[1] == str(r) and x[2] == "switchyard"]
            if a and b and a[0]:
                per_round.append(b[0] / a[0])
        print()
        print(f"switchyard/nginx req/s: per round {', '.join(f'{x:.2f}×' for x in per_round)}; median {med(per_round):.2f}×.")
    print()
PY
cat "$WORK/sched.md"
if [ -n "$write_file" ]; then
  python3 "$ROOT/bench/report.py" splice "$write_file" sched <"$WORK/sched.md"
  echo "wrote the table into $write_file" >&2
fi
echo "raw results: $WORK" >&2

#!/usr/bin/env bash
# Where switchyard spends its CPU under the small-GET load of compare.sh: the same
# backend (nginx, one worker, `return 200`), switchyard with WORKERS workers, wrk
# with 64 keep-alive connections, and `perf record` (software cpu-clock event, which
# works where hardware counters are not exposed) on switchyard only. Prints the flat
# profile (self time by symbol) and, with --write FILE, splices it into FILE.
#
#   bash bench/profile.sh [--write BENCHMARKS.md]      # DURATION=5s WORKERS=1
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROOT=$PWD
DURATION=${DURATION:-5s}
WORKERS=${WORKERS:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
write_file=""
[ "${1:-}" = --write ] && write_file=$2
export PATH=$PATH:/usr/sbin
command -v perf >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
command -v nginx >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 || { echo "run bench/compare.sh once first (it installs nginx and wrk)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --quiet
SY=$TARGET_DIR/release/switchyard
WORK=$(mktemp -d /tmp/switchyard-profile.XXXXXX)
chmod 755 "$WORK"
BACKEND=19010
PORT=19011
proxy_config "$WORK/switchyard.toml" "$PORT" "$BACKEND" "$WORKERS" "keepalive = 64"
start_backend "$WORK" "$BACKEND" "keepalive_requests 1000000;"
RUST_LOG=warn "$SY" run -c "$WORK/switchyard.toml" >"$WORK/switchyard.log" 2>&1 &
SY_PID=$!
trap 'kill $SY_PID 2>/dev/null || true; kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
wrk -t1 -c64 -d1s "http://127.0.0.1:$PORT/" >/dev/null
perf record -q -F 1999 -e cpu-clock -o "$WORK/perf.data" -p "$SY_PID" -- sleep "${DURATION%s}" 2>/dev/null &
PERF_PID=$!
wrk -t1 -c64 -d"$DURATION" --latency "http://127.0.0.1:$PORT/" >"$WORK/wrk.txt"
wait $PERF_PID || true
{
  echo "Command: \`DURATION=$DURATION WORKERS=$WORKERS bash bench/profile.sh\` (commit $(git rev-parse --short HEAD)$(git diff --quiet -- . ':!BENCHMARKS.md' || echo '+dirty')); switchyard under \`wrk -t1 -c64 -d$DURATION\` at $(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt") req/s while sampled."
  echo
  echo "Self time by symbol (perf record -e cpu-clock, 1999 Hz; entries ≥ 1%):"
  echo
  echo '```'
  perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --percent-limit 1 --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | sed 's/[[:space:]]*$//' | cut -c1-150 | sed 's/[[:space:]]*$//'
  echo
  echo "By shared object:"
  perf report -i "$WORK/perf.data" --no-children --sort dso --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -8
  echo '```'
} >"$WORK/profile.md"
cat "$WORK/profile.md"
if [ -n "$write_file" ]; then
  python3 "$ROOT/bench/report.py" splice "$write_file" "profile-w$WORKERS" <"$WORK/profile.md"
fi

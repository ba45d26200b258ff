#!/usr/bin/env bash
# Before/after of one change, measured in the same run: two switchyard binaries
# behind the same backend, driven in interleaved wrk rounds (A B A B ...).
#
#   bash bench/ab.sh BEFORE_BINARY AFTER_BINARY      # DURATION=3s ROUNDS=6 WORKERS=1 PATH_=/
#   WRK_ARGS="-s bench/upload.lua" PATH_=/upload bash bench/ab.sh A B   # 1 MiB uploads
#   UPSTREAM_EXTRA="" CONNS=1000 bash bench/ab.sh A B   # upstream defaults (no keepalive cap), 1,000 clients
#   B_LISTENER='access_log = { path = "/tmp/a.json", format = "json" }' bash bench/ab.sh X X
#     # one binary, B's listener with extra lines (the access log's cost)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
A=$(realpath "$1")
B=$(realpath "$2")
DURATION=${DURATION:-3s}
ROUNDS=${ROUNDS:-6}
WORKERS=${WORKERS:-1}
CONNS=${CONNS:-64}
export PATH=$PATH:/usr/sbin
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d /tmp/switchyard-ab.XXXXXX)
chmod 755 "$WORK"
start_backend "$WORK" 19030 "keepalive_requests 1000000; client_max_body_size 2m; client_body_buffer_size 2m;"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true' EXIT
for side in a b; do
  port=$([ $side = a ] && echo 19031 || echo 19032)
  listener=$([ $side = b ] && echo "${B_LISTENER:-}" || true)
  proxy_config "$WORK/$side.toml" "$port" 19030 "$WORKERS" "${UPSTREAM_EXTRA-keepalive = 64}" "$listener"
  bin=$([ $side = a ] && echo "$A" || echo "$B")
  RUST_LOG=warn "$bin" run -c "$WORK/$side.toml" >"$WORK/$side.log" 2>&1 &
  pids+=($!)
done
for p in 19030 19031 19032; do
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.05; done
done
: >"$WORK/results.tsv"
for r in $(seq 1 "$ROUNDS"); do
  for side in a b; do
    port=$([ $side = a ] && echo 19031 || echo 19032)
    name=$([ $side = a ] && echo before || echo after)
    pid=$([ $side = a ] && echo "${pids[0]}" || echo "${pids[1]}")
    c0=$(cpu_ns "$pid")
    # shellcheck disable=SC2086 # WRK_ARGS is words
    wrk -t1 -c"$CONNS" -d"$DURATION" --latency ${WRK_ARGS:-} "http://127.0.0.1:$port${PATH_:-/}" >"$WORK/wrk.txt" 2>&1 || true
    c1=$(cpu_ns "$pid")
    python3 bench/report.py parse ab "$WORKERS" "$r" "$name" --cpu-ns $((c1 - c0)) <"$WORK/wrk.txt" | tee -a "$WORK/results.tsv" >&2
  done
done
python3 - "$WORK/results.tsv" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
get = lambda name, i: [float(r[i]) for r in rows if r[3] == name]
b, a = get("before", 4), get("after", 4)
ratios = [y / x for x, y in zip(b, a) if x]
print(f"before: median {statistics.median(b):.0f} req/s, p99 {statistics.median(get('before', 6)):.2f} ms; rounds {', '.join(f'{x:.0f}' for x in b)}")
print(f"after:  median {statistics.median(a):.0f} req/s, p99 {statistics.median(get('after', 6)):.2f} ms; rounds {', '.join(f'{x:.0f}' for x in a)}")
cb, ca = statistics.median(get("before", 8)), statistics.median(get("after", 8))
print(f"CPU per request: before {cb:.1f} µs, after {ca:.1f} µs ({ca / cb - 1:+.1%})")
print(f"after/before per round: {', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}")
PY

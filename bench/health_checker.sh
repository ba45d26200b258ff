#!/usr/bin/env bash
# Benchmark of the active health checker: N TCP listeners (one per server), a
# release switchyard checking all of them with TCP checks every 1s; reports the
# checks per second seen by the listeners, switchyard's CPU share
# (utime+stime from /proc/PID/stat over the window) and its RSS.
#
#   bench/health_checker.sh                       # 10,000 servers / 100 upstreams
#   bench/health_checker.sh --upstreams 10 --servers 100 --window 5
#
# Extra arguments go to examples/health_checker.rs (--upstreams, --servers,
# --warmup, --window, --workers). Prints one line for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# One listener per server lives in the bench process: raise the fd limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --release --bin switchyard --example health_checker
exec "$target/release/examples/health_checker" --binary "$target/release/switchyard" "$@"

#!/usr/bin/env bash
# Fleet convergence against the release binary (benches/fleet.rs): a real etcd,
# three instances, 1,000 weight changes through A, each timed until B and C show
# it; then sequential writes per second through A. Then, against a 3-member
# etcd cluster (issue 23): concurrent adds through A, 8 and 32 writers through
# three instances on different servers, and the fault scenario (a follower,
# then the leader, killed with kill -9 under 8 writers). Prints a markdown
# snippet for BENCHMARKS.md. Needs etcd and etcdctl on PATH (.ci/run installs
# them).
#
#   bench/fleet.sh                  # 1000 changes
#   CHANGES=200 bench/fleet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "etcd is not installed (apt-get install etcd-server etcd-client)" >&2; exit 1; }
export FLEET_CHANGES="${CHANGES:-1000}"
cargo build --release --quiet
target="${CARGO_TARGET_DIR:-target}"
export SWITCHYARD_BIN="${SWITCHYARD_BIN:-$target/release/switchyard}"
echo "### Fleet (etcd $(etcd --version | awk '/etcd Version/ {print $3}'), $(nproc) cores, $(date -u +%Y-%m-%d))"
cargo bench --quiet --bench fleet

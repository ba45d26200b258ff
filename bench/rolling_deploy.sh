#!/usr/bin/env bash
# Rolling deploy under load against the release binary: the scenarios of
# tests/suite/rolling_deploy.rs (drain-replace-up, then kill -9 and restart) with more
# clients and more requests per step. Prints requests sent and failed per
# scenario.
#
#   bench/rolling_deploy.sh                # 256 clients, 3000 answers per step
#   CLIENTS=512 HITS=10000 bench/rolling_deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export ROLLING_DEPLOY_CLIENTS="${CLIENTS:-256}"
export ROLLING_DEPLOY_HITS="${HITS:-3000}"
echo "rolling deploy: $ROLLING_DEPLOY_CLIENTS clients, $ROLLING_DEPLOY_HITS answers per step, release build"
cargo test --release --quiet --test suite rolling_deploy:: -- --nocapture --test-threads 1 2>&1 |
  grep -oE 'rolling deploy \(.*|panicked.*|FAILED.*|test result.*'

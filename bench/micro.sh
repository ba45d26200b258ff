#!/usr/bin/env bash
# The criterion micro-benchmarks (benches/pick.rs), short settings, and with
# --write FILE their results spliced into FILE.
#
#   bash bench/micro.sh [--write BENCHMARKS.md]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
cargo bench --quiet --bench pick -- --warm-up-time 0.5 --measurement-time 1.5 2>/dev/null \
  | grep -E "^(pick|swap)|time:" | sed 's/^ *//' | awk '
      /time:/ { if (name != "") { print name " " $0; name = "" } else print; next }
      { name = $1; if (NF > 1) { $1 = ""; print name $0; name = "" } }' >"$out"
{
  echo "Command: \`bash bench/micro.sh\` (\`cargo bench --bench pick -- --warm-up-time 0.5 --measurement-time 1.5\`; commit $(git rev-parse --short HEAD)$(git diff --quiet -- . ':!BENCHMARKS.md' || echo '+dirty')). Time per pick, including the lease (the active count taken and given back); criterion's [low estimate, median, high estimate]."
  echo
  echo '```'
  cat "$out"
  echo '```'
} >"$out.md"
cat "$out.md"
[ "${1:-}" = --write ] && python3 bench/report.py splice "$2" micro <"$out.md"
rm -f "$out" "$out.md"

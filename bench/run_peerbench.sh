#!/bin/bash
# One peerbench run with meshnet's sleeve paths in it, then docs/benchmarks.md and the chart.
#   sudo bench/run_peerbench.sh                 # all peers + meshnet-plain + meshnet-aes (~11 min)
#   RUNS=1 PATHS="raw fastd-null" sudo bench/run_peerbench.sh   # quicker, fewer paths
# peerbench (../shared/peerbench) builds hA/hB, measures round-robin, cleans up after itself.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERBENCH=${PEERBENCH:-$(cd "$ROOT/../shared/peerbench" 2>/dev/null && pwd || echo /work/shared/peerbench)}
export EXTRA="$HERE/peerbench_meshnet.sh"
export EXTRA_PATHS="${EXTRA_PATHS:-meshnet-plain meshnet-aes}"
out=$(mktemp)
(cd "$PEERBENCH" && ./run.sh) 2>&1 | tee "$out"
dir=$(sed -n 's/.*results in \(.*\)$/\1/p' "$out" | tail -1)
rm -f "$out"
[ -n "$dir" ] || { echo "no results dir found" >&2; exit 1; }
"$ROOT/.venv/bin/python" "$HERE/render_benchmarks.py" "$dir"

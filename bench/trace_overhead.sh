#!/usr/bin/env bash
# Tracing overhead on jacobi2d: the same run with and without ISO_TRACE, alternated REPS times;
# prints the medians as a ratio line in bench/ratio.hpp's format (target: at most 1.05).
#   bench/trace_overhead.sh [BUILD_DIR] [RANKS] [REPS]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # MPIRUN, median
build=${1:-build} ranks=${2:-2} reps=${3:-5}
trace=$(mktemp)
trap 'rm -f "$trace" "$trace.tmp"' EXIT
args=(--iters 200 --mode plain)
ms_per_iteration() { sed -n 's/^no balancing *: *\([0-9.]*\) ms\/iteration.*/\1/p'; }
plain=() traced=()
for ((i = 0; i < reps; ++i)); do
  plain+=("$("${MPIRUN[@]}" -n "$ranks" "$build/examples/jacobi2d" "${args[@]}" | ms_per_iteration)")
  traced+=("$(ISO_TRACE=$trace "${MPIRUN[@]}" -n "$ranks" "$build/examples/jacobi2d" "${args[@]}" | ms_per_iteration)")
done
awk -v t="$(median "${traced[@]}")" -v p="$(median "${plain[@]}")" -v n="$ranks" 'BEGIN {
  printf "ratio  %-40s %12.1f ns  raw %12.1f ns  = %.3f\n", "jacobi2d_traced_iteration/" n "ranks", t * 1e6, p * 1e6, t / p }'
echo "trace of the last run: $(stat -c %s "$trace") bytes"

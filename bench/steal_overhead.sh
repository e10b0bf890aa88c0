#!/usr/bin/env bash
# What work stealing costs a balanced program that does not need it: jacobi2d (plain mode, every
# rank busy) with ISO_STEAL=1 against ISO_STEAL=0, alternated REPS times; prints the medians as a
# ratio line in bench/ratio.hpp's format. Target: at most 1.02. Needs a quiet machine.
#   bench/steal_overhead.sh [BUILD_DIR] [RANKS] [REPS]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # MPIRUN, median
build=${1:-build} ranks=${2:-2} reps=${3:-5}
args=(--iters 200 --mode plain --heavy 1)
ms_per_iteration() { sed -n 's/^no balancing *: *\([0-9.]*\) ms\/iteration.*/\1/p'; }
off=() on=()
for ((i = 0; i < reps; ++i)); do
  off+=("$(ISO_STEAL=0 "${MPIRUN[@]}" -n "$ranks" "$build/examples/jacobi2d" "${args[@]}" | ms_per_iteration)")
  on+=("$(ISO_STEAL=1 "${MPIRUN[@]}" -n "$ranks" "$build/examples/jacobi2d" "${args[@]}" | ms_per_iteration)")
done
awk -v a="$(median "${on[@]}")" -v b="$(median "${off[@]}")" -v n="$ranks" -v all1="${off[*]}" -v all2="${on[*]}" 'BEGIN {
  printf "ratio  %-40s %12.1f ns  raw %12.1f ns  = %.3f\n", "jacobi2d_steal_on_iteration/" n "ranks", a * 1e6, b * 1e6, a / b
  printf "info   jacobi2d ms/iteration, stealing off: %s; on: %s\n", all1, all2 }'

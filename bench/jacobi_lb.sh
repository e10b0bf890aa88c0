#!/usr/bin/env bash
# Load balancing on jacobi2d (the imbalanced, shifting stencil): the run without balancing, the
# run with it, and the ideal (the blocks' total CPU work spread evenly over the ranks), REPS
# times; prints the medians, each as a ratio line in bench/ratio.hpp's format against the ideal.
# Target: the balanced run within 15 % of the ideal (ratio at most 1.15).
#   bench/jacobi_lb.sh [BUILD_DIR] [RANKS] [REPS] [jacobi2d options...]
# RANKS defaults to 4. With more ranks than cores the ranks share cores: the OS then balances
# the unbalanced run by time-slicing, and the figures say little about the balancer (the script
# says so).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # MPIRUN, median
build=${1:-build} ranks=${2:-4} reps=${3:-5}
shift $(($# < 3 ? $# : 3))
cores=$(nproc)
if ((ranks > cores)); then
  echo "note: $ranks ranks on $cores cores share cores; run with RANKS <= $cores for the balancer's figures" >&2
fi
plain=() balanced=() ideal=()
for ((i = 0; i < reps; ++i)); do
  out=$("${MPIRUN[@]}" -n "$ranks" "$build/examples/jacobi2d" "$@")
  plain+=("$(sed -n 's/^no balancing *: .*(\([0-9.]*\) s).*/\1/p' <<<"$out")")
  balanced+=("$(sed -n 's/^[a-z]* *every .*(\([0-9.]*\) s).*/\1/p' <<<"$out")")
  ideal+=("$(sed -n 's/^speed-up.*ideal (.*) \([0-9.]*\) s: balanced run.*/\1/p' <<<"$out")")
  if [[ -z ${plain[-1]} || -z ${balanced[-1]} || -z ${ideal[-1]} ]]; then
    echo "jacobi_lb.sh: jacobi2d printed no 'no balancing', balanced and ideal lines (options that" \
      "change the mode do not apply here):" >&2
    echo "$out" >&2
    exit 1
  fi
done
awk -v p="$(median "${plain[@]}")" -v b="$(median "${balanced[@]}")" -v i="$(median "${ideal[@]}")" -v n="$ranks" 'BEGIN {
  printf "ratio  %-40s %12.1f ns  raw %12.1f ns  = %.3f\n", "jacobi2d_unbalanced_vs_ideal/" n "ranks", p * 1e9, i * 1e9, p / i
  printf "ratio  %-40s %12.1f ns  raw %12.1f ns  = %.3f\n", "jacobi2d_balanced_vs_ideal/" n "ranks", b * 1e9, i * 1e9, b / i
  printf "speed-up from balancing: %.2fx (medians of %d runs)\n", p / b, '"$reps"' }'

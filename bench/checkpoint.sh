#!/usr/bin/env bash
# Checkpoint write and restart read throughput against raw file I/O of the same bytes, same disk.
#   bench/checkpoint.sh [BUILD_DIR] [MIB_PER_RANK] [RANKS]
# Prints two ratio lines in bench/ratio.hpp's format.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/../scripts source=../scripts/mpirun.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/mpirun.sh"  # MPIRUN; as root, Open MPI's consent
build=${1:-build} mib=${2:-64} ranks=${3:-2}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run() { "${MPIRUN[@]}" -n "$ranks" "$build/bench/bench_checkpoint" "$@"; }
run write "$dir" "$mib" | grep -E '^(checkpoint of|ratio)'
out=$(run read "$dir" "$mib" --iso-restart "$dir")
restore_ms=$(sed -n 's/.*MiB in \([0-9.]*\) ms$/\1/p' <<<"$out")
raw_s=$(sed -n 's/^raw_read_seconds \([0-9.]*\)$/\1/p' <<<"$out")
[[ -n $restore_ms && -n $raw_s ]] || { echo "bench/checkpoint.sh: unexpected output: $out" >&2; exit 1; }
awk -v r="$restore_ms" -v raw="$raw_s" -v mib="$mib" 'BEGIN {
  printf "ratio  %-40s %12.1f ns  raw %12.1f ns  = %.2f\n", "checkpoint_read/" mib "MiB_per_rank", r * 1e6, raw * 1e9, (r / 1e3) / raw }'

#!/usr/bin/env bash
# System calls and page faults of steady-state spawn + join under iso::runtime on 2 ranks:
#   bench/spawn_syscalls.sh [BUILD_DIR] [PAIRS] [BATCH]   (BATCH spawns, then their joins)
# Rank 0 runs under `strace -f`; every system call its scheduler's OS thread makes between the
# markers of bench/spawn_syscalls.cpp is counted, by name. Prints
#   spawn_syscalls  <PAIRS> pairs  <n> system calls (<n/PAIRS> per pair)  <f> page faults
# then one line per system call name, and the calls of rank 0's other OS threads (MPI's) over
# the same window, for information. What the scheduler's thread still makes is Open MPI's: every
# 32nd to 256th switch polls MPI (MPI_Iprobe), and opal_progress runs its libevent loop, a
# poll(), every few thousand of those (about 5-15 per 100k pairs). Exits 1 from one call per
# 1000 pairs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/../scripts source=../scripts/mpirun.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/mpirun.sh"  # MPIRUN; as root, Open MPI's consent
build=${1:-build} pairs=${2:-100000} batch=${3:-1}
command -v strace >/dev/null || { echo "bench/spawn_syscalls.sh: needs strace" >&2; exit 2; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
prog=$(realpath "$build/bench/spawn_syscalls")
# Only rank 0 is traced: the other rank's idle loop is not part of the figure.
out=$("${MPIRUN[@]}" -n 2 sh -c '
  if [ "$OMPI_COMM_WORLD_RANK" = 0 ]; then exec strace -f -qq -o "$1" "$2" "$3" "$4"; else exec "$2" "$3" "$4"; fi' \
  sh "$dir/trace" "$prog" "$pairs" "$batch")
pairs=$(sed -n 's/^spawn_syscalls pairs \([0-9]*\) .*/\1/p' <<<"$out")  # whole rounds
faults=$(sed -n 's/^spawn_syscalls pairs [0-9]* page_faults \([0-9]*\) .*/\1/p' <<<"$out")
[[ -n $faults ]] || { echo "bench/spawn_syscalls.sh: unexpected output: $out" >&2; exit 1; }
# strace -f writes "PID name(args) = result" lines, a call interrupted by another thread's as
# "PID name(... <unfinished ...>" and later "PID <... name resumed> ...": count each call once,
# at its start. The window: from the begin marker to the end marker, of the thread that made them.
awk -v pairs="$pairs" -v faults="$faults" '
  /iso-spawn-syscalls:begin/ { tid = $1; inside = 1; next }
  /iso-spawn-syscalls:end/ { inside = 0; next }
  !inside || /<\.\.\. .* resumed>/ { next }
  {
    name = $2; sub(/\(.*/, "", name)
    if ($1 == tid) { mine[name]++; n++ } else { other[name]++; m++ }
  }
  END {
    if (tid == "") { print "bench/spawn_syscalls.sh: no markers in the trace" > "/dev/stderr"; exit 2 }
    printf "spawn_syscalls  %d pairs  %d system calls (%.3f per pair)  %d page faults\n", pairs, n, n / pairs, faults
    for (k in mine) printf "  scheduler thread  %-20s %8d  (%.3f per pair)\n", k, mine[k], mine[k] / pairs
    for (k in other) printf "  other threads     %-20s %8d\n", k, other[k]
    exit n * 1000 < pairs ? 0 : 1
  }' "$dir/trace"

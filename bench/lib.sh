#!/usr/bin/env bash
# Sourced by the bench scripts that repeat runs: MPIRUN and, as root, Open MPI's consent
# (scripts/mpirun.sh), and median.

# shellcheck source-path=SCRIPTDIR/../scripts source=../scripts/mpirun.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/mpirun.sh"

# The median of the numbers given (the mean of the middle two for an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (v[int((NR + 1) / 2)] + v[int(NR / 2) + 1]) / 2 }'; }

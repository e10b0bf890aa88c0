#!/usr/bin/env bash
# Sourced by the scripts that call mpirun (setup.sh, bench/checkpoint.sh, bench/lib.sh):
# sets MPIRUN, an array holding mpirun and the flags every run needs (--oversubscribe: more ranks
# than cores), and, as root, exports the two variables with which Open MPI agrees to run as root.

# shellcheck disable=SC2034  # used by the scripts that source this one
MPIRUN=(mpirun --oversubscribe)
if [[ "$(id -u)" -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

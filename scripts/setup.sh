#!/usr/bin/env bash
# Makes this machine ready to build and run isothreads, then builds it into build/.
#
#   1. Checks the Debian packages the build needs, and those in the array iso_extra_packages if
#      the caller set it (scripts/test adds chromium, which only the report tests use); installs
#      the missing ones when run as root, otherwise prints the apt-get command to run and fails.
#   2. Configures (RelWithDebInfo; ISO_DEBUG=2 when CI=true, or ISO_DEBUG=<level> when set) and
#      builds into build/ at the repository root, from whatever directory it is called.
#   3. Sets up mpirun for this machine (scripts/mpirun.sh): MPIRUN, an array holding mpirun and
#      the flags every run needs (--oversubscribe: more ranks than cores); as root, exports the
#      two variables with which Open MPI agrees to run as root.
#
# scripts/demo and scripts/test source it; it can also be run on its own.
set -euo pipefail

ISO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ISO_ROOT"

iso_packages=(libboost-context-dev libboost-fiber-dev libopenmpi-dev openmpi-bin libgtest-dev
              libbenchmark-dev cmake g++ zlib1g-dev liblua5.4-dev pkg-config make python3 "${iso_extra_packages[@]}")
iso_missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${iso_packages[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
      iso_missing+=("$p")
    fi
  done
else
  echo "setup: dpkg-query not found (not Debian?): not checking for ${iso_packages[*]}" >&2
fi

if ((${#iso_missing[@]} > 0)); then
  if [[ "$(id -u)" -eq 0 ]]; then
    echo "setup: installing ${iso_missing[*]}"
    apt-get update </dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${iso_missing[@]}" </dev/null
  else
    echo "setup: missing packages: ${iso_missing[*]}" >&2
    echo "setup: install them with:" >&2
    echo "  sudo apt-get install -y ${iso_missing[*]}" >&2
    # shellcheck disable=SC2317  # return when sourced, exit when run
    return 1 2>/dev/null || exit 1
  fi
fi

iso_cmake_args=(-S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo)
if [[ "${CI:-}" == "true" || -n "${ISO_DEBUG+set}" ]]; then
  iso_cmake_args+=("-DISO_DEBUG=${ISO_DEBUG:-2}")
fi
cmake "${iso_cmake_args[@]}"
cmake --build build -j2

# shellcheck source-path=SCRIPTDIR source=mpirun.sh
source "$ISO_ROOT/scripts/mpirun.sh"

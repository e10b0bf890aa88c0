// Identical code layout on every rank: re-execution without address-space randomisation, and a
// fingerprint of what is loaded where, compared across ranks.
#pragma once

#include <mpi.h>

#include <string>

#include "sysalloc.hpp"

namespace iso::detail {

// If `allowed` (runtime_options::reexec), MPI is not initialised and randomisation is on for this
// process: sets ADDR_NO_RANDOMIZE and re-executes the program with the same argv (does not return
// on success). The flag survives exec, so this happens at most once. pre: argv is NULL-terminated.
void ensure_fixed_layout(char** argv, bool allowed) noexcept;

// One line per object loaded at start-up: "<path> <load address> <build-id>", the executable
// first, then the shared libraries in load order, then the main thread's TLS addresses (compilers
// may keep a TLS address in a register across a call that switches threads). Taken once, before
// main() (a library constructor): libraries that MPI loads later with dlopen (its plugins and
// theirs) land at addresses that differ between ranks, and no thread runs inside them across a
// switch. A program that dlopens a library its threads use must load it before creating the
// runtime, at the same point on every rank.
const sys_vector<std::string>& layout_fingerprint();

// Collective over comm: throws iso::error(layout_mismatch) naming the ranks whose layout differs
// from rank 0's and the first differing objects. Returns the fingerprint's hash, the same on
// every rank (stamped on thread images).
std::uint64_t verify_layout(MPI_Comm comm);

}  // namespace iso::detail

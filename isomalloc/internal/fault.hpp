// Fault injection, for tests: named points on the library's failure paths that can be made to
// fail on purpose, so that tests see every such failure reported (never ignored) and cleaned up.
//
// Compiled in only when the library is built with its tests (ISO_BUILD_TESTS, which defines
// ISO_FAULT_INJECTION); otherwise every point is the constant false and nothing is read.
// Armed by the environment: ISO_FAULT=<point>[@<n>] makes the n-th pass through <point> on each
// rank fail (n >= 1, default 1), once. Points:
//   MPI_Iprobe, MPI_Get_count, MPI_Recv, MPI_Irecv, MPI_Isend, MPI_Testall, MPI_Wait
//       the migration engine's and the region peers' calls of that name fail with MPI_ERR_OTHER
//       without being made
//   checkpoint-before-commit
//       the process exits (status 3) after writing a checkpoint generation, before committing it
#pragma once

namespace iso::detail::fault {

#ifdef ISO_FAULT_INJECTION
// True if the fault armed at `point` fires on this pass. Cheap when nothing is armed.
bool hit(const char* point) noexcept;
#else
constexpr bool hit(const char*) noexcept { return false; }
#endif

}  // namespace iso::detail::fault

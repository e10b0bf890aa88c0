// Fault injection, for tests: named points on the library's failure paths that can be made to
// fail on purpose, so that tests see every such failure reported (never ignored) and cleaned up.
//
// Compiled in only when the library is built with its tests (ISO_BUILD_TESTS, which defines
// ISO_FAULT_INJECTION); otherwise every point is the constant false and nothing is read.
// Armed by the environment: ISO_FAULT=<point>[@<n>][*<k>] makes the n-th pass through <point> on
// each rank fail (n >= 1, default 1), and the k - 1 passes after it (default: once); or from a
// test, by arm(). Points:
//   MPI_Iprobe, MPI_Get_count, MPI_Recv, MPI_Irecv, MPI_Isend, MPI_Test, MPI_Testall, MPI_Wait
//       the migration engine's calls of that name fail with MPI_ERR_OTHER without being made
//       (MPI_Test: the test of a split image's second piece, migrate/src/shipping.cpp)
//   region-returns:MPI_Iprobe, region-returns:MPI_Get_count, region-returns:MPI_Recv,
//   region-returns:MPI_Isend, region-returns:MPI_Testall, region-returns:MPI_Wait
//       the same, for the calls of the region's peers that return runs to their owners
//       (comm/internal/mpi_peers.hpp)
//   region-returns:send_completes_in_error, send_completes_in_error
//       a send of the region's peers (of the migration engine) is not made and its MPI_Testall
//       fails, as if MPI had failed the send after taking it (comm/internal/transport.hpp)
//   prim.reserve_at (mmap), prim.decommit (madvise MADV_DONTNEED), prim.release_lazily
//   (madvise MADV_FREE), prim.guard_install, prim.guard_remove (madvise MADV_GUARD_*, or
//   mprotect on kernels without them)
//       the OS primitive of that name (prim.hpp) fails without its system call, with the errno
//       the call gives when the kernel refuses it: ENOMEM for mmap and the guards (no memory, or
//       vm.max_map_count reached), EINVAL for the releases (locked pages)
//   collectives.take
//       the system heap refuses a block for a rank's collectives (migrate/internal/combiner.hpp's
//       block_cache::take throws std::bad_alloc)
//   collectives.combine
//       member 0's combining throws std::bad_alloc at the n-th batch it takes in, as if its heap
//       refused room to keep the batch (migrate/src/collectives.cpp, combine_at_member_0)
//   collectives.combine_block
//       member 0's tree throws std::bad_alloc at the n-th block it puts in (every block of every
//       batch counts; the same function)
//   collectives.stash
//       member 0 cannot put aside a batch of another collective on its tag while it combines
//       (std::bad_alloc in next_batch, the same file)
//   split_piece.short, split_piece.long
//       a split image's second piece is sent a byte short, or a byte long (migrate/src/
//       shipping.cpp, depart), as a defective sender would send it
//   image.other_thread
//       a departing image's header names another thread than its control block (the low bit of
//       its id flipped, its checksum made good; migrate/src/shipping.cpp, depart)
//   arrival.later
//       an arrival's receives are not tested as its header message comes in (migrate/src/
//       shipping.cpp, start_arrival), as if its pieces were not in yet: a later poll finishes it
//   checkpoint-before-commit
//       the process exits (status 3) after writing a checkpoint generation, before committing it
// Any OS thread may pass through a point.
#pragma once

namespace iso::detail::fault {

#ifdef ISO_FAULT_INJECTION
// True if the fault armed at `point` fires on this pass. Cheap when nothing is armed.
bool hit(const char* point) noexcept;
// Arms `point` (replacing whatever was armed): the n-th pass from now fails, and so do the
// `times` - 1 passes after it. pre: n >= 1, times >= 1, point shorter than 64 bytes.
void arm(const char* point, unsigned long n = 1, unsigned long times = 1) noexcept;
// Nothing armed any more.
void disarm() noexcept;
#else
constexpr bool hit(const char*) noexcept { return false; }
#endif

}  // namespace iso::detail::fault

// Fault injection (fault.hpp): the kernel refuses every mmap of the region (ISO_FAULT=
// prim.reserve_at*1000, set by CTest on every rank: the provisional range before main and the
// agreed one). iso_init returns the documented code, region_agreement, naming the ranks and the
// error, on every rank alike; block calls fail cleanly meanwhile; once the kernel maps again, the
// next iso_init agrees a region and blocks work, with the region's bookkeeping valid.
// Rank 0 prints "MAP_REFUSED_OK on <n> ranks" if every rank passed.
#include <mpi.h>

#include <cstdio>
#include <cstring>

#include "fault.hpp"
#include "isothreads/error.hpp"
#include "isothreads/isomalloc.h"
#include "region.hpp"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int failures = 0;
  const auto check = [&](bool ok, const char* what) {
    if (!ok) {
      std::printf("MAP_REFUSED_FAIL rank %d: %s (last error: %s)\n", rank, what, iso_last_error());
      ++failures;
    }
  };

  const int refused = iso_init(MPI_COMM_WORLD);
  check(refused == static_cast<int>(iso::errc::region_agreement), "iso_init did not return region_agreement");
  check(std::strstr(iso_last_error(), "could not map the agreed isomalloc region") != nullptr &&
            std::strstr(iso_last_error(), "rank 0 (Cannot allocate memory)") != nullptr,
        "iso_last_error does not name the failed map");
  check(iso_malloc(1) == nullptr && std::strstr(iso_last_error(), "not initialised") != nullptr,
        "iso_malloc without a region did not fail cleanly");

  iso::detail::fault::disarm();  // the kernel maps again
  check(iso_init(MPI_COMM_WORLD) == 0, "iso_init failed once mmap worked again");
  void* block = iso_malloc(100000);
  check(block != nullptr && iso_length(block) >= 100000, "iso_malloc failed after the agreement");
  if (block != nullptr) {
    std::memset(block, 1, 100000);
    iso_free(block);
  }
  check(iso::detail::region::get().is_valid(), "the region's bookkeeping is invalid");
  int size = 0, all_failures = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (MPI_Reduce(&failures, &all_failures, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD) != MPI_SUCCESS) {
    check(false, "MPI_Reduce of the failures failed");
  }
  if (rank == 0 && all_failures == 0) std::printf("MAP_REFUSED_OK on %d ranks\n", size);
  MPI_Finalize();
  return failures == 0 ? 0 : 1;
}

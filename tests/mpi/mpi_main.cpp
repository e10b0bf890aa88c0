// main() of the multi-rank tests of the block interface without iso::runtime: MPI_Init, then
// iso_init(MPI_COMM_WORLD), then every test on every rank (mpi_gtest.hpp: only rank 0 prints
// GoogleTest's output, a failure on any rank fails every rank's exit code), then MPI_Finalize.
#include <cstdio>

#include "isothreads/isomalloc.h"
#include "mpi_gtest.hpp"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  testing::InitGoogleTest(&argc, argv);

  if (const int rc = iso_init(MPI_COMM_WORLD); rc != 0) {
    std::fprintf(stderr, "[rank %d] FATAL: iso_init(MPI_COMM_WORLD) returned %d: %s\n", rank, rc,
                 iso_last_error());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }

  const int rc = iso_test::run_all_tests_on_all_ranks();
  MPI_Finalize();
  return rc;
}

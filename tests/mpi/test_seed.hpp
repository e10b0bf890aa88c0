// The seed of a randomised multi-rank test: ISO_TEST_SEED if set (to replay a run), else drawn
// from the clock on rank 0; the same on every rank (broadcast), and printed by rank 0 with how to
// replay it. Collective: call it from main on every rank, before run().
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace iso_test {

inline std::uint64_t test_seed(const char* test) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::uint64_t seed = 0;
  if (rank == 0) {
    const char* s = std::getenv("ISO_TEST_SEED");
    seed = s != nullptr && *s != '\0'
               ? std::strtoull(s, nullptr, 10)
               : static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    std::printf("%s: seed %llu (replay with ISO_TEST_SEED=%llu)\n", test, static_cast<unsigned long long>(seed),
                static_cast<unsigned long long>(seed));
    std::fflush(stdout);
  }
  MPI_Bcast(&seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  return seed;
}

}  // namespace iso_test

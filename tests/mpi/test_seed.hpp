// The seed of a randomised multi-rank test: ISO_TEST_SEED if set (to replay a run), else drawn
// from the clock on rank 0; the same on every rank (broadcast), and printed by rank 0 with the
// runtime's steal seed (steal_seed below) and how to replay both. Collective: call it from main on
// every rank, before run().
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace iso_test {

// The runtime's runtime_options::steal_seed, which chooses steal victims: ISO_STEAL_SEED if set,
// else ISO_TEST_SEED if set (runtime_main.cpp), else 0. Fixed for the process (the runtime is
// made once): tests whose schedules should vary from run to run get ISO_TEST_SEED drawn by their
// CTest command (iso_add_mpi_test(... SEEDED)), so that the printed pair replays a whole run,
// timing aside.
extern std::uint64_t steal_seed;

inline std::uint64_t test_seed(const char* test) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::uint64_t seed = 0;
  if (rank == 0) {
    const char* s = std::getenv("ISO_TEST_SEED");
    seed = s != nullptr && *s != '\0'
               ? std::strtoull(s, nullptr, 10)
               : static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    std::printf("%s: seed %llu, steal seed %llu (replay with ISO_TEST_SEED=%llu ISO_STEAL_SEED=%llu)\n", test,
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(steal_seed),
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(steal_seed));
    std::fflush(stdout);
  }
  MPI_Bcast(&seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  return seed;
}

}  // namespace iso_test

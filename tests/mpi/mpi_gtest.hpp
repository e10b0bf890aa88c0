// GoogleTest under mpirun: every rank runs every test in the same order (tests make collective
// calls). Only rank 0 prints GoogleTest's usual output; other ranks print just their failed
// assertions, prefixed with the rank. The exit code is nonzero on every rank if any test failed
// on any rank.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "isothreads/thread_id.hpp"

namespace iso {
class runtime;
}

namespace iso_test {

// The runtime shared by every test of a binary linked with runtime_main.cpp, which defines and
// sets it (binaries linked with mpi_main.cpp have none).
extern iso::runtime* rt;

// Every rank's ids, in rank order (each rank contributes the same number). Collective.
inline std::vector<iso::thread_id> allgather_ids(const std::vector<iso::thread_id>& mine) {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::vector<std::uint64_t> bits, all(mine.size() * static_cast<std::size_t>(size));
  for (iso::thread_id t : mine) bits.push_back(t.bits());
  MPI_Allgather(bits.data(), static_cast<int>(bits.size()), MPI_UINT64_T, all.data(), static_cast<int>(bits.size()),
                MPI_UINT64_T, MPI_COMM_WORLD);
  std::vector<iso::thread_id> out;
  for (std::uint64_t b : all) out.push_back(iso::thread_id::from_bits(b));
  return out;
}

class rank_failure_printer : public testing::EmptyTestEventListener {
 public:
  explicit rank_failure_printer(int rank) : rank_(rank) {}
  void OnTestPartResult(const testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() != nullptr ? result.file_name() : "unknown file", result.line_number(),
                 result.message());
  }
  void OnTestEnd(const testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] [  FAILED  ] %s.%s\n", rank_, info.test_suite_name(), info.name());
    }
  }

 private:
  int rank_;
};

// Runs every test; returns the process exit code (0 only if every rank passed). pre: MPI is
// initialised and InitGoogleTest has run.
inline int run_all_tests_on_all_ranks() {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (rank != 0) {
    testing::TestEventListeners& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new rank_failure_printer(rank));
  }
  const int mine = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int failed_ranks = 0;
  MPI_Allreduce(&mine, &failed_ranks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) {
    if (failed_ranks != 0) {
      std::fprintf(stderr, "FAILED on %d of %d ranks (lines prefixed [rank N] come from rank N)\n", failed_ranks, size);
    } else {
      std::printf("all tests passed on all %d ranks\n", size);
    }
    std::fflush(stdout);
  }
  return failed_ranks != 0 ? 1 : 0;
}

}  // namespace iso_test

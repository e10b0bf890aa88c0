// main() of the multi-rank tests that use iso::runtime (one per process, shared by every test).
#include <cstdio>
#include <memory>

#include "isothreads/isothreads.hpp"
#include "mpi_gtest.hpp"

namespace iso_test {
iso::runtime* rt = nullptr;
}

int main(int argc, char** argv) {
  // The runtime first: it may re-execute the program with the original arguments.
  std::unique_ptr<iso::runtime> rt;
  try {
    rt = std::make_unique<iso::runtime>(argc, argv);
  } catch (const iso::error& e) {
    std::fprintf(stderr, "FATAL: iso::runtime: %s\n", e.what());
    return 2;
  }
  iso_test::rt = rt.get();
  testing::InitGoogleTest(&argc, argv);
  return iso_test::run_all_tests_on_all_ranks();
}

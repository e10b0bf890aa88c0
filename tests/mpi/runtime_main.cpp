// main() of the multi-rank tests that use iso::runtime (one per process, shared by every test).
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "isothreads/isothreads.hpp"
#include "mpi_gtest.hpp"
#include "test_seed.hpp"

namespace iso_test {
iso::runtime* rt = nullptr;
std::uint64_t steal_seed = 0;
}

int main(int argc, char** argv) {
  // The runtime first: it may re-execute the program with the original arguments.
  std::unique_ptr<iso::runtime> rt;
  try {
    iso::runtime_options options = iso::runtime_options::from_environment();
    // Steal victims follow the test seed unless ISO_STEAL_SEED says otherwise (test_seed.hpp).
    const char* test_seed = std::getenv("ISO_TEST_SEED");
    if (std::getenv("ISO_STEAL_SEED") == nullptr && test_seed != nullptr && *test_seed != '\0') {
      options.steal_seed = std::strtoull(test_seed, nullptr, 10);
    }
    iso_test::steal_seed = options.steal_seed;
    rt = std::make_unique<iso::runtime>(argc, argv, options);
  } catch (const iso::error& e) {
    std::fprintf(stderr, "FATAL: iso::runtime: %s\n", e.what());
    return 2;
  }
  iso_test::rt = rt.get();
  testing::InitGoogleTest(&argc, argv);
  return iso_test::run_all_tests_on_all_ranks();
}

// A thread that exhausts its rank's share of the region gets NULL (errno ENOMEM) from malloc,
// first for small blocks whose heap cannot grow, then for large ones: the region's error is
// raised while the thread's heap is exhausted (no deadlock on the region lock, no recursion
// through raise()'s own allocations), and after freeing everything the thread allocates again.
// CTest runs it on 2 ranks with a 2 GiB region; prints EXHAUSTION_OK per rank.
#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "isothreads/isothreads.hpp"

namespace {

// Allocates blocks of `bytes` until malloc fails, chaining them through their first word.
// Returns the chain; *count and *error say how many and what errno the failure left.
void* fill(std::size_t bytes, void* chain, std::size_t* count, int* error) {
  for (;;) {
    errno = 0;
    void** p = static_cast<void**>(std::malloc(bytes));
    if (p == nullptr) {
      *error = errno;
      return chain;
    }
    *p = chain;
    chain = p;
    ++*count;
  }
}

void release(void* chain) {
  while (chain != nullptr) {
    void* next = *static_cast<void**>(chain);
    std::free(chain);
    chain = next;
  }
}

}  // namespace

int main(int argc, char** argv) {
  iso::runtime rt(argc, argv);
  iso::spawn([] {
    std::size_t large = 0, small = 0;
    int large_error = 0, small_error = 0;
    void* chain = fill(512, nullptr, &small, &small_error);
    chain = fill(std::size_t{1} << 16, chain, &large, &large_error);
    release(chain);
    void* again = std::malloc(std::size_t{1} << 16);
    if (small == 0 || large_error != ENOMEM || small_error != ENOMEM || again == nullptr) {
      std::printf("EXHAUSTION_FAIL rank %d: %zu large blocks (errno %d), %zu small (errno %d), again %p\n", iso::rank(),
                  large, large_error, small, small_error, again);
    } else {
      std::printf("EXHAUSTION_OK rank %d: %zu blocks of 512 B and %zu of 64 KiB before NULL\n", iso::rank(), small, large);
    }
    std::free(again);
  });
  rt.run();
  return 0;
}

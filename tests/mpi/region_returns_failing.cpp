// Fault injection (fault.hpp): every MPI_Isend of the region's return path fails
// (ISO_FAULT=region-returns:MPI_Isend*<many>, set by CTest). A thread frees memory of its home
// rank after moving away, and then sleeps far longer than the return path may keep failing: the
// runtime warns once, naming the call and the peer, and after max_failing (mpi_peers.hpp) of
// failing polls the run ends through the fatal path instead of losing the run in silence.
// RETURNS_NOT_FATAL says it did not.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "isothreads/isothreads.hpp"

int main(int argc, char** argv) {
  try {
    iso::runtime rt(argc, argv);
    iso::spawn([] {
      // volatile (on this thread's stack, which travels): the compiler cannot drop the pair.
      void* volatile block = std::malloc(300 << 10);
      std::memset(block, 1, 300 << 10);
      iso::this_thread::migrate_to((iso::rank() + 1) % iso::size());
      std::free(block);  // on the next rank: the run goes home, and its send fails
      for (int i = 0; i < 600; ++i) iso::this_thread::sleep_for(std::chrono::milliseconds(100));
    });
    rt.run();
    std::printf("RETURNS_NOT_FATAL rank %d\n", rt.rank());
  } catch (const iso::error& e) {
    std::fprintf(stderr, "RETURNS_NOT_FATAL: iso::runtime: %s\n", e.what());
    return 2;
  }
  return 0;
}

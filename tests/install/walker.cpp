// A C++ program outside the isothreads source tree, built by the consumers in tests/install:
// one migratable thread per rank builds a std::map in its own heap and walks on to every other
// rank, checking at each stop that the map, a buffer on its stack and their addresses survived
// the moves, and ends on the last rank it visits (so its frames return on another rank than the
// one they were entered on). Exits nonzero on any failure (a thread that finds damage aborts).
//
// The program is written in C++17 (its CMake consumers ask for C++17): isothreads' headers need
// C++20, which its targets, pkg-config's cxxstd and isocxx supply.
#include <isothreads/isothreads.hpp>
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

namespace {

int finished_here = 0;  // threads that ended their walk on this rank (rank-local, not migrated)

[[noreturn]] void fail(const char* what, int origin) {
  std::fprintf(stderr, "walker: thread from rank %d on rank %d: %s\n", origin, iso::rank(), what);
  std::abort();
}

void walk(int origin) {
  // Built inside the thread: with the malloc interposition linked in, the nodes come from the
  // thread's heap, in the isomalloc region, and travel with it.
  std::map<int, std::string> map;
  for (int i = 0; i < 500; ++i) map.emplace(i, "value " + std::to_string(i * origin));
  if (iso_in_range(&*map.begin()) != 1) fail("its map is not in its own heap (no malloc interposition)", origin);
  const void* const where = &*map.find(250);
  char stamp[32];  // a buffer on the thread's stack: its contents must travel too
  std::snprintf(stamp, sizeof stamp, "born on rank %d", origin);
  for (int hop = 1; hop < iso::size(); ++hop) {
    iso::this_thread::migrate_to((iso::rank() + 1) % iso::size());
    if (map.size() != 500 || &*map.find(250) != where || map.at(499) != "value " + std::to_string(499 * origin))
      fail("its map changed on the way", origin);
    char expected[32];
    std::snprintf(expected, sizeof expected, "born on rank %d", origin);
    if (std::string(stamp) != expected) fail("its stack changed on the way", origin);
  }
  if (iso::rank() != (origin + iso::size() - 1) % iso::size()) fail("it did not end on the last rank of its walk", origin);
  ++finished_here;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    iso::runtime rt(argc, argv);
    const int origin = rt.rank();
    iso::spawn([origin] { walk(origin); });
    rt.run();
    int finished = 0;
    MPI_Allreduce(&finished_here, &finished, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rt.rank() == 0) std::printf("walker: %d of %d threads walked across every rank intact\n", finished, rt.size());
    return finished == rt.size() ? 0 : 1;
  } catch (const iso::error& e) {
    std::fprintf(stderr, "walker: %s\n", e.what());
    return 1;
  }
}

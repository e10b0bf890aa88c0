// What a steady-state spawn + join asks of the kernel, under iso::runtime (a plain MPI main):
//
//   bench/spawn_syscalls.sh [BUILD_DIR] [PAIRS] [BATCH]   (runs this under mpirun and strace)
//   mpirun -n 2 bench/spawn_syscalls [PAIRS] [BATCH]      (without strace: only the page faults)
//
// On rank 0 one migratable thread spawns and joins empty threads in rounds: BATCH spawns
// (default 1: spawn, join, spawn, join...), then BATCH joins. One round warms the pools, then
// PAIRS more spawn/join pairs (default 100000, rounded up to whole rounds) run between two marker
// system calls, access("iso-spawn-syscalls:begin")
// and access("iso-spawn-syscalls:end"), which the script finds in strace's log: every system call
// of the scheduler's OS thread between them was made by those spawn/join pairs or the progress
// polls between them. Rank 0 prints the minor page faults of its scheduler's OS thread over the
// same window (getrusage(RUSAGE_THREAD)) and the time per pair:
//   spawn_syscalls pairs <PAIRS> page_faults <n> ns_per_pair <t>
// The other ranks only take part in the runtime (MPI progress is on, as in any program).
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "isothreads/isothreads.hpp"

namespace {

long minor_faults_of_this_os_thread() {
  rusage ru{};
  if (getrusage(RUSAGE_THREAD, &ru) != 0) {
    std::perror("spawn_syscalls: getrusage");
    std::exit(1);
  }
  return ru.ru_minflt;
}

}  // namespace

int main(int argc, char** argv) {
  iso::runtime rt(argc, argv);
  const long batch = argc > 2 ? std::atol(argv[2]) : 1;
  const long asked = argc > 1 ? std::atol(argv[1]) : 100'000;
  if (asked <= 0 || batch <= 0) {
    std::fprintf(stderr, "usage: spawn_syscalls [PAIRS > 0] [BATCH > 0]\n");
    return 1;
  }
  const long rounds = (asked + batch - 1) / batch, pairs = rounds * batch;
  long faults = 0;
  double ns_per_pair = 0;
  if (rt.rank() == 0) {
    iso::spawn([&] {
      std::vector<iso::thread_id> ids(static_cast<std::size_t>(batch));
      const auto round = [&ids] {
        for (iso::thread_id& t : ids) t = iso::spawn([] {});
        for (iso::thread_id t : ids) iso::join(t);
      };
      for (long r = 0; r < std::max(1000 / batch, 1L); ++r) round();  // warm-up
      // The markers (their return value does not matter: the files do not exist) sit inside the
      // two getrusage calls, so that the window holds only the loop.
      const long f0 = minor_faults_of_this_os_thread();
      (void)access("iso-spawn-syscalls:begin", F_OK);
      const auto t0 = std::chrono::steady_clock::now();
      for (long r = 0; r < rounds; ++r) round();
      const auto t1 = std::chrono::steady_clock::now();
      (void)access("iso-spawn-syscalls:end", F_OK);
      faults = minor_faults_of_this_os_thread() - f0;
      ns_per_pair = std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(pairs);
    });
  }
  rt.run();
  if (rt.rank() == 0) std::printf("spawn_syscalls pairs %ld page_faults %ld ns_per_pair %.1f\n", pairs, faults, ns_per_pair);
  return 0;
}

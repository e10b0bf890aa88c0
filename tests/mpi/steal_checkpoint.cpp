// Checkpoint and restart with work stealing on (CTest runs it twice per rank count: `steal_checkpoint
// DIR` writes a checkpoint, `steal_checkpoint DIR --iso-restart DIR` continues from it). Rank 0
// spawns every thread stealable; they wait, ready, until thieves have taken some (so stolen
// threads are on other ranks when every thread enters iso::checkpoint), checkpoint, then finish
// their work. Each run prints, on rank 0, `steal_checkpoint: N threads, checksum ok|WRONG, S
// stolen before the checkpoint` (S: in the run that wrote it; the restart prints 0) and
// STEAL_CKPT_FAIL if a thread is lost, duplicated or its state differs from a serial run.
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "isothreads/isothreads.hpp"

namespace {

constexpr int threads = 16;
constexpr int rounds = 20;  // of work before and after the checkpoint

std::uint64_t step(std::uint64_t x) {
  for (int i = 0; i < 2000; ++i) x = x * 6364136223846793005ull + 1442695040888963407ull;
  return x;
}

std::uint64_t expected(int i) {
  std::uint64_t x = static_cast<std::uint64_t>(i) + 1;
  for (int k = 0; k < 2 * rounds; ++k) x = step(x);
  return x;
}

// On this rank (main reads them after run()).
std::uint64_t finished_here = 0;
std::uint64_t checksum_here = 0;
std::uint64_t elsewhere_at_checkpoint = 0;  // threads that entered the checkpoint off rank 0

void body(int i, const std::string& dir) {
  std::uint64_t x = static_cast<std::uint64_t>(i) + 1;  // on the thread's stack: checkpointed
  for (int k = 0; k < rounds; ++k) {
    x = step(x);
    iso::this_thread::yield();
  }
  // Ready until the other ranks have stolen some: a thief takes one ready thread per request.
  for (long k = 0; k < 2'000'000 && iso::rank() == 0 &&
                    iso::stealing_stats().given < static_cast<std::uint64_t>(iso::size() - 1);
       ++k) {
    iso::this_thread::yield();
  }
  if (iso::rank() != 0) ++elsewhere_at_checkpoint;
  iso::checkpoint(dir);
  for (int k = 0; k < rounds; ++k) {
    x = step(x);
    iso::this_thread::yield();
  }
  checksum_here += x;
  ++finished_here;
}

}  // namespace

int main(int argc, char** argv) {
  iso::runtime rt(argc, argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: steal_checkpoint DIR [--iso-restart DIR]\n");
    return 2;
  }
  const std::string dir = argv[1];
  iso::stealing(true);
  if (!rt.restarting() && rt.rank() == 0) {
    for (int i = 0; i < threads; ++i) iso::spawn([i, dir] { body(i, dir); }, iso::spawn_options{.stealable = true});
  }
  rt.run();
  std::uint64_t mine[3] = {finished_here, checksum_here, elsewhere_at_checkpoint}, all[3] = {};
  MPI_Reduce(mine, all, 3, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
  if (rt.rank() == 0) {
    std::uint64_t sum = 0;
    for (int i = 0; i < threads; ++i) sum += expected(i);
    const bool ok = all[0] == threads && all[1] == sum && (rt.restarting() || all[2] >= 1);
    std::printf("steal_checkpoint: %llu threads, checksum %s, %llu stolen before the checkpoint\n",
                static_cast<unsigned long long>(all[0]), all[1] == sum ? "ok" : "WRONG",
                static_cast<unsigned long long>(all[2]));
    if (!ok) std::printf("STEAL_CKPT_FAIL\n");
  }
  return 0;
}

// Hardened frames and jmp_bufs across a checkpoint and a restart in another job (CTest runs it
// twice: `hardened_restart DIR` writes a checkpoint on 4 ranks, `hardened_restart DIR
// --iso-restart DIR` continues from it on 2). Built with -fstack-protector-strong and
// _FORTIFY_SOURCE=2, as distributions build: each thread's frames hold the canary, and its
// jmp_buf the pointer guard, of the job that wrote the checkpoint; the restarted job's threads
// must return through those frames and longjmp through that jmp_buf. Prints HARDENED_OK per
// thread and `hardened_restart: N threads` on rank 0 when all checked.
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>

#include <mpi.h>

#include "isothreads/isothreads.hpp"

namespace {

constexpr int threads_per_rank = 3;
int finished_here = 0;  // threads that passed every check on this rank (main reads it)

// Frames with arrays, so that each stores and checks the canary; the deepest one checkpoints.
int checkpoint_deep(const std::string& dir, int depth) {
  char frame[48];
  std::snprintf(frame, sizeof frame, "depth %d", depth);
  if (depth == 0) {
    iso::checkpoint(dir);
  } else if (checkpoint_deep(dir, depth - 1) != depth - 1) {
    return -1;
  }
  return frame[6] - '0';  // read back from the frame: depth
}

void body(std::string dir) {
  jmp_buf jb;
  volatile int jumped = 0;
  if (setjmp(jb) == 0) {
    if (checkpoint_deep(dir, 4) != 4) {
      std::printf("HARDENED_FAIL frames returned wrong values on rank %d\n", iso::rank());
      return;
    }
    iso::this_thread::migrate_to((iso::rank() + 1) % iso::size());
    jumped = 1;
    longjmp(jb, 1);
  }
  if (jumped != 1) {
    std::printf("HARDENED_FAIL longjmp came back without the jump on rank %d\n", iso::rank());
    return;
  }
  std::printf("HARDENED_OK thread %s on rank %d\n", iso::this_thread::id().to_string().c_str(), iso::rank());
  ++finished_here;
}

}  // namespace

int main(int argc, char** argv) {
  iso::runtime rt(argc, argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: hardened_restart DIR [--iso-restart DIR]\n");
    return 2;
  }
  const std::string dir = argv[1];
  if (!rt.restarting()) {
    for (int i = 0; i < threads_per_rank; ++i) iso::spawn([dir] { body(dir); });
  }
  rt.run();
  int total = 0;
  MPI_Reduce(&finished_here, &total, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  if (rt.rank() == 0) std::printf("hardened_restart: %d threads\n", total);
  return 0;
}

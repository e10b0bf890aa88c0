// jacobi2d: a 2D Jacobi stencil over-decomposed into many more blocks than ranks. Each block is a
// migratable thread that owns its tile (in its own heap) and exchanges halos with iso::send/recv.
// A band of block rows does several times the work of the rest, and the band moves over time, so
// the load is imbalanced and the imbalance shifts. The program runs the same computation twice,
// without and with load balancing (lb::sync every few iterations), checks that both give the same
// result bit for bit, and prints the time per iteration, the speed-up, and how far the balanced
// run is from the ideal: the blocks' total work (their CPU time) spread evenly over the ranks.
// Times count the iterations only, from a barrier after every block has set up.
//
//   mpirun -n 4 build/examples/jacobi2d [--n 2048] [--blocks 8] [--iters 300] [--lb-every 10]
//                                       [--strategy refine] [--heavy 6] [--shift 100]
//                                       [--mode both|plain|balanced]
//                                       [--checkpoint-at K [--checkpoint-dir D]]
// With --checkpoint-at K every block checkpoints after iteration K; a later
//   mpirun -n M build/examples/jacobi2d <same options> --iso-restart D
// resumes the blocks there, on M ranks, and prints the same checksum as an uninterrupted run.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "isothreads/isothreads.hpp"

namespace {

struct options {
  int n = 2048;         // grid points per side
  int blocks = 8;       // blocks per side: blocks^2 threads
  int iters = 300;
  int lb_every = 10;    // iterations between lb::sync() calls
  int heavy = 6;        // work multiplier of the hot band
  int shift = 100;      // iterations before the hot band moves
  std::string strategy = "refine";
  std::string mode = "both";     // both, plain (no balancing) or balanced
  int checkpoint_at = 0;         // iteration after which every block checkpoints (0: never)
  std::string checkpoint_dir = "jacobi2d.ckpt";
};

// Halo directions; a halo travels with the iteration it belongs to.
enum dir : int { north = 0, south = 1, west = 2, east = 3 };
dir opposite(int d) { return static_cast<dir>(d ^ 1); }

// Per-rank results, indexed by block: each entry is written on exactly one rank (where the block
// finished) and is zero elsewhere, so a sum over ranks is exact.
std::vector<double> block_checksum, block_cpu;
// When the iterations started on this rank: the first block here to pass the set-up barrier.
std::chrono::steady_clock::time_point iterations_start;
bool iterations_started = false;

double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// The body of block (bx, by). Its tile has a one-point halo on each side.
void block_main(options o, int bx, int by, bool balance) {
  const std::vector<iso::thread_id> ids = [] {
    const iso::message m = iso::recv();  // the table of every block's thread id, from main
    std::vector<iso::thread_id> t(m.data.size() / sizeof(iso::thread_id));
    std::memcpy(t.data(), m.data.data(), m.data.size());
    return t;
  }();
  const int bs = o.n / o.blocks;  // tile side
  const int w = bs + 2;
  std::vector<double> u(static_cast<std::size_t>(w * w), 0.0), next(u.size(), 0.0);
  auto at = [w](std::vector<double>& a, int i, int j) -> double& { return a[static_cast<std::size_t>(i * w + j)]; };
  const bool top = by == 0;
  if (top) {  // the grid's top edge is held at 1
    for (int j = 0; j < w; ++j) at(u, 0, j) = at(next, 0, j) = 1.0;
  }
  iso::thread_id neighbour[4];
  if (by > 0) neighbour[north] = ids[static_cast<std::size_t>((by - 1) * o.blocks + bx)];
  if (by + 1 < o.blocks) neighbour[south] = ids[static_cast<std::size_t>((by + 1) * o.blocks + bx)];
  if (bx > 0) neighbour[west] = ids[static_cast<std::size_t>(by * o.blocks + bx - 1)];
  if (bx + 1 < o.blocks) neighbour[east] = ids[static_cast<std::size_t>(by * o.blocks + bx + 1)];

  std::vector<double> edge(static_cast<std::size_t>(bs) + 1);
  // Sends my edges for iteration `it`; element 0 is the iteration.
  auto send_edges = [&](int it) {
    for (int d = 0; d < 4; ++d) {
      if (!neighbour[d]) continue;
      edge[0] = it;
      for (int k = 0; k < bs; ++k) {
        edge[static_cast<std::size_t>(k) + 1] = d == north ? at(u, 1, k + 1) : d == south ? at(u, bs, k + 1)
                                              : d == west  ? at(u, k + 1, 1) : at(u, k + 1, bs);
      }
      iso::send(neighbour[d], edge.data(), edge.size() * sizeof(double), opposite(d));
    }
  };
  // The block's work: CPU time of placing halos, computing and sending, measured as one stretch
  // per iteration that cannot switch threads (the clock is the OS thread's, which runs the other
  // blocks while this one waits). A CPU-clock read is a system call (about 0.4 us), so there are
  // two per iteration: halos are collected first and placed inside the stretch.
  double cpu = 0;
  // Every block has set up once all pass this barrier (with balancing off, strategy "none", it
  // only synchronises). The time per iteration counts from here, like the work: setting up (the
  // first touch of the tiles) is neither. Nor is it load to balance: the first period's loads
  // would carry it, which dilutes the hot band's share and under-balances.
  iso::lb::set_load(0);
  iso::lb::sync();
  if (!iterations_started) {
    iterations_started = true;
    iterations_start = std::chrono::steady_clock::now();
  }
  {
    const double c0 = thread_cpu_seconds();
    send_edges(0);
    cpu += thread_cpu_seconds() - c0;
  }
  // Halos by side: this iteration's, and those that arrived for the next one (a neighbour runs at
  // most one iteration ahead).
  iso::message halo[4], early[4];
  for (int it = 0; it < o.iters; ++it) {
    // Collect my neighbours' edges: the tag says on which of my sides the halo goes.
    int expected = 0;
    for (int d = 0; d < 4; ++d) {
      if (!neighbour[d]) continue;
      if (!early[d].data.empty()) {
        halo[d] = std::move(early[d]);
        early[d] = iso::message{};
      } else {
        halo[d] = iso::message{};
        ++expected;
      }
    }
    while (expected > 0) {
      iso::message m = iso::recv();
      double iteration = 0;
      std::memcpy(&iteration, m.data.data(), sizeof iteration);
      if (static_cast<int>(iteration) == it && halo[m.tag].data.empty()) {
        halo[m.tag] = std::move(m);
        --expected;
      } else {
        early[m.tag] = std::move(m);
      }
    }
    const double c0 = thread_cpu_seconds();
    for (int d = 0; d < 4; ++d) {
      if (halo[d].data.empty()) continue;
      const auto* v = reinterpret_cast<const double*>(halo[d].data.data()) + 1;
      for (int k = 0; k < bs; ++k) {
        double& h = d == north ? at(u, 0, k + 1) : d == south ? at(u, bs + 1, k + 1)
                  : d == west  ? at(u, k + 1, 0) : at(u, k + 1, bs + 1);
        h = v[k];
      }
    }
    // Compute, then send the new edges at once, so that neighbours can go on while this block
    // waits. The hot band repeats the sweep: more work, same result.
    const int band = (it / o.shift) * (o.blocks / 4) % o.blocks;
    const int sweeps = (by >= band && by < band + o.blocks / 4) ? o.heavy : 1;
    for (int s = 0; s < sweeps; ++s) {
      for (int i = 1; i <= bs; ++i) {
        for (int j = 1; j <= bs; ++j) {
          at(next, i, j) = 0.25 * (at(u, i - 1, j) + at(u, i + 1, j) + at(u, i, j - 1) + at(u, i, j + 1));
        }
      }
    }
    std::swap(u, next);
    if (top) {
      for (int j = 0; j < w; ++j) at(u, 0, j) = 1.0;
    }
    if (it + 1 < o.iters) send_edges(it + 1);
    cpu += thread_cpu_seconds() - c0;
    if (balance && (it + 1) % o.lb_every == 0 && it + 1 < o.iters) iso::lb::sync();
    if (it + 1 == o.checkpoint_at) iso::checkpoint(o.checkpoint_dir);
  }
  double sum = 0;
  for (int i = 1; i <= bs; ++i) {
    for (int j = 1; j <= bs; ++j) sum += at(u, i, j) * (1 + (i * 31 + j * 17) % 7);
  }
  block_checksum[static_cast<std::size_t>(by * o.blocks + bx)] = sum;
  block_cpu[static_cast<std::size_t>(by * o.blocks + bx)] = cpu;
}

struct result {
  double seconds;
  double checksum;
  double cpu;  // total work of all blocks, in CPU seconds
};

void spawn_blocks(iso::runtime& rt, const options& o, bool balance);

// One computation. After a restart the blocks exist already (restored from the checkpoint): only
// run them.
result run_once(iso::runtime& rt, const options& o, bool balance, bool restored) {
  const int nb = o.blocks * o.blocks;
  block_checksum.assign(static_cast<std::size_t>(nb), 0.0);
  block_cpu.assign(static_cast<std::size_t>(nb), 0.0);
  iso::lb::set_strategy(balance ? o.strategy : "none");
  if (!restored) spawn_blocks(rt, o, balance);
  MPI_Barrier(MPI_COMM_WORLD);
  iterations_started = false;
  // For a restored run (its blocks passed the barrier before the checkpoint), or a rank without
  // blocks: from here.
  iterations_start = std::chrono::steady_clock::now();
  rt.run();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - iterations_start).count();
  MPI_Allreduce(MPI_IN_PLACE, block_checksum.data(), nb, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, block_cpu.data(), nb, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  double checksum = 0, cpu = 0;
  for (int b = 0; b < nb; ++b) {
    checksum += block_checksum[static_cast<std::size_t>(b)];
    cpu += block_cpu[static_cast<std::size_t>(b)];
  }
  double slowest = seconds;
  MPI_Allreduce(&seconds, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return {slowest, checksum, cpu};
}

void spawn_blocks(iso::runtime& rt, const options& o, bool balance) {
  const int nb = o.blocks * o.blocks;
  // Block b starts on rank b * size / nb: contiguous rows of blocks per rank, so the hot band sits
  // on one or two ranks.
  std::vector<std::uint64_t> ids(static_cast<std::size_t>(nb), 0);
  std::vector<iso::thread_id> mine;
  for (int b = 0; b < nb; ++b) {
    if (b * rt.size() / nb != rt.rank()) continue;
    const iso::thread_id t = iso::spawn([o, b, balance] { block_main(o, b % o.blocks, b / o.blocks, balance); },
                                        {.name = "block " + std::to_string(b)});
    ids[static_cast<std::size_t>(b)] = t.bits();
    mine.push_back(t);
  }
  MPI_Allreduce(MPI_IN_PLACE, ids.data(), nb, MPI_UINT64_T, MPI_BOR, MPI_COMM_WORLD);
  std::vector<iso::thread_id> table;
  for (std::uint64_t b : ids) table.push_back(iso::thread_id::from_bits(b));
  for (iso::thread_id t : mine) iso::send(t, table.data(), table.size() * sizeof(iso::thread_id));
}

int int_arg(const char* v, const char* name) {
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x <= 0 || x > 1 << 20) {
    std::fprintf(stderr, "jacobi2d: %s needs a positive integer, got '%s'\n", name, v);
    std::exit(2);
  }
  return static_cast<int>(x);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    // The runtime says nothing by default; this example shows its balancing steps (and
    // checkpoints), as the README's output does.
    iso::runtime_options ro = iso::runtime_options::from_environment();
    ro.verbosity = iso::verbosity::steps;
    iso::runtime rt(argc, argv, ro);
    options o;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string k = argv[i];
      if (k == "--n") o.n = int_arg(argv[i + 1], "--n");
      else if (k == "--blocks") o.blocks = int_arg(argv[i + 1], "--blocks");
      else if (k == "--iters") o.iters = int_arg(argv[i + 1], "--iters");
      else if (k == "--lb-every") o.lb_every = int_arg(argv[i + 1], "--lb-every");
      else if (k == "--heavy") o.heavy = int_arg(argv[i + 1], "--heavy");
      else if (k == "--shift") o.shift = int_arg(argv[i + 1], "--shift");
      else if (k == "--strategy") o.strategy = argv[i + 1];
      else if (k == "--mode") o.mode = argv[i + 1];
      else if (k == "--checkpoint-at") o.checkpoint_at = int_arg(argv[i + 1], "--checkpoint-at");
      else if (k == "--checkpoint-dir") o.checkpoint_dir = argv[i + 1];
      else {
        if (rt.rank() == 0) std::fprintf(stderr, "jacobi2d: unknown option %s\n", k.c_str());
        return 2;
      }
    }
    if (o.mode != "both" && o.mode != "plain" && o.mode != "balanced") {
      if (rt.rank() == 0) std::fprintf(stderr, "jacobi2d: --mode is both, plain or balanced\n");
      return 2;
    }
    if (o.n % o.blocks != 0 || o.blocks < 4) {
      if (rt.rank() == 0) std::fprintf(stderr, "jacobi2d: --n must be a multiple of --blocks, and --blocks >= 4\n");
      return 2;
    }
    iso::lb::by_name(o.strategy);  // an unknown name fails here, before any thread runs
    const int nb = o.blocks * o.blocks;
    if (rt.rank() == 0) {
      std::printf("jacobi2d: %dx%d grid, %dx%d blocks (%d threads) on %d ranks, %d iterations\n", o.n, o.n, o.blocks,
                  o.blocks, nb, rt.size(), o.iters);
      std::printf("          a band of %d block rows does %dx the work and moves every %d iterations\n",
                  o.blocks / 4, o.heavy, o.shift);
      std::fflush(stdout);
    }
    // One run's line (tests/mpi/checkpoint_restart.sh, bench/trace_overhead.sh and README.md read it).
    auto print_run = [&](const char* label, const result& r) {
      std::printf("%-21s : %7.2f ms/iteration (%.3f s)   checksum %.10e\n", label, r.seconds * 1e3 / o.iters, r.seconds,
                  r.checksum);
      std::fflush(stdout);
    };
    // The reference: the blocks' total work spread evenly over the ranks (at most one per core).
    auto print_ideal = [&](const char* what, const result& r) {
      const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
      const double ideal = r.cpu / std::min<double>(rt.size(), cores);
      std::printf("ideal (total work %.3f s / %d ranks on %u cores) %.3f s: %s at %.0f%% of ideal\n", r.cpu, rt.size(),
                  cores, ideal, what, 100.0 * r.seconds / ideal);
    };
    if (rt.restarting() || o.mode != "both") {
      // One computation: the checkpoint/restart runs and their reference.
      const bool balance = o.mode == "balanced";
      const result r = run_once(rt, o, balance, rt.restarting());
      if (rt.rank() == 0) {
        print_run(balance ? o.strategy.c_str() : "no balancing", r);
        print_ideal("this run", r);
        std::fflush(stdout);
      }
      return 0;
    }
    const result plain = run_once(rt, o, false, false);
    if (rt.rank() == 0) print_run("no balancing", plain);
    const result balanced = run_once(rt, o, true, false);
    if (rt.rank() == 0) {
      const iso::lb::step_report r = iso::lb::last_step();
      char label[64];  // e.g. "refine every 10 iters", 21 columns or more
      std::snprintf(label, sizeof label, "%-6s every %2d iters", o.strategy.c_str(), o.lb_every);
      print_run(label, balanced);
      std::printf("speed-up %.2fx; ", plain.seconds / balanced.seconds);
      print_ideal("balanced run", balanced);
      std::printf("result %s (last step moved %zu threads)\n",
                  plain.checksum == balanced.checksum ? "identical with and without balancing" : "DIFFERS",
                  r.threads_moved);
      std::fflush(stdout);
    }
    return plain.checksum == balanced.checksum ? 0 : 1;
  } catch (const iso::error& e) {
    std::fprintf(stderr, "jacobi2d: %s\n", e.what());
    return 1;
  }
}

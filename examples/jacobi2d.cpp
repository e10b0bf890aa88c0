// jacobi2d: a 2D Jacobi stencil over-decomposed into many more blocks than ranks. Each block is a
// migratable thread that owns its tile (in its own heap) and exchanges halos with iso::send/recv.
// A band of block rows does several times the work of the rest, and the band moves over time, so
// the load is imbalanced and the imbalance shifts. Halos are received by (neighbour, side); the
// blocks iterate until the residual, an iso::allreduce over the group of all blocks, is below
// --tol (at most --iters iterations), and their results are combined with iso::reduce. The
// program runs the same computation twice, without and with load balancing (lb::sync every few
// iterations), checks that both end after the same iterations with the same result bit for bit,
// and prints the time per iteration, the speed-up, and how far the balanced run is from the
// ideal: the blocks' total work (their CPU time) spread evenly over the ranks.
// Times count the iterations only, from a barrier after every block has set up.
//
//   mpirun -n 4 build/examples/jacobi2d [--n 2048] [--blocks 8] [--tol 7e-5] [--check-every 10]
//                                       [--iters 1000] [--lb-every 10]
//                                       [--strategy refine] [--heavy 6] [--shift 100]
//                                       [--mode both|plain|balanced]
//                                       [--checkpoint-at K [--checkpoint-dir D]]
// With --checkpoint-at K every block checkpoints after iteration K; a later
//   mpirun -n M build/examples/jacobi2d <same options> --iso-restart D
// resumes the blocks there, on M ranks, and prints the same checksum as an uninterrupted run.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "isothreads/isothreads.hpp"
#include "jacobi_sweep.hpp"

namespace {

struct options {
  int n = 2048;         // grid points per side
  int blocks = 8;       // blocks per side: blocks^2 threads
  int iters = 1000;     // the most iterations, if the residual stays above the tolerance
  double tolerance = 7e-5;  // iterate until the residual is below it (about 290 iterations at 2048^2)
  int check_every = 10;     // iterations between two computations of the residual
  int lb_every = 10;    // iterations between lb::sync() calls
  int heavy = 6;        // work multiplier of the hot band
  int shift = 100;      // iterations before the hot band moves
  std::string strategy = "refine";
  std::string mode = "both";     // both, plain (no balancing) or balanced
  int checkpoint_at = 0;         // iteration after which every block checkpoints (0: never)
  std::string checkpoint_dir = "jacobi2d.ckpt";
};

// Halo directions. A halo's tag is the side of the receiving tile it goes to; each neighbour sends
// one halo per side and iteration, and per (sender, tag) messages arrive in the order sent, so
// recv(neighbour, side) takes this iteration's halo whichever iterations are queued behind it.
enum dir : int { north = 0, south = 1, west = 2, east = 3 };
dir opposite(int d) { return static_cast<dir>(d ^ 1); }

// What the blocks found, combined over the group (iso::reduce at member 0, in index order, so
// the sums are the same bits wherever the blocks ran).
struct totals {
  double checksum = 0;  // the weighted sum of the final grid
  double cpu = 0;       // the blocks' work, in CPU seconds
};
totals add(totals a, totals b) { return {a.checksum + b.checksum, a.cpu + b.cpu}; }

// Written by the block that is member 0 of the group, on the rank where it ends, and zero
// elsewhere: a sum over ranks after run() is exact.
totals run_totals;
double run_iterations = 0, run_residual = 0;
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
  const iso::group blocks = [] {
    const iso::message m = iso::recv();  // every block's thread id, in block order, from main
    std::vector<iso::thread_id> t(m.data.size() / sizeof(iso::thread_id));
    std::memcpy(t.data(), m.data.data(), m.data.size());
    return iso::group(std::move(t));
  }();
  const int bs = o.n / o.blocks;  // tile side
  const std::size_t w = static_cast<std::size_t>(bs) + 2;
  std::vector<double> u(w * w, 0.0), next(u.size(), 0.0);
  auto row = [w](std::vector<double>& a, int i) { return a.data() + static_cast<std::size_t>(i) * w; };
  const bool top = by == 0;
  if (top) {  // the grid's top edge is held at 1
    std::fill_n(row(u, 0), w, 1.0);
    std::fill_n(row(next, 0), w, 1.0);
  }
  iso::thread_id neighbour[4];
  if (by > 0) neighbour[north] = blocks[static_cast<std::size_t>((by - 1) * o.blocks + bx)];
  if (by + 1 < o.blocks) neighbour[south] = blocks[static_cast<std::size_t>((by + 1) * o.blocks + bx)];
  if (bx > 0) neighbour[west] = blocks[static_cast<std::size_t>(by * o.blocks + bx - 1)];
  if (bx + 1 < o.blocks) neighbour[east] = blocks[static_cast<std::size_t>(by * o.blocks + bx + 1)];

  std::vector<double> column(static_cast<std::size_t>(bs));
  // Sends my edges: rows straight from the tile, columns through `column`.
  auto send_edges = [&] {
    for (int d = 0; d < 4; ++d) {
      if (!neighbour[d]) continue;
      const double* edge = column.data();
      if (d == north || d == south) {
        edge = row(u, d == north ? 1 : bs) + 1;
      } else {
        for (int k = 0; k < bs; ++k) column[static_cast<std::size_t>(k)] = row(u, k + 1)[d == west ? 1 : bs];
      }
      iso::send(neighbour[d], edge, static_cast<std::size_t>(bs) * sizeof(double), opposite(d));
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
    send_edges();
    cpu += thread_cpu_seconds() - c0;
  }
  // Iterates until the residual (the root mean square of one sweep's change over the whole grid)
  // is below the tolerance, at most o.iters times. The residual is computed every check_every
  // iterations (and after the last): summing the squared changes costs a sweep about half as much
  // again, and the allreduce makes every block wait for the slowest. Every block takes the same
  // decision: the residual is one allreduce over all blocks, combined in index order, so the same
  // bits at each wherever the blocks run.
  const double points = static_cast<double>(o.n) * o.n;
  int it = 0;
  double residual = 0;
  iso::message halo[4];
  for (;;) {
    for (int d = 0; d < 4; ++d) {
      if (neighbour[d]) halo[d] = iso::recv(neighbour[d], d);
    }
    const double c0 = thread_cpu_seconds();
    for (int d = 0; d < 4; ++d) {
      if (!neighbour[d]) continue;
      const auto* v = reinterpret_cast<const double*>(halo[d].data.data());
      if (d == north || d == south) {
        std::copy_n(v, bs, row(u, d == north ? 0 : bs + 1) + 1);
      } else {
        for (int k = 0; k < bs; ++k) row(u, k + 1)[d == west ? 0 : bs + 1] = v[k];
      }
    }
    // Compute, then send the new edges at once, so that neighbours can go on while this block
    // takes part in the residual's allreduce. The hot band repeats the sweep: more work, same
    // result.
    const int band = (it / o.shift) * (o.blocks / 4) % o.blocks;
    const int sweeps = (by >= band && by < band + o.blocks / 4) ? o.heavy : 1;
    ++it;
    const bool last_allowed = it == o.iters, check = it % o.check_every == 0 || last_allowed;
    for (int s = 1; s < sweeps; ++s) jacobi::sweep<false>(u.data(), next.data(), bs);
    const double change = check ? jacobi::sweep<true>(u.data(), next.data(), bs)
                                : jacobi::sweep<false>(u.data(), next.data(), bs);
    std::swap(u, next);
    if (top) std::fill_n(row(u, 0), w, 1.0);
    if (!last_allowed) send_edges();
    cpu += thread_cpu_seconds() - c0;
    if (check) {
      residual = std::sqrt(iso::allreduce(blocks, change, iso::sum) / points);
      if (residual < o.tolerance || last_allowed) break;
    }
    if (balance && it % o.lb_every == 0) iso::lb::sync();
    if (it == o.checkpoint_at) iso::checkpoint(o.checkpoint_dir);
  }
  // Having reached the tolerance before the last allowed iteration, every block sent edges for
  // an iteration that does not come: taken here, so that none arrives after its receiver has ended.
  if (it < o.iters) {
    for (int d = 0; d < 4; ++d) {
      if (neighbour[d]) iso::recv(neighbour[d], d);
    }
  }
  totals mine;
  for (int i = 1; i <= bs; ++i) {
    const double* r = row(u, i);
    for (int j = 1; j <= bs; ++j) mine.checksum += r[j] * (1 + (i * 31 + j * 17) % 7);
  }
  mine.cpu = cpu;
  const totals all = iso::reduce(blocks, mine, add, 0);
  if (blocks.index_of(iso::this_thread::id()) == 0) {
    run_totals = all;
    run_iterations = it;
    run_residual = residual;
  }
}

struct result {
  double seconds;
  double checksum;
  double cpu;  // total work of all blocks, in CPU seconds
  int iterations;
  double residual;  // of the last iteration
};
// The same computation: the same grid (checksum), after as many iterations, bit for bit.
bool identical(const result& a, const result& b) {
  return a.checksum == b.checksum && a.iterations == b.iterations && a.residual == b.residual;
}

void spawn_blocks(iso::runtime& rt, const options& o, bool balance);

// One computation. After a restart the blocks exist already (restored from the checkpoint): only
// run them.
result run_once(iso::runtime& rt, const options& o, bool balance, bool restored) {
  run_totals = {};
  run_iterations = run_residual = 0;
  iso::lb::set_strategy(balance ? o.strategy : "none");
  if (!restored) spawn_blocks(rt, o, balance);
  MPI_Barrier(MPI_COMM_WORLD);
  iterations_started = false;
  // For a restored run (its blocks passed the barrier before the checkpoint), or a rank without
  // blocks: from here.
  iterations_start = std::chrono::steady_clock::now();
  rt.run();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - iterations_start).count();
  double found[4] = {run_totals.checksum, run_totals.cpu, run_iterations, run_residual};
  MPI_Allreduce(MPI_IN_PLACE, found, 4, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  double slowest = seconds;
  MPI_Allreduce(&seconds, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return {slowest, found[0], found[1], static_cast<int>(found[2]), found[3]};
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

double positive_arg(const char* v, const char* name) {
  char* end = nullptr;
  const double x = std::strtod(v, &end);
  if (*end != '\0' || !(x > 0)) {
    std::fprintf(stderr, "jacobi2d: %s needs a positive number, got '%s'\n", name, v);
    std::exit(2);
  }
  return x;
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
      else if (k == "--tol") o.tolerance = positive_arg(argv[i + 1], "--tol");
      else if (k == "--check-every") o.check_every = int_arg(argv[i + 1], "--check-every");
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
      std::printf("jacobi2d: %dx%d grid, %dx%d blocks (%d threads) on %d ranks, until the residual < %g (at most %d "
                  "iterations)\n", o.n, o.n, o.blocks, o.blocks, nb, rt.size(), o.tolerance, o.iters);
      std::printf("          a band of %d block rows does %dx the work and moves every %d iterations\n",
                  o.blocks / 4, o.heavy, o.shift);
      std::fflush(stdout);
    }
    // One run's line (tests/mpi/checkpoint_restart.sh, bench/trace_overhead.sh and README.md read it).
    auto print_run = [&](const char* label, const result& r) {
      std::printf("%-21s : %7.2f ms/iteration (%.3f s)   checksum %.10e   %d iterations, residual %.3e\n", label,
                  r.seconds * 1e3 / r.iterations, r.seconds, r.checksum, r.iterations, r.residual);
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
                  identical(plain, balanced) ? "identical with and without balancing" : "DIFFERS", r.threads_moved);
      std::fflush(stdout);
    }
    return identical(plain, balanced) ? 0 : 1;
  } catch (const iso::error& e) {
    std::fprintf(stderr, "jacobi2d: %s\n", e.what());
    return 1;
  }
}

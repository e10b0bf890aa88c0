// Steal latency against a one-way migration of the same kind of thread, in the same run.
// A plain main, like bench_migration (Google Benchmark does not fit under mpirun):
//
//   mpirun -n 2 bench/bench_stealing
//
// Rank 0 prints ratio lines in bench/ratio.hpp's format. Each figure is the median over RUNS
// runs of each run's median, runs of the two kinds interleaved.
//
//   steal_latency   rank 0 runs many small stealable threads that yield in a loop (so it always
//                   has ready threads to give); rank 1 has none and stealing is on. A thread that
//                   finds itself on rank 1 records the time from the thief's last steal request
//                   (the engine's clock reading when it left, on rank 1) to that moment, and
//                   ends; rank 1, idle again, asks again. So one figure spans the request, the
//                   victim's answer at its next poll, the migration and the first run on the
//                   thief. The threads left on rank 0 end once it has given enough.
//     raw:          one-way migrations of the same kind of thread, stealing off: a driver on rank
//                   0 spawns them one at a time (and joins each); each reads the clock,
//                   migrate_to(1), and reads it again on rank 1 (CLOCK_MONOTONIC is the host's:
//                   run both ranks on one host). Like a stolen thread, each arrives at addresses
//                   rank 1 has never touched (first-touch page faults included on both sides); a
//                   thread migrating back and forth (bench_migration) finds its pages warm.
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "engine.hpp"
#include "isothreads/isothreads.hpp"
#include "ratio.hpp"
#include "scheduler.hpp"

namespace {

using iso::detail::now_ns;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n == 0 ? 0 : n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

constexpr int samples = 200;  // steals per run, after warm_steals
constexpr int warm_steals = 20;
constexpr int runs = 5;

// Written on rank 1 by stolen threads (globals: each rank has its own).
double g_latency_ns[warm_steals + samples];
int g_stolen = 0;
double g_migration_ns[warm_steals + samples];  // rank 1: one-way migrations of a baseline run
int g_migrated = 0;
std::uint64_t g_given_before = 0;  // rank 0: stealing_stats().given when a run starts

double steal_latency_run(iso::runtime& rt) {
  g_stolen = 0;
  g_given_before = iso::stealing_stats().given;
  iso::stealing(true);
  if (rt.rank() == 0) {
    // Two more than are taken: a victim keeps one ready thread, and the last steal must find two.
    for (int i = 0; i < warm_steals + samples + 2; ++i) {
      iso::spawn(
          [] {
            while (iso::rank() == 0) {
              if (iso::stealing_stats().given - g_given_before >= warm_steals + samples) return;
              iso::this_thread::yield();
            }
            const std::int64_t at = now_ns();
            const std::int64_t asked = iso::detail::engine::current()->steal_stats().last_request_ns;
            if (g_stolen < warm_steals + samples) g_latency_ns[g_stolen++] = static_cast<double>(at - asked);
          },
          iso::spawn_options{.stealable = true});
    }
  }
  rt.run();
  iso::stealing(false);
  double median_ns = 0;
  if (rt.rank() == 1) median_ns = median(std::vector<double>(g_latency_ns + warm_steals, g_latency_ns + g_stolen));
  double on_rank0 = 0;
  MPI_Reduce(&median_ns, &on_rank0, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  return on_rank0;
}

double migration_run(iso::runtime& rt) {
  g_migrated = 0;
  if (rt.rank() == 0) {
    iso::spawn([] {
      for (int i = 0; i < warm_steals + samples; ++i) {
        iso::join(iso::spawn([] {
          const std::int64_t left = now_ns();
          iso::this_thread::migrate_to(1);
          if (g_migrated < warm_steals + samples) g_migration_ns[g_migrated++] = static_cast<double>(now_ns() - left);
        }));
      }
    });
  }
  rt.run();
  double median_ns = 0;
  if (rt.rank() == 1) median_ns = median(std::vector<double>(g_migration_ns + warm_steals, g_migration_ns + g_migrated));
  double on_rank0 = 0;
  MPI_Reduce(&median_ns, &on_rank0, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  return on_rank0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    iso::runtime rt(argc, argv);
    if (rt.size() != 2) {
      if (rt.rank() == 0) std::fprintf(stderr, "bench_stealing needs 2 ranks (mpirun -n 2)\n");
      return 1;
    }
    std::vector<double> steal, migrate;
    for (int k = 0; k < runs; ++k) {
      migrate.push_back(migration_run(rt));
      steal.push_back(steal_latency_run(rt));
    }
    if (rt.rank() == 0) {
      iso_bench::print_ratio("steal_latency", median(steal), median(migrate), "ns");
      std::printf("info   steal_latency per run (ns):");
      for (double v : steal) std::printf(" %.0f", v);
      std::printf("; one-way migration per run (ns):");
      for (double v : migrate) std::printf(" %.0f", v);
      std::printf("\n");
    }
    return 0;
  } catch (const iso::error& e) {
    std::fprintf(stderr, "bench_stealing: %s\n", e.what());
    return 1;
  }
}

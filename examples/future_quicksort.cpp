// future_quicksort: fork-join with futures. A parallel quicksort: each task partitions its
// slice, hands the left part to a child (iso::async), moved to another rank, sorts the right part
// itself, and joins the child's sorted part with get(). Values travel back to whichever rank the
// parent is on; the result is checked against std::sort.
//
//   mpirun -n 4 build/examples/future_quicksort [elements]
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "isothreads/isothreads.hpp"

namespace {

constexpr std::size_t cutoff = 4096;  // slices this small are sorted by one task

// Sorted copy of v; depth numbers the fork level (children go to rank (rank + 1 + depth) mod P).
std::vector<int> sort_task(std::vector<int> v, int depth, int* tasks) {
  if (v.size() <= cutoff) {
    std::sort(v.begin(), v.end());
    return v;
  }
  const int pivot = v[v.size() / 2];
  std::vector<int> left, middle, right;
  for (int x : v) (x < pivot ? left : x == pivot ? middle : right).push_back(x);
  v = {};
  ++*tasks;
  // `tasks` counts on the rank where each task runs: each rank's main adds its own up.
  iso::future<std::vector<int>> child = iso::async([l = std::move(left), depth, tasks]() mutable {
    iso::this_thread::migrate_to((iso::rank() + 1 + depth) % iso::size());
    return sort_task(std::move(l), depth + 1, tasks);
  });
  std::vector<int> sorted_right = sort_task(std::move(right), depth + 1, tasks);
  std::vector<int> out = child.get();
  out.insert(out.end(), middle.begin(), middle.end());
  out.insert(out.end(), sorted_right.begin(), sorted_right.end());
  return out;
}

int g_tasks = 0;   // forks, counted on the rank each ran on (a global: every rank has its own)
int g_failed = 0;  // set on rank 0 by the checking thread

}  // namespace

int main(int argc, char** argv) {
  try {
    iso::runtime rt(argc, argv);
    const std::size_t n = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 200000;
    if (rt.rank() == 0) {
      iso::spawn([n] {
        std::mt19937 rng(12345);
        std::vector<int> v(n);
        for (int& x : v) x = static_cast<int>(rng() % 100000);
        std::vector<int> expected = v;
        std::sort(expected.begin(), expected.end());
        const std::vector<int> sorted = iso::async([v] { return sort_task(v, 0, &g_tasks); }).get();
        if (sorted != expected) {
          std::printf("future_quicksort: WRONG: the result is not the sorted input\n");
          g_failed = 1;
        }
      });
    }
    rt.run();
    int tasks = 0;
    MPI_Reduce(&g_tasks, &tasks, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rt.rank() == 0 && g_failed == 0) {
      std::printf("future_quicksort: %zu elements sorted by %d forks over %d ranks\n", n, tasks, rt.size());
    }
    return rt.rank() == 0 ? g_failed : 0;
  } catch (const iso::error& e) {
    std::fprintf(stderr, "future_quicksort: %s\n", e.what());
    return 1;
  }
}

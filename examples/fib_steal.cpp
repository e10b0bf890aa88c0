// fib_steal: irregular fork-join spread over the ranks by work stealing alone (no lb::sync, no
// migrate_to). All work starts on rank 0; idle ranks steal ready threads from busy ones.
//
//   mpirun -n 2 build/examples/fib_steal [fib N [CUTOFF]] [--no-steal]
//       fib(N) by futures (default fib 30): fib(n) = async(fib(n-1)).get() + fib(n-2), serial
//       below CUTOFF (default 12).
//   mpirun -n 2 build/examples/fib_steal tree [ROOT_CHILDREN [SEED]] [--no-steal]
//       an unbalanced tree search in the style of UTS's binomial trees: the root has
//       ROOT_CHILDREN children (default 500), every other node has 8 children with probability
//       0.124 and none otherwise (expected subtree sizes vary wildly), a node's children follow
//       from a hash of it; a task walks its part depth-first and hands the oldest half of its
//       stack to a new iso::async task whenever it holds more than 64 nodes.
//
// Prints the result, the time of run() on rank 0, and per rank the threads it finished and the
// threads it stole. Checks fib against the closed loop; exits nonzero if wrong.
#include <mpi.h>

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "isothreads/isothreads.hpp"

namespace {

std::uint64_t g_finished = 0;  // threads that finished on this rank (a global: one per rank)

// ---------------------------------------------------------------- fib

std::uint64_t serial_fib(int n) { return n < 2 ? static_cast<std::uint64_t>(n) : serial_fib(n - 1) + serial_fib(n - 2); }

std::uint64_t fib(int n, int cutoff) {
  if (n < cutoff) return serial_fib(n);
  iso::future<std::uint64_t> left = iso::async([n, cutoff] {
    const std::uint64_t v = fib(n - 1, cutoff);
    ++g_finished;  // counted where the thread ends
    return v;
  });
  const std::uint64_t right = fib(n - 2, cutoff);
  return left.get() + right;
}

std::uint64_t fib_loop(int n) {
  std::uint64_t a = 0, b = 1;
  for (int i = 0; i < n; ++i) {
    const std::uint64_t c = a + b;
    a = b;
    b = c;
  }
  return a;
}

// ---------------------------------------------------------------- tree search

// A node is its 64-bit hash; its children's hashes follow from it. The hash is iterated so that
// visiting a node costs about a microsecond, as UTS's SHA-1 does.
std::uint64_t child_hash(std::uint64_t parent, std::uint64_t i) {
  std::uint64_t z = parent ^ (i + 1) * 0x9e3779b97f4a7c15ull;
  for (int r = 0; r < 64; ++r) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
  }
  return z;
}

constexpr int tree_branching = 8;
constexpr std::uint64_t tree_p_per_mille = 124;  // chance (in 1/1000) that a node has children
constexpr std::size_t split_above = 64;          // a task holding more nodes hands half away

int children_of(std::uint64_t node) { return node % 1000 < tree_p_per_mille ? tree_branching : 0; }

// Nodes in the subtrees of `stack`, counted depth-first.
std::uint64_t explore(std::vector<std::uint64_t> stack) {
  std::uint64_t nodes = 0;
  std::vector<iso::future<std::uint64_t>> handed;
  while (!stack.empty()) {
    if (stack.size() > split_above) {
      // The oldest half (bottom of the stack: nearest the root, the biggest subtrees) goes.
      std::vector<std::uint64_t> half(stack.begin(), stack.begin() + static_cast<std::ptrdiff_t>(stack.size() / 2));
      stack.erase(stack.begin(), stack.begin() + static_cast<std::ptrdiff_t>(half.size()));
      handed.push_back(iso::async([half]() mutable {
        const std::uint64_t v = explore(std::move(half));
        ++g_finished;
        return v;
      }));
    }
    const std::uint64_t node = stack.back();
    stack.pop_back();
    ++nodes;
    for (int i = 0, n = children_of(node); i < n; ++i) stack.push_back(child_hash(node, static_cast<std::uint64_t>(i)));
  }
  for (auto& f : handed) nodes += f.get();
  return nodes;
}

std::uint64_t tree_search(int root_children, std::uint64_t seed) {
  std::vector<std::uint64_t> stack;
  for (int i = 0; i < root_children; ++i) stack.push_back(child_hash(seed, static_cast<std::uint64_t>(i)));
  return explore(std::move(stack)) + 1;  // and the root
}

// The same tree counted by one serial walk (the check).
std::uint64_t tree_serial(int root_children, std::uint64_t seed) {
  std::vector<std::uint64_t> stack;
  for (int i = 0; i < root_children; ++i) stack.push_back(child_hash(seed, static_cast<std::uint64_t>(i)));
  std::uint64_t nodes = 1;
  while (!stack.empty()) {
    const std::uint64_t node = stack.back();
    stack.pop_back();
    ++nodes;
    for (int i = 0, n = children_of(node); i < n; ++i) stack.push_back(child_hash(node, static_cast<std::uint64_t>(i)));
  }
  return nodes;
}

std::uint64_t g_result = 0;  // on rank 0: what the root thread computed

}  // namespace

int main(int argc, char** argv) {
  try {
    iso::runtime rt(argc, argv);
    bool steal = true, tree = false;
    std::vector<const char*> args;
    for (int i = 1; i < argc; ++i) {
      if (std::strcmp(argv[i], "--no-steal") == 0) {
        steal = false;
      } else if (std::strcmp(argv[i], "tree") == 0) {
        tree = true;
      } else if (std::strcmp(argv[i], "fib") != 0) {
        args.push_back(argv[i]);
      }
    }
    const long a0 = args.size() > 0 ? std::strtol(args[0], nullptr, 10) : (tree ? 500 : 30);
    const long a1 = args.size() > 1 ? std::strtol(args[1], nullptr, 10) : (tree ? 1 : 12);
    iso::stealing(steal);
    int wrong = 0;
    if (rt.rank() == 0) {
      iso::spawn([=] {
        g_result = tree ? tree_search(static_cast<int>(a0), static_cast<std::uint64_t>(a1))
                        : fib(static_cast<int>(a0), static_cast<int>(a1));
      });
    }
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    rt.run();
    const double seconds = MPI_Wtime() - t0;
    if (rt.rank() == 0) {  // checked outside the timed run
      const std::uint64_t expected = tree ? tree_serial(static_cast<int>(a0), static_cast<std::uint64_t>(a1))
                                          : fib_loop(static_cast<int>(a0));
      wrong = g_result != expected ? 1 : 0;
    }
    const iso::steal_stats st = iso::stealing_stats();
    const std::uint64_t mine[2] = {g_finished, st.stolen};
    std::vector<std::uint64_t> all(2 * static_cast<std::size_t>(rt.size()));
    MPI_Gather(mine, 2, MPI_UINT64_T, all.data(), 2, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    if (rt.rank() == 0) {
      if (tree) {
        std::printf("fib_steal: tree(%ld children, seed %ld) = %" PRIu64 " nodes%s in %.3f s on %d ranks, stealing %s\n",
                    a0, a1, g_result, wrong ? " WRONG" : "", seconds, rt.size(), steal ? "on" : "off");
      } else {
        std::printf("fib_steal: fib(%ld) = %" PRIu64 "%s (cutoff %ld) in %.3f s on %d ranks, stealing %s\n", a0, g_result,
                    wrong ? " WRONG" : "", a1, seconds, rt.size(), steal ? "on" : "off");
      }
      for (int r = 0; r < rt.size(); ++r) {
        std::printf("  rank %d: finished %" PRIu64 " threads, stole %" PRIu64 "\n", r, all[2 * static_cast<std::size_t>(r)],
                    all[2 * static_cast<std::size_t>(r) + 1]);
      }
    }
    return wrong;
  } catch (const iso::error& e) {
    std::fprintf(stderr, "fib_steal: %s\n", e.what());
    return 1;
  }
}

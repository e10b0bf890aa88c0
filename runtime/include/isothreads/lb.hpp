// Load balancing (Charm++'s AtSync model): every thread calls iso::lb::sync(); once all have, on
// every rank, the balancer gathers the threads' loads, runs its strategy, migrates threads, and
// resumes them all.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "isothreads/thread_id.hpp"

namespace iso::lb {

// What a strategy sees. Loads are in CPU seconds of the balancing period that just ended: the
// time each thread ran (or the value it set with set_load), and per rank the time spent neither
// running threads nor idle (progress, messaging, migration). Time a rank was preempted (ranks
// sharing a core, other processes) is not load: measured times are scaled by the share of its
// core the rank had while not idle.
struct thread_load {
  thread_id id;
  int rank = 0;              // where it is now
  double load = 0;           // seconds
  std::size_t bytes = 0;     // its live image size: what moving it costs
  bool movable = true;       // false: it holds an iso::mutex, so a move of it is not made
};
struct problem {
  std::vector<thread_load> threads;  // sorted by id
  std::vector<double> background;    // per rank, seconds
  int ranks = 0;
};

// Each rank's load in p: its background (0 where p.background has no entry) plus the loads of the
// threads on it. pre: every thread's rank is in [0, p.ranks). For strategies, and for the
// balancer's own before/after figures.
std::vector<double> rank_loads(const problem& p);

struct move {
  thread_id id;
  int from = 0;
  int to = 0;
};

// A strategy runs on every rank with the same problem and must return the same moves there:
// it must be deterministic (no clocks, no unseeded randomness, no rank-dependent input).
class strategy {
 public:
  virtual ~strategy() = default;
  virtual const char* name() const noexcept = 0;
  virtual std::vector<move> plan(const problem& p) = 0;
};

// Heaviest thread first, onto the least-loaded rank (ties: lower rank). Moves many threads.
// greedy and refine leave threads that are not movable where they are (their load stays there);
// rotate proposes to move them too (the balancer then skips those moves and counts them).
std::unique_ptr<strategy> greedy();
// Moves as few threads as it can: from ranks above (1 + tolerance) * average, heaviest fitting
// thread first, to the least-loaded ranks, each thread at most once.
std::unique_ptr<strategy> refine(double tolerance = 0.05);
// Every thread to the next rank: exercises migration.
std::unique_ptr<strategy> rotate();
// By name: "greedy", "refine", "rotate", or "none" (sync() still synchronises, nothing moves).
// Throws iso::error(invalid_argument) naming an unknown strategy.
std::unique_ptr<strategy> by_name(const std::string& name);

// The strategy of this rank's balancer; the same on every rank. Default: the environment
// variable ISO_LB (a name as for by_name), else greedy. The built-in factories above allocate from
// the system heap wherever they are called; a user strategy set from a migratable thread must be
// created inside an iso::system_heap_scope (the balancer keeps it on this rank, while the
// thread's heap moves and ends with it). Errors: (no_runtime), (invalid_argument) for a null
// strategy or one in a thread's heap.
void set_strategy(std::unique_ptr<strategy> s);
void set_strategy(const std::string& name);

// From every live migratable thread: blocks until the balancing step has run (threads that have
// finished are not waited for). Errors: (not_in_thread), (no_runtime).
void sync();

// Periodic mode: sync() points balance at most once per `period` (0: at every sync, the default);
// the others only synchronise.
void set_period(std::chrono::duration<double> period);

// The calling thread's load for the current period, in seconds, instead of its measured time.
// Error: (not_in_thread), (invalid_argument) for a negative load.
void set_load(double seconds);

// What the last balancing step did, on every rank.
struct step_report {
  std::size_t step = 0;                 // 1, 2, ...; 0: none yet
  std::string strategy;
  double max_over_avg_before = 0;       // max rank load / average rank load
  double max_over_avg_after = 0;        // predicted by the plan
  std::size_t threads_moved = 0;
  std::size_t threads_not_moved = 0;    // planned moves of threads that could not leave (holding an
                                        // iso::mutex): they stayed where they were
  std::size_t bytes_moved = 0;          // image bytes shipped, all ranks
  double seconds = 0;                   // the step's duration
};
step_report last_step();

}  // namespace iso::lb

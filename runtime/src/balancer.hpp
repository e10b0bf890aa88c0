// The load balancer of a rank: the AtSync step (iso::lb).
#pragma once

#include <mpi.h>

#include <memory>

#include "comm.hpp"
#include "engine.hpp"
#include "isothreads/lb.hpp"
#include "isothreads/runtime_options.hpp"
#include "scheduler.hpp"

namespace iso::detail {

// A step runs when every live thread on every rank waits in lb::sync() (the progress engine
// detects it in its termination rounds). Then, on every rank at once: gather each thread's load
// (its CPU time in the period: the scheduler's cycle counts scaled by the rank's share of its core
// while not idle; or the load it set) and each rank's background time; run the strategy (deterministic, so every rank gets the same moves);
// ship the threads that move; wait until this rank has received those that come; resume every
// thread. A planned move of a thread that cannot leave (it holds an iso::mutex) is not made, on
// every rank alike (the gather carries each thread's movability), and the report counts it: its
// destination must not wait for a thread that never departs.
// With verbosity::steps, rank 0 prints one line per step.
class balancer {
 public:
  // Collective (MPI_Comm_dup). strategy: a name for lb::by_name (throws iso::error for an unknown
  // one).
  balancer(MPI_Comm comm, scheduler& s, engine& e, const std::string& strategy, verbosity v);
  ~balancer();
  balancer(const balancer&) = delete;
  balancer& operator=(const balancer&) = delete;

  static balancer* current() noexcept;

  void set_strategy(std::unique_ptr<lb::strategy> s);
  void set_period(double seconds) noexcept { period_s_ = seconds; }
  lb::step_report last() const { return last_; }

  // Collective. pre: every live thread of every rank is blocked in lb::sync().
  void step() noexcept;

 private:
  // Starts a measuring period at at_ns (now_ns()): from here on, the scheduler's idle cycles and
  // idle CPU time, the cycle clock and this OS thread's CPU clock count against it. Threads' run cycles are reset by the caller.
  void start_period(std::int64_t at_ns) noexcept;

  scheduler& sched_;
  engine& engine_;
  private_comm comm_;
  int rank_;
  int size_;
  std::unique_ptr<lb::strategy> strategy_;
  verbosity verbosity_;
  double period_s_ = 0;
  // The current measuring period, set by start_period:
  std::int64_t period_start_ns_;         // its start
  std::uint64_t period_start_cycles_;    // prim::cycles() at its start
  std::uint64_t idle_at_start_;          // scheduler idle cycles at its start
  std::int64_t cpu_at_start_;            // prim::thread_cpu_ns() at its start
  std::int64_t idle_cpu_at_start_;       // scheduler idle CPU ns at its start
  std::int64_t last_balance_ns_;         // when a strategy last ran (periodic mode)
  lb::step_report last_;
};

}  // namespace iso::detail

#include "balancer.hpp"

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <numeric>

#include "diag.hpp"
#include "interpose.hpp"
#include "prim.hpp"
#include "trace.hpp"

namespace iso::detail {
namespace {

balancer* g_balancer = nullptr;

// One thread's entry in the gather: plain words, the same layout on every rank.
struct wire_load {
  std::uint64_t id;
  double load;          // seconds
  std::uint64_t bytes;  // live image bytes
  std::uint64_t movable;  // 1: it may leave (scheduler::movable); 0: it holds an iso::mutex
};
// One rank's entry.
struct wire_rank {
  double background;    // seconds
  double since_balance; // seconds since a strategy last ran
};

std::size_t live_image_bytes(tcb* t) {
  return t->home_heap->extent_bytes() +
         (static_cast<const char*>(t->stack.top()) - static_cast<const char*>(t->saved_sp()));
}

}  // namespace

balancer::balancer(MPI_Comm comm, scheduler& s, engine& e, const std::string& strategy, verbosity v)
    : sched_(s),
      engine_(e),
      comm_(comm),
      rank_(comm_.rank()),
      size_(comm_.size()),
      verbosity_(v),
      last_balance_ns_(now_ns()) {
  // set_strategy starts the first period: nothing reads the period's start before it.
  set_strategy(lb::by_name(strategy));
  g_balancer = this;
}

balancer::~balancer() { g_balancer = nullptr; }

balancer* balancer::current() noexcept { return g_balancer; }

void balancer::set_strategy(std::unique_ptr<lb::strategy> s) {
  if (s == nullptr) raise(errc::invalid_argument, "iso::lb::set_strategy: null strategy");
  // The balancer keeps it for the rank: memory of a thread's heap would move or end with the thread.
  if (in_region(s.get())) {
    raise(errc::invalid_argument,
          "iso::lb::set_strategy: the strategy object at %p was allocated in a migratable thread's heap, which "
          "moves and ends with the thread; create it in main, or inside an iso::system_heap_scope",
          static_cast<const void*>(s.get()));
  }
  strategy_ = std::move(s);
  // Measuring costs cycle-counter reads at switches; a balancer that never moves anything needs none.
  sched_.set_measure_load(std::string(strategy_->name()) != "none");
  // A new measuring period starts here: time before it was measured differently, or not at all.
  start_period(now_ns());
  sched_.for_each_thread([](tcb* t) { t->run_cycles = 0; });
}

void balancer::start_period(std::int64_t at_ns) noexcept {
  period_start_ns_ = at_ns;
  period_start_cycles_ = prim::cycles();
  idle_at_start_ = sched_.idle_cycles();
  cpu_at_start_ = prim::thread_cpu_ns();
  idle_cpu_at_start_ = sched_.idle_cpu_ns();
}

void balancer::step() noexcept {
  heap_scope system(nullptr);
  // Nothing is in flight and every thread waits (the round that started this step was stable):
  // forwarding pointers, tombstones and hints of the period can go.
  engine_.collect_locations();
  try {
    const std::int64_t t0 = now_ns();
    const std::uint64_t c0 = prim::cycles();
    const double cycles_per_s =
        t0 > period_start_ns_ ? static_cast<double>(c0 - period_start_cycles_) * 1e9 / static_cast<double>(t0 - period_start_ns_) : 1e9;
    const auto seconds = [&](std::uint64_t cycles) { return cycles_per_s > 0 ? static_cast<double>(cycles) / cycles_per_s : 0.0; };

    // Loads are CPU seconds. The cycles a thread ran count the time its rank was preempted too
    // (ranks sharing a core, other processes), so they are scaled by the share of its core the
    // rank had while not idle: this OS thread's CPU time over the wall time, idle spells excluded.
    const double wall = static_cast<double>(t0 - period_start_ns_) * 1e-9;
    const double idle = seconds(sched_.idle_cycles() - idle_at_start_);
    const double busy_cpu = static_cast<double>((prim::thread_cpu_ns() - cpu_at_start_) -
                                                (sched_.idle_cpu_ns() - idle_cpu_at_start_)) * 1e-9;
    const double busy_wall = wall - idle;
    const double share = busy_wall > 0 ? std::clamp(busy_cpu / busy_wall, 0.0, 1.0) : 1.0;

    // Loads of this rank's threads (all are in sync()), and the rank's background time.
    sys_vector<wire_load> mine;
    double running = 0;
    sched_.for_each_thread([&](tcb* t) {
      const double measured = seconds(t->run_cycles);
      running += measured;
      mine.push_back({t->id.bits(), t->set_load >= 0 ? t->set_load : measured * share, live_image_bytes(t),
                      scheduler::movable(t) ? 1u : 0u});
    });
    const wire_rank me{std::max(0.0, busy_wall - running) * share, static_cast<double>(t0 - last_balance_ns_) * 1e-9};

    // Everyone's, on every rank.
    sys_vector<wire_rank> ranks(static_cast<std::size_t>(size_));
    check_mpi(MPI_Allgather(&me, sizeof me, MPI_BYTE, ranks.data(), sizeof me, MPI_BYTE, comm_), "MPI_Allgather (lb)");
    const sys_vector<sys_vector<wire_load>> all = allgather_all(comm_, mine);

    lb::problem p;
    p.ranks = size_;
    double since_balance = 0;
    for (const wire_rank& r : ranks) {
      p.background.push_back(r.background);
      since_balance = std::max(since_balance, r.since_balance);
    }
    for (int r = 0; r < size_; ++r) {
      for (const wire_load& w : all[static_cast<std::size_t>(r)]) {
        p.threads.push_back({thread_id::from_bits(w.id), r, w.load, w.bytes, w.movable != 0});
      }
    }
    std::sort(p.threads.begin(), p.threads.end(), [](const auto& a, const auto& b) { return a.id < b.id; });

    // Plan (every rank the same) and check the plan against the problem.
    const bool due = period_s_ <= 0 || since_balance >= period_s_;
    std::vector<lb::move> moves = due ? strategy_->plan(p) : std::vector<lb::move>{};
    std::vector<double> load = lb::rank_loads(p);
    const double avg = std::accumulate(load.begin(), load.end(), 0.0) / size_;
    const double max_before = *std::max_element(load.begin(), load.end());
    const std::vector<double> load_before = load;
    std::vector<lb::move> valid;
    std::size_t unmovable = 0;
    for (const lb::move& m : moves) {
      auto it = std::lower_bound(p.threads.begin(), p.threads.end(), m.id,
                                 [](const lb::thread_load& t, thread_id id) { return t.id < id; });
      if (it == p.threads.end() || it->id != m.id || it->rank != m.from || m.to < 0 || m.to >= size_ || m.to == m.from) {
        if (rank_ == 0) {
          std::fprintf(stderr, "isothreads: strategy %s proposed an invalid move of thread %s from %d to %d; ignored\n",
                       strategy_->name(), m.id.to_string().c_str(), m.from, m.to);
        }
        continue;
      }
      if (!it->movable) {
        // It cannot leave until it unlocks, and nothing runs until the step ends: moving it would
        // leave its destination waiting for it. Every rank sees the same flag and skips it.
        ++unmovable;
        continue;
      }
      load[static_cast<std::size_t>(m.from)] -= it->load;
      load[static_cast<std::size_t>(m.to)] += it->load;
      it->rank = m.to;  // a second move of the same thread is now invalid
      valid.push_back(m);
    }
    const double max_after = *std::max_element(load.begin(), load.end());

    // Ship what leaves, wait for what comes.
    const auto before = engine_.stats();
    std::size_t expected = 0;
    for (const lb::move& m : valid) {
      if (m.from == rank_) engine_.migrate(m.id, m.to);
      if (m.to == rank_) ++expected;
    }
    while (engine_.stats().arrivals - before.arrivals < expected || engine_.in_flight() != 0) {
      if (!engine_.poll()) {
        const timespec pause{0, 20'000};
        nanosleep(&pause, nullptr);
      }
    }
    std::uint64_t bytes = engine_.stats().bytes_out - before.bytes_out, all_bytes = 0;
    check_mpi(MPI_Allreduce(&bytes, &all_bytes, 1, MPI_UINT64_T, MPI_SUM, comm_), "MPI_Allreduce (lb)");

    // Resume everyone; a new period starts.
    sched_.for_each_thread([](tcb* t) {
      t->run_cycles = 0;
      t->set_load = -1;
    });
    sched_.wake_all(wait_reason::sync);
    const std::int64_t t1 = now_ns();
    start_period(t1);
    if (due) last_balance_ns_ = t1;

    last_ = {last_.step + 1,
             strategy_->name(),
             avg > 0 ? max_before / avg : 1.0,
             avg > 0 ? max_after / avg : 1.0,
             valid.size(),
             unmovable,
             static_cast<std::size_t>(all_bytes),
             static_cast<double>(t1 - t0) * 1e-9};
    if (tracer* tr = tracer::current(); tr != nullptr && tr->enabled()) {
      tr->balanced(last_, t0, t1, rank_ == 0 ? load_before : std::vector<double>{},
                   rank_ == 0 ? load : std::vector<double>{});
    }
    if (rank_ == 0 && verbosity_ >= verbosity::steps) {
      std::printf("iso::lb step %zu (%s%s): max/avg load %.2f -> %.2f predicted, %zu threads moved, %.1f KiB, %.2f ms\n",
                  last_.step, last_.strategy.c_str(), due ? "" : ", not due", last_.max_over_avg_before,
                  last_.max_over_avg_after, last_.threads_moved, static_cast<double>(last_.bytes_moved) / 1024.0,
                  last_.seconds * 1e3);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    fatal("load-balancing step failed: %s", e.what());
  }
}

}  // namespace iso::detail

namespace iso::lb {
namespace {

detail::balancer& balancer_or_throw(const char* call) {
  return detail::runtime_part_or_throw(detail::balancer::current(), call);
}

}  // namespace

void set_strategy(std::unique_ptr<strategy> s) {
  detail::heap_scope system(nullptr);
  balancer_or_throw("iso::lb::set_strategy").set_strategy(std::move(s));
}

void set_strategy(const std::string& name) {
  detail::heap_scope system(nullptr);
  balancer_or_throw("iso::lb::set_strategy").set_strategy(by_name(name));
}

void sync() {
  balancer_or_throw("iso::lb::sync");
  detail::running_or_throw("iso::lb::sync");
  detail::scheduler::current()->block_running(detail::wait_reason::sync);
}

void set_period(std::chrono::duration<double> period) { balancer_or_throw("iso::lb::set_period").set_period(period.count()); }

void set_load(double seconds) {
  detail::tcb* self = detail::running_or_throw("iso::lb::set_load");
  if (!(seconds >= 0)) detail::raise(errc::invalid_argument, "iso::lb::set_load(%g): a load is a non-negative time in seconds", seconds);
  self->set_load = seconds;
}

step_report last_step() {
  detail::heap_scope system(nullptr);
  return balancer_or_throw("iso::lb::last_step").last();
}

}  // namespace iso::lb

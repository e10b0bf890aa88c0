// The progress engine of a rank under MPI: polling, idle back-off and distributed termination.
#pragma once

#include <mpi.h>

#include <cstdint>

#include "engine.hpp"
#include "scheduler.hpp"

namespace iso::detail {

// Termination detection: when idle, a rank joins a round of MPI_Iallreduce over the fields of
// round::field. Counters only grow, and a message counts as sent before it leaves and as received
// once handled, so two consecutive rounds with equal sums and sent == received (stable) mean that
// nothing was in flight at the second: every thread is then counted exactly once, on the rank
// that holds it (a thread travelling as an inline image inside a batch is held by no rank, and
// only sent != received shows it). On a stable round, the ranks finish (no live thread), start a
// balancing step (every live thread waits in lb::sync()), start a checkpoint (every live thread
// waits in iso::checkpoint()), or report a global deadlock (live threads, none sleeping or in
// transit). A decision needs a stable round so that all ranks, which see the same sums, decide
// the same.
// Work stealing leaves this as it is: a rank joins a round only while nothing is ready on it, and
// steal requests and "none" answers (not counted) neither carry nor wake a thread, while a thread
// a victim gives travels as any migration does (counted). So a rank that waits for a steal answer
// is idle like any other, and a round that finds every thread blocked is a deadlock whatever
// steals are under way: only ready threads are stolen. At the end of a run (and before a
// deadlock is raised) every rank takes the answer to its own request (engine::quiesce_steals).
namespace round {
enum field : std::size_t { live, sent, received, active, at_sync, at_checkpoint, fields };
}
enum class round_outcome { next_round, balance, checkpoint, finished, deadlock };
// What the sums of a completed round decide. last: the previous completed round's sums, or null.
// balancing / checkpointing: whether this runtime has a balancer / checkpointer.
round_outcome decide_round(const std::uint64_t* sum, const std::uint64_t* last, bool balancing,
                           bool checkpointing) noexcept;

class mpi_progress final : public progress_engine {
 public:
  // Collective (MPI_Comm_dup). The back-off times are runtime_options' (ns): see idle().
  // steal_seed: seeds the choice of steal victims (runtime_options::steal_seed), with the rank.
  mpi_progress(MPI_Comm comm, std::int64_t spin_ns, std::int64_t min_backoff_ns, std::int64_t max_backoff_ns,
               std::uint64_t steal_seed);
  ~mpi_progress() override;

  bool poll(scheduler& s) noexcept override;
  void idle(scheduler& s, std::int64_t max_ns) noexcept override;
  bool finished(scheduler& s) override;

  // The migration engine to poll and count, and the balancer whose steps run here; set once
  // they exist.
  void set_engine(engine* e) noexcept { engine_ = e; }
  void set_balancer(class balancer* b) noexcept { balancer_ = b; }
  void set_checkpointer(class checkpointer* c) noexcept { checkpointer_ = c; }

 private:
  // Starts a termination round, unless the last one started less than round_spacing_ns ago.
  void start_round(scheduler& s) noexcept;
  // Idle with stealing on: asks a random other rank for a thread, unless a request waits for its
  // answer or the steal back-off says not yet.
  void ask_for_work(std::int64_t now) noexcept;
  // This rank's steal request is out, at most min(spin_ns_, 2 * min_backoff_ns_) old, and the
  // steal delay below its cap: idle() gives the core away between polls instead of sleeping.
  bool awaiting_answer(std::int64_t now) const noexcept;
  // This rank sent a collective's blocks less than collective_due_ns ago and expects its answer
  // (rank_combiner::answer_expected_ns): a result for members blocked here, or the batches of
  // the other ranks for a member 0 here. Two messages and a rank's combining away: a few
  // microseconds (bench_collectives).
  bool collective_due(std::int64_t now) const noexcept {
    return engine_ != nullptr && now - engine_->combiner().answer_expected_ns() < collective_due_ns;
  }
  static constexpr std::int64_t collective_due_ns = 20'000;
  // Each poll (each pass of the idle loop, and the scheduler's polls between switches) reads the
  // clock once, once collectives ran here, and decides for its pass: due_, collective_due then
  // (finished() and idle() of the same idle pass take it instead of reading the clock again,
  // about 28 ns a read here, where a quiet pass is a few hundred); and quiet_, true when the poll
  // may skip the background work because a collective is due and the idle loop spins for it
  // (spin_on_due_): the region's returns and, in the idle pass it starts, steal requests asked or
  // answered, each an MPI probe of 100-250 ns here. The idle loop's period is the delay with
  // which the collective's message is seen, and a poll between switches is where the members
  // running meanwhile see it. At most quiet_every - 1 polls in a row skip it, so it runs at least
  // every 8 polls. pass_ns_: the clock that poll read (valid when due_; quiet_ implies due_).
  // Invariant: scheduler::run calls poll(), finished() and idle() in that order within one idle
  // pass, with nothing between them that makes a collective due or answers it, so the poll's
  // due_ and quiet_ are the pass's.
  static constexpr unsigned quiet_every = 8;
  bool due_ = false;
  bool quiet_ = false;
  unsigned quiet_run_ = 0;  // quiet polls in a row, up to the last one
  std::int64_t pass_ns_ = 0;

  // Idle back-off (runtime_options::idle_spin, min_backoff, max_backoff): for the first spin_ns_
  // of idleness, only give the core away (sched_yield) between polls, so that a halo or a reply a
  // few microseconds away is seen at once; then sleep, doubling from min_backoff_ns_ up to
  // max_backoff_ns_. Keeps 4 oversubscribed ranks on 2 cores from starving each other, while a
  // message still wakes a long-idle rank within max_backoff_ns_.
  const std::int64_t spin_ns_;
  const std::int64_t min_backoff_ns_;
  const std::int64_t max_backoff_ns_;
  // While a collective is due, idle() polls again at once instead of giving the core away
  // (sched_yield is a system call, longer than a poll that finds nothing), and finished() starts
  // and tests no termination round (it can decide nothing but a deadlock while members wait, and
  // every MPI call then drives it too). Bounded by collective_due_ns after each send, and only
  // where this node has a core for each of its ranks (spin_on_due_): oversubscribed ranks give
  // the core away as always, since the answer may need the core this one would keep.
  // spin_on_due_ counts this job's ranks on the node against the union of their affinity masks,
  // decided once at construction: it does not see other jobs on the node (two tests run at once,
  // other users), a cgroup CPU quota, or ranks sharing a core inside a large enough union (masks
  // {0}, {0}, {1,2}). Where it errs, the cost is the bound: collective_due_ns of polling without
  // yielding after a send, then the yield and the sleep as always.
  const bool spin_on_due_;

  private_comm comm_;
  engine* engine_ = nullptr;
  class balancer* balancer_ = nullptr;
  class checkpointer* checkpointer_ = nullptr;

  // A round starts at the first idle pass at least round_spacing_ns after the previous one
  // started. Starting one (MPI_Iallreduce) costs about 0.5 us; ranks that are idle most of the
  // time (a thread or a message in flight between two of them) complete a round in about a pass,
  // and starting the next at once made every other idle pass 0.5 us longer, and each arrival
  // that much later on average. A decision needs two rounds: run() returns, a step starts, a
  // deadlock is raised at most about 2 x round_spacing_ns later.
  static constexpr std::int64_t round_spacing_ns = 20'000;
  MPI_Request round_ = MPI_REQUEST_NULL;
  std::int64_t round_started_ns_ = 0;  // now_ns() when the last round started
  std::uint64_t mine_[round::fields] = {};
  std::uint64_t sum_[round::fields] = {};
  std::uint64_t last_[round::fields] = {};   // the previous completed round's sums
  bool have_last_ = false;
  std::int64_t idle_since_ns_ = -1;   // when the current idle spell began; -1: not idle
  std::int64_t backoff_ns_;           // the next idle sleep, grows while nothing happens

  // Steal back-off: after each "none", the next request waits steal_delay_ns_, doubling from
  // min_backoff_ns_ up to max_backoff_ns_ (so idle ranks ask at most once per max_backoff_ns_
  // once work is scarce); a stolen thread or any other work resets it. After a request, a rank
  // gives its core away between polls (no sleep) until the answer arrives, for at most
  // min(spin_ns_, 2 * min_backoff_ns_) (awaiting_answer): the answer is usually about 20 us
  // away. Not once the delay is at its cap: the rank then sleeps on as its idle back-off says,
  // waking at the latest when the next request is due.
  std::uint64_t victim_rng_;          // splitmix64 state: victims are uniform over the other ranks
  // Polls whose region returns failed (region::take_failure): the first is printed at once,
  // the count at the end.
  std::uint64_t return_failures_ = 0;
  std::int64_t steal_delay_ns_ = 0;
  std::int64_t steal_at_ns_ = 0;      // no request before this time
  std::uint64_t refused_seen_ = 0;    // engine's steal_stats().refused when last looked at
};

}  // namespace iso::detail

#include "progress.hpp"

#include <sched.h>
#include <time.h>

#include <algorithm>
#include <cstdio>

#include "balancer.hpp"
#include "checkpoint.hpp"
#include "checksum.hpp"
#include "diag.hpp"
#include "mpi_peers.hpp"
#include "region.hpp"

namespace iso::detail {

namespace {

// Whether this node has a core for each of comm's ranks on it: the cores any of them may run on
// (the union of their affinity masks: mpirun may bind each rank to a core of its own) number at
// least the ranks. A necessary condition only, and for this job's ranks only (progress.hpp,
// spin_on_due_). Collective over comm; throws iso::error(mpi_failure).
bool core_per_rank(MPI_Comm comm) {
  cpu_set_t mine;
  CPU_ZERO(&mine);
  // No affinity mask: this rank adds no core to the union. The answer is still the node's (the
  // other ranks' cores), so this rank too may spin while a collective is due: bounded, as below.
  if (sched_getaffinity(0, sizeof mine, &mine) != 0) CPU_ZERO(&mine);
  MPI_Comm node = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
  int ranks = 0;
  cpu_set_t any;
  CPU_ZERO(&any);
  int rc = MPI_Comm_size(node, &ranks);
  if (rc == MPI_SUCCESS) {
    static_assert(sizeof(cpu_set_t) % sizeof(unsigned long) == 0, "a cpu_set_t is a whole number of longs");
    rc = MPI_Allreduce(&mine, &any, static_cast<int>(sizeof(cpu_set_t) / sizeof(unsigned long)), MPI_UNSIGNED_LONG,
                       MPI_BOR, node);
  }
  const int freed = MPI_Comm_free(&node);
  check_mpi(rc, "MPI_Comm_size / MPI_Allreduce (cores of the node)");
  check_mpi(freed, "MPI_Comm_free");
  return ranks <= CPU_COUNT(&any);
}

}  // namespace

mpi_progress::mpi_progress(MPI_Comm comm, std::int64_t spin_ns, std::int64_t min_backoff_ns, std::int64_t max_backoff_ns,
                           std::uint64_t steal_seed)
    : spin_ns_(spin_ns),
      min_backoff_ns_(min_backoff_ns),
      max_backoff_ns_(max_backoff_ns),
      spin_on_due_(core_per_rank(comm)),
      comm_(comm),
      backoff_ns_(min_backoff_ns),
      victim_rng_(steal_seed ^ (static_cast<std::uint64_t>(comm_.rank()) + 1) * 0xd1b54a32d192ed03ull) {}

// A round still pending at the end is never completed (collectives cannot be cancelled); every
// rank returns from run() only after a completed round, so none is left by then.
mpi_progress::~mpi_progress() {
  if (return_failures_ > 1) {
    std::fprintf(stderr, "isothreads: rank %d: region returns failed in %llu polls in all\n", comm_.rank(),
                 static_cast<unsigned long long>(return_failures_));
  }
}

bool mpi_progress::poll(scheduler&) noexcept {
  // Whether a collective's message is due, and whether this poll skips the background work
  // (quiet_): a clock read only once collectives ran here.
  due_ = false;
  if (engine_ != nullptr && engine_->combiner().answer_expected_ns() != rank_combiner::never_ns) {
    pass_ns_ = now_ns();
    due_ = collective_due(pass_ns_);
  }
  quiet_ = spin_on_due_ && due_ && ++quiet_run_ < quiet_every;
  if (!quiet_) quiet_run_ = 0;
  const bool did = engine_ != nullptr && engine_->poll();
  if (did) {
    idle_since_ns_ = -1;
    backoff_ns_ = min_backoff_ns_;
    steal_delay_ns_ = 0;
    steal_at_ns_ = 0;
  }
  if (quiet_) return did;
  region& r = region::get();
  r.poll();
  if (char failure[failure_text_bytes]; r.take_failure(failure, sizeof failure)) {
    if (return_failures_++ == 0) {
      std::fprintf(stderr, "isothreads: rank %d: region returns: %s; tried again at every poll (reported once)\n",
                   comm_.rank(), failure);
    }
  }
  return did;
}

void mpi_progress::ask_for_work(std::int64_t now) noexcept {
  if (const std::uint64_t refused = engine_->steal_stats().refused; refused != refused_seen_) {
    refused_seen_ = refused;
    steal_delay_ns_ = steal_delay_ns_ == 0 ? min_backoff_ns_ : std::min(steal_delay_ns_ * 2, max_backoff_ns_);
    steal_at_ns_ = now + steal_delay_ns_;
  }
  if (now < steal_at_ns_) return;
  const int others = engine_->ranks() - 1;
  const std::uint64_t draw = splitmix64_mix(victim_rng_ += splitmix64_step);
  const int victim = (comm_.rank() + 1 + static_cast<int>(draw % static_cast<std::uint64_t>(others))) % engine_->ranks();
  engine_->request_steal(victim);
  // Once the steal delay is at its cap, work has been scarce for a while: the rank sleeps on as
  // its idle back-off says (the answer waits at most max_backoff_ns_ for it), so that idle ranks
  // sharing cores wake about once per max_backoff_ns_ instead of spinning after each request.
  if (steal_delay_ns_ >= max_backoff_ns_) return;
  // Before that, idle() polls for the answer without sleeping (awaiting_answer), and the sleeps
  // after it start short again.
  backoff_ns_ = min_backoff_ns_;
}

bool mpi_progress::awaiting_answer(std::int64_t now) const noexcept {
  // The answer is the victim's next poll (at most 10 us apart while it runs threads) plus a
  // migration away; a sleep would add its own length and the timer slack to that. One not there
  // within 2 x min_backoff (40 us by default: a steal takes about 20) is late because the victim
  // has no core: yielding on would take the core from ranks that share it, every request of an
  // idle spell (up to about 1 ms in all with a window of spin_ns_), so the rank sleeps instead.
  const std::int64_t window = std::min(spin_ns_, 2 * min_backoff_ns_);
  return engine_->stealing() && engine_->ranks() > 1 && !engine_->can_request_steal() &&
         steal_delay_ns_ < max_backoff_ns_ && now - engine_->steal_stats().last_request_ns < window;
}

void mpi_progress::idle(scheduler&, std::int64_t max_ns) noexcept {
  // The pass's poll() found a collective due and skips the background work (quiet_): the loop
  // polls again at once, with no clock read here.
  if (quiet_) {
    if (idle_since_ns_ < 0) idle_since_ns_ = pass_ns_;
    return;
  }
  const std::int64_t now = now_ns();
  if (idle_since_ns_ < 0) idle_since_ns_ = now;
  if (engine_ != nullptr) {
    if (engine_->can_request_steal()) {
      ask_for_work(now);
    } else if (!engine_->stealing()) {
      engine_->answer_steals_while_off();
    }
  }
  if (spin_on_due_ && due_) return;
  if (now - idle_since_ns_ < spin_ns_ || (engine_ != nullptr && awaiting_answer(now))) {
    sched_yield();
    return;
  }
  std::int64_t ns = backoff_ns_;
  if (max_ns >= 0) ns = std::min(ns, max_ns);
  // Wake for the next steal request, not a whole back-off after it is due.
  if (engine_ != nullptr && engine_->can_request_steal() && steal_at_ns_ > now) ns = std::min(ns, steal_at_ns_ - now);
  backoff_ns_ = std::min(backoff_ns_ * 2, max_backoff_ns_);
  if (ns <= 0) return;
  const timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
  nanosleep(&ts, nullptr);
}

void mpi_progress::start_round(scheduler& s) noexcept {
  const std::int64_t now = now_ns();
  if (now - round_started_ns_ < round_spacing_ns) return;
  round_started_ns_ = now;
  const work_counters c = engine_ != nullptr ? engine_->counters() : work_counters{};
  mine_[round::live] = s.live_threads() + (engine_ != nullptr ? engine_->in_flight() : 0);
  mine_[round::sent] = c.sent;
  mine_[round::received] = c.received;
  // A sleeping thread will wake, and one in transit will land: neither rank is stuck.
  mine_[round::active] = s.sleeping_threads() + (engine_ != nullptr ? engine_->in_flight() : 0);
  mine_[round::at_sync] = s.blocked(wait_reason::sync);
  mine_[round::at_checkpoint] = s.blocked(wait_reason::checkpoint);
  check_mpi_or_die(MPI_Iallreduce(mine_, sum_, static_cast<int>(round::fields), MPI_UINT64_T, MPI_SUM, comm_, &round_),
                   "MPI_Iallreduce (termination round)", -1);
}

round_outcome decide_round(const std::uint64_t* sum, const std::uint64_t* last, bool balancing,
                           bool checkpointing) noexcept {
  const bool stable =
      last != nullptr && sum[round::sent] == sum[round::received] && std::equal(sum, sum + round::fields, last);
  if (!stable) return round_outcome::next_round;
  if (balancing && sum[round::at_sync] != 0 && sum[round::at_sync] == sum[round::live]) return round_outcome::balance;
  if (checkpointing && sum[round::at_checkpoint] != 0 && sum[round::at_checkpoint] == sum[round::live]) {
    return round_outcome::checkpoint;
  }
  if (sum[round::live] == 0) return round_outcome::finished;
  if (sum[round::active] == 0) return round_outcome::deadlock;
  return round_outcome::next_round;
}

bool mpi_progress::finished(scheduler& s) {
  // As the pass's poll() found it (due_): no clock read here.
  if (due_) return false;
  if (round_ == MPI_REQUEST_NULL) {
    start_round(s);
    return false;
  }
  int done = 0;
  check_mpi_or_die(MPI_Test(&round_, &done, MPI_STATUS_IGNORE), "MPI_Test (termination round)", -1);
  if (!done) return false;
  const round_outcome outcome =
      decide_round(sum_, have_last_ ? last_ : nullptr, balancer_ != nullptr, checkpointer_ != nullptr);
  std::copy(sum_, sum_ + round::fields, last_);
  have_last_ = outcome == round_outcome::next_round;
  switch (outcome) {
    case round_outcome::balance:
      balancer_->step();
      return false;
    case round_outcome::checkpoint:
      checkpointer_->step();
      return false;
    case round_outcome::finished:
      if (engine_ != nullptr) engine_->quiesce_steals();
      return true;
    case round_outcome::deadlock:
      if (engine_ != nullptr) engine_->quiesce_steals();
      raise(errc::deadlock,
            "deadlock: %llu threads on all ranks are blocked (%zu on rank %d; %llu of them in lb::sync, "
            "which waits for every thread), no message or thread is in flight and no thread sleeps",
            static_cast<unsigned long long>(sum_[round::live]), s.live_threads(), s.rank(),
            static_cast<unsigned long long>(sum_[round::at_sync]));
    case round_outcome::next_round:
      break;
  }
  start_round(s);
  return false;
}

}  // namespace iso::detail

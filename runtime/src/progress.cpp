#include "progress.hpp"

#include <sched.h>
#include <time.h>

#include <algorithm>

#include "balancer.hpp"
#include "checkpoint.hpp"
#include "diag.hpp"
#include "mpi_peers.hpp"
#include "region.hpp"

namespace iso::detail {

mpi_progress::mpi_progress(MPI_Comm comm) : comm_(comm) {}

// A round still pending at the end is never completed (collectives cannot be cancelled); every
// rank returns from run() only after a completed round, so none is left by then.
mpi_progress::~mpi_progress() = default;

bool mpi_progress::poll(scheduler&) noexcept {
  const bool did = engine_ != nullptr && engine_->poll();
  if (did) {
    idle_since_ns_ = -1;
    backoff_ns_ = min_backoff_ns;
  }
  region::get().poll();
  return did;
}

void mpi_progress::idle(scheduler&, std::int64_t max_ns) noexcept {
  const std::int64_t now = now_ns();
  if (idle_since_ns_ < 0) idle_since_ns_ = now;
  if (now - idle_since_ns_ < spin_ns) {
    sched_yield();
    return;
  }
  std::int64_t ns = backoff_ns_;
  if (max_ns >= 0) ns = std::min(ns, max_ns);
  backoff_ns_ = std::min(backoff_ns_ * 2, max_backoff_ns);
  if (ns <= 0) return;
  const timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
  nanosleep(&ts, nullptr);
}

void mpi_progress::start_round(scheduler& s) noexcept {
  const work_counters c = engine_ != nullptr ? engine_->counters() : work_counters{};
  mine_[live] = s.live_threads() + (engine_ != nullptr ? engine_->in_flight() : 0);
  mine_[sent] = c.sent;
  mine_[received] = c.received;
  // A sleeping thread will wake, and one in transit will land: neither rank is stuck.
  mine_[active] = s.sleeping_threads() + (engine_ != nullptr ? engine_->in_flight() : 0);
  mine_[at_sync] = s.blocked(wait_reason::sync);
  mine_[at_checkpoint] = s.blocked(wait_reason::checkpoint);
  if (MPI_Iallreduce(mine_, sum_, fields, MPI_UINT64_T, MPI_SUM, comm_, &round_) != MPI_SUCCESS) {
    fatal("MPI_Iallreduce for termination detection failed");
  }
}

bool mpi_progress::finished(scheduler& s) {
  if (round_ == MPI_REQUEST_NULL) {
    start_round(s);
    return false;
  }
  int done = 0;
  MPI_Test(&round_, &done, MPI_STATUS_IGNORE);
  if (!done) return false;
  if (balancer_ != nullptr && sum_[at_sync] != 0 && sum_[at_sync] == sum_[live]) {
    // Every live thread everywhere waits in lb::sync(), and none is in transit (those count in
    // live only): all ranks saw the same sums, so all step now.
    have_last_ = false;
    balancer_->step();
    return false;
  }
  const bool quiet = sum_[sent] == sum_[received];
  const bool stable = have_last_ && quiet && std::equal(sum_, sum_ + fields, last_);
  std::copy(sum_, sum_ + fields, last_);
  have_last_ = true;
  if (checkpointer_ != nullptr && stable && sum_[at_checkpoint] != 0 && sum_[at_checkpoint] == sum_[live]) {
    // Every live thread waits in iso::checkpoint and nothing is in flight: a consistent cut.
    have_last_ = false;
    checkpointer_->step();
    return false;
  }
  if (stable && sum_[live] == 0) {
    have_last_ = false;
    return true;
  }
  if (stable && sum_[active] == 0) {
    have_last_ = false;
    raise(errc::deadlock,
          "deadlock: %llu threads on all ranks are blocked (%zu on rank %d; %llu of them in lb::sync, "
          "which waits for every thread), no message or thread is in flight and no thread sleeps",
          static_cast<unsigned long long>(sum_[live]), s.live_threads(), s.rank(),
          static_cast<unsigned long long>(sum_[at_sync]));
  }
  start_round(s);
  return false;
}

}  // namespace iso::detail

// The progress engine of a rank under MPI: polling, idle back-off and distributed termination.
#pragma once

#include <mpi.h>

#include <cstdint>

#include "scheduler.hpp"

namespace iso::detail {

// What a rank has sent and received of the messages that can create work elsewhere (thread
// messages, migrating threads, control messages). Termination needs sent == received globally.
struct work_counters {
  std::uint64_t sent = 0;
  std::uint64_t received = 0;
};

// Termination detection: when idle, a rank joins a round of MPI_Iallreduce over
// {live threads, sent, received, ranks with a timer pending}. run() may return once two
// consecutive rounds agree on sent == received with no live thread anywhere (the second round
// rules out a message that was in flight while the first was being taken). The same test with
// live threads but no timers anywhere is a global deadlock.
class mpi_progress final : public progress_engine {
 public:
  explicit mpi_progress(MPI_Comm comm);  // collective (MPI_Comm_dup)
  ~mpi_progress() override;

  bool poll(scheduler& s) noexcept override;
  void idle(scheduler& s, std::int64_t max_ns) noexcept override;
  bool finished(scheduler& s) override;

  work_counters& counters() noexcept { return counters_; }
  // Extra pollers (messaging, migration): each returns true if it did work.
  using poller = bool (*)(scheduler& s) noexcept;
  void add_poller(poller p) noexcept;

 private:
  void start_round(scheduler& s) noexcept;

  MPI_Comm comm_;
  work_counters counters_;
  static constexpr int max_pollers = 4;
  poller pollers_[max_pollers] = {};
  int npollers_ = 0;

  enum { live, sent, received, timers, fields };
  MPI_Request round_ = MPI_REQUEST_NULL;
  std::uint64_t mine_[fields] = {};
  std::uint64_t sum_[fields] = {};
  std::uint64_t last_[fields] = {};   // the previous completed round's sums
  bool have_last_ = false;
  std::int64_t backoff_ns_ = 0;       // current idle sleep, grows while nothing happens
};

}  // namespace iso::detail

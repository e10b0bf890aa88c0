// The trace recorder of a rank (iso::trace). Events are appended to a bounded buffer of compact
// records on the scheduler's OS thread; JSON is made only when the trace is written.
#pragma once

#include <mpi.h>

#include <string>
#include <vector>

#include "comm.hpp"
#include "engine.hpp"
#include "isothreads/lb.hpp"
#include "scheduler.hpp"

namespace iso::detail {

class tracer final : public engine_observer {
 public:
  static constexpr std::size_t max_events = std::size_t{2} << 20;

  // Collective (aligns the ranks' clocks). path: enable(path) at once, unless empty.
  tracer(MPI_Comm comm, scheduler& s, engine& e, const std::string& path);
  ~tracer() override;
  tracer(const tracer&) = delete;
  tracer& operator=(const tracer&) = delete;

  static tracer* current() noexcept;

  void enable(const std::string& path);
  bool enabled() const noexcept { return !path_.empty(); }

  void departed(thread_id t, std::uint32_t epoch, int to, std::uint64_t bytes, std::int64_t start_ns,
                std::int64_t end_ns, bool steal) noexcept override;
  void arrived(thread_id t, std::uint32_t epoch, int from, std::uint64_t bytes, std::int64_t at_ns,
               bool steal) noexcept override;
  void sent(thread_id from, thread_id to, int to_rank, std::uint64_t bytes, int tag, std::int64_t at_ns) noexcept override;
  // A balancing step, on every rank; rank 0 also gives the per-rank loads before and after.
  void balanced(const lb::step_report& r, std::int64_t start_ns, std::int64_t end_ns,
                const std::vector<double>& before, const std::vector<double>& after) noexcept;

  // Collective, at the end of run(): rank 0 writes every rank's events so far. Throws
  // iso::error(io_failure) on rank 0 if the file cannot be written.
  void write();

 private:
  enum class kind : std::uint8_t { run, depart, arrive, send, lb };
  // One event: 56 bytes. By kind: depart (peer = to, b = bytes, c = epoch, a = 1 for a steal),
  // arrive (peer = from, b = bytes, c = epoch, a = 1 for a steal), send (a = to thread, peer = to rank, b = bytes, c = tag),
  // lb (a = index into steps_).
  struct event {
    std::int64_t ts_ns;
    std::int64_t dur_ns;
    std::uint64_t thread;  // thread_id bits; 0 for the runtime lane
    std::uint64_t a;
    std::uint64_t b;
    std::int32_t c;
    std::int32_t peer;     // the other rank
    kind k;
  };
  static_assert(sizeof(event) == 56);
  struct step {
    lb::step_report report;
    std::vector<double> before, after;
  };

  void push(const event& e) noexcept;
  static void on_run(tcb* t, std::int64_t start_ns, std::int64_t end_ns) noexcept;
  std::string to_json() const;  // this rank's events, comma-separated

  scheduler& sched_;
  engine& engine_;
  private_comm comm_;
  int rank_;
  int size_;
  std::int64_t origin_ns_;              // the trace's time zero, in this rank's clock
  std::string path_;
  sys_vector<event> events_;
  std::uint64_t dropped_ = 0;
  sys_unordered_map<std::uint64_t, std::string> names_;  // threads seen here: lane names
  std::vector<step> steps_;
};

}  // namespace iso::detail

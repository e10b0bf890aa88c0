// Work stealing: steal requests, "none" answers, and handing a thread to a thief (protocol in
// engine.hpp, "work stealing"). When and whom to ask is the progress engine's (runtime/src/
// progress.cpp): this file only moves the messages and the threads. Part of the engine.
#include <time.h>

#include "diag.hpp"
#include "engine.hpp"
#include "interpose.hpp"
#include "isothreads/stealing.hpp"

namespace iso::detail {
namespace {

// Steal messages carry no payload: the tag says what it is, the source who sent it.
const unsigned char g_no_payload = 0;

// With stealing on, the scheduler polls at the first switch this long (ns) after its last poll,
// direct switches between threads included: a request waits for the victim's next poll, half of
// this on average. An empty poll costs about 0.3 us; polling every 4 us throughout made fib(36)
// on 2 ranks 11 % slower than at 10 us (0.048 s against 0.043), so the short interval holds only
// while a thief is near: for thief_near_ns after a request reached this rank, since an idle
// thief asks again soon, as its stolen thread ends or its back-off after a "none" runs out (20 us
// at first). bench_stealing: a steal's request waited 3.8 us (median) for the victim's poll at
// 10 us, 1.4 us at 4 us; a steal took 1.58x a one-way migration, 1.12-1.17x with this.
constexpr std::int64_t steal_poll_interval_ns = 10'000;
constexpr std::int64_t near_thief_poll_interval_ns = 4'000;
constexpr std::int64_t thief_near_ns = 50'000;

}  // namespace

void engine::post_steal(int dest, int tag) noexcept {
  heap_scope system(nullptr);
  try {
    steal_send& s = steal_sends_.emplace_back();
    s.dest = dest;
    check_mpi_or_die(mpi_call("MPI_Isend", [&] {
                       return MPI_Isend(&g_no_payload, 0, MPI_BYTE, dest, tag, steal_comm_, &s.request[0]);
                     }),
                     tag == tag_steal_request ? "MPI_Isend (steal request)" : "MPI_Isend (steal answer)", dest);
  } catch (const std::bad_alloc&) {
    fatal("out of system memory for a steal message to rank %d", dest);
  }
}

void engine::set_stealing(bool on) noexcept {
  stealing_ = on;
  thief_near_until_ns_ = 0;
  sched_.set_poll_interval_ns(on && size_ > 1 ? steal_poll_interval_ns : 0);
}

void engine::request_steal(int victim) noexcept {
  ISO_ASSERT_INTERNAL(can_request_steal() && victim != rank_ && victim >= 0 && victim < size_);
  steal_outstanding_ = true;
  ++steal_stats_.requests;
  steal_stats_.last_request_ns = now_ns();
  post_steal(victim, tag_steal_request);
}

bool engine::answer_steal(int thief) noexcept {
  tcb* t = stealing_ && !quiescing_ ? sched_.oldest_stealable() : nullptr;
  if (t == nullptr) {
    post_steal(thief, tag_steal_none);
    return false;
  }
  ++steal_stats_.given;
  t->stolen = true;
  t->pending_dest = thief;
  depart(t);
  return true;
}

bool engine::poll_steals() noexcept {
  heap_scope system(nullptr);
  bool gave = false;
  complete(steal_sends_, [](steal_send& s) -> auto& { return s.request; }, [](steal_send& s) { return s.dest; },
           [](steal_send&) {});
  // At most one request from each other rank can be waiting (a thief asks one victim at a time),
  // and one answer to this rank's request: the loop ends. A miss looks once more: MPI_Iprobe
  // (Open MPI's ob1) matches what was received before it makes progress, so a request that
  // reached this rank since the last poll shows only at a second look, and without it waited
  // for the rest of the poll (about 3 us) and most often the next one. Off, this rank only
  // answers "none" while idle: one look per pass, as before.
  for (bool looked_again = !stealing_;;) {
    int flag = 0;
    MPI_Status st;
    check_mpi_or_die(mpi_call("MPI_Iprobe", [&] { return MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, steal_comm_, &flag, &st); }),
                     "MPI_Iprobe (steal)", -1);
    if (!flag && !looked_again) {
      looked_again = true;
      continue;
    }
    if (!flag) break;
    unsigned char none = 0;
    check_mpi_or_die(mpi_call("MPI_Recv", [&] {
                       return MPI_Recv(&none, 0, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, steal_comm_, MPI_STATUS_IGNORE);
                     }),
                     "MPI_Recv (steal)", st.MPI_SOURCE);
    if (st.MPI_TAG == tag_steal_request) {
      if (stealing_) {
        if (thief_near_until_ns_ == 0) sched_.set_poll_interval_ns(near_thief_poll_interval_ns);
        thief_near_until_ns_ = now_ns() + thief_near_ns;
      }
      gave = answer_steal(st.MPI_SOURCE) || gave;
    } else {
      ISO_ASSERT(st.MPI_TAG == tag_steal_none && steal_outstanding_);
      steal_outstanding_ = false;
      ++steal_stats_.refused;
    }
  }
  if (thief_near_until_ns_ != 0 && now_ns() >= thief_near_until_ns_) {
    thief_near_until_ns_ = 0;
    sched_.set_poll_interval_ns(steal_poll_interval_ns);
  }
  return gave;
}

void engine::answer_steals_while_off() noexcept {
  if (!stealing_ && size_ > 1) (void)poll_steals();  // off: every answer is "none"
}

void engine::note_stolen_arrival(tcb* t) noexcept {
  if (!t->stolen) return;
  // Only an answer to this rank's request carries the flag: a victim sets it for the thief only.
  ISO_ASSERT_INTERNAL(steal_outstanding_);
  t->stolen = false;
  steal_outstanding_ = false;
  ++steal_stats_.stolen;
}

void engine::quiesce_steals() noexcept {
  heap_scope system(nullptr);
  quiescing_ = true;
  const timespec pause{0, 20'000};  // between polls: ranks may share cores
  while (steal_outstanding_) {
    // The run ended with no thread ready and none in flight anywhere: the answer is "none".
    if (!poll()) nanosleep(&pause, nullptr);
  }
  // Every rank here has its answer, so every request was received; answers still go out to
  // ranks that have not arrived yet.
  MPI_Request barrier = MPI_REQUEST_NULL;
  check_mpi_or_die(mpi_call("MPI_Ibarrier", [&] { return MPI_Ibarrier(steal_comm_, &barrier); }), "MPI_Ibarrier (steal)",
                   -1);
  for (;;) {
    int done = 0;
    check_mpi_or_die(mpi_call("MPI_Test", [&] { return MPI_Test(&barrier, &done, MPI_STATUS_IGNORE); }),
                     "MPI_Test (steal barrier)", -1);
    if (done) break;
    if (!poll_steals()) nanosleep(&pause, nullptr);
  }
  // Each answer this rank sent was taken by its thief before the barrier, each request by its
  // victim: these sends complete.
  for (steal_send& s : steal_sends_) {
    check_mpi_or_die(mpi_call("MPI_Wait", [&] { return MPI_Wait(&s.request[0], MPI_STATUS_IGNORE); }), "MPI_Wait (steal)",
                     s.dest);
  }
  steal_sends_.clear();
  quiescing_ = false;
}

}  // namespace iso::detail

namespace iso {

void stealing(bool on) { detail::runtime_part_or_throw(detail::engine::current(), "iso::stealing").set_stealing(on); }

bool stealing() noexcept {
  const detail::engine* e = detail::engine::current();
  return e != nullptr && e->stealing();
}

steal_stats stealing_stats() {
  const detail::engine::steal_stats_t s =
      detail::runtime_part_or_throw(detail::engine::current(), "iso::stealing_stats").steal_stats();
  return {s.requests, s.stolen, s.refused, s.given};
}

}  // namespace iso

// Work stealing: steal requests, "none" answers, and handing a thread to a thief (protocol in
// engine.hpp, "work stealing"). When and whom to ask is the progress engine's (runtime/src/
// progress.cpp): this file only moves the messages and the threads. Part of the engine.
#include <time.h>

#include <atomic>
#include <cstdio>
#include <new>

#include "diag.hpp"
#include "engine.hpp"
#include "interpose.hpp"
#include "isothreads/stealing.hpp"

namespace iso::detail {
namespace {

// Steal messages carry no payload: the tag says what it is, the source who sent it.
const unsigned char g_no_payload = 0;

// With stealing on, the scheduler polls at the first switch this long (ns) after its last poll,
// direct switches between threads included: a request from another node waits for the victim's
// next poll, half of this on average (one from the same node rings the victim's doorbell, and
// the victim polls at its next switch). A poll costs about a microsecond; at 10 us, fib(36) on 2 ranks still runs
// 1.95x as fast as on 1 (5 us: 1.49x), and a steal takes about 20 us instead of 30-40 at 50 us
// (bench_stealing, steal_speedup.sh).
constexpr std::int64_t steal_poll_interval_ns = 10'000;

}  // namespace

engine::doorbells::doorbells(MPI_Comm comm) {
  heap_scope system(nullptr);
  int rank = 0, size = 0;
  check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank (doorbells)");
  check_mpi(MPI_Comm_size(comm, &size), "MPI_Comm_size (doorbells)");
  if (size == 1) return;
  check_mpi(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node_), "MPI_Comm_split_type (doorbells)");
  check_mpi(MPI_Comm_set_errhandler(node_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler (doorbells)");
  // A cache line each, apart: a ring invalidates only its victim's line.
  constexpr MPI_Aint line = 64;
  void* mine = nullptr;
  MPI_Info info = MPI_INFO_NULL;
  check_mpi(MPI_Info_create(&info), "MPI_Info_create (doorbells)");
  check_mpi(MPI_Info_set(info, "alloc_shared_noncontig", "true"), "MPI_Info_set (doorbells)");
  const int rc = MPI_Win_allocate_shared(line, 1, info, node_, &mine, &win_);
  check_mpi(MPI_Info_free(&info), "MPI_Info_free (doorbells)");
  // The same outcome on every rank of the node (the call is collective): a node without shared
  // memory windows simply has no doorbells, and steal requests wait for the victim's timed poll.
  if (rc != MPI_SUCCESS) {
    win_ = MPI_WIN_NULL;
    return;
  }
  new (mine) std::atomic<std::uint32_t>(0);
  MPI_Group world_group = MPI_GROUP_NULL, node_group = MPI_GROUP_NULL;
  check_mpi(MPI_Comm_group(comm, &world_group), "MPI_Comm_group (doorbells)");
  check_mpi(MPI_Comm_group(node_, &node_group), "MPI_Comm_group (doorbells)");
  sys_vector<int> ranks(static_cast<std::size_t>(size)), on_node(static_cast<std::size_t>(size));
  for (int r = 0; r < size; ++r) ranks[static_cast<std::size_t>(r)] = r;
  check_mpi(MPI_Group_translate_ranks(world_group, size, ranks.data(), node_group, on_node.data()),
            "MPI_Group_translate_ranks (doorbells)");
  check_mpi(MPI_Group_free(&world_group), "MPI_Group_free (doorbells)");
  check_mpi(MPI_Group_free(&node_group), "MPI_Group_free (doorbells)");
  bells_.assign(static_cast<std::size_t>(size), nullptr);
  for (int r = 0; r < size; ++r) {
    const int n = on_node[static_cast<std::size_t>(r)];
    if (n == MPI_UNDEFINED) continue;
    MPI_Aint bytes = 0;
    int unit = 0;
    void* base = nullptr;
    check_mpi(MPI_Win_shared_query(win_, n, &bytes, &unit, &base), "MPI_Win_shared_query (doorbells)");
    bells_[static_cast<std::size_t>(r)] = static_cast<std::atomic<std::uint32_t>*>(base);
  }
  // Every word is initialised before any rank can ring one.
  check_mpi(MPI_Barrier(node_), "MPI_Barrier (doorbells)");
}

engine::doorbells::~doorbells() {
  // Collective, as every engine ends together; a failure only leaks the window.
  if (win_ != MPI_WIN_NULL && MPI_Win_free(&win_) != MPI_SUCCESS) {
    std::fprintf(stderr, "isothreads: MPI_Win_free of the steal doorbells failed\n");
  }
  if (node_ != MPI_COMM_NULL && MPI_Comm_free(&node_) != MPI_SUCCESS) {
    std::fprintf(stderr, "isothreads: MPI_Comm_free of the steal doorbells' communicator failed\n");
  }
}

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
  sched_.set_poll_interval_ns(on && size_ > 1 ? steal_poll_interval_ns : 0);
}

void engine::request_steal(int victim) noexcept {
  ISO_ASSERT_INTERNAL(can_request_steal() && victim != rank_ && victim >= 0 && victim < size_);
  steal_outstanding_ = true;
  ++steal_stats_.requests;
  steal_stats_.last_request_ns = now_ns();
  post_steal(victim, tag_steal_request);
  // After the send: a victim that polls at the ring finds the request (shared memory's eager
  // sends are in its queue when MPI_Isend returns).
  if (std::atomic<std::uint32_t>* bell = bells_.of(victim)) bell->store(1, std::memory_order_release);
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
  // Cleared before looking, so that a ring after this poll makes the next switch poll again.
  if (std::atomic<std::uint32_t>* bell = bells_.of(rank_); bell != nullptr && bell->load(std::memory_order_relaxed) != 0) {
    bell->store(0, std::memory_order_relaxed);
  }
  complete(steal_sends_, [](steal_send& s) -> auto& { return s.request; }, [](steal_send& s) { return s.dest; },
           [](steal_send&) {});
  // At most one request from each other rank can be waiting (a thief asks one victim at a time),
  // and one answer to this rank's request: the loop ends.
  for (;;) {
    int flag = 0;
    MPI_Status st;
    check_mpi_or_die(mpi_call("MPI_Iprobe", [&] { return MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, steal_comm_, &flag, &st); }),
                     "MPI_Iprobe (steal)", -1);
    if (!flag) break;
    unsigned char none = 0;
    check_mpi_or_die(mpi_call("MPI_Recv", [&] {
                       return MPI_Recv(&none, 0, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, steal_comm_, MPI_STATUS_IGNORE);
                     }),
                     "MPI_Recv (steal)", st.MPI_SOURCE);
    if (st.MPI_TAG == tag_steal_request) {
      gave = answer_steal(st.MPI_SOURCE) || gave;
    } else {
      ISO_ASSERT(st.MPI_TAG == tag_steal_none && steal_outstanding_);
      steal_outstanding_ = false;
      ++steal_stats_.refused;
    }
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

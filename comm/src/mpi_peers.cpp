#include "mpi_peers.hpp"

#include <sched.h>

#include <chrono>

#include "diag.hpp"

namespace iso::detail {

mpi_region_peers::mpi_region_peers(MPI_Comm comm)
    : user_comm_(comm),
      comm_(comm),
      returns_(comm_, tag_return, comm_.size(), window, flush_bytes, batcher::on_failure::retry, "region-returns") {
  sent_to_.assign(static_cast<std::size_t>(comm_.size()), 0);
}

int mpi_region_peers::receive(const MPI_Status& status, const char** call) noexcept {
  int count = 0;  // bytes
  *call = "region-returns:MPI_Get_count";
  int rc = mpi_call(*call, [&] { return MPI_Get_count(&status, MPI_BYTE, &count); });
  if (rc != MPI_SUCCESS) return rc;
  sys_vector<std::uint64_t> pairs;
  try {
    pairs.resize(static_cast<std::size_t>(count) / sizeof(std::uint64_t));
  } catch (const std::bad_alloc&) {
    fatal("out of system memory for %d bytes of region returns from rank %d", count, status.MPI_SOURCE);
  }
  *call = "region-returns:MPI_Recv";
  rc = mpi_call(*call, [&] {
    return MPI_Recv(pairs.data(), count, MPI_BYTE, status.MPI_SOURCE, tag_return, comm_, MPI_STATUS_IGNORE);
  });
  if (rc != MPI_SUCCESS) return rc;
  for (std::size_t i = 0; i + 1 < pairs.size(); i += 2) {
    ++received_;
    region::get().accept_returned(pairs[i], pairs[i + 1]);
  }
  return MPI_SUCCESS;
}

void mpi_region_peers::drain() {
  hooked_heap_scope system(false);
  region::get().flush_returns();  // those other OS threads freed
  // A failure before now was tried again here: only whether flush_all sent everything counts
  // (take_failure forgets the one kept).
  char failure[failure_text_bytes];
  (void)returns_.take_failure(failure, sizeof failure);
  returns_.flush_all();
  // A batch still waiting is one whose MPI_Isend failed just now (take_failure says how).
  if (returns_.waiting() != 0 && returns_.take_failure(failure, sizeof failure)) {
    fatal("region returns at shutdown: %s", failure);
  }
  std::uint64_t expected = 0;
  check_mpi(MPI_Reduce_scatter_block(sent_to_.data(), &expected, 1, MPI_UINT64_T, MPI_SUM, comm_),
            "MPI_Reduce_scatter_block (region returns)");
  const auto deadline = std::chrono::steady_clock::now() + drain_timeout;
  while (received_ < expected) {
    int arrived = 0;
    MPI_Status status;
    check_mpi(MPI_Iprobe(MPI_ANY_SOURCE, tag_return, comm_, &arrived, &status), "MPI_Iprobe (region returns)");
    if (arrived) {
      const char* call = nullptr;
      check_mpi(receive(status, &call), call);
    } else if (std::chrono::steady_clock::now() < deadline) {
      sched_yield();
    } else {
      raise(errc::mpi_failure,
            "region returns at shutdown: %llu of the %llu runs other ranks returned to rank %d did not arrive "
            "within %lld s (lost by a receive that failed?)",
            static_cast<unsigned long long>(expected - received_), static_cast<unsigned long long>(expected),
            comm_.rank(), static_cast<long long>(drain_timeout.count()));
    }
  }
  returns_.wait_all();
}

sys_vector<sys_vector<std::uint64_t>> mpi_region_peers::allgather(const sys_vector<std::uint64_t>& mine) {
  return allgather_all(comm_, mine);
}

void mpi_region_peers::remote_free(int owner, std::uintptr_t addr, std::size_t bytes) noexcept {
  // Often called from inside a thread (its heap gives a segment back): whatever MPI allocates
  // for the send must come from the system heap, not from the thread's.
  hooked_heap_scope system(false);
  int finalized = 0;
  check_mpi_or_die(MPI_Finalized(&finalized), "MPI_Finalized", owner);
  if (finalized) return;  // the owner is gone too: nothing can reuse the run any more
  const std::uint64_t pair[2] = {addr, bytes};
  ++sent_to_[static_cast<std::size_t>(owner)];
  returns_.append(owner, pair, sizeof pair, nullptr, 0, true);
}

void mpi_region_peers::poll() noexcept {
  hooked_heap_scope system(false);
  int finalized = 0;
  check_mpi_or_die(MPI_Finalized(&finalized), "MPI_Finalized", -1);
  if (finalized) return;
  returns_.poll();
  char failure[failure_text_bytes];
  bool failed = returns_.take_failure(failure, sizeof failure);
  // Returns arriving are received whatever became of the sends, until one fails.
  for (;;) {
    int arrived = 0;
    MPI_Status status;
    const char* call = "region-returns:MPI_Iprobe";
    int rc = mpi_call(call, [&] { return MPI_Iprobe(MPI_ANY_SOURCE, tag_return, comm_, &arrived, &status); });
    if (rc == MPI_SUCCESS && !arrived) break;
    if (rc == MPI_SUCCESS) rc = receive(status, &call);
    if (rc != MPI_SUCCESS) {
      if (!failed) describe_mpi_failure(failure, sizeof failure, rc, call, arrived ? status.MPI_SOURCE : -1);
      failed = true;
      break;
    }
  }
  if (!failed) {
    failing_since_.reset();
    return;
  }
  failure_.keep(failure);
  const auto now = std::chrono::steady_clock::now();
  if (!failing_since_) failing_since_ = now;
  if (now - *failing_since_ >= max_failing) {
    fatal("region returns: every poll failed for %lld s, the last: %s", static_cast<long long>(max_failing.count()),
          failure);
  }
}

bool mpi_region_peers::take_failure(char* out, std::size_t cap) noexcept { return failure_.take(out, cap); }

}  // namespace iso::detail

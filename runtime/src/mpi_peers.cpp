#include "mpi_peers.hpp"

#include "diag.hpp"
#include "interpose.hpp"

namespace iso::detail {

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  raise(errc::mpi_failure, "%s failed: %.*s", what, len, text);
}

mpi_region_peers::mpi_region_peers(MPI_Comm comm) : user_comm_(comm) {
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  // Report MPI errors as return codes on this communicator, so that they become iso::error.
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  sent_to_.assign(static_cast<std::size_t>(size_), 0);
}

void mpi_region_peers::drain() {
  heap_scope system(nullptr);
  std::uint64_t expected = 0;
  check_mpi(MPI_Reduce_scatter_block(sent_to_.data(), &expected, 1, MPI_UINT64_T, MPI_SUM, comm_),
            "MPI_Reduce_scatter_block (region returns)");
  while (received_ < expected) {
    std::array<std::uint64_t, 2> payload{};
    check_mpi(MPI_Recv(payload.data(), 2, MPI_UINT64_T, MPI_ANY_SOURCE, tag_return, comm_, MPI_STATUS_IGNORE),
              "MPI_Recv (region returns)");
    ++received_;
    region::get().accept_returned(payload[0], payload[1]);
  }
  for (send& s : sends_) MPI_Wait(&s.request, MPI_STATUS_IGNORE);
  sends_.clear();
}

sys_vector<sys_vector<std::uint64_t>> mpi_region_peers::allgather(const sys_vector<std::uint64_t>& mine) {
  const int count = static_cast<int>(mine.size());
  sys_vector<int> counts(static_cast<std::size_t>(size_));
  check_mpi(MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, comm_), "MPI_Allgather");
  sys_vector<int> displs(counts.size());
  int total = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    displs[r] = total;
    total += counts[r];
  }
  sys_vector<std::uint64_t> flat(static_cast<std::size_t>(total));
  check_mpi(MPI_Allgatherv(mine.data(), count, MPI_UINT64_T, flat.data(), counts.data(),
                           displs.data(), MPI_UINT64_T, comm_),
            "MPI_Allgatherv");
  sys_vector<sys_vector<std::uint64_t>> out(counts.size());
  for (std::size_t r = 0; r < counts.size(); ++r) {
    out[r].assign(flat.begin() + displs[r], flat.begin() + displs[r] + counts[r]);
  }
  return out;
}

void mpi_region_peers::remote_free(int owner, std::uintptr_t addr, std::size_t bytes) noexcept {
  // Often called from inside a thread (its heap gives a segment back): whatever MPI allocates
  // for the send must come from the system heap, not from the thread's.
  heap_scope system(nullptr);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;  // the owner is gone too: nothing can reuse the run any more
  try {
    send& s = sends_.emplace_back();
    s.payload = {addr, bytes};
    ++sent_to_[static_cast<std::size_t>(owner)];
    if (MPI_Isend(s.payload.data(), 2, MPI_UINT64_T, owner, tag_return, comm_, &s.request) != MPI_SUCCESS) {
      fatal("could not return run [%#zx, +%zu) to its owner, rank %d (MPI_Isend failed)", addr, bytes, owner);
    }
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while returning run [%#zx, +%zu) to rank %d", addr, bytes, owner);
  }
}

void mpi_region_peers::poll() noexcept {
  heap_scope system(nullptr);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (auto it = sends_.begin(); it != sends_.end();) {
    int done = 0;
    MPI_Test(&it->request, &done, MPI_STATUS_IGNORE);
    it = done ? sends_.erase(it) : std::next(it);
  }
  for (;;) {
    int arrived = 0;
    MPI_Status status;
    if (MPI_Iprobe(MPI_ANY_SOURCE, tag_return, comm_, &arrived, &status) != MPI_SUCCESS || !arrived) return;
    std::array<std::uint64_t, 2> payload{};
    MPI_Recv(payload.data(), 2, MPI_UINT64_T, status.MPI_SOURCE, tag_return, comm_, MPI_STATUS_IGNORE);
    ++received_;
    region::get().accept_returned(payload[0], payload[1]);
  }
}

}  // namespace iso::detail

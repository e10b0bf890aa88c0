#include "mpi_peers.hpp"

#include "diag.hpp"
#include "interpose.hpp"

namespace iso::detail {

mpi_region_peers::mpi_region_peers(MPI_Comm comm) : user_comm_(comm), comm_(comm) {
  const auto n = static_cast<std::size_t>(comm_.size());
  waiting_.resize(n);
  in_flight_.assign(n, 0);
  sent_to_.assign(n, 0);
}

void mpi_region_peers::receive(const MPI_Status& status) {
  int count = 0;
  MPI_Get_count(&status, MPI_UINT64_T, &count);
  sys_vector<std::uint64_t> pairs(static_cast<std::size_t>(count));
  check_mpi(MPI_Recv(pairs.data(), count, MPI_UINT64_T, status.MPI_SOURCE, tag_return, comm_, MPI_STATUS_IGNORE),
            "MPI_Recv (region returns)");
  for (std::size_t i = 0; i + 1 < pairs.size(); i += 2) {
    ++received_;
    region::get().accept_returned(pairs[i], pairs[i + 1]);
  }
}

void mpi_region_peers::drain() {
  heap_scope system(nullptr);
  region::get().flush_returns();  // those other OS threads freed
  for (int owner = 0; owner < comm_.size(); ++owner) flush(owner);
  std::uint64_t expected = 0;
  check_mpi(MPI_Reduce_scatter_block(sent_to_.data(), &expected, 1, MPI_UINT64_T, MPI_SUM, comm_),
            "MPI_Reduce_scatter_block (region returns)");
  while (received_ < expected) {
    MPI_Status status;
    check_mpi(MPI_Probe(MPI_ANY_SOURCE, tag_return, comm_, &status), "MPI_Probe (region returns)");
    receive(status);
  }
  for (send& s : sends_) MPI_Wait(s.request, MPI_STATUS_IGNORE);
  sends_.clear();
}

sys_vector<sys_vector<std::uint64_t>> mpi_region_peers::allgather(const sys_vector<std::uint64_t>& mine) {
  return allgather_all(comm_, mine);
}

void mpi_region_peers::flush(int owner) noexcept {
  sys_vector<std::uint64_t>& pairs = waiting_[static_cast<std::size_t>(owner)];
  if (pairs.empty()) return;
  send& s = sends_.emplace_back();
  s.payload = std::move(pairs);
  s.owner = owner;
  pairs = {};
  ++in_flight_[static_cast<std::size_t>(owner)];
  if (MPI_Isend(s.payload.data(), static_cast<int>(s.payload.size()), MPI_UINT64_T, owner, tag_return, comm_,
                s.request) != MPI_SUCCESS) {
    fatal("could not return %zu runs to their owner, rank %d (MPI_Isend failed)", s.payload.size() / 2, owner);
  }
}

void mpi_region_peers::remote_free(int owner, std::uintptr_t addr, std::size_t bytes) noexcept {
  // Often called from inside a thread (its heap gives a segment back): whatever MPI allocates
  // for the send must come from the system heap, not from the thread's.
  heap_scope system(nullptr);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;  // the owner is gone too: nothing can reuse the run any more
  try {
    sys_vector<std::uint64_t>& pairs = waiting_[static_cast<std::size_t>(owner)];
    pairs.push_back(addr);
    pairs.push_back(bytes);
    ++sent_to_[static_cast<std::size_t>(owner)];
    if (in_flight_[static_cast<std::size_t>(owner)] < window) flush(owner);
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while returning run [%#zx, +%zu) to rank %d", addr, bytes, owner);
  }
}

void mpi_region_peers::poll() noexcept {
  heap_scope system(nullptr);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  complete(sends_, [](send& s) -> auto& { return s.request; },
           [this](send& s) { --in_flight_[static_cast<std::size_t>(s.owner)]; });
  for (int owner = 0; owner < comm_.size(); ++owner) {
    if (in_flight_[static_cast<std::size_t>(owner)] < window) flush(owner);
  }
  for (;;) {
    int arrived = 0;
    MPI_Status status;
    if (MPI_Iprobe(MPI_ANY_SOURCE, tag_return, comm_, &arrived, &status) != MPI_SUCCESS || !arrived) return;
    try {
      receive(status);
    } catch (const iso::error& e) {
      fatal("%s", e.what());
    }
  }
}

}  // namespace iso::detail

#include "mpi_peers.hpp"

#include "diag.hpp"

namespace iso::detail {

mpi_region_peers::mpi_region_peers(MPI_Comm comm)
    : user_comm_(comm), comm_(comm), returns_(comm_, tag_return, comm_.size(), window, flush_bytes) {
  sent_to_.assign(static_cast<std::size_t>(comm_.size()), 0);
}

void mpi_region_peers::receive(const MPI_Status& status) {
  int count = 0;  // bytes
  check_mpi(mpi_call("MPI_Get_count", [&] { return MPI_Get_count(&status, MPI_BYTE, &count); }),
            "MPI_Get_count (region returns)");
  sys_vector<std::uint64_t> pairs(static_cast<std::size_t>(count) / sizeof(std::uint64_t));
  check_mpi(mpi_call("MPI_Recv", [&] {
              return MPI_Recv(pairs.data(), count, MPI_BYTE, status.MPI_SOURCE, tag_return, comm_, MPI_STATUS_IGNORE);
            }),
            "MPI_Recv (region returns)");
  for (std::size_t i = 0; i + 1 < pairs.size(); i += 2) {
    ++received_;
    region::get().accept_returned(pairs[i], pairs[i + 1]);
  }
}

void mpi_region_peers::drain() {
  hooked_heap_scope system(false);
  region::get().flush_returns();  // those other OS threads freed
  returns_.flush_all();
  std::uint64_t expected = 0;
  check_mpi(MPI_Reduce_scatter_block(sent_to_.data(), &expected, 1, MPI_UINT64_T, MPI_SUM, comm_),
            "MPI_Reduce_scatter_block (region returns)");
  while (received_ < expected) {
    MPI_Status status;
    check_mpi(MPI_Probe(MPI_ANY_SOURCE, tag_return, comm_, &status), "MPI_Probe (region returns)");
    receive(status);
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
  for (;;) {
    int arrived = 0;
    MPI_Status status;
    check_mpi_or_die(mpi_call("MPI_Iprobe", [&] { return MPI_Iprobe(MPI_ANY_SOURCE, tag_return, comm_, &arrived, &status); }),
                     "MPI_Iprobe (region returns)", -1);
    if (!arrived) return;
    try {
      receive(status);
    } catch (const iso::error& e) {
      fatal("%s", e.what());
    }
  }
}

}  // namespace iso::detail

// The MPI side of isomalloc: region agreement and returning runs to their owners. A program using
// only the block interface links it (isothreads::blocks) with isomalloc, and no module above.
#pragma once

#include <mpi.h>


#include "comm.hpp"
#include "region.hpp"
#include "transport.hpp"

namespace iso::detail {

// region_peers over a private duplicate of a communicator. Returns to one owner travel in
// batches of {address, bytes} pairs (a batcher, transport.hpp): a return leaves at once while
// fewer than `window` batches to that owner are in flight, and otherwise waits for the next batch
// (thousands of threads ending on a rank must not become thousands of outstanding MPI requests).
// poll() completes sends, sends waiting batches and hands arriving returns to the region.
class mpi_region_peers final : public region_peers {
 public:
  // Collective over comm (MPI_Comm_dup). Throws iso::error(mpi_failure).
  explicit mpi_region_peers(MPI_Comm comm);
  mpi_region_peers(const mpi_region_peers&) = delete;
  mpi_region_peers& operator=(const mpi_region_peers&) = delete;

  int rank() const noexcept override { return comm_.rank(); }
  int size() const noexcept override { return comm_.size(); }
  sys_vector<sys_vector<std::uint64_t>> allgather(const sys_vector<std::uint64_t>& mine) override;
  void remote_free(int owner, std::uintptr_t addr, std::size_t bytes) noexcept override;
  void poll() noexcept override;

  // Collective, at shutdown: completes this rank's returns and receives every run other ranks
  // returned to it, so that nothing is in flight when MPI is finalised.
  void drain();

  MPI_Comm user_comm() const noexcept { return user_comm_; }

 private:
  static constexpr int tag_return = 1;
  static constexpr std::uint32_t window = 2;
  // No size bound of its own: the window alone limits the requests.
  static constexpr std::size_t flush_bytes = std::size_t{1} << 20;
  void receive(const MPI_Status& status);
  MPI_Comm user_comm_;
  private_comm comm_;
  batcher returns_;                    // {address, bytes} pairs of u64, by owner
  sys_vector<std::uint64_t> sent_to_;  // runs returned to each rank so far
  std::uint64_t received_ = 0;         // runs received so far
};

// iso_init.cpp: agrees the region over comm once per process (iso_init's work; throws
// iso::error), of `requested` bytes (0: the default, or ISO_REGION_BYTES for iso_init), and the
// peers it installed, or null before that.
void init_region_over(MPI_Comm comm, std::size_t requested = 0);
mpi_region_peers* installed_peers_or_null() noexcept;


}  // namespace iso::detail

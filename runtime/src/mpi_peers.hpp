// The MPI side of isomalloc: region agreement and returning runs to their owners.
#pragma once

#include <mpi.h>

#include <array>
#include <list>

#include "region.hpp"

namespace iso::detail {

// region_peers over a private duplicate of a communicator. remote_free is an MPI_Isend of
// {address, bytes}; poll() completes sends and hands arriving returns to the region.
class mpi_region_peers final : public region_peers {
 public:
  // Collective over comm (MPI_Comm_dup). Throws iso::error(mpi_failure).
  explicit mpi_region_peers(MPI_Comm comm);
  mpi_region_peers(const mpi_region_peers&) = delete;
  mpi_region_peers& operator=(const mpi_region_peers&) = delete;

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }
  sys_vector<sys_vector<std::uint64_t>> allgather(const sys_vector<std::uint64_t>& mine) override;
  void remote_free(int owner, std::uintptr_t addr, std::size_t bytes) noexcept override;
  void poll() noexcept override;

  MPI_Comm user_comm() const noexcept { return user_comm_; }
  // Sends still in flight (a run is not lost while one is).
  std::size_t pending_sends() const noexcept { return sends_.size(); }

 private:
  static constexpr int tag_return = 1;
  struct send {
    MPI_Request request;
    std::array<std::uint64_t, 2> payload;  // {address, bytes}; must outlive the request
  };
  MPI_Comm user_comm_;
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  // A list, not a vector: an in-flight payload must never move.
  std::list<send, sys_allocator<send>> sends_;
};

// Throws iso::error(mpi_failure) naming `what` if rc is not MPI_SUCCESS.
void check_mpi(int rc, const char* what);

}  // namespace iso::detail

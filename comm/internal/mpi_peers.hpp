// The MPI side of isomalloc: region agreement and returning runs to their owners. A program using
// only the block interface links it (isothreads::blocks) with isomalloc, and no module above.
#pragma once

#include <mpi.h>

#include <chrono>
#include <optional>

#include "comm.hpp"
#include "region.hpp"
#include "transport.hpp"

namespace iso::detail {

// region_peers over a private duplicate of a communicator. Returns to one owner travel in
// batches of {address, bytes} pairs (a batcher, transport.hpp): a return leaves at once while
// fewer than `window` batches to that owner are in flight, and otherwise waits for the next batch
// (thousands of threads ending on a rank must not become thousands of outstanding MPI requests).
// poll() completes sends, sends waiting batches and hands arriving returns to the region.
// A failed MPI call on this return path is reported (take_failure reports the first) and tried
// again at the next poll: a batch that could not be sent stays in its outbox, one whose send
// completed in error goes back to it. A failed probe or MPI_Get_count leaves the message in
// MPI's queue (and so does an injected MPI_Recv fault); a real MPI_Recv failure may lose it, and
// drain() then reports the runs missing. Only polls that keep failing for max_failing (each
// poll from the first failing one on) take the fatal path. Its fault points (fault.hpp) are region-returns:<call>.
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
  bool take_failure(char* out, std::size_t cap) noexcept override;

  // Collective, at shutdown: completes this rank's returns and receives every run other ranks
  // returned to it, so that nothing is in flight when MPI is finalised. A failed send is fatal
  // here (the other ranks would wait for what it was to send); a failed receive, or runs still
  // missing after drain_timeout without a message arriving (a receive that failed earlier lost
  // them), throw iso::error(mpi_failure) saying how many.
  void drain();

  MPI_Comm user_comm() const noexcept { return user_comm_; }

 private:
  static constexpr int tag_return = 1;
  static constexpr std::uint32_t window = 2;
  // No size bound of its own: the window alone limits the requests.
  static constexpr std::size_t flush_bytes = std::size_t{1} << 20;
  // How long drain() waits for the runs still to come, from its start: every rank has sent its
  // returns before the count is agreed, so they are in MPI's queues or lost.
  static constexpr std::chrono::seconds drain_timeout{5};
  // How long polls may keep failing before the fatal path: an MPI that fails that long is
  // broken, and returns that never arrive would exhaust their owners' shares in silence. A time,
  // not a count: an idle rank polls thousands of times a second.
  static constexpr std::chrono::seconds max_failing{5};
  // Receives the returns of the message `status` describes: MPI_SUCCESS, or the failed call's
  // code with *call naming it (the message then stays for a later receive).
  int receive(const MPI_Status& status, const char** call) noexcept;
  MPI_Comm user_comm_;
  private_comm comm_;
  batcher returns_;                    // {address, bytes} pairs of u64, by owner
  sys_vector<std::uint64_t> sent_to_;  // runs returned to each rank so far
  std::uint64_t received_ = 0;         // runs received so far
  // When the polls that failed without a good one between began; empty: the last poll was good.
  std::optional<std::chrono::steady_clock::time_point> failing_since_;
  first_failure failure_;              // the first failure not taken yet
};

// iso_init.cpp: agrees the region over comm once per process (iso_init's work; throws
// iso::error), of `requested` bytes (0: the default, or ISO_REGION_BYTES for iso_init), and the
// peers it installed, or null before that.
void init_region_over(MPI_Comm comm, std::size_t requested = 0);
mpi_region_peers* installed_peers_or_null() noexcept;


}  // namespace iso::detail

// MPI plumbing shared by the modules that talk MPI (comm/ itself, migrate/, runtime/).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <cstring>
#include <iterator>
#include <utility>

#include "fault.hpp"
#include "region.hpp"
#include "sysalloc.hpp"

namespace iso::detail {

// Throws iso::error(mpi_failure) naming `what` and MPI's message if rc is not MPI_SUCCESS.
void check_mpi(int rc, const char* what);
// For paths that cannot throw (progress, completion, the scheduler's hooks): if rc is not
// MPI_SUCCESS, the one fatal path, naming MPI call `call`, the peer rank (< 0: any rank) and MPI's
// message; fatal() adds this rank and the running thread.
void check_mpi_or_die(int rc, const char* call, int peer) noexcept;
// "<call> with rank <peer> failed: <MPI's message for rc>" (peer < 0: "with any rank") into
// buf, cut to cap bytes (NUL included); what check_mpi_or_die says.
void describe_mpi_failure(char* buf, std::size_t cap, int rc, const char* call, int peer) noexcept;
static_assert(failure_text_bytes >= MPI_MAX_ERROR_STRING + 128, "a failure's description must hold MPI's message");

// The first failure of a path that retries, described, until take() hands it out: what
// region_peers::take_failure reports.
class first_failure {
 public:
  // Keeps describe_mpi_failure's text unless a failure is kept already.
  void keep(int rc, const char* call, int peer) noexcept;
  // Keeps `text` unless a failure is kept already.
  void keep(const char* text) noexcept;
  // Writes the kept failure into out (cap bytes, NUL included) and forgets it; false if none.
  bool take(char* out, std::size_t cap) noexcept;

 private:
  char text_[failure_text_bytes] = {};  // "" if none
};

// f() (an MPI call named `call`), unless the fault point `call` fires (fault.hpp): then
// MPI_ERR_OTHER, and the call is not made.
template <class F>
int mpi_call(const char* call, F&& f) {
  return fault::hit(call) ? MPI_ERR_OTHER : f();
}

// Per rank of comm: 1 if it runs on the calling rank's node (shares memory with it:
// MPI_COMM_TYPE_SHARED), else 0. Collective over comm; throws iso::error(mpi_failure).
sys_vector<unsigned char> ranks_on_this_node(MPI_Comm comm);

// A private duplicate of a communicator, owned. Each part of the runtime (migration, balancing,
// termination, checkpoints, tracing, region returns) talks on its own, so that no message of one
// can match a receive of another, or of the program's own MPI code. Errors on it are returned,
// not fatal, so that they surface as iso::error.
class private_comm {
 public:
  explicit private_comm(MPI_Comm parent);  // collective over parent; throws iso::error
  ~private_comm();                         // frees it, unless MPI is finalised already
  private_comm(const private_comm&) = delete;
  private_comm& operator=(const private_comm&) = delete;

  operator MPI_Comm() const noexcept { return comm_; }
  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

// Whether every MPI request of r (a sys_vector or array) has completed, tested now; a failed
// MPI_Testall (fault point `point`) is fatal, naming peer, the rank they go to or come from.
template <class Requests>
bool all_done(Requests& r, int peer, const char* point = "MPI_Testall") {
  int flag = 0;
  const int rc = mpi_call(point, [&] {
    return MPI_Testall(static_cast<int>(std::size(r)), std::data(r), &flag, MPI_STATUSES_IGNORE);
  });
  check_mpi_or_die(rc, "MPI_Testall", peer);
  return flag != 0;
}

// Takes out of `items` (a std::list) every item that in(item) finds complete, calling done(item)
// just before. True if any was.
template <class List, class In, class Done>
bool take_completed(List& items, In in, Done done) {
  bool any = false;
  for (auto it = items.begin(); it != items.end();) {
    if (!in(*it)) {
      ++it;
      continue;
    }
    done(*it);
    it = items.erase(it);
    any = true;
  }
  return any;
}

// take_completed for items whose MPI requests must all have completed (all_done):
// requests(item) gives the item's requests as a sys_vector or array, peer(item) the rank they go
// to or come from. (The batcher's retry mode completes its sends itself: a send that failed is
// sent again, transport.cpp.)
template <class List, class Requests, class Peer, class Done>
bool complete(List& items, Requests requests, Peer peer, Done done, const char* point = "MPI_Testall") {
  return take_completed(items, [&](auto& item) { return all_done(requests(item), peer(item), point); }, done);
}

// Bytes one MPI message of a gather carries at most (MPI counts and displacements are ints).
inline constexpr std::size_t gather_piece_bytes = std::size_t{1} << 30;

// Collective over comm: every rank's `bytes` bytes at `mine`, concatenated in rank order, on rank
// `root` (root < 0: on every rank); counts[r] = rank r's byte count, on every rank. A total of at
// most piece_bytes travels as one MPI_Gatherv / MPI_Allgatherv; a larger one rank by rank, in
// messages of at most piece_bytes each. Throws iso::error(mpi_failure) naming the failed call.
void gather_bytes(MPI_Comm comm, const void* mine, std::size_t bytes, int root, std::size_t piece_bytes,
                  sys_vector<std::uint64_t>& counts, sys_vector<unsigned char>& flat);

// The concatenation of gather_bytes cut back into one vector of T per rank.
template <class T>
sys_vector<sys_vector<T>> split_by_rank(const sys_vector<std::uint64_t>& counts, const sys_vector<unsigned char>& flat) {
  sys_vector<sys_vector<T>> out(counts.size());
  std::size_t at = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    out[r].resize(static_cast<std::size_t>(counts[r]) / sizeof(T));
    if (!out[r].empty()) std::memcpy(out[r].data(), flat.data() + at, out[r].size() * sizeof(T));
    at += static_cast<std::size_t>(counts[r]);
  }
  return out;
}

// Collective: every rank's `mine`, on every rank, by rank. T must be trivially copyable.
template <class T>
sys_vector<sys_vector<T>> allgather_all(MPI_Comm comm, const sys_vector<T>& mine,
                                        std::size_t piece_bytes = gather_piece_bytes) {
  sys_vector<std::uint64_t> counts;
  sys_vector<unsigned char> flat;
  gather_bytes(comm, mine.data(), mine.size() * sizeof(T), -1, piece_bytes, counts, flat);
  return split_by_rank<T>(counts, flat);
}

// Collective: every rank's `count` items at `mine` on rank 0, by rank; an empty vector elsewhere.
// T must be trivially copyable.
template <class T>
sys_vector<sys_vector<T>> gather_all(MPI_Comm comm, const T* mine, std::size_t count,
                                     std::size_t piece_bytes = gather_piece_bytes) {
  sys_vector<std::uint64_t> counts;
  sys_vector<unsigned char> flat;
  gather_bytes(comm, mine, count * sizeof(T), 0, piece_bytes, counts, flat);
  int rank = 0;
  check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  if (rank != 0) return {};
  return split_by_rank<T>(counts, flat);
}

}  // namespace iso::detail

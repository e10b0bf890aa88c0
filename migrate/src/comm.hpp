// MPI plumbing shared by the modules that talk MPI (migrate/, runtime/).
#pragma once

#include <mpi.h>

#include <iterator>
#include <utility>

#include "sysalloc.hpp"

namespace iso::detail {

// Throws iso::error(mpi_failure) naming `what` and MPI's message if rc is not MPI_SUCCESS.
void check_mpi(int rc, const char* what);

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

// Takes out of `items` (a std::list) every item whose MPI requests have all completed, calling
// done(item) just before. requests(item) gives the item's requests as a sys_vector or array.
// True if any completed.
template <class List, class Requests, class Done>
bool complete(List& items, Requests requests, Done done) {
  bool any = false;
  for (auto it = items.begin(); it != items.end();) {
    auto& r = requests(*it);
    int flag = 0;
    MPI_Testall(static_cast<int>(std::size(r)), std::data(r), &flag, MPI_STATUSES_IGNORE);
    if (!flag) {
      ++it;
      continue;
    }
    done(*it);
    it = items.erase(it);
    any = true;
  }
  return any;
}

// The parts of a gather: every rank's byte count, and where its bytes start in the concatenation.
struct gather_layout {
  sys_vector<int> counts, displs;
  int total = 0;
  explicit gather_layout(sys_vector<int> byte_counts) : counts(std::move(byte_counts)), displs(counts.size()) {
    for (std::size_t r = 0; r < counts.size(); ++r) {
      displs[r] = total;
      total += counts[r];
    }
  }
  // The concatenation cut back into one vector per rank.
  template <class T>
  sys_vector<sys_vector<T>> split(const sys_vector<T>& flat) const {
    sys_vector<sys_vector<T>> out(counts.size());
    for (std::size_t r = 0; r < counts.size(); ++r) {
      const auto first = flat.begin() + displs[r] / static_cast<int>(sizeof(T));
      out[r].assign(first, first + counts[r] / static_cast<int>(sizeof(T)));
    }
    return out;
  }
};

// Collective: every rank's `mine`, on every rank, by rank. T must be trivially copyable.
template <class T>
sys_vector<sys_vector<T>> allgather_all(MPI_Comm comm, const sys_vector<T>& mine) {
  int size = 1;
  MPI_Comm_size(comm, &size);
  const int bytes = static_cast<int>(mine.size() * sizeof(T));
  sys_vector<int> counts(static_cast<std::size_t>(size));
  check_mpi(MPI_Allgather(&bytes, 1, MPI_INT, counts.data(), 1, MPI_INT, comm), "MPI_Allgather");
  const gather_layout layout(std::move(counts));
  sys_vector<T> flat(static_cast<std::size_t>(layout.total) / sizeof(T));
  check_mpi(MPI_Allgatherv(mine.data(), bytes, MPI_BYTE, flat.data(), layout.counts.data(), layout.displs.data(),
                           MPI_BYTE, comm),
            "MPI_Allgatherv");
  return layout.split(flat);
}

// Collective: every rank's `count` items at `mine` on rank 0, by rank; an empty vector elsewhere.
// T must be trivially copyable.
template <class T>
sys_vector<sys_vector<T>> gather_all(MPI_Comm comm, const T* mine, std::size_t count) {
  int size = 1, rank = 0;
  MPI_Comm_size(comm, &size);
  MPI_Comm_rank(comm, &rank);
  const int bytes = static_cast<int>(count * sizeof(T));
  sys_vector<int> counts(rank == 0 ? static_cast<std::size_t>(size) : 0);
  check_mpi(MPI_Gather(&bytes, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, comm), "MPI_Gather");
  const gather_layout layout(std::move(counts));
  sys_vector<T> flat(static_cast<std::size_t>(layout.total) / sizeof(T));
  check_mpi(MPI_Gatherv(mine, bytes, MPI_BYTE, flat.data(), layout.counts.data(), layout.displs.data(),
                        MPI_BYTE, 0, comm),
            "MPI_Gatherv");
  return layout.split(flat);
}

}  // namespace iso::detail

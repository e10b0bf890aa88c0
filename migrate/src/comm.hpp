// MPI plumbing shared by the modules that talk MPI (migrate/, runtime/).
#pragma once

#include <mpi.h>

#include <iterator>

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

// Collective: every rank's `mine`, on every rank, by rank. T must be trivially copyable.
template <class T>
sys_vector<sys_vector<T>> allgather_all(MPI_Comm comm, const sys_vector<T>& mine) {
  int size = 1;
  MPI_Comm_size(comm, &size);
  const int bytes = static_cast<int>(mine.size() * sizeof(T));
  sys_vector<int> counts(static_cast<std::size_t>(size)), displs(static_cast<std::size_t>(size));
  check_mpi(MPI_Allgather(&bytes, 1, MPI_INT, counts.data(), 1, MPI_INT, comm), "MPI_Allgather");
  int total = 0;
  for (int r = 0; r < size; ++r) {
    displs[static_cast<std::size_t>(r)] = total;
    total += counts[static_cast<std::size_t>(r)];
  }
  sys_vector<T> flat(static_cast<std::size_t>(total) / sizeof(T));
  check_mpi(MPI_Allgatherv(mine.data(), bytes, MPI_BYTE, flat.data(), counts.data(), displs.data(), MPI_BYTE, comm),
            "MPI_Allgatherv");
  sys_vector<sys_vector<T>> out(static_cast<std::size_t>(size));
  for (int r = 0; r < size; ++r) {
    const auto first = flat.begin() + displs[static_cast<std::size_t>(r)] / static_cast<int>(sizeof(T));
    out[static_cast<std::size_t>(r)].assign(first, first + counts[static_cast<std::size_t>(r)] / static_cast<int>(sizeof(T)));
  }
  return out;
}

}  // namespace iso::detail

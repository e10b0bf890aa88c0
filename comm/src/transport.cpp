#include "transport.hpp"

#include <algorithm>
#include <cstring>

#include "comm.hpp"
#include "diag.hpp"

namespace iso::detail {

batcher::batcher(MPI_Comm comm, int tag, int ranks, std::uint32_t window, std::size_t flush_bytes, on_failure mode,
                 const char* points)
    : comm_(comm), tag_(tag), window_(window), flush_bytes_(flush_bytes), mode_(mode),
      outboxes_(static_cast<std::size_t>(ranks)) {
  const char* sep = points != nullptr ? ":" : "";
  if (points == nullptr) points = "";
  safe_format(isend_point_, sizeof isend_point_, "%s%sMPI_Isend", points, sep);
  safe_format(testall_point_, sizeof testall_point_, "%s%sMPI_Testall", points, sep);
  safe_format(wait_point_, sizeof wait_point_, "%s%sMPI_Wait", points, sep);
  safe_format(late_point_, sizeof late_point_, "%s%ssend_completes_in_error", points, sep);
}

void batcher::failed(int rc, const char* call, int dest) noexcept {
  if (mode_ == on_failure::die) check_mpi_or_die(rc, call, dest);
  failure_.keep(rc, call, dest);
}

bool batcher::take_failure(char* out, std::size_t cap) noexcept { return failure_.take(out, cap); }

void batcher::append(int dest, const void* head, std::size_t head_n, const void* bytes, std::size_t n,
                     bool now) noexcept {
  const piece body{bytes, n};
  append_pieces(dest, head, head_n, &body, 1, now);
}

void batcher::append_pieces(int dest, const void* head, std::size_t head_n, const piece* pieces, std::size_t n,
                           bool now, std::size_t align) noexcept {
  outbox& box = outboxes_[static_cast<std::size_t>(dest)];
  std::size_t total = head_n;
  for (std::size_t i = 0; i < n; ++i) total += pieces[i].bytes;
  total = (total + align - 1) & ~(align - 1);  // resize() below zero-fills the padding
  try {
    if (box.batch.empty()) ++waiting_;
    // One allocation for all the pieces, growing geometrically (a batch that waits for its
    // window takes many records).
    if (const std::size_t need = box.batch.size() + total; need > box.batch.capacity()) {
      box.batch.reserve(std::max(need, 2 * box.batch.capacity()));
    }
    // Sized first, then memcpy: an insert of a range copies byte by byte through the allocator,
    // several times slower than memcpy on a thread image.
    std::size_t at = box.batch.size();
    box.batch.resize(at + total);
    if (head_n != 0) std::memcpy(box.batch.data() + at, head, head_n);
    at += head_n;
    for (std::size_t i = 0; i < n; ++i) {
      if (pieces[i].bytes != 0) std::memcpy(box.batch.data() + at, pieces[i].data, pieces[i].bytes);
      at += pieces[i].bytes;
    }
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while queueing %zu bytes for rank %d", total, dest);
  }
  if ((now && box.in_flight < window_) || box.batch.size() >= flush_bytes_) flush(dest);
}

void batcher::flush(int dest) noexcept {
  outbox& box = outboxes_[static_cast<std::size_t>(dest)];
  if (box.batch.empty()) return;
  try {
    outgoing& o = sends_.emplace_back();
    o.buffer = std::move(box.batch);
    o.dest = dest;
    box.batch = {};
    --waiting_;
    ++box.in_flight;
    ++sent_;
    int rc = MPI_SUCCESS;
    if (fault::hit(late_point_)) {
      // As if MPI had taken the send and then failed it: nothing is sent, its test fails.
      o.request[0] = MPI_REQUEST_NULL;
      o.late_error = MPI_ERR_OTHER;
    } else {
      rc = mpi_call(isend_point_, [&] {
        return MPI_Isend(o.buffer.data(), static_cast<int>(o.buffer.size()), MPI_BYTE, dest, tag_, comm_, o.request);
      });
    }
    if (rc != MPI_SUCCESS) {
      failed(rc, isend_point_, dest);
      // Retry: the batch goes back as it was (nothing was appended since), to be sent next time.
      box.batch = std::move(o.buffer);
      sends_.pop_back();
      ++waiting_;
      --box.in_flight;
      --sent_;
    }
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while sending to rank %d", dest);
  }
}

void batcher::poll() noexcept {
  for (auto it = sends_.begin(); it != sends_.end();) {
    outgoing& o = *it;
    int flag = 0;
    int rc = o.late_error;
    if (rc == MPI_SUCCESS) {
      rc = mpi_call(testall_point_, [&] { return MPI_Testall(1, o.request, &flag, MPI_STATUSES_IGNORE); });
    }
    if (rc != MPI_SUCCESS) {
      failed(rc, testall_point_, o.dest);
      // Did the test fail, or the send? A send that completed in error has had its request
      // freed by MPI, or fails its own MPI_Test; after a test that failed alone it is pending.
      bool lost = o.request[0] == MPI_REQUEST_NULL;
      if (!lost) {
        MPI_Status status;
        lost = MPI_Test(o.request, &flag, &status) != MPI_SUCCESS;
        if (lost && o.request[0] != MPI_REQUEST_NULL) {
          check_mpi_or_die(MPI_Request_free(o.request), "MPI_Request_free", o.dest);
        }
      }
      if (lost) {
        it = resend(it);
        continue;
      }
    }
    if (!flag) {
      ++it;
      continue;
    }
    --outboxes_[static_cast<std::size_t>(o.dest)].in_flight;
    it = sends_.erase(it);
  }
  for (std::size_t dest = 0; waiting_ != 0 && dest < outboxes_.size(); ++dest) {
    if (outboxes_[dest].in_flight < window_) flush(static_cast<int>(dest));
  }
}

batcher::send_list::iterator batcher::resend(send_list::iterator it) noexcept {
  outgoing& o = *it;
  outbox& box = outboxes_[static_cast<std::size_t>(o.dest)];
  try {
    // At the front: what was appended since comes after it, as before.
    box.batch.insert(box.batch.begin(), o.buffer.begin(), o.buffer.end());
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while queueing %zu bytes again for rank %d", o.buffer.size(), o.dest);
  }
  if (box.batch.size() == o.buffer.size()) ++waiting_;
  --box.in_flight;
  --sent_;  // counted again when it leaves
  return sends_.erase(it);
}

void batcher::flush_all() noexcept {
  for (std::size_t dest = 0; waiting_ != 0 && dest < outboxes_.size(); ++dest) flush(static_cast<int>(dest));
}

void batcher::wait_all() noexcept {
  for (outgoing& o : sends_) {
    const int rc = o.late_error != MPI_SUCCESS
                       ? o.late_error
                       : mpi_call(wait_point_, [&] { return MPI_Wait(o.request, MPI_STATUS_IGNORE); });
    check_mpi_or_die(rc, wait_point_, o.dest);
    --outboxes_[static_cast<std::size_t>(o.dest)].in_flight;
  }
  sends_.clear();
}

}  // namespace iso::detail

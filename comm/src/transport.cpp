#include "transport.hpp"

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
}

void batcher::failed(int rc, const char* call, int dest) noexcept {
  if (mode_ == on_failure::die) check_mpi_or_die(rc, call, dest);
  if (failure_[0] == '\0') describe_mpi_failure(failure_, sizeof failure_, rc, call, dest);
}

bool batcher::take_failure(char* out, std::size_t cap) noexcept {
  if (failure_[0] == '\0') return false;
  safe_format(out, cap, "%s", failure_);
  failure_[0] = '\0';
  return true;
}

void batcher::append(int dest, const void* head, std::size_t head_n, const void* bytes, std::size_t n,
                     bool now) noexcept {
  outbox& box = outboxes_[static_cast<std::size_t>(dest)];
  try {
    if (box.batch.empty()) ++waiting_;
    const auto* h = static_cast<const unsigned char*>(head);
    const auto* b = static_cast<const unsigned char*>(bytes);
    box.batch.insert(box.batch.end(), h, h + head_n);
    box.batch.insert(box.batch.end(), b, b + n);
  } catch (const std::bad_alloc&) {
    fatal("out of system memory while queueing %zu bytes for rank %d", head_n + n, dest);
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
    const int rc = mpi_call(isend_point_, [&] {
      return MPI_Isend(o.buffer.data(), static_cast<int>(o.buffer.size()), MPI_BYTE, dest, tag_, comm_, o.request);
    });
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
  mpi_failure_at failure;
  complete(
      sends_, [](outgoing& o) -> auto& { return o.request; }, [](outgoing& o) { return o.dest; },
      [this](outgoing& o) { --outboxes_[static_cast<std::size_t>(o.dest)].in_flight; }, testall_point_,
      mode_ == on_failure::retry ? &failure : nullptr);
  if (failure.code != MPI_SUCCESS) failed(failure.code, testall_point_, failure.peer);
  for (std::size_t dest = 0; waiting_ != 0 && dest < outboxes_.size(); ++dest) {
    if (outboxes_[dest].in_flight < window_) flush(static_cast<int>(dest));
  }
}

void batcher::flush_all() noexcept {
  for (std::size_t dest = 0; waiting_ != 0 && dest < outboxes_.size(); ++dest) flush(static_cast<int>(dest));
}

void batcher::wait_all() noexcept {
  for (outgoing& o : sends_) {
    check_mpi_or_die(mpi_call("MPI_Wait", [&] { return MPI_Wait(o.request, MPI_STATUS_IGNORE); }), "MPI_Wait", o.dest);
    --outboxes_[static_cast<std::size_t>(o.dest)].in_flight;
  }
  sends_.clear();
}

}  // namespace iso::detail

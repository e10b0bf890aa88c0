// Batches of bytes to each rank, over one tag of a communicator: the transport under the
// migration engine's records and the region peers' returns.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <list>

#include "comm.hpp"
#include "sysalloc.hpp"

namespace iso::detail {

// Bytes for one rank accumulate in its outbox. A batch is sent at once (append with `now`) while
// fewer than `window` batches to that rank are in flight, and otherwise grows until one
// completes (poll); a batch of flush_bytes or more is sent whatever the window. So a lone record
// leaves immediately, and a flood becomes a few large sends instead of one MPI request per record
// (Open MPI slows down badly with thousands of requests outstanding).
// Invariant: waiting() == the number of outboxes with bytes, and each outbox's in_flight == its
// sends not yet completed. A failed MPI call goes through the fatal path, naming call and rank
// (on_failure::die), or loses nothing (on_failure::retry): a batch whose MPI_Isend failed goes
// back to its outbox; after a failed MPI_Testall the send is tested alone (MPI_Test), and one
// that completed in error goes back to the front of its outbox to be sent again (so a batch put
// back can reach twice flush_bytes), while one whose test alone failed stays in flight; the
// other sends are tested as usual. take_failure() describes the first failure.
class batcher {
 public:
  enum class on_failure { die, retry };
  // The largest batch: flush_bytes plus one record, which must keep it within an MPI count.
  // `points`: the prefix of the fault points (fault.hpp) of its calls: "<points>:MPI_Isend",
  // "<points>:MPI_Testall", "<points>:MPI_Wait", and "<points>:send_completes_in_error"
  // (MPI_Isend is not called and the send's test fails, as if MPI had failed it after taking
  // it); null: the same without "<points>:".
  batcher(MPI_Comm comm, int tag, int ranks, std::uint32_t window, std::size_t flush_bytes,
          on_failure mode = on_failure::die, const char* points = nullptr);
  batcher(const batcher&) = delete;
  batcher& operator=(const batcher&) = delete;

  // Appends [head, head + head_n) and then [bytes, bytes + n) to dest's batch, and sends it as
  // the rules above say.
  void append(int dest, const void* head, std::size_t head_n, const void* bytes, std::size_t n, bool now) noexcept;
  // The same for the head and then the n pieces in order, each copied once, straight from where
  // it lies (a thread image's extents: no buffer in between). The head is apart so that a caller
  // that prefixes a record head needs no array of its own (no allocation on iso::send's path).
  // Zero bytes follow up to a multiple of `align` bytes (a power of two): records of a format that
  // pads so start aligned in the batch, whose buffer is malloc-aligned.
  struct piece {
    const void* data;
    std::size_t bytes;
  };
  void append_pieces(int dest, const void* head, std::size_t head_n, const piece* pieces, std::size_t n,
                     bool now, std::size_t align = 1) noexcept;
  // Completes sends; sends the batches that waited for room in their window.
  void poll() noexcept;
  // Sends every waiting batch, whatever the window (non-blocking).
  void flush_all() noexcept;
  // Waits until every send has completed. Fatal on failure, in either mode.
  void wait_all() noexcept;
  // on_failure::retry: writes the first failure since take_failure() last ran ("MPI_Isend with
  // rank 1 failed: ...") into out (cap bytes, NUL included) and forgets it; false if none.
  bool take_failure(char* out, std::size_t cap) noexcept;

  std::size_t waiting() const noexcept { return waiting_; }   // ranks with a batch not sent yet
  std::uint64_t batches_sent() const noexcept { return sent_; }

 private:
  struct outgoing {                     // an Isend and the buffer it reads
    MPI_Request request[1];
    sys_vector<unsigned char> buffer;
    int dest;
    int late_error = MPI_SUCCESS;       // fault injection: what the send's test returns
  };
  struct outbox {
    sys_vector<unsigned char> batch;    // bytes not handed to MPI yet
    std::uint32_t in_flight = 0;        // batches sent to this rank and not completed
  };
  using send_list = std::list<outgoing, sys_allocator<outgoing>>;
  void flush(int dest) noexcept;
  // Puts the batch of a send that failed back at the front of its outbox, undoing its counts;
  // the send's request is null. The send after it.
  send_list::iterator resend(send_list::iterator it) noexcept;
  // on_failure::die: the fatal path; retry: keeps the first description for take_failure().
  void failed(int rc, const char* call, int dest) noexcept;

  MPI_Comm comm_;
  int tag_;
  std::uint32_t window_;
  std::size_t flush_bytes_;
  on_failure mode_;
  char isend_point_[64];                // fault point names, see the constructor
  char testall_point_[64];
  char wait_point_[64];
  char late_point_[64];
  first_failure failure_;               // see take_failure()
  send_list sends_;                     // a list: an in-flight buffer never moves
  sys_vector<outbox> outboxes_;                         // by destination rank
  std::size_t waiting_ = 0;
  std::uint64_t sent_ = 0;
};

}  // namespace iso::detail

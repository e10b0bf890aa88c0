// Messages between migratable threads, and moving threads between ranks.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "isothreads/thread_id.hpp"

namespace iso {

// The largest payload iso::send takes, in bytes (1 GiB): a larger one is refused.
inline constexpr std::size_t max_message_bytes = std::size_t{1} << 30;

// Wildcards of the selective receives: any_thread matches every sender (it names no thread: its
// home rank is out of every run's range), any_tag every tag of iso::send (tags are >= 0).
inline constexpr thread_id any_thread = thread_id::from_bits(~std::uint64_t{0});
inline constexpr int any_tag = -1;

struct message {
  thread_id from;               // the sending thread; thread_id(rank, 0) for a rank's main
  int tag = 0;
  std::vector<std::byte> data;  // the payload, owned by the receiving thread's heap
};

// Copies `bytes` bytes to thread `to`, wherever it is or goes. Never blocks. Every message
// arrives exactly once; from one thread to another in the order sent, even when either migrates.
// From a migratable thread or from main (before or during run()).
// Errors: iso::error(unknown_thread) for the default id or an id whose home rank does not exist;
// (invalid_argument) for a negative tag (negative tags are the runtime's own) or more than
// max_message_bytes; (no_runtime) without a runtime. A message to a thread that has finished is dropped with a line
// on stderr naming both threads.
void send(thread_id to, const void* data, std::size_t bytes, int tag = 0);

// Blocks the calling thread until a message arrives for it; other threads run meanwhile. The
// thread may be migrated while it waits. Error: (not_in_thread). recv() == recv(any_thread, any_tag).
message recv();

// Selective receive: blocks the calling thread until a message from `from` with tag `tag` is
// there, and takes the first such (either may be a wildcard: any_thread, any_tag). Messages that
// do not match stay queued, in order; each (sender, tag) stream is received in the order sent.
// Cost: O(log q) for q queued messages, whatever the filter. The thread may be migrated while it
// waits. From a migratable thread. Errors: (not_in_thread); (invalid_argument) for a tag < -1;
// (unknown_thread) for the default id as `from`.
message recv(thread_id from, int tag);

// As recv(from, tag), but never blocks: the first matching message, or none if none is queued.
std::optional<message> try_recv(thread_id from = any_thread, int tag = any_tag);

// As recv(from, tag), but waits at most `timeout` (at least until then, as sleep_for): the first
// matching message, or none if none came in time. The thread may be migrated while it waits; a
// migration does not extend the wait. timeout <= 0: as try_recv.
std::optional<message> recv_for_ns(std::int64_t timeout_ns, thread_id from = any_thread, int tag = any_tag);
template <class Rep, class Period>
std::optional<message> recv_for(const std::chrono::duration<Rep, Period>& timeout, thread_id from = any_thread,
                                int tag = any_tag) {
  return recv_for_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count(), from, tag);
}

// Load-balancing hook: moves thread t, which lives on this rank, to rank dest at its next
// suspension point, or now if it is suspended (ready, sleeping, or blocked in recv or join). A
// thread blocked on an iso::mutex, or holding one, moves once it is free of it; one waiting for a
// collective's result (collectives.hpp), once it has it. dest == this
// rank: nothing moves. Errors: (invalid_rank) naming dest; (unknown_thread) if t does not live
// on this rank; (no_runtime).
void migrate(thread_id t, int dest);

}  // namespace iso

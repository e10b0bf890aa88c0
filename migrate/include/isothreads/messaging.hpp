// Messages between migratable threads, and moving threads between ranks.
#pragma once

#include <cstddef>
#include <vector>

#include "isothreads/thread_id.hpp"

namespace iso {

// The largest payload iso::send takes, in bytes (1 GiB): a larger one is refused.
inline constexpr std::size_t max_message_bytes = std::size_t{1} << 30;

struct message {
  thread_id from;               // the sending thread; thread_id(rank, 0) for a rank's main
  int tag = 0;
  std::vector<std::byte> data;  // the payload, owned by the receiving thread's heap
};

// Copies `bytes` bytes to thread `to`, wherever it is or goes. Never blocks. Every message
// arrives exactly once; from one thread to another in the order sent, even when either migrates.
// From a migratable thread or from main (before or during run()).
// Errors: iso::error(unknown_thread) for the default id or an id whose home rank does not exist;
// (invalid_argument) for more than max_message_bytes; (no_runtime) without a runtime. A message to a thread that has finished is dropped with a line
// on stderr naming both threads.
void send(thread_id to, const void* data, std::size_t bytes, int tag = 0);

// Blocks the calling thread until a message arrives for it; other threads run meanwhile. The
// thread may be migrated while it waits. Error: (not_in_thread).
message recv();

// Load-balancing hook: moves thread t, which lives on this rank, to rank dest at its next
// suspension point, or now if it is suspended (ready, sleeping, or blocked in recv or join). A
// thread blocked on an iso::mutex, or holding one, moves once it is free of it. dest == this
// rank: nothing moves. Errors: (invalid_rank) naming dest; (unknown_thread) if t does not live
// on this rank; (no_runtime).
void migrate(thread_id t, int dest);

}  // namespace iso

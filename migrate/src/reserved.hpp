// The runtime's own messages between threads (futures, groups, collectives): ordinary messages
// of the engine on reserved negative tags, so they get its guarantees (exactly once, in order per
// (sender, tag), wherever either thread runs) and are never taken by a user receive (they queue
// apart, see mailbox.hpp).
//   tag                         used by
//   future_ask                  future -> producer: "send me the value" (or "nobody will ask")
//   future_value                producer -> future: the value or the failure text
//   group_members               spawn_group -> each new member: the member list, unsequenced
//   collective_tag(fp)          a rank -> member 0 of the group with fingerprint fp: the rank's
//                               partial results of a collective (collectives.cpp), unsequenced, in
//                               [-2^30 - 1, -2]
//   stream_end                  a thread that ended -> each thread it has a sequence counter for
//                               (it sent it or got from it numbered messages), never queued:
//                               numbered after its last message there (sequencing::last) if it
//                               sent any, else unsequenced; the receiver drops its counter for
//                               what it sends the ended thread, and in_order its entry for what
//                               came from it (mailbox.hpp; engine::close_streams)
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>

#include "engine.hpp"
#include "isothreads/messaging.hpp"

namespace iso::detail {

inline constexpr int future_ask = INT_MIN;
inline constexpr int future_value = INT_MIN + 1;
inline constexpr int group_members = INT_MIN + 2;
inline constexpr int stream_end = INT_MIN + 3;  // carries no payload, only its sender and number
inline constexpr int collective_tag(std::uint64_t fingerprint) noexcept {
  return -2 - static_cast<int>(fingerprint & ((std::uint64_t{1} << 30) - 1));
}
// Whether tag is one of collective_tag's.
inline constexpr bool is_collective_tag(int tag) noexcept {
  return tag <= collective_tag(0) && tag >= collective_tag((std::uint64_t{1} << 30) - 1);
}

// iso::send on a reserved tag (tag < any_tag), numbered as `how` says. Same errors as iso::send.
void send_reserved(thread_id to, const void* data, std::size_t bytes, int tag, sequencing how = sequencing::next);
// The calling thread's first message from `from` (a thread or any_thread) on reserved tag `tag`;
// blocks it until one is there. `call` names the public call in errors (not_in_thread, no_runtime).
message recv_reserved(thread_id from, int tag, const char* call);

}  // namespace iso::detail
